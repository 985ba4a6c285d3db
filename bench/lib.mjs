// What the bench scripts share: a server of this checkout (dist/launch.cjs)
// on loopback serving the demo package set, and waiting for it to listen.
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * Starts the server on 127.0.0.1, any port, with the demo package set and
 * `env` on top, in its own process group (a group kill reaches the Nix
 * processes it started).
 */
export function spawnDemoServer(env) {
  return spawn(process.execPath, [path.join(ROOT, 'dist/launch.cjs')], {
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? tmpdir(),
      NIX_CONFIG: 'substituters =',
      PORT: '0',
      NIXERY_HOST: '127.0.0.1',
      NIXERY_PKGS_PATH: path.join(ROOT, 'nix/demo-pkgs'),
      NIXERY_OFFLINE: 'true',
      ...env,
    },
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/**
 * Resolves with the port from the server's "listening" log line; every
 * other stdout line goes to `onLine`. Rejects, with the end of its stderr,
 * when it exits first or does not listen within `timeoutMs`.
 */
export function listeningPort(child, { onLine = () => {}, timeoutMs = 60_000 } = {}) {
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-8000)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start within ${timeoutMs / 1000} s:\n${stderr}`)), timeoutMs);
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      for (let i; (i = buf.indexOf('\n')) >= 0; ) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.includes('"msg":"listening"')) {
          clearTimeout(timer);
          resolve(JSON.parse(line).port);
        } else onLine(line);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before listening:\n${stderr}`));
    });
  });
}
