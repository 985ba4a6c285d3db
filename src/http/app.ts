/**
 * The HTTP surface: the pull side of the OCI distribution API under /v2/,
 * the start page everywhere else. No build logic here: names are validated,
 * requests are handed to the image service, errors go through errcode.ts.
 */
import { randomUUID } from 'node:crypto';
import { ServerResponse } from 'node:http';
import { Readable, pipeline, type Writable } from 'node:stream';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { Hono, type Context } from 'hono';
import { parseDigest, type Digest } from '../digest.js';
import { BlobNotFoundError, ManifestNotFoundError, PageNotFoundError, RangeNotSatisfiableError, UnsupportedError } from '../errors.js';
import { isValidTag, parseImageName, validateName } from '../image/name.js';
import type { Logger } from '../log.js';
import { negotiateManifestType } from '../manifest/build.js';
import type { ImageService, ServedManifest } from '../service/build-image.js';
import type { ByteRange, StorageBackend } from '../storage/backend.js';
import { errorBody, toRegistryError } from './errcode.js';
import { registerOps, routeOf, type OpsDeps } from './ops.js';
import { renderStartPage, type StartPageInfo } from './web.js';

export interface AppDeps {
  readonly service: ImageService;
  readonly storage: StorageBackend;
  readonly log: Logger;
  /** The tags a repository name can be pulled with. */
  readonly tags: () => Promise<string[]>;
  readonly startPage: StartPageInfo;
  /** Counters for operators and tests (builds run, cache hits, Nix calls). */
  readonly stats: () => unknown;
  /** /livez, /readyz, /metrics; request metrics are observed when present. */
  readonly ops?: OpsDeps;
}

/** Under @hono/node-server the bindings are the raw Node request and response; absent with app.request(). */
type Env = { Variables: { requestId: string }; Bindings: { incoming?: { url?: string }; outgoing?: unknown } };

const API_VERSION = { 'Docker-Distribution-API-Version': 'registry/2.0' };

/** Error codes of a write to a client that has gone away. */
const CLIENT_GONE = new Set(['ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED', 'ECONNRESET', 'EPIPE']);

/** `/v2/<name>/<kind>/<reference>`: only to find the name in a raw path with dot segments. */
const ROUTE = /^\/v2\/(.+)\/(manifests|blobs|tags)\/([^/]+)$/;

