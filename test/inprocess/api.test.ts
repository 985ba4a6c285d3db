/**
 * The pages' API in-process (fake Nix runner whose builds wait on a gate the
 * test opens): running and recent builds with their progress, one build's
 * Server-Sent Events (current state first, also mid-build; ended after the
 * build, and when the server begins to shut down), the image description
 * and the Build button's endpoint with the same rights as a pull. The real
 * Nix progress and 200 clients against a real server are in
 * test/integration/api-events.test.ts.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FAKE_PACKAGES, inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

let open: InProcessRegistry[] = [];
afterEach(async () => {
  await Promise.all(open.map((r) => r.close()));
  open = [];
});

async function registry(opts: Parameters<typeof inProcessRegistry>[0] = {}) {
  const r = await inProcessRegistry(opts);
  open.push(r);
  return r;
}

function gate(r: InProcessRegistry, attr: string): () => void {
  let release!: () => void;
  r.nix.gates.set(attr, new Promise<void>((resolve) => (release = resolve)));
  return release;
}

interface View {
  id: string;
  image: string;
  state: string;
  progress: { phase: string; fraction: number; layers?: { done: number; total: number }; bytes: number; log: string[] };
  layers?: number;
  bytes?: number;
}

/** Reads SSE events from a response body until the stream ends (or `max` events). */
async function sseEvents(res: Response, max = 1000): Promise<{ event: string; data: View }[]> {
  const reader = res.body!.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  const out: { event: string; data: View }[] = [];
  while (out.length < max) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = block
        .split('\n')
        .filter((l) => l.startsWith('data: '))
        .map((l) => l.slice(6))
        .join('\n');
      if (event) out.push({ event, data: JSON.parse(data) as View });
    }
  }
  if (out.length >= max) await reader.cancel();
  return out;
}

const until = async (check: () => boolean | Promise<boolean>) => {
  for (let i = 0; i < 200 && !(await check()); i++) await new Promise((r) => setTimeout(r, 10));
  expect(await check()).toBe(true);
};

describe('/api/builds', () => {
  it('lists a running build with its phase, streams its state from the current one on, and lists it as recent when it ends', async () => {
    const r = await registry();
    const release = gate(r, 'hello');
    const pull = r.app.request('/v2/hello/manifests/latest');
    await until(async () => ((await (await r.app.request('/api/builds')).json()) as { running: View[] }).running.length === 1);
    const { running } = (await (await r.app.request('/api/builds')).json()) as { running: View[]; recent: View[] };
    const b = running[0]!;
    expect(b).toMatchObject({ image: 'hello:latest', state: 'running' });
    expect(b.progress.phase).toBe('realise');

    // Connecting mid-build: the first event is the current state.
    const res = await r.app.request(`/api/builds/${b.id}/events`);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const events = sseEvents(res);
    release();
    expect((await pull).status).toBe(200);
    const got = await events;
    expect(got[0]).toMatchObject({ event: 'state', data: { id: b.id, state: 'running', progress: { phase: 'realise' } } });
    const last = got.at(-1)!.data;
    expect(last.state).toBe('succeeded');
    expect(last.progress.phase).toBe('done');
    expect(last.progress.fraction).toBe(1);
    expect(last.layers).toBeGreaterThan(0);
    expect(last.progress.layers!.done).toBe(last.progress.layers!.total);
    // The fraction never goes back.
    const fractions = got.map((e) => e.data.progress.fraction);
    expect(fractions).toEqual([...fractions].sort((a, b2) => a - b2));

    const after = (await (await r.app.request('/api/builds')).json()) as { running: View[]; recent: View[] };
    expect(after.running).toEqual([]);
    expect(after.recent.map((v) => [v.id, v.state])).toEqual([[b.id, 'succeeded']]);
    // A stream opened after the end gets the final state and ends.
    const late = await sseEvents(await r.app.request(`/api/builds/${b.id}/events`));
    expect(late.map((e) => e.data.state)).toEqual(['succeeded']);
  });

  it('an unknown build is a 404 registry error; a failed build ends its stream with the error', async () => {
    const r = await registry({ packages: { ...FAKE_PACKAGES, broken: { bin: ['b'] } } });
    const missing = await r.app.request('/api/builds/nope/events');
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('NOT_FOUND');
    r.nix.failing.add('broken');
    const release = gate(r, 'broken');
    const pull = r.app.request('/v2/broken/manifests/latest');
    await until(async () => ((await (await r.app.request('/api/builds')).json()) as { running: View[] }).running.length === 1);
    const { running } = (await (await r.app.request('/api/builds')).json()) as { running: View[] };
    const events = sseEvents(await r.app.request(`/api/builds/${running[0]!.id}/events`));
    release();
    expect((await pull).status).toBe(500);
    const last = (await events).at(-1)!.data as View & { error?: string };
    expect(last.state).toBe('failed');
    expect(last.error).toMatch(/nix-store --realise failed/);
  });

  it('event streams end when the server begins to shut down', async () => {
    const closing = new AbortController();
    const r = await registry({ closing: closing.signal });
    const release = gate(r, 'hello');
    const pull = r.app.request('/v2/hello/manifests/latest');
    await until(async () => ((await (await r.app.request('/api/builds')).json()) as { running: View[] }).running.length === 1);
    const { running } = (await (await r.app.request('/api/builds')).json()) as { running: View[] };
    const streams = await Promise.all([1, 2, 3].map(() => r.app.request(`/api/builds/${running[0]!.id}/events`)));
    const reading = streams.map((s) => sseEvents(s));
    closing.abort();
    const ended = await Promise.all(reading);
    for (const e of ended) expect(e.map((x) => x.data.state)).toEqual(['running']);
    release();
    await pull;
  });
});

