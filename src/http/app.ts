/**
 * The HTTP surface: the pull side of the OCI distribution API under /v2/,
 * operator endpoints, and the start page. No build logic here: names and
 * references are validated, requests are handed to the image service, and
 * every error goes through errcode.ts.
 *
 * Registry routes are hono routes with the repository name and the
 * reference as parameters, so middleware (authentication) can read them, and
 * every response, blobs included, is made with `c.body()`, so headers a
 * middleware set with `c.header()` reach the client.
 */
import { Hono, type Context } from 'hono';
import { accepts } from 'hono/accepts';
import { requestId, type RequestIdVariables } from 'hono/request-id';
import parseRange from 'range-parser';
import { parseDigest, type Digest } from '../digest.js';
import { BlobNotFoundError, ManifestNotFoundError, PageNotFoundError, RangeNotSatisfiableError, UnsupportedError } from '../errors.js';
import { AMD64, isValidTag, parseImageName, validateName, type Architecture } from '../image/name.js';
import type { Logger } from '../log.js';
import { MediaType, type IndexMediaType, type ManifestMediaType } from '../manifest/build.js';
import { registerApi, type ApiDeps } from './api.js';
import type { ImageService, ServedManifest } from '../service/image-service.js';
import type { RecentError } from '../service/recent-errors.js';
import type { ByteRange, StorageBackend } from '../storage/backend.js';
import { authenticator, requireIdentity, softIdentity, type Authenticator, type AuthVariables } from './auth.js';
import { errorBody, toRegistryError } from './errcode.js';
import { registerOps, routeOf, type OpsDeps } from './ops.js';
import { registerStartPage, type RunningBuild, type StorageSummary } from './web.js';

export interface AppDeps {
  readonly service: ImageService;
  readonly storage: StorageBackend;
  readonly log: Logger;
  /** The tags a repository name can be pulled with. */
  readonly tags: () => Promise<string[]>;
  readonly startPage: {
    readonly webDir: string;
    readonly source: string;
    readonly recentErrors: () => readonly RecentError[];
    /** Storage in use and the last garbage-collection pass, when the server knows them. */
    readonly storage?: () => StorageSummary;
  };
  /** Counters for operators and tests (/debug/stats). */
  readonly stats: () => unknown;
  readonly now?: () => number;
  /** /livez, /readyz, /metrics; request metrics are observed when present. */
  readonly ops?: OpsDeps;
  /** Who may pull and build; without it, anyone may (NIXERY_ANONYMOUS=build, no htpasswd). */
  readonly auth?: Authenticator;
  /**
   * NIXERY_PLATFORMS: with more than one, a tag is served as an index to a
   * client that accepts one. `default` is built for names that do not pin a
   * platform when no index is served. Without it: amd64 only.
   */
  readonly platforms?: { readonly all: readonly Architecture[]; readonly default: Architecture };
  /** The /api/ routes (api.ts) for the pages; absent: no API. */
  readonly api?: Pick<ApiDeps, 'registry' | 'source' | 'packages' | 'closing'>;
}

export type AppEnv = { Variables: RequestIdVariables & Partial<AuthVariables> };

const API_VERSION = { 'Docker-Distribution-API-Version': 'registry/2.0' };

/** `/v2/<name>/<kind>/<reference>`: only to find the name in a raw path with dot segments. */
const ROUTE = /^\/v2\/(.+)\/(manifests|blobs|tags|referrers)\/([^/]+)$/;

