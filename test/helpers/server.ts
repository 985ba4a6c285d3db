/**
 * Starts the compiled server (`node dist/launch.cjs`, as `npm start` does) on
 * 127.0.0.1 and a free port chosen by the OS, waits until it listens, and
 * stops it by PID. Every server a test starts is stopped by that test.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { NixRunnerStats } from '../../src/nix/runner.js';
import type { ImageServiceStats } from '../../src/service/observers.js';
import { DEMO_PKGS, ROOT } from './nix.js';

export interface RunningServer {
  readonly url: string;
  /** host:port, as used in image references. */
  readonly host: string;
  readonly pid: number;
  readonly storagePath: string;
  readonly logs: string[];
  readonly process: ChildProcess;
  stop(): Promise<number | null>;
  /** Counters from /debug/stats. */
  stats(): Promise<ServerStats>;
}

/** What /debug/stats answers: the service's counters plus the Nix runner's. */
export type ServerStats = ImageServiceStats & { nix: NixRunnerStats };

export async function scratchDir(prefix: string): Promise<{ path: string; remove: () => Promise<void> }> {
  const p = await mkdtemp(path.join(tmpdir(), prefix));
  return { path: p, remove: () => rm(p, { recursive: true, force: true }) };
}

/** The environment of a server on loopback, any free port, serving the demo package set from `storagePath`. */
export function demoServerEnv(storagePath: string): Record<string, string> {
  return {
    PORT: '0',
    NIXERY_HOST: '127.0.0.1',
    NIXERY_PKGS_PATH: DEMO_PKGS,
    STORAGE_PATH: storagePath,
    NIXERY_OFFLINE: 'true',
    NIXERY_SHUTDOWN_GRACE_SECONDS: '2',
  };
}

export async function startServer(
  opts: {
    env?: Record<string, string>;
    storagePath?: string;
    /**
     * A command that execs its arguments (the server's argv follows it),
     * such as `unshare ... sh -c '...; exec "$@"'`. It must exec, not fork:
     * stop() signals the PID it started.
     */
    wrap?: readonly string[];
  } = {},
): Promise<RunningServer> {
  // A storage directory made here is removed again by stop(); one passed in belongs to the test.
  const own = opts.storagePath === undefined ? await scratchDir('nixery-store-') : undefined;
  const storagePath = opts.storagePath ?? own!.path;
  const argv = [...(opts.wrap ?? []), process.execPath, path.join(ROOT, 'dist/launch.cjs')];
  const child = spawn(argv[0]!, argv.slice(1), {
    env: {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      NIX_CONFIG: 'substituters =',
      ...demoServerEnv(storagePath),
      ...opts.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: string[] = [];
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const port = await waitForListening(child, logs);
  const host = `127.0.0.1:${port}`;
  return {
    url: `http://${host}`,
    host,
    pid: child.pid!,
    storagePath,
    logs,
    process: child,
    async stop() {
      let code = child.exitCode;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
        code = await exited;
        clearTimeout(timer);
      }
      await own?.remove();
      return code;
    },
    async stats() {
      return (await (await fetch(`http://${host}/debug/stats`)).json()) as ServerStats;
    },
  };
}

/**
 * Waits for the server's `"msg":"listening"` log line on the child's stdout
 * and returns its port; everything the child prints is kept in `logs`.
 */
export function waitForListening(child: ChildProcess, logs: string[] = [], timeoutMs = 30_000): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start within ${timeoutMs / 1000} s:\n${logs.join('\n')}`)), timeoutMs);
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        logs.push(line);
        if (line.includes('"msg":"listening"')) {
          clearTimeout(timer);
          resolve((JSON.parse(line) as { port: number }).port);
        }
      }
    });
    child.stderr!.on('data', (d: Buffer) => logs.push(d.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code} before listening:\n${logs.join('\n')}`));
    });
  });
}

/**
 * Runs the server with exactly `env` (plus PATH) when it is expected not to
 * start; returns its exit code and what it printed on stderr. Killed after
 * 60 s if it does start after all.
 */
export async function runUntilExit(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/launch.cjs')], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  clearTimeout(timer);
  return { code, stderr };
}
