/**
 * Build admission in-process (fake Nix, memory storage): build slots and
 * the bounded queue (429 with Retry-After beyond it, joiners and warm pulls
 * never refused), the package limit (refused before Nix), remembered build
 * failures (one Nix run per TTL, shown once on the start page), and the
 * metrics and stats that report them.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { AdmissionConfig } from '../../src/config.js';
import { BuildAbortedError, TooManyBuildsError } from '../../src/errors.js';
import { createApp } from '../../src/http/app.js';
import { parseImageName } from '../../src/image/name.js';
import { ParallelPacker } from '../../src/layers/parallel-pack.js';
import { storePathSegments, symlinkLayerEntries } from '../../src/layers/walk.js';
import { silentLogger } from '../../src/log.js';
import { ROOT } from '../../src/runtime.js';
import { MediaType } from '../../src/manifest/build.js';
import { createMetrics } from '../../src/metrics.js';
import { BuildSlots, countedPackages, QUEUE_FULL_RETRY_AFTER_SECONDS } from '../../src/service/admission.js';
import type { BuildEvent } from '../../src/service/build.js';
import { ImageService } from '../../src/service/image-service.js';
import { collectStats, recordFailures } from '../../src/service/observers.js';
import { RecentErrors } from '../../src/service/recent-errors.js';
import { MemoryStorage } from '../../src/storage/memory.js';
import type { FakePackage } from '../helpers/fake-nix.js';
import { FAKE_PACKAGES, inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

const OCI = MediaType.ociManifest;
const PACKAGES: Readonly<Record<string, FakePackage>> = {
  ...FAKE_PACKAGES,
  // In every image of the queue tests: its gate holds all their builds at once.
  slow: { bin: ['slow'], deps: ['glibc'] },
  broken: { bin: ['broken'], deps: ['glibc'] },
};

interface Harness {
  readonly base: InProcessRegistry;
  readonly service: ImageService;
  readonly app: ReturnType<typeof createApp>;
  readonly stats: ReturnType<typeof collectStats>;
  readonly recentErrors: RecentErrors;
  readonly storage: MemoryStorage;
  readonly shutdown: AbortController;
}

let open: Harness[] = [];
let gates: (() => void)[] = [];
afterEach(async () => {
  // A test that failed half-way leaves no build waiting on a gate.
  for (const release of gates) release();
  gates = [];
  for (const h of open) h.shutdown.abort(new Error('test over'));
  await Promise.all(open.map((h) => h.base.close()));
  open = [];
});

/**
 * The in-process registry with admission configured from `env`. Its service
 * is made here, from the registry's fake Nix, source and storage and the
 * admission settings its configuration parsed, wired as src/runtime.ts wires
 * the server's (collectStats, recordFailures); once runtime.ts passes
 * `admission: config.admission`, `inProcessRegistry({ env })` alone is the same.
 */
async function harness(env: Record<string, string> = {}, opts: { now?: () => number; storage?: MemoryStorage } = {}): Promise<Harness> {
  const base = await inProcessRegistry({ packages: PACKAGES, env, ...(opts.now ? { now: opts.now } : {}) });
  const now = opts.now ?? Date.now;
  const storage = opts.storage ?? base.storage;
  const shutdown = new AbortController();
  const log = silentLogger();
  const admission: AdmissionConfig = base.runtime.config.admission;
  const packer = new ParallelPacker({ threads: 2, cacheBytes: 0 });
  const service = new ImageService({
    nix: base.nix,
    storage,
    source: base.source,
    log,
    reader: {
      storePathSegments: (p) => storePathSegments(p, { root: base.nix.root }),
      symlinkLayerEntries: (r) => symlinkLayerEntries(r, { root: base.nix.root }),
    },
    pack: (segments, out, o) => packer.pack(segments, out, o),
    popularity: new Map(),
    layerBudget: base.runtime.config.layerBudget,
    shutdown: shutdown.signal,
    now,
    admission,
  });
  const stats = collectStats(service);
  const recentErrors = new RecentErrors();
  recordFailures(service, recentErrors, now);
  const app = createApp({
    service,
    storage,
    log,
    tags: () => base.source.tags(),
    startPage: { webDir: path.join(ROOT, 'web'), source: base.source.description, recentErrors: () => recentErrors.list() },
    stats: () => ({ ...stats, nix: { ...base.nix.stats } }),
    now,
  });
  const h = { base, service, app, stats, recentErrors, storage, shutdown };
  open.push(h);
  return h;
}