export function createApp(deps: AppDeps): Hono<Env> {
  const app = new Hono<Env>();
  const { log } = deps;

  app.use('*', async function requestLog(c, next) {
    const requestId = c.req.header('x-request-id') ?? randomUUID();
    c.set('requestId', requestId);
    const started = performance.now();
    await next();
    // A blob piped straight to the socket (see blob()) has sent its headers,
    // X-Request-Id included, and its status is on the Node response only;
    // touching c.res then would make the adapter write the headers again.
    // Manifests and blobs put X-Request-Id in their own headers: setting it
    // here on a finished response copies it into a full web Response (its
    // body becomes a ReadableStream the adapter then reads chunk by chunk);
    // skipping that took warm manifest GETs from about 3,600 to about 6,000
    // per second (bench/serve.mjs).
    const outgoing = c.env?.outgoing;
    const sent = outgoing instanceof ServerResponse && outgoing.headersSent;
    if (!sent && !c.res.headers.has('X-Request-Id')) c.header('X-Request-Id', requestId);
    const status = sent ? outgoing.statusCode : c.res.status;
    const ms = performance.now() - started;
    deps.ops?.metrics.observeRequest(routeOf(c.req.path), c.req.method, status, ms / 1000);
    log.info({ requestId, method: c.req.method, path: c.req.path, status, ms: Math.round(ms) }, 'request');
  });

  function errorResponse(err: unknown, c: Context<Env>): Response {
    const e = toRegistryError(err);
    const requestId = c.get('requestId') ?? randomUUID();
    if (e.fault) log.error({ requestId, err }, 'request failed');
    const body = errorBody(e, requestId);
    return reply(c, e.status, body, {
      'Content-Type': 'application/json',
      'Content-Length': String(Buffer.byteLength(body)),
      ...API_VERSION,
      'X-Request-Id': requestId,
    });
  }
  app.onError(errorResponse);
  // Outside /v2/ too, a client gets a registry error it can parse.
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
    const rawPath = (c.env?.incoming?.url ?? '').split('?')[0] ?? '';
    if (rawPath.startsWith('/v2/') && /(^|\/)\.\.?(\/|$)/.test(rawPath)) {
      const m = ROUTE.exec(rawPath);
      validateName(m ? m[1]! : rawPath.slice(4));
    }
    await next();
  });

  app.on(['GET', 'HEAD'], ['/v2', '/v2/'], (c) => reply(c, 200, '{}', {
    'Content-Type': 'application/json',
    'Content-Length': '2',
    ...API_VERSION,
  }));

  // The name contains slashes: `{.+}` lets it span path segments, and the
  // reference or digest is the last segment. Middleware sees both as params.
  app.on(['GET', 'HEAD'], '/v2/:name{.+}/manifests/:reference', (c) => manifest(c, c.req.param('name'), c.req.param('reference')));
  app.on(['GET', 'HEAD'], '/v2/:name{.+}/blobs/:digest', (c) => blob(c, c.req.param('name'), c.req.param('digest')));
  app.get('/v2/:name{.+}/tags/list', (c) => tagsList(c, c.req.param('name')));

  app.all('/v2/*', (c) => {
    // Uploads (/blobs/uploads/...), deletes, pushes and unknown routes.
    const method = c.req.method;
    throw method === 'GET' || method === 'HEAD'
      ? new UnsupportedError(`${method} ${c.req.path}`, 'this registry serves /v2/<name>/manifests/<reference>, /v2/<name>/blobs/<digest> and /v2/<name>/tags/list')
      : new UnsupportedError(`${method} (pushing and deleting)`);
  });

  async function manifest(c: Context<Env>, name: string, reference: string): Promise<Response> {
    let served: ServedManifest;
    validateName(name);
    const ref = classifyReference(reference);
    if (ref.kind === 'digest') {
      served = await deps.service.manifestByDigest(ref.digest);
    } else {
      const spec = parseImageName(name, reference);
      served = await deps.service.manifest(spec, negotiateManifestType(c.req.header('accept')));
    }
    return reply(c, 200, new Uint8Array(served.bytes), {
      'Content-Type': served.mediaType,
      'Content-Length': String(served.bytes.length),
      'Docker-Content-Digest': served.digest,
      ...API_VERSION,
      'X-Request-Id': c.get('requestId'),
    });
  }

  async function blob(c: Context<Env>, name: string, reference: string): Promise<Response> {
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
      'X-Request-Id': c.get('requestId'),
    };
    const rangeHeader = c.req.header('range');
    const range = rangeHeader === undefined ? undefined : parseRange(rangeHeader, info.size);
    if (c.req.method === 'HEAD') return reply(c, 200, null, { ...headers, 'Content-Length': String(info.size) });
    const served = await deps.storage.serveBlob(digest, range, info);
    if (served === undefined) throw new BlobNotFoundError(digest);
    if (served.kind === 'redirect') {
      return reply(c, 307, null, { Location: served.url, 'Docker-Content-Digest': digest, ...API_VERSION, 'X-Request-Id': c.get('requestId') });
    }
    const status = range ? 206 : 200;
    deps.ops?.metrics.addBytesServed(range ? range.end - range.start + 1 : info.size);
    const sized: Record<string, string> = range
      ? { ...headers, 'Content-Length': String(range.end - range.start + 1), 'Content-Range': `bytes ${range.start}-${range.end}/${info.size}` }
      : { ...headers, 'Content-Length': String(info.size) };
    const outgoing = c.env?.outgoing;
    if (outgoing instanceof ServerResponse) {
      // Served by @hono/node-server: write the file into the socket ourselves.
      // Through a web ReadableStream, Node 20's Readable.toWeb copies every
      // chunk (new Uint8Array(buffer), to detach it from the pool) and each
      // chunk then crosses two stream machineries and the adapter's reader
      // loop: measured at about half the throughput of a plain pipe, with
      // the copies showing up as GC time (bench/serve.mjs). Both ways below
      // keep backpressure and release the file when the client goes away.
      // Errors before this point (404, 416) still go through app.onError.
      outgoing.writeHead(status, sized);
      const failed = (err: Error | null | undefined) => {
        // The client hung up, or the file failed mid-way, after the headers:
        // nothing more can be said on this connection. Only the second is news.
        if (!err) return;
        const clientGone = outgoing.socket === null || outgoing.socket.destroyed || CLIENT_GONE.has((err as NodeJS.ErrnoException).code ?? '');
        outgoing.destroy();
        if (!clientGone) log.warn({ requestId: c.get('requestId'), digest, err: err.message }, 'blob stream failed');
      };
      if (sendsToSocket(served.stream)) served.stream.sendTo(outgoing).catch(failed);
      else pipeline(served.stream as Readable, outgoing, failed);
      return RESPONSE_ALREADY_SENT;
    }
    // In-process (app.request() in tests): a web stream in a Response.
    return reply(c, status, Readable.toWeb(served.stream as Readable) as ReadableStream, sized);
  }

  async function tagsList(c: Context<Env>, name: string): Promise<Response> {
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
    return c.json({ name, tags }, 200, { ...API_VERSION, ...(link ? { Link: link } : {}) });
  }

  app.get('/debug/stats', (c) => c.json(deps.stats()));
  if (deps.ops) registerOps(app, deps.ops);

  app.on(['GET', 'HEAD'], '*', async (c) => {
    const html = await renderStartPage(deps.startPage, {
      host: c.req.header('host') ?? 'localhost',
      recentErrors: deps.service.recentErrors.list(),
      running: [...deps.service.running.values()].map((b) => ({
        image: b.image,
        packages: b.packages,
        seconds: (Date.now() - b.startedAt) / 1000,
      })),
    }, c.req.path);
    if (html === undefined) throw new PageNotFoundError(c.req.path);
    return c.html(html);
  });

  return app;
}

