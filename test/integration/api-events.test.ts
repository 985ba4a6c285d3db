/**
 * Build progress from a real server with real Nix: while `shell/htop` is
 * built cold, the API reports Nix's derivations (done of expected) and the
 * layers; a client that connects to a slow build's event stream mid-build
 * gets the current phase first; 200 event-stream clients at once are all
 * served, their sockets go away when they do (file descriptors counted in
 * /proc), and the rest are closed cleanly when the server shuts down.
 */
import http from 'node:http';
import { readdir } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { freshSalt } from '../helpers/nix.js';
import { startServer, type RunningServer } from '../helpers/server.js';
import { until } from '../helpers/wait.js';

let servers: RunningServer[] = [];
afterEach(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  servers = [];
});

async function server(env: Record<string, string>) {
  const s = await startServer({ env });
  servers.push(s);
  return s;
}

interface View {
  id: string;
  image: string;
  state: string;
  progress: { phase: string; fraction: number; derivations?: { done: number; expected: number; building?: string }; layers?: { done: number; total: number }; log: string[] };
}

const fdCount = async (pid: number) => (await readdir(`/proc/${pid}/fd`)).length;

/** An event-stream client on a plain socket: its states as they come, and a way to hang up. */
function sseClient(url: string): { states: View[]; opened: Promise<void>; ended: Promise<void>; close(): void } {
  const states: View[] = [];
  let req!: http.ClientRequest;
  let onOpen!: () => void;
  let onEnd!: () => void;
  const opened = new Promise<void>((r) => (onOpen = r));
  const ended = new Promise<void>((r) => (onEnd = r));
  req = http.get(url, { agent: false }, (res) => {
    let buf = '';
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split('\n').find((l) => l.startsWith('data: '));
        if (/^event: state$/m.test(block) && data) {
          states.push(JSON.parse(data.slice(6)) as View);
          if (states.length === 1) onOpen();
        }
      }
    });
    res.on('end', onEnd);
    res.on('close', onEnd);
  });
  req.on('error', () => onEnd());
  return { states, opened, ended, close: () => req.destroy() };
}

async function runningBuild(s: RunningServer, image: string): Promise<View> {
  let found: View | undefined;
  await until(`a running build of ${image}`, async () => {
    const { running } = (await (await fetch(`${s.url}/api/builds`)).json()) as { running: View[] };
    found = running.find((b) => b.image.startsWith(image));
    return found !== undefined;
  });
  return found!;
}

describe('build progress from real Nix', () => {
  it('a cold build of shell/htop reports Nix\'s derivations done of expected, then layer k of n, to done', async () => {
    const s = await server({ NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) });
    const pull = fetch(`${s.url}/v2/shell/htop/manifests/latest`);
    const b = await runningBuild(s, 'shell/htop:latest');
    const client = sseClient(`${s.url}/api/builds/${b.id}/events`);
    expect((await pull).status).toBe(200);
    await client.ended;
    const phases = [...new Set(client.states.map((v) => v.progress.phase))];
    expect(phases.at(-1)).toBe('done');
    const counts = client.states.map((v) => v.progress.derivations).filter((d) => d !== undefined);
    expect(counts.length).toBeGreaterThan(0);
    const last = counts.at(-1)!;
    expect(last.expected).toBeGreaterThanOrEqual(5);
    expect(last.done).toBe(last.expected);
    expect(client.states.some((v) => v.progress.derivations?.building !== undefined)).toBe(true);
    const final = client.states.at(-1)!;
    expect(final.progress.layers!.done).toBe(final.progress.layers!.total);
    expect(final.progress.fraction).toBe(1);
  });
});

describe('event streams', () => {
  it('a client connecting mid-build gets the current phase first; 200 clients are served, hang up without leaking, and are closed on shutdown', async () => {
    const s = await server({ NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt(), slowSeconds: 30 }), NIXERY_SHUTDOWN_GRACE_SECONDS: '5' });
    let pullSettled = false;
    const pull = fetch(`${s.url}/v2/slow-chatty-build/manifests/latest`)
      .catch(() => undefined)
      .finally(() => (pullSettled = true));
    const b = await runningBuild(s, 'slow-chatty-build:latest');
    // Let it get into Nix's build, then connect: the first event is where it is now.
    await until('the slow build printing', async () => {
      const { running } = (await (await fetch(`${s.url}/api/builds`)).json()) as { running: View[] };
      return running[0]?.progress.phase === 'realise' && running[0].progress.log.length > 0;
    }, 30_000);
    const first = sseClient(`${s.url}/api/builds/${b.id}/events`);
    await first.opened;
    expect(first.states[0]!.progress.phase).toBe('realise');
    expect(first.states[0]!.progress.log.length).toBeGreaterThan(0);

    const baseline = await fdCount(s.pid);
    const clients = Array.from({ length: 200 }, () => sseClient(`${s.url}/api/builds/${b.id}/events`));
    await Promise.all(clients.map((c) => c.opened));
    expect(clients.every((c) => c.states[0]?.id === b.id)).toBe(true);
    const connected = await fdCount(s.pid);
    expect(connected - baseline).toBeGreaterThanOrEqual(200);

    // Half hang up: their sockets go.
    for (const c of clients.slice(0, 100)) c.close();
    await until('the server closing hung-up streams', async () => (await fdCount(s.pid)) <= baseline + 100 + 5, 10_000);

    // Shutdown: every remaining stream ends at once, while the build still
    // has its grace period (its pull is still waiting): the streams do not
    // hold the server up until the build is aborted and connections cut.
    s.process.kill('SIGTERM');
    await Promise.all([first, ...clients.slice(100)].map((c) => c.ended));
    expect(pullSettled).toBe(false);
    expect(s.process.exitCode).toBeNull();
    // Then the build's grace ends, it is aborted, and the server exits cleanly.
    const code = await new Promise<number | null>((resolve) => {
      if (s.process.exitCode !== null) resolve(s.process.exitCode);
      else s.process.once('exit', (c) => resolve(c));
    });
    expect(code).toBe(0);
    await pull;
  });
});