function gate(h: Harness, pkg: string): () => void {
  let release!: () => void;
  h.base.nix.gates.set(pkg, new Promise<void>((resolve) => (release = resolve)));
  const open = () => {
    h.base.nix.gates.delete(pkg);
    release();
  };
  gates.push(open);
  return open;
}

const tick = (ms = 5) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what: string, cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await tick(2);
  }
}

interface Answer {
  readonly status: number;
  readonly retryAfter: string | null;
  readonly body: { errors?: { code: string; message: string; detail: Record<string, unknown> }[] };
}

async function pull(h: Harness, name: string, method = 'GET'): Promise<Answer> {
  const res = await h.app.request(`/v2/${name}/manifests/latest`, { method, headers: { Accept: OCI } });
  const text = await res.text();
  return { status: res.status, retryAfter: res.headers.get('retry-after'), body: text && res.status !== 200 ? JSON.parse(text) : {} };
}

/** Samples the counts that must stay within the limits, on every service and build event and every 1 ms. */
function sampler(h: Harness) {
  const max = { running: 0, queued: 0, nixRunning: 0, listedRunning: 0 };
  const sample = () => {
    const s = h.service.admission.stats();
    max.running = Math.max(max.running, s.running);
    max.queued = Math.max(max.queued, s.queued);
    max.nixRunning = Math.max(max.nixRunning, h.base.nix.stats.running);
    max.listedRunning = Math.max(max.listedRunning, h.service.running().length);
  };
  const unsubscribe = h.service.subscribe((e) => {
    sample();
    if (e.type === 'build') e.build.subscribe(sample);
  });
  const timer = setInterval(sample, 1);
  return {
    max,
    stop() {
      sample();
      clearInterval(timer);
      unsubscribe();
    },
  };
}

