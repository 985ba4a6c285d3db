/**
 * The Cloud Storage emulator (test/gcs-emulator/server.mjs: firebase-tools'
 * storage emulator, in-process, offline) as a child process of the test,
 * on 127.0.0.1 and a port picked at run time, stopped by PID.
 * Install it once with `npm ci --prefix test/gcs-emulator --ignore-scripts`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';

const SERVER = path.resolve(import.meta.dirname, '../gcs-emulator/server.mjs');
const READY = /^gcs-emulator ready (http:\/\/(\S+))$/m;
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

export interface GcsEmulator {
  /** `http://127.0.0.1:<port>`: the apiEndpoint (and STORAGE_EMULATOR_HOST) for the SDK. */
  readonly url: string;
  /** `127.0.0.1:<port>` */
  readonly host: string;
  readonly port: number;
  /** Everything the current process wrote to stdout and stderr. */
  readonly log: () => string;
  /** SIGTERM (SIGKILL after 15 s) to the process; resolves once it has exited. Idempotent. */
  stop(): Promise<void>;
  /** Starts it again on the same port (stopping it first if it runs). Its objects are gone. */
  restart(): Promise<void>;
}

interface Running {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  readonly output: string[];
}

async function launch(port: number): Promise<{ running: Running; url: string; host: string }> {
  const child = spawn(process.execPath, [SERVER, '--host', '127.0.0.1', '--port', String(port)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // A test runner that dies must not leave the emulator behind.
  const onExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', onExit);
  void exited.then(() => process.removeListener('exit', onExit));
  const running = { child, exited, output };
  try {
    const m = await new Promise<RegExpExecArray>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`gcs emulator not ready within ${READY_TIMEOUT_MS} ms:\n${output.join('')}`)),
        READY_TIMEOUT_MS,
      );
      child.stdout!.on('data', (b: Buffer) => {
        output.push(b.toString());
        const ready = READY.exec(output.join(''));
        if (ready) {
          clearTimeout(timer);
          resolve(ready);
        }
      });
      child.stderr!.on('data', (b: Buffer) => output.push(b.toString()));
      child.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      void exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`gcs emulator exited with ${child.exitCode ?? child.signalCode} before it was ready:\n${output.join('')}`));
      });
    });
    return { running, url: m[1]!, host: m[2]! };
  } catch (e) {
    await stopRunning(running);
    throw e;
  }
}

async function stopRunning(r: Running): Promise<void> {
  if (r.child.exitCode !== null || r.child.signalCode !== null) return;
  r.child.kill('SIGTERM');
  const t = setTimeout(() => r.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await r.exited;
  clearTimeout(t);
}

/** Starts an emulator on `port` (0, the default, picks a free one) and waits for its ready line. */
export async function startGcsEmulator(opts: { port?: number } = {}): Promise<GcsEmulator> {
  const first = await launch(opts.port ?? 0);
  let running = first.running;
  const port = Number(new URL(first.url).port);
  return {
    url: first.url,
    host: first.host,
    port,
    log: () => running.output.join(''),
    stop: () => stopRunning(running),
    async restart() {
      await stopRunning(running);
      running = (await launch(port)).running;
    },
  };
}