export function createApp(deps: AppDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  const { log } = deps;
  const now = deps.now ?? Date.now;

  app.use('*', requestId());
  app.use('*', async function requestLog(c, next) {
    const started = performance.now();
    await next();
    const ms = performance.now() - started;
    deps.ops?.metrics.observeRequest(routeOf(c.req.path), c.req.method, c.res.status, ms / 1000);
    log.info({ requestId: c.get('requestId'), method: c.req.method, path: c.req.path, status: c.res.status, ms: Math.round(ms) }, 'request');
  });

  function errorResponse(err: unknown, c: Context<AppEnv>): Response {
    const e = toRegistryError(err);
    const id = c.get('requestId');
    if (e.fault) log.error({ requestId: id, err }, 'request failed');
    const body = errorBody(e, id);
    return reply(c, e.status, body, {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(body)),
      ...API_VERSION,
      ...e.headers,
    });
  }
  app.onError(errorResponse);
  // Outside the routes too, a client gets a registry error it can parse.
  app.notFound((c) => {
    const method = c.req.method;
    return errorResponse(
      method === 'GET' || method === 'HEAD' ? new PageNotFoundError(c.req.path) : new UnsupportedError(`${method} ${c.req.path}`, 'only GET and HEAD are served here'),
      c,
    );
  });

  // The URL parser resolves dot segments (/v2/../etc -> /etc) before routing;
  // a registry must refuse such a name rather than serve another route.
  app.use('*', async function dotSegments(c, next) {
    const incoming = (c.env as { incoming?: { url?: string } } | undefined)?.incoming;
    const rawPath = (incoming?.url ?? '').split('?')[0] ?? '';
    if (rawPath.startsWith('/v2/') && /(^|\/)\.\.?(\/|$)/.test(rawPath)) {
      const m = ROUTE.exec(rawPath);
      validateName(m ? m[1]! : rawPath.slice(4));
    }
    await next();
  });

  // Every registry route, /v2/ itself included, needs the identity the policy asks for.
  const auth = deps.auth ?? authenticator(undefined, 'build');
  app.use('/v2', requireIdentity(auth));
  app.use('/v2/*', requireIdentity(auth));

  app.on(['GET', 'HEAD'], ['/v2', '/v2/'], (c) => reply(c, 200, '{}', { 'Content-Type': 'application/json', 'Content-Length': '2', ...API_VERSION }));

  // The name contains slashes: `{.+}` lets it span path segments; the
  // reference or digest is the last segment.
  app.on(['GET', 'HEAD'], '/v2/:name{.+}/manifests/:reference', (c) => manifest(c, c.req.param('name'), c.req.param('reference')));
  app.on(['GET', 'HEAD'], '/v2/:name{.+}/blobs/:digest', (c) => blob(c, c.req.param('name'), c.req.param('digest')));
  app.get('/v2/:name{.+}/tags/list', (c) => tagsList(c, c.req.param('name')));
  app.get('/v2/:name{.+}/referrers/:digest', (c) => referrers(c, c.req.param('name'), c.req.param('digest')));

  app.all('/v2/*', (c) => {
    // Uploads (/blobs/uploads/...), deletes, pushes and unknown routes.
    const method = c.req.method;
    throw method === 'GET' || method === 'HEAD'
      ? new UnsupportedError(
          `${method} ${c.req.path}`,
          'this registry serves /v2/<name>/manifests/<reference>, /v2/<name>/blobs/<digest>, /v2/<name>/referrers/<digest> and /v2/<name>/tags/list',
        )
      : new UnsupportedError(`${method} (pushing and deleting)`);
  });

  const platforms = deps.platforms ?? { all: [AMD64], default: AMD64 };

  async function manifest(c: Context<AppEnv>, name: string, reference: string): Promise<Response> {
    validateName(name);
    const ref = classifyReference(reference);
    let served: ServedManifest;
    if (ref.kind === 'digest') served = await deps.service.manifestByDigest(ref.digest);
    else {
      const spec = parseImageName(name, reference, platforms.default);
      const opts = { mayBuild: c.get('identity')?.mayBuild ?? true };
      const index = !spec.pinned && platforms.all.length > 1 ? negotiateIndex(c) : undefined;
      served = index ? await deps.service.index(spec, platforms.all, index, opts) : await deps.service.manifest(spec, negotiate(c), opts);
    }
    return reply(c, 200, new Uint8Array(served.bytes), {
      'Content-Type': served.mediaType,
      'Content-Length': String(served.bytes.length),
      'Docker-Content-Digest': served.digest,
      ...API_VERSION,
      ...(served.missing?.length ? { [MISSING_PLATFORMS_HEADER]: served.missing.join(', ') } : {}),
    });
  }

  async function blob(c: Context<AppEnv>, name: string, reference: string): Promise<Response> {
    validateName(name);
    const digest = parseDigest(reference);
    const info = await deps.storage.statBlob(digest);
    if (info === undefined) throw new BlobNotFoundError(digest);
    const headers: Record<string, string> = {
      'Content-Type': info.mediaType,
      'Docker-Content-Digest': digest,
      'Accept-Ranges': 'bytes',
      // Content-addressed: the bytes under a digest never change.
      'Cache-Control': 'public, max-age=31536000, immutable',
      ETag: `"${digest}"`,
      ...API_VERSION,
    };
    const rangeHeader = c.req.header('range');
    const range = rangeHeader === undefined ? undefined : byteRange(rangeHeader, info.size);
    if (c.req.method === 'HEAD') return reply(c, 200, null, { ...headers, 'Content-Length': String(info.size) });
    const served = await deps.storage.serveBlob(digest, range, info);
    if (served === undefined) throw new BlobNotFoundError(digest);
    if (served.kind === 'redirect') return reply(c, 307, null, { Location: served.url, 'Docker-Content-Digest': digest, ...API_VERSION });
    const length = range ? range.end - range.start + 1 : info.size;
    deps.ops?.metrics.addBytesServed(length);
    return reply(c, range ? 206 : 200, served.stream, {
      ...headers,
      'Content-Length': String(length),
      ...(range ? { 'Content-Range': `bytes ${range.start}-${range.end}/${info.size}` } : {}),
    });
  }

  /**
   * The referrers API (distribution-spec 1.1): the artifacts attached to a
   * manifest (its SBOM), as an OCI index; `?artifactType=` filters, and the
   * answer says so in OCI-Filters-Applied. An unknown digest has an empty
   * index; a malformed one is 400 DIGEST_INVALID.
   */
  async function referrers(c: Context<AppEnv>, name: string, reference: string): Promise<Response> {
    validateName(name);
    const digest = parseDigest(reference);
    const artifactType = c.req.query('artifactType');
    const body = await deps.service.referrers(digest, artifactType);
    return reply(c, 200, new Uint8Array(body), {
      'Content-Type': MediaType.ociIndex,
      'Content-Length': String(body.length),
      ...API_VERSION,
      ...(artifactType !== undefined ? { 'OCI-Filters-Applied': 'artifactType' } : {}),
    });
  }

  async function tagsList(c: Context<AppEnv>, name: string): Promise<Response> {
    validateName(name);
    // Git refs such as feature/x cannot be requested as tags, so they are not listed.
    const all = (await deps.tags()).filter(isValidTag).sort();
    // Pagination as in the distribution spec: n (count) and last (exclusive start).
    const nRaw = c.req.query('n');
    const last = c.req.query('last');
    let tags = last === undefined ? all : all.filter((t) => t > last);
    let link: string | undefined;
    if (nRaw !== undefined && /^\d+$/.test(nRaw)) {
      const n = Number(nRaw);
      if (tags.length > n && n > 0) link = `</v2/${name}/tags/list?n=${n}&last=${encodeURIComponent(tags[n - 1]!)}>; rel="next"`;
      tags = tags.slice(0, n);
    }
    const body = JSON.stringify({ name, tags });
    return reply(c, 200, body, { 'Content-Type': 'application/json', ...API_VERSION, ...(link ? { Link: link } : {}) });
  }

  if (deps.api) {
    app.use('/api/*', requireIdentity(auth));
    registerApi(app, { ...deps.api, service: deps.service, storage: deps.storage, platforms, now });
  }

  app.get('/debug/stats', (c) => c.json(deps.stats()));
  if (deps.ops) registerOps(app, deps.ops);

  registerStartPage(app, {
    webDir: deps.startPage.webDir,
    source: deps.startPage.source,
    ...(deps.startPage.storage ? { storage: deps.startPage.storage } : {}),
    // Builds name packages: with NIXERY_ANONYMOUS=none only a logged-in viewer sees them.
    live: async (c) =>
      auth.policy === 'none' && (await softIdentity(auth, c))?.user === undefined
        ? undefined
        : {
            recentErrors: deps.startPage.recentErrors(),
            running: deps.service.running().map((b): RunningBuild => ({ image: b.image, packages: b.packages, seconds: (now() - b.startedAt) / 1000 })),
          },
  });

  return app;
}