describe('build slots and the queue', () => {
  it('runs at most NIXERY_MAX_BUILDS, queues at most NIXERY_MAX_QUEUED_BUILDS, refuses the rest with 429; joiners and warm pulls pass', async () => {
    const h = await harness({ NIXERY_MAX_BUILDS: '2', NIXERY_MAX_QUEUED_BUILDS: '4' });
    // A warm image, built before the crowd arrives.
    expect((await pull(h, 'hello')).status).toBe(200);
    const release = gate(h, 'slow');
    const watch = sampler(h);
    const started: string[] = [];
    const queuedAt = new Map<string, number>();
    h.service.subscribe((e) => {
      if (e.type !== 'build') return;
      e.build.subscribe((b) => {
        if (b.type === 'queued') queuedAt.set(e.build.image, b.position);
        if (b.type === 'started' || (b.type === 'phase' && b.phase === 'resolve' && !queuedAt.has(e.build.image))) started.push(e.build.image);
      });
    });

    const names = ['hello', 'htop', 'jq', 'nano', 'coreutils', 'moreutils', 'bashinteractive', 'hello/jq', 'htop/jq', 'nano/jq'].map((n) => `slow/${n}`);
    const answers = new Map<string, Promise<Answer>>(names.map((n) => [n, pull(h, n)]));
    await until('2 running and 4 queued', () => h.service.admission.stats().running === 2 && h.service.admission.stats().queued === 4);
    await until('2 builds inside Nix', () => h.base.nix.stats.running === 2);

    // Settled now: the refused answered at once, the admitted wait.
    const settled = await Promise.all(names.map(async (n) => ({ n, a: await Promise.race([answers.get(n)!, tick(50).then(() => undefined)]) })));
    const refused = settled.filter((s) => s.a !== undefined);
    expect(refused).toHaveLength(4);
    for (const { a } of refused) {
      expect(a!.status).toBe(429);
      expect(a!.retryAfter).toBe(String(QUEUE_FULL_RETRY_AFTER_SECONDS));
      const e = a!.body.errors![0]!;
      expect(e.code).toBe('TOOMANYREQUESTS');
      expect(e.message).toContain('NIXERY_MAX_BUILDS=2');
      expect(e.message).toContain('NIXERY_MAX_QUEUED_BUILDS=4');
      expect(e.detail).toMatchObject({ maxBuilds: 2, maxQueuedBuilds: 4, running: 2, queued: 4, retryAfterSeconds: QUEUE_FULL_RETRY_AFTER_SECONDS });
    }
    expect(h.service.running()).toHaveLength(2);
    expect(h.service.queued()).toHaveLength(4);
    expect(h.stats).toMatchObject({ buildsRunning: 2, buildsQueued: 4, rejectedQueueFull: 4 });
    // /debug/stats carries the live counts.
    const debug = (await (await h.app.request('/debug/stats')).json()) as Record<string, unknown>;
    expect(debug).toMatchObject({ buildsRunning: 2, buildsQueued: 4, rejectedQueueFull: 4 });

    // While full: a warm pull answers at once, GET and HEAD.
    const warm = await Promise.race([pull(h, 'hello'), tick(1_000).then(() => 'waited' as const)]);
    expect(warm).not.toBe('waited');
    expect((warm as Answer).status).toBe(200);
    expect((await pull(h, 'hello', 'HEAD')).status).toBe(200);
    // A request for an image whose build is queued or running joins it, never refused.
    const joinQueued = pull(h, h.service.queued()[3]!.image.replace(/:latest$/, ''));
    const joinRunning = pull(h, h.service.running()[0]!.image.replace(/:latest$/, ''));
    // Another image is refused.
    expect((await pull(h, 'slow/nano/htop')).status).toBe(429);
    expect(h.stats.singleFlightWaiters).toBe(2);

    release();
    const admitted = settled.filter((s) => s.a === undefined).map((s) => s.n);
    expect(admitted).toHaveLength(6);
    for (const n of admitted) expect((await answers.get(n)!).status).toBe(200);
    expect((await joinQueued).status).toBe(200);
    expect((await joinRunning).status).toBe(200);
    watch.stop();
    expect(watch.max).toEqual({ running: 2, queued: 4, nixRunning: 2, listedRunning: 2 });
    // Slots went to the queue first come, first served.
    const queued = [...queuedAt.entries()].sort((a, b) => a[1] - b[1]).map(([image]) => image);
    expect(queued).toHaveLength(4);
    expect(started.slice(2)).toEqual(queued);
    expect(h.service.admission.stats()).toMatchObject({ running: 0, queued: 0 });
    expect(h.service.running()).toEqual([]);
    // Room again: the next cold pull is admitted.
    expect((await pull(h, 'slow/nano/htop')).status).toBe(200);
    expect(h.stats.rejectedQueueFull).toBe(5);
  });

  it('a queued build replays queued and started to late subscribers; its duration counts from its start', async () => {
    let t = 5_000_000;
    const h = await harness({ NIXERY_MAX_BUILDS: '1', NIXERY_MAX_QUEUED_BUILDS: '1' }, { now: () => t });
    const release = gate(h, 'slow');
    const first = h.service.manifest(parseImageName('slow/hello', 'latest'), OCI);
    await until('the first build in Nix', () => h.base.nix.stats.running === 1);
    const second = h.service.manifest(parseImageName('slow/jq', 'latest'), OCI);
    await until('the second build queued', () => h.service.queued().length === 1);
    const [waiting] = h.service.queued();
    expect(waiting!.queued).toBe(true);
    expect(waiting!.events()).toEqual([{ type: 'queued', at: 5_000_000, position: 1 }]);
    t += 7_000;
    release();
    await Promise.all([first, second]);
    const late: BuildEvent[] = [];
    waiting!.subscribe((e) => late.push(e));
    expect(late.slice(0, 3).map((e) => (e.type === 'phase' ? e.phase : e.type))).toEqual(['queued', 'started', 'resolve']);
    expect(waiting!.startedAt).toBe(5_007_000);
    expect(waiting!.createdAt).toBe(5_000_000);
    expect(waiting!.queued).toBe(false);
  });

  it('a build waiting in the queue is aborted at once on shutdown, and its place is given back', async () => {
    const h = await harness({ NIXERY_MAX_BUILDS: '1', NIXERY_MAX_QUEUED_BUILDS: '2' });
    const release = gate(h, 'slow');
    const running = h.service.manifest(parseImageName('slow/hello', 'latest'), OCI);
    await until('the first build in Nix', () => h.base.nix.stats.running === 1);
    const waiting = h.service.manifest(parseImageName('slow/jq', 'latest'), OCI);
    await until('queued', () => h.service.admission.stats().queued === 1);
    h.shutdown.abort(new Error('server shutting down'));
    await expect(waiting).rejects.toBeInstanceOf(BuildAbortedError);
    expect(h.service.admission.stats().queued).toBe(0);
    release();
    await expect(running).rejects.toBeInstanceOf(BuildAbortedError);
    expect(h.service.admission.stats()).toMatchObject({ running: 0, queued: 0 });
    // An abort is not a failure of the image: nothing remembered.
    expect(h.stats.rememberedFailures).toBe(0);
  });

  it('BuildSlots: FIFO hand-over, no overtaking, release is idempotent, an aborted waiter leaves the queue', async () => {
    const slots = new BuildSlots({ maxBuilds: 1, maxQueuedBuilds: 2 });
    const a = slots.reserve();
    expect(a.queued).toBe(false);
    const b = slots.reserve();
    const ctl = new AbortController();
    const c = slots.reserve(ctl.signal);
    expect([b.position, c.position]).toEqual([1, 2]);
    expect(() => slots.reserve()).toThrow(TooManyBuildsError);
    const order: string[] = [];
    void b.acquired.then(() => order.push('b'));
    ctl.abort(new Error('gone'));
    await expect(c.acquired).rejects.toThrow(/gone/);
    expect(slots.stats()).toMatchObject({ running: 1, queued: 1 });
    a.release();
    a.release();
    await tick();
    expect(order).toEqual(['b']);
    // b holds the slot handed over: a newcomer waits.
    const d = slots.reserve();
    expect(d.queued).toBe(true);
    b.release();
    await d.acquired;
    d.release();
    c.release();
    expect(slots.stats()).toMatchObject({ running: 0, queued: 0 });
    expect(slots.reserve().queued).toBe(false);
  });

  it('with NIXERY_MAX_QUEUED_BUILDS=0, one build runs and every other cold image is refused', async () => {
    const h = await harness({ NIXERY_MAX_BUILDS: '1', NIXERY_MAX_QUEUED_BUILDS: '0' });
    const release = gate(h, 'slow');
    const first = pull(h, 'slow/hello');
    await until('the build in Nix', () => h.base.nix.stats.running === 1);
    expect((await pull(h, 'slow/jq')).status).toBe(429);
    const joined = pull(h, 'slow/hello');
    release();
    expect((await first).status).toBe(200);
    expect((await joined).status).toBe(200);
  });
});

