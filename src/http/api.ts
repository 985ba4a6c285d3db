/**
 * The JSON and event API the pages use, under /api/ (the same
 * authentication as /v2: anonymous callers get what NIXERY_ANONYMOUS lets
 * them pull, and a build started here goes through the same admission and
 * rights as a pull):
 *
 *   GET  /api/builds                 running and recent builds (BuildView, progress.ts)
 *   GET  /api/builds/:id/events      one build as Server-Sent Events: `state` with the
 *                                    current BuildView first (also mid-build), then on every
 *                                    change (at most ~5 a second), ending after the last
 *   GET  /api/packages?q=&limit=     the package index of the current revision, searched
 *                                    ({ attr, name (as in an image name), version, description })
 *   GET  /api/images/<name>?tag=     what an image is: per platform its manifests, layers
 *                                    (sizes, store paths), labels, SBOM; or that it is not built
 *   POST /api/images/<name>/build    start (or join) its build: 202 {id}; 200 {built} if built
 *
 * Event streams end when the build ends, when the client goes, or when the
 * server begins to shut down (`closing`), so none keeps the server up.
 */
import type { Context, Hono } from 'hono';
import { streamSSE } from 'hono/streaming';
import { PageNotFoundError } from '../errors.js';
import { parseImageName, platformName, validateName, type Architecture, type ImageSpec } from '../image/name.js';
import { MediaType } from '../manifest/build.js';
import type { PackageSourceResolver } from '../nix/sources.js';
import { imageNameOf } from '../packages/index.js';
import type { PackageIndexes } from '../packages/indexes.js';
import type { StorageBackend } from '../storage/backend.js';
import type { Build } from '../service/build.js';
import type { BuildRegistry } from '../service/build-registry.js';
import type { ImageService } from '../service/image-service.js';
import { viewBuild, type BuildView } from '../service/progress.js';
import type { BuiltImage } from '../service/records.js';
import type { AuthVariables } from './auth.js';

export interface ApiDeps {
  readonly service: ImageService;
  readonly registry: BuildRegistry;
  readonly storage: StorageBackend;
  readonly source: PackageSourceResolver;
  /** Absent: /api/packages answers `failed` (no index configured). */
  readonly packages?: Pick<PackageIndexes, 'get'>;
  readonly platforms: { readonly all: readonly Architecture[]; readonly default: Architecture };
  readonly now: () => number;
  /** Aborted when the server begins to shut down: every event stream ends. */
  readonly closing?: AbortSignal;
}

/** Event streams send at most one state per this many ms (the last one always). */
const SSE_INTERVAL_MS = 200;
/** A comment line now and then keeps proxies from closing a quiet stream. */
const SSE_KEEPALIVE_MS = 15_000;

export function view(build: Build, now: number): BuildView {
  return viewBuild({ id: build.id, image: build.image, packages: build.packages, createdAt: build.createdAt, events: build.events() }, now);
}

