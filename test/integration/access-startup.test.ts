/**
 * Start-up with access-control settings that cannot work: each stops the
 * server with one line naming the variable and the reason (exit 2).
 */
import { execFileSync } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { demoServerEnv, runUntilExit, scratchDir } from '../helpers/server.js';

const dirs: { remove: () => Promise<void> }[] = [];
afterAll(async () => {
  for (const d of dirs) await d.remove();
});

describe('start-up with access control', () => {
  it('stops on a non-bcrypt htpasswd entry (naming the line) and a certificate that does not match its key', async () => {
    const d = await scratchDir('nixery-access-');
    dirs.push(d);
    const htpasswd = path.join(d.path, 'htpasswd');
    execFileSync('htpasswd', ['-B', '-b', '-c', htpasswd, 'alice', 'a'], { stdio: 'ignore' });
    execFileSync('htpasswd', ['-m', '-b', htpasswd, 'bob', 'b'], { stdio: 'ignore' });
    const key1 = path.join(d.path, 'one.key');
    const key2 = path.join(d.path, 'two.key');
    const cert = path.join(d.path, 'one.crt');
    for (const k of [key1, key2]) execFileSync('openssl', ['genrsa', '-out', k, '2048'], { stdio: 'ignore' });
    execFileSync('openssl', ['req', '-x509', '-new', '-key', key1, '-out', cert, '-days', '3650', '-subj', '/CN=127.0.0.1'], { stdio: 'ignore' });
    const storage = path.join(d.path, 'storage');
    execFileSync('mkdir', ['-p', storage]);
    const { code, stderr } = await runUntilExit({
      ...demoServerEnv(storage),
      NIXERY_AUTH_HTPASSWD: htpasswd,
      NIXERY_TLS_CERT: cert,
      NIXERY_TLS_KEY: key2,
    });
    expect(code).toBe(2);
    const lines = stderr.trim().split('\n');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toBe(`nixery-ts: configuration error: NIXERY_AUTH_HTPASSWD: ${htpasswd} line 2 (user "bob") is not a bcrypt hash; write it with htpasswd -B`);
    expect(lines[1]).toMatch(new RegExp(`^nixery-ts: configuration error: NIXERY_TLS_CERT: ${cert} and ${key2} are not a usable certificate and key: .*key values mismatch`));
  });

  it('stops when the htpasswd file is missing', async () => {
    const d = await scratchDir('nixery-access-');
    dirs.push(d);
    await writeFile(path.join(d.path, 'placeholder'), '');
    const { code, stderr } = await runUntilExit({ ...demoServerEnv(d.path), NIXERY_AUTH_HTPASSWD: path.join(d.path, 'nope') });
    expect(code).toBe(2);
    expect(stderr.trim()).toBe(`nixery-ts: configuration error: NIXERY_AUTH_HTPASSWD: cannot read ${path.join(d.path, 'nope')}: ENOENT`);
  });
});