describe('/api/images', () => {
  it('says an image is not built, starts its build like a pull, then describes it: layers with store paths, labels, SBOM', async () => {
    const r = await registry();
    const before = (await (await r.app.request('/api/images/hello')).json()) as { built: boolean; platforms: unknown[]; canonicalName: string };
    expect(before).toMatchObject({ built: false, platforms: [], canonicalName: 'hello' });
    const release = gate(r, 'hello');
    const started = await r.app.request('/api/images/hello/build', { method: 'POST' });
    expect(started.status).toBe(202);
    const { id } = (await started.json()) as { id: string };
    expect(((await (await r.app.request('/api/images/hello')).json()) as { building?: string }).building).toBe(id);
    release();
    await until(async () => ((await (await r.app.request('/api/images/hello')).json()) as { built: boolean }).built);
    const info = (await (await r.app.request('/api/images/hello')).json()) as {
      platforms: {
        platform: string;
        manifest: { digest: string; size: number };
        layers: { digest: string; size: number; paths: string[] }[];
        totalBytes: number;
        labels: Record<string, string>;
        sbom?: { artifact: string; blob: string };
      }[];
    };
    const p = info.platforms[0]!;
    expect(p.platform).toBe('linux/amd64');
    const manifest = (await (await r.app.request(`/v2/hello/manifests/${p.manifest.digest}`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } })).json()) as {
      layers: { digest: string; size: number }[];
    };
    expect(p.layers.map((l) => [l.digest, l.size])).toEqual(manifest.layers.map((l) => [l.digest, l.size]));
    expect(p.totalBytes).toBe(manifest.layers.reduce((n, l) => n + l.size, 0));
    expect(p.layers.flatMap((l) => l.paths).some((x) => /hello-1\.0$/.test(x))).toBe(true);
    expect(p.labels['org.opencontainers.image.title']).toBe('hello');
    expect(p.sbom).toBeDefined();
    // Built: the button's endpoint says so and starts nothing.
    const again = await r.app.request('/api/images/hello/build', { method: 'POST' });
    expect(again.status).toBe(200);
    expect(await again.json()).toEqual({ built: true });
  });

  it('a client that may not build gets the registry\'s 401 from the Build endpoint, as from a pull', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'nixery-api-auth-'));
    const file = path.join(dir, 'htpasswd');
    execFileSync('htpasswd', ['-B', '-b', '-c', file, 'alice', 'secret'], { stdio: 'ignore' });
    const r = await registry({ htpasswd: file, env: { NIXERY_ANONYMOUS: 'pull' } });
    const res = await r.app.request('/api/images/hello/build', { method: 'POST' });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('UNAUTHORIZED');
    // With NIXERY_ANONYMOUS=none nothing under /api/ is shown anonymously.
    const closed = await registry({ htpasswd: file, env: { NIXERY_ANONYMOUS: 'none' } });
    expect((await closed.app.request('/api/builds')).status).toBe(401);
    expect((await closed.app.request('/api/images/hello')).status).toBe(401);
    await rm(dir, { recursive: true, force: true });
  });
});

describe('/api/packages', () => {
  it('answers building while the revision\'s index is computed, then ranked results with the image-name spelling', async () => {
    const r = await registry({ packages: { ...FAKE_PACKAGES, lighttpd: { bin: ['lighttpd'] }, _7zip: { bin: ['7z'] } } });
    const first = (await (await r.app.request('/api/packages?q=ht')).json()) as { state: string; results: unknown[] };
    expect(first).toEqual({ state: 'building', results: [] });
    let got: { state: string; results: { attr: string; name: string }[] } = { state: 'building', results: [] };
    await until(async () => {
      got = (await (await r.app.request('/api/packages?q=ht')).json()) as typeof got;
      return got.state === 'ready';
    });
    expect(got.results[0]!.attr).toBe('htop');
    expect(got.results.map((e) => e.attr)).toContain('lighttpd');
    const zip = (await (await r.app.request('/api/packages?q=7zip')).json()) as typeof got;
    expect(zip.results[0]).toMatchObject({ attr: '_7zip', name: '7zip' });
    expect(r.nix.stats.evaluations).toBeGreaterThan(0);
  });
});