export function registerApi<E extends { Variables: Partial<AuthVariables> }>(app: Hono<E>, deps: ApiDeps): void {
  const { service, registry, now } = deps;

  app.get('/api/builds', (c) =>
    c.json({ running: registry.running().map((b) => view(b, now())), recent: registry.recent().map((b) => view(b, now())) }),
  );

  app.get('/api/builds/:id/events', (c) => {
    const build = registry.get(c.req.param('id'));
    if (build === undefined) throw new PageNotFoundError(c.req.path);
    return streamSSE(c, async (stream) => {
      let last = 0;
      let timer: NodeJS.Timeout | undefined;
      let finished = false;
      let close!: () => void;
      const ended = new Promise<void>((resolve) => (close = resolve));
      const send = async () => {
        timer = undefined;
        last = now();
        const v = view(build, now());
        await stream.writeSSE({ event: 'state', data: JSON.stringify(v) }).catch(close);
        if (v.state === 'succeeded' || v.state === 'failed') close();
      };
      const schedule = () => {
        if (finished || timer !== undefined) return;
        timer = setTimeout(() => void send(), Math.max(0, last + SSE_INTERVAL_MS - now()));
      };
      await send();
      // Replayed history is already in the first state: only what comes after counts.
      let replaying = true;
      const unsubscribe = build.subscribe((e) => {
        if (replaying) return;
        if (e.type === 'finished' || e.type === 'failed') {
          finished = true;
          if (timer) clearTimeout(timer);
          void send();
        } else schedule();
      });
      replaying = false;
      if (build.done && !finished) {
        finished = true;
        void send();
      }
      const keepAlive = setInterval(() => void stream.write(': keep-alive\n\n').catch(close), SSE_KEEPALIVE_MS);
      stream.onAbort(close);
      deps.closing?.addEventListener('abort', close, { once: true });
      if (deps.closing?.aborted) close();
      await ended;
      unsubscribe();
      clearInterval(keepAlive);
      if (timer) clearTimeout(timer);
      deps.closing?.removeEventListener('abort', close);
    });
  });

  app.get('/api/packages', async (c) => {
    const q = c.req.query('q') ?? '';
    const limit = Math.min(100, Math.max(1, Number(c.req.query('limit') ?? 20) || 20));
    if (deps.packages === undefined) return c.json({ state: 'failed', results: [] });
    const resolved = await deps.source.resolve('latest');
    const got = deps.packages.get(resolved, deps.platforms.default.nixSystem);
    if (got.state !== 'ready') return c.json({ state: got.state, results: [] });
    // `name`: how the package is written in an image name (lowercase, `_7zip` as `7zip`).
    return c.json({ state: 'ready', results: got.index.search(q, limit).map((e) => ({ ...e, name: imageNameOf(e.attr) })) });
  });

  app.get('/api/images/:name{.+}', async (c) => c.json(await imageInfo(c.req.param('name'), c.req.query('tag') ?? 'latest')));

  app.post('/api/images/:name{.+}/build', async (c) => {
    const { specs } = imageSpecs(c.req.param('name'), c.req.query('tag') ?? 'latest');
    const opts = { mayBuild: c.get('identity')?.mayBuild ?? true };
    const ids: string[] = [];
    for (const spec of specs) {
      const begun = await service.begin(spec, specs.length > 1 ? { ...opts, label: `${spec.name}:${spec.tag} ${platformName(spec.arch)}` } : opts);
      if ('build' in begun) {
        begun.build.result.catch(() => undefined);
        ids.push(begun.build.id);
      }
    }
    return ids.length === 0 ? c.json({ built: true }, 200) : c.json({ id: ids[0], ids }, 202);
  });

  /** The image's spec per platform it is built for: one when pinned or single-platform. */
  function imageSpecs(name: string, tag: string): { spec: ImageSpec; specs: ImageSpec[] } {
    validateName(name);
    const spec = parseImageName(name, tag, deps.platforms.default);
    const archs = spec.pinned ? [spec.arch] : deps.platforms.all;
    return { spec, specs: archs.map((arch) => ({ ...spec, arch })) };
  }

  async function imageInfo(name: string, tag: string) {
    const { spec, specs } = imageSpecs(name, tag);
    const platforms = [];
    let building: string | undefined;
    for (const s of specs) {
      const known = await service.peek(s);
      if (known.build && !known.build.done) building ??= known.build.id;
      if (known.image) platforms.push(await platformInfo(s, known.image));
    }
    return { name, canonicalName: spec.canonicalName, tag, built: platforms.length === specs.length, ...(building ? { building } : {}), platforms };
  }

  async function platformInfo(spec: ImageSpec, image: BuiltImage) {
    const p = image.platforms[0];
    const oci = image.manifests[MediaType.ociManifest];
    const docker = image.manifests[MediaType.dockerManifest];
    // Layers' store paths and the labels are in the config: its history names each layer's paths.
    let labels: Record<string, string> = {};
    let history: string[] = [];
    let configDigest: string | undefined = p?.config.digest;
    if (configDigest === undefined) {
      const m = await deps.storage.readBlob(oci.digest);
      configDigest = m ? (JSON.parse(m.toString()) as { config: { digest: string } }).config.digest : undefined;
    }
    const configBytes = configDigest ? await deps.storage.readBlob(configDigest as `sha256:${string}`) : undefined;
    if (configBytes) {
      const config = JSON.parse(configBytes.toString()) as { config?: { Labels?: Record<string, string> }; history?: { created_by?: string }[] };
      labels = config.config?.Labels ?? {};
      history = (config.history ?? []).map((h) => (h.created_by ?? '').replace(/^nixery-ts: /, ''));
    }
    const layers = (p?.layers ?? []).map((l, i) => ({
      digest: l.digest,
      size: l.size,
      paths: history[i] === 'symlink layer' || history[i] === undefined ? [] : history[i]!.split(', '),
      ...(history[i] === 'symlink layer' ? { description: 'symlink layer: the image root, users and groups' } : {}),
    }));
    const sbomArtifact = image.referrers?.[MediaType.ociManifest];
    return {
      platform: platformName(spec.arch),
      manifest: oci,
      dockerManifest: docker,
      config: configDigest,
      layers,
      totalBytes: layers.reduce((n, l) => n + l.size, 0),
      labels,
      ...(sbomArtifact && p?.sbom ? { sbom: { artifact: sbomArtifact.digest, blob: p.sbom.digest } } : {}),
    };
  }
}

export type { Context };