/**
 * A manifest reference is a tag or a digest. A digest-shaped reference
 * (`algorithm:encoded`, as in the OCI grammar) that is not a sha256 digest of
 * ours is malformed (400 DIGEST_INVALID); anything that is neither a tag nor
 * digest-shaped names a manifest that cannot exist (404 MANIFEST_UNKNOWN, as
 * the conformance suite expects for `.INVALID_MANIFEST_NAME`).
 */
export function classifyReference(reference: string): { kind: 'tag' } | { kind: 'digest'; digest: Digest } {
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
 * A served stream that can also write itself into a socket without a fresh
 * buffer per chunk (storage/filesystem.ts: about half the CPU per download).
 */
interface SendsToSocket {
  sendTo(out: Writable): Promise<void>;
}

function sendsToSocket(s: unknown): s is SendsToSocket {
  return typeof (s as Partial<SendsToSocket>).sendTo === 'function';
}

/** A response whose headers are exactly these; HEAD gets the headers without the body. */
function reply(c: Context, status: number, body: string | Uint8Array | ReadableStream | null, headers: Record<string, string>): Response {
  if (c.req.method === 'HEAD' && body instanceof ReadableStream) void body.cancel();
  return new Response(c.req.method === 'HEAD' ? null : body, { status, headers });
}

/** RFC 9110 single byte ranges: `bytes=a-b`, `bytes=a-`, `bytes=-n`. Multiple ranges get the whole blob. */
export function parseRange(header: string, size: number): ByteRange | undefined {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === '' && m[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (m[1] === '') {
    const suffix = Number(m[2]);
    if (suffix === 0) throw new RangeNotSatisfiableError(header, size);
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
    if (m[2] !== '' && Number(m[2]) < start) return undefined; // invalid: ignore the header
  }
  if (start >= size) throw new RangeNotSatisfiableError(header, size);
  return { start, end };
}
