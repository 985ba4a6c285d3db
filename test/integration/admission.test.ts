/**
 * Build admission against a real server and real Nix: a crowd of cold pulls
 * of distinct images meets NIXERY_MAX_BUILDS and NIXERY_MAX_QUEUED_BUILDS
 * (the rest get 429 with Retry-After, warm pulls pass meanwhile), and a
 * broken image pulled again and again within NIXERY_FAILED_BUILD_TTL runs
 * Nix once.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { freshSalt } from '../helpers/nix.js';
import { startServer, type RunningServer, type ServerStats } from '../helpers/server.js';
import { until } from '../helpers/wait.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const servers: RunningServer[] = [];
afterAll(async () => {
  for (const s of servers) await s.stop();
});

async function start(env: Record<string, string>): Promise<RunningServer> {
  const s = await startServer({ env });
  servers.push(s);
  return s;
}

interface Answer {
  readonly name: string;
  readonly status: number;
  readonly retryAfter: string | null;
  readonly error: { code: string; message: string; detail: Record<string, unknown> } | undefined;
}

async function pull(server: RunningServer, name: string): Promise<Answer> {
  const res = await fetch(`${server.url}/v2/${name}/manifests/latest`, { headers: { Accept: OCI } });
  const text = await res.text();
  return {
    name,
    status: res.status,
    retryAfter: res.headers.get('retry-after'),
    error: res.status === 200 ? undefined : (JSON.parse(text) as { errors: NonNullable<Answer['error']>[] }).errors[0],
  };
}

/** Demo packages that build quickly from host files; 12 alone and their pairs give plenty of distinct images. */
const SMALL = ['hello', 'jq', 'htop', 'tools.greet', 'curl', 'git', 'nano', 'busybox', 'motd', 'bash', 'coreutils', 'moreutils'];
function distinctImages(n: number): string[] {
  const names = [...SMALL.map((p) => [p])];
  for (let i = 0; i < SMALL.length && names.length < n; i++) {
    for (let j = i + 1; j < SMALL.length && names.length < n; j++) names.push([SMALL[i]!, SMALL[j]!]);
  }
  // slow-build in each: the admitted builds stay busy long enough to watch the queue.
  return names.slice(0, n).map((ps) => ['slow-build', ...ps].join('/'));
}

describe('build slots and the queue', () => {
  it('30 concurrent cold pulls of distinct images: at most 2 build, at most 4 wait, the rest get 429 with Retry-After; warm pulls pass', async () => {
    const server = await start({
      NIXERY_MAX_BUILDS: '2',
      NIXERY_MAX_QUEUED_BUILDS: '4',
      NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt(), slowSeconds: 6 }),
    });
    // Built before the crowd: pulled again while the queue is full.
    expect((await pull(server, 'hello')).status).toBe(200);

    const samples: ServerStats[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.push(await server.stats());
        await new Promise((r) => setTimeout(r, 25));
      }
    })();

    const images = distinctImages(30);
    expect(new Set(images).size).toBe(30);
    const crowd = Promise.all(images.map((name) => pull(server, name)));
    await until('the queue to fill', async () => {
      const s = await server.stats();
      return s.buildsRunning === 2 && s.buildsQueued === 4;
    });
    // While the builds run and wait: warm pulls are answered, and never refused.
    const warm = await Promise.all(Array.from({ length: 10 }, () => pull(server, 'hello')));
    expect(warm.map((a) => a.status)).toEqual(Array(10).fill(200));
    // A pull of an image being built joins it: never refused either (the API lists the running builds).
    const { running } = (await (await fetch(`${server.url}/api/builds`)).json()) as { running: { image: string; state: string }[] };
    const building = running.filter((b) => b.state === 'running').map((b) => b.image.replace(/:latest$/, ''));
    expect(building).toHaveLength(2);
    expect(building.every((b) => b.startsWith('slow-build/'))).toBe(true);
    expect((await server.stats()).buildsQueued).toBe(4);
    const joiner = pull(server, building[0]!);

    const answers = await crowd;
    expect((await joiner).status).toBe(200);
    sampling = false;
    await sampler;

    const refused = answers.filter((a) => a.status === 429);
    const admitted = answers.filter((a) => a.status !== 429);
    expect(admitted.map((a) => a.status)).toEqual(Array(6).fill(200));
    expect(refused).toHaveLength(24);
    for (const a of refused) {
      expect(a.retryAfter).toMatch(/^[1-9]\d*$/);
      expect(a.error!.code).toBe('TOOMANYREQUESTS');
      expect(a.error!.message).toContain('NIXERY_MAX_QUEUED_BUILDS=4');
      expect(a.error!.detail).toMatchObject({ maxBuilds: 2, maxQueuedBuilds: 4 });
    }

    expect(samples.length).toBeGreaterThan(10);
    expect(Math.max(...samples.map((s) => s.buildsRunning))).toBe(2);
    expect(Math.max(...samples.map((s) => s.buildsQueued))).toBe(4);
    const after = await server.stats();
    expect(after).toMatchObject({ buildsRunning: 0, buildsQueued: 0, rejectedQueueFull: 24, builds: 7, buildFailures: 0 });
    expect(after.singleFlightWaiters).toBeGreaterThanOrEqual(1);

    // The queue is empty again: a refused image is admitted on a retry (and now built quickly: slow-build is in the store).
    expect((await pull(server, refused[0]!.name)).status).toBe(200);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/^nixery_admission_rejections_total\{reason="queue_full"\} 24$/m);
    expect(metrics).toMatch(/^nixery_builds_queued 0$/m);
  });
});

describe('remembered failures', () => {
  it('broken-build pulled 10 times within NIXERY_FAILED_BUILD_TTL runs Nix once and is listed once on the start page', async () => {
    const server = await start({ NIXERY_FAILED_BUILD_TTL: '300', NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) });
    const before = await server.stats();
    const answers: Answer[] = [];
    for (let i = 0; i < 10; i++) answers.push(await pull(server, 'broken-build'));
    const after = await server.stats();
    expect(after.nix.realisations - before.nix.realisations).toBe(1);
    expect(after.nix.evaluations - before.nix.evaluations).toBe(1);
    expect(answers.map((a) => a.status)).toEqual(Array(10).fill(500));
    const [first, ...rest] = answers;
    expect(first!.error!.message).toBe('image build failed');
    expect(first!.error!.detail['remembered']).toBeUndefined();
    for (const a of rest) {
      expect(a.error!.code).toBe('UNKNOWN');
      expect(a.error!.message).toMatch(/^image build failed \(remembered: failed \d+ s ago, not built again for another \d+ s\)$/);
      expect(a.error!.detail).toMatchObject({ remembered: true });
      expect(String(a.error!.detail['stderr'])).toContain('broken-build: this package fails on purpose');
      expect(Number(a.retryAfter)).toBeGreaterThan(0);
      expect(Number(a.retryAfter)).toBeLessThanOrEqual(300);
    }
    expect(after).toMatchObject({ builds: 1, buildFailures: 1, rememberedFailures: 9 });
    // Listed once among the failures (the recent builds list it once more, as a build).
    const page = await (await fetch(`${server.url}/`)).text();
    const failures = page.slice(page.indexOf('Recent build failures'));
    expect(failures.split('broken-build:latest').length - 1).toBe(1);
  });
});
