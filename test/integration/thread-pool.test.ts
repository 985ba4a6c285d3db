/**
 * dist/launch.cjs sizes libuv's thread pool for the packer before Node
 * creates it: NIXERY_PACK_THREADS + 4 threads, an operator's
 * UV_THREADPOOL_SIZE kept. Counted in /proc/<pid>/task against the same
 * server with a pool of one (every other thread is the same in both).
 */
import { readdir } from 'node:fs/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { startServer, type RunningServer } from '../helpers/server.js';

let running: RunningServer[] = [];
afterEach(async () => {
  await Promise.all(running.map((s) => s.stop()));
  running = [];
});

async function threadsOf(env: Record<string, string>): Promise<{ threads: number; listening: Record<string, unknown> }> {
  const s = await startServer({ env });
  running.push(s);
  // The pool starts all its threads at its first use, which start-up has made.
  const threads = (await readdir(`/proc/${s.pid}/task`)).length;
  const line = s.logs.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'listening')!;
  return { threads, listening: line };
}

describe('the thread pool', () => {
  it('gets NIXERY_PACK_THREADS + 4 threads, and an operator\'s UV_THREADPOOL_SIZE is kept', async () => {
    const one = await threadsOf({ UV_THREADPOOL_SIZE: '1' });
    const three = await threadsOf({ NIXERY_PACK_THREADS: '3' });
    expect(three.threads - one.threads).toBe(3 + 4 - 1);
    expect(three.listening).toMatchObject({ packThreads: 3, threadPool: 7 });
    const kept = await threadsOf({ NIXERY_PACK_THREADS: '3', UV_THREADPOOL_SIZE: '2' });
    expect(kept.threads - one.threads).toBe(1);
    expect(kept.listening).toMatchObject({ packThreads: 3, threadPool: 2 });
  });
});