/** On an index that leaves platforms out: which (`linux/arm64`), comma-separated. */
export const MISSING_PLATFORMS_HEADER = 'Nixery-Missing-Platforms';

/**
 * The index flavour a client accepts, if it names one (exactly: a wildcard
 * is not taken as understanding indexes) at least as gladly as any manifest
 * type; OCI on a tie.
 */
function negotiateIndex(c: Context): IndexMediaType | undefined {
  const chosen = accepts(c, {
    header: 'Accept',
    supports: [MediaType.ociIndex, MediaType.dockerManifestList],
    default: '',
    match: (entries) => {
      const q = (type: string) => exactQuality(entries, type);
      const oci = q(MediaType.ociIndex);
      const docker = q(MediaType.dockerManifestList);
      const best = Math.max(oci, docker);
      if (best === 0 || best < Math.max(q(MediaType.ociManifest), q(MediaType.dockerManifest))) return '';
      return oci >= docker ? MediaType.ociIndex : MediaType.dockerManifestList;
    },
  });
  return chosen === '' ? undefined : (chosen as IndexMediaType);
}

/** The highest q-value the Accept entries give exactly this type (0 when none does). */
function exactQuality(entries: readonly { type: string; q: number }[], type: string): number {
  return Math.max(0, ...entries.filter((e) => e.type.toLowerCase() === type).map((e) => e.q));
}