describe('package limit', () => {
  it('refuses an image with more than NIXERY_MAX_PACKAGES packages before any Nix call; cacert and iana-etc do not count', async () => {
    const h = await harness({ NIXERY_MAX_PACKAGES: '3' });
    const big = await pull(h, 'hello/htop/jq/nano');
    expect(big.status).toBe(403);
    const e = big.body.errors![0]!;
    expect(e.code).toBe('DENIED');
    expect(e.message).toBe('this image has 4 packages; this server builds at most 3 per image (NIXERY_MAX_PACKAGES)');
    expect(e.detail).toMatchObject({ packages: 4, maxPackages: 3 });
    // shell = bashInteractive, coreutils, moreutils, nano: counted after expansion.
    expect((await pull(h, 'shell')).status).toBe(403);
    expect(h.base.nix.stats).toMatchObject({ evaluations: 0, realisations: 0 });
    expect(h.stats.rejectedTooManyPackages).toBe(2);
    // Three names plus the two the server adds: allowed.
    expect(countedPackages(parseImageName('hello/htop/jq', 'latest'))).toBe(3);
    expect((await pull(h, 'hello/htop/jq')).status).toBe(200);
  });

  it('limits builds, not pulls: an image built elsewhere with more packages is served', async () => {
    const storage = new MemoryStorage();
    const wide = await harness({}, { storage });
    expect((await pull(wide, 'hello/htop/jq/nano')).status).toBe(200);
    const narrow = await harness({ NIXERY_MAX_PACKAGES: '2' }, { storage });
    expect((await pull(narrow, 'hello/htop/jq/nano')).status).toBe(200);
    expect(narrow.base.nix.stats.evaluations).toBe(0);
    expect(narrow.stats.rejectedTooManyPackages).toBe(0);
  });
});