/**
 * The manifest flavour a client prefers, by q-value (RFC 9110: the order of
 * equal q-values means nothing, so a tie goes to OCI). a bare wildcard alone does not
 * count as accepting OCI: old Docker clients send it and understand only
 * Docker schema 2, which is also the answer when no manifest type is named.
 */
function negotiate(c: Context): ManifestMediaType {
  return accepts(c, {
    header: 'Accept',
    supports: [MediaType.ociManifest, MediaType.dockerManifest],
    default: MediaType.dockerManifest,
    match: (entries, { supports, default: fallback }) => {
      const quality = (type: string) => {
        if (entries.some((e) => e.type.toLowerCase() === type)) return exactQuality(entries, type);
        const partial = entries.filter((e) => e.type.toLowerCase() === `${type.split('/')[0]}/*`);
        return partial.length > 0 ? Math.max(...partial.map((e) => e.q)) : 0;
      };
      let best = fallback;
      let bestQ = 0;
      for (const type of supports) {
        const q = quality(type);
        if (q > bestQ) [best, bestQ] = [type, q];
      }
      return best;
    },
  }) as ManifestMediaType;
}

/**
 * A manifest reference is a tag or a digest. A digest-shaped reference
 * (`algorithm:encoded`, as in the OCI grammar) that is not a sha256 digest of
 * ours is malformed (400 DIGEST_INVALID); anything that is neither a tag nor
 * digest-shaped names a manifest that cannot exist (404 MANIFEST_UNKNOWN, as
 * the conformance suite expects for `.INVALID_MANIFEST_NAME`).
 */
function classifyReference(reference: string): { kind: 'tag' } | { kind: 'digest'; digest: Digest } {
  if (isValidTag(reference)) return { kind: 'tag' };
  if (DIGEST_SHAPED.test(reference)) return { kind: 'digest', digest: parseDigest(reference) };
  throw new ManifestNotFoundError(
    reference.length > 140 ? `${reference.slice(0, 128)}…` : reference,
    reference.length > 128
      ? `a tag is at most 128 characters; this reference has ${reference.length}`
      : 'neither a tag (letters, digits, ".", "_" and "-", not starting with "." or "-") nor a digest (algorithm:hex)',
  );
}

/** The OCI digest grammar: algorithm-component (separator algorithm-component)* ":" encoded. */
const DIGEST_SHAPED = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/**
 * One byte range of a Range header (RFC 9110), clamped to the blob. A
 * malformed header or several ranges get the whole blob; a range that
 * starts beyond the end is 416.
 */
function byteRange(header: string, size: number): ByteRange | undefined {
  const r = parseRange(size, header);
  if (r === -2) return undefined;
  if (r === -1) throw new RangeNotSatisfiableError(header, size);
  if (r.type !== 'bytes' || r.length !== 1) return undefined;
  return { start: r[0]!.start, end: r[0]!.end };
}

/** A response whose headers are these plus any a middleware set; HEAD gets the headers without the body. */
function reply(c: Context, status: number, body: string | Uint8Array<ArrayBuffer> | ReadableStream | null, headers: Record<string, string>): Response {
  if (c.req.method === 'HEAD') {
    if (body instanceof ReadableStream) void body.cancel();
    return c.body(null, status as 200, headers);
  }
  return body === null ? c.body(null, status as 200, headers) : c.body(body, status as 200, headers);
}