describe('remembered failures', () => {
  it('a failing image pulled 10 times within NIXERY_FAILED_BUILD_TTL runs Nix once, shows once, and builds again after the TTL', async () => {
    let t = Date.now();
    const h = await harness({ NIXERY_FAILED_BUILD_TTL: '60' }, { now: () => t });
    h.base.nix.failing.add('broken');
    const first = await pull(h, 'broken');
    expect(first.status).toBe(500);
    expect(first.body.errors![0]!.code).toBe('UNKNOWN');
    expect(first.body.errors![0]!.detail['remembered']).toBeUndefined();
    t += 20_000;
    for (let i = 0; i < 9; i++) {
      const again = await pull(h, 'broken');
      expect(again.status).toBe(500);
      const e = again.body.errors![0]!;
      expect(e.code).toBe('UNKNOWN');
      expect(e.message).toContain('image build failed (remembered: failed 20 s ago, not built again for another 40 s)');
      expect(e.detail).toMatchObject({ remembered: true, failedSecondsAgo: 20, retryAfterSeconds: 40, stderr: first.body.errors![0]!.detail['stderr'] });
      expect(again.retryAfter).toBe('40');
    }
    expect(h.base.nix.stats.realisations).toBe(1);
    expect(h.recentErrors.list().map((e) => e.image)).toEqual(['broken:latest']);
    expect(h.stats).toMatchObject({ builds: 1, buildFailures: 1, rememberedFailures: 9 });
    // Other images are not affected.
    expect((await pull(h, 'hello')).status).toBe(200);

    t += 40_001;
    const later = await pull(h, 'broken');
    expect(later.status).toBe(500);
    expect(later.body.errors![0]!.detail['remembered']).toBeUndefined();
    expect(h.base.nix.stats.realisations).toBe(3);
    expect(h.recentErrors.list().map((e) => e.image)).toEqual(['broken:latest', 'broken:latest']);

    // Fixed in the package set: a pull after the TTL builds it.
    h.base.nix.failing.delete('broken');
    expect((await pull(h, 'broken')).status).toBe(500);
    t += 60_001;
    expect((await pull(h, 'broken')).status).toBe(200);
  });

  it('concurrent pulls of a failing image share one build; NIXERY_FAILED_BUILD_TTL=0 remembers nothing', async () => {
    const h = await harness({ NIXERY_FAILED_BUILD_TTL: '0' });
    h.base.nix.failing.add('broken');
    const answers = await Promise.all(Array.from({ length: 5 }, () => pull(h, 'broken')));
    expect(answers.map((a) => a.status)).toEqual([500, 500, 500, 500, 500]);
    expect(h.base.nix.stats.realisations).toBe(1);
    expect((await pull(h, 'broken')).status).toBe(500);
    expect(h.base.nix.stats.realisations).toBe(2);
    expect(h.stats.rememberedFailures).toBe(0);
  });

  it('missing names stay remembered as before (not found), not as build failures', async () => {
    const h = await harness();
    expect((await pull(h, 'nosuch')).status).toBe(404);
    expect((await pull(h, 'nosuch')).status).toBe(404);
    expect(h.base.nix.stats.evaluations).toBe(1);
    expect(h.stats.rememberedFailures).toBe(0);
    expect(h.recentErrors.list()).toEqual([]);
  });
});

describe('metrics', () => {
  it('reports running and queued builds, rejections by reason and remembered failures', async () => {
    const h = await harness({ NIXERY_MAX_BUILDS: '1', NIXERY_MAX_QUEUED_BUILDS: '1', NIXERY_MAX_PACKAGES: '3' });
    const metrics = createMetrics({ service: () => h.stats, nixRunning: () => h.base.nix.stats.running });
    const value = async (name: string, labels = '') => {
      const line = (await metrics.registry.metrics()).split('\n').find((l) => l.startsWith(`${name}${labels} `));
      return line === undefined ? undefined : Number(line.split(' ')[1]);
    };
    const release = gate(h, 'slow');
    const a = pull(h, 'slow/hello');
    await until('running', () => h.base.nix.stats.running === 1);
    const b = pull(h, 'slow/jq');
    await until('queued', () => h.service.admission.stats().queued === 1);
    expect((await pull(h, 'slow/htop')).status).toBe(429);
    expect((await pull(h, 'hello/htop/jq/nano')).status).toBe(403);
    expect(await value('nixery_builds_running')).toBe(1);
    expect(await value('nixery_builds_queued')).toBe(1);
    expect(await value('nixery_admission_rejections_total', '{reason="queue_full"}')).toBe(1);
    expect(await value('nixery_admission_rejections_total', '{reason="too_many_packages"}')).toBe(1);
    release();
    await Promise.all([a, b]);
    h.base.nix.failing.add('broken');
    await pull(h, 'broken');
    await pull(h, 'broken');
    await pull(h, 'broken');
    expect(await value('nixery_remembered_failures_total')).toBe(2);
    expect(await value('nixery_builds_running')).toBe(0);
    expect(await value('nixery_builds_queued')).toBe(0);
  });
});
