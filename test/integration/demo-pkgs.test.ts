/**
 * The offline demo package set builds from Debian binaries in a fresh part
 * of the store (a new salt gives every package new store paths), and a
 * second build of the same paths is a no-op.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { DEMO_PKGS, buildDemo, freshSalt } from '../helpers/nix.js';

const run = promisify(execFile);
const ATTRS = [
  'glibc', 'ncurses', 'bash', 'bashInteractive', 'coreutils', 'busybox', 'hello', 'htop', 'jq', 'git', 'curl', 'nano',
  'moreutils', 'cacert', 'iana-etc', 'tools.greet', 'extraPackages.prettyJson', '_7zip', 'large-blob', 'motd',
];

describe('nix/demo-pkgs', () => {
  it('builds every package offline with fresh store paths, then rebuilds nothing', async () => {
    const args = [DEMO_PKGS, '--no-out-link', '--argstr', 'salt', freshSalt(), '--arg', 'largeBlobMiB', '1', ...ATTRS.flatMap((a) => ['-A', a])];
    const first = await run('nix-build', args, { maxBuffer: 1 << 24 });
    expect(first.stderr).toMatch(/these \d+ derivations will be built/);
    const outs = first.stdout.trim().split('\n');
    expect(outs).toHaveLength(ATTRS.length);
    const second = await run('nix-build', args, { maxBuffer: 1 << 24 });
    expect(second.stdout.trim().split('\n')).toEqual(outs);
    expect(second.stderr).not.toMatch(/will be built|building/);
    // The programs run from the store, loading the demo glibc.
    const out = (attr: string) => outs[ATTRS.indexOf(attr)]!;
    expect((await run(`${out('htop')}/bin/htop`, ['--version'])).stdout).toMatch(/^htop \d/);
    expect((await run(`${out('tools.greet')}/bin/greet`, ['test'])).stdout).toBe('Hello from the fixture, test!\n');
    expect((await run(`${out('_7zip')}/bin/7z`)).stdout).toContain('7-Zip');
    const interp = (await run('patchelf', ['--print-interpreter', `${out('htop')}/bin/htop`])).stdout.trim();
    expect(interp).toBe(`${out('glibc')}/lib/ld-linux-x86-64.so.2`);
  });

  it('builds python3 that runs from the store with its stdlib and extension modules', async () => {
    const py = (await buildDemo(['python3'], { salt: freshSalt() }))[0]!;
    expect(py).toMatch(/^\/nix\/store\/[a-z0-9]{32}-python3-3\.11$/);
    // A clean environment (no PYTHONHOME/PYTHONPATH from the host), and no
    // bytecode: run as root on a daemonless store, Python would otherwise
    // write __pycache__ into the store path.
    const env = { PATH: '/usr/bin:/bin', PYTHONDONTWRITEBYTECODE: '1' };
    const script = [
      'import json, os, sys, zlib, hashlib, ssl, _json, _ssl',
      'print(json.dumps({"version": sys.version, "prefix": sys.prefix, "exec_prefix": sys.exec_prefix,',
      '  "path": [p for p in sys.path if p], "files": [json.__file__, _json.__file__, hashlib.__file__, _ssl.__file__],',
      '  "zlib": zlib.decompress(zlib.compress(b"nixery " * 100)).decode()[:6], "sha256": hashlib.sha256(b"abc").hexdigest()}))',
    ].join('\n');
    let sslModule = '';
    for (const bin of ['python3', 'python3.11']) {
      const { stdout } = await run(`${py}/bin/${bin}`, ['-B', '-c', script], { env });
      const r = JSON.parse(stdout) as { version: string; prefix: string; exec_prefix: string; path: string[]; files: string[]; zlib: string; sha256: string };
      expect(r.version).toMatch(/^3\.11\./);
      expect(r.prefix).toBe(py);
      expect(r.exec_prefix).toBe(py);
      for (const p of [...r.path, ...r.files]) expect(p.startsWith(`${py}/lib/`)).toBe(true);
      expect(r.path).toContain(`${py}/lib/python3.11`);
      expect(r.zlib).toBe('nixery');
      expect(r.sha256).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
      // _ssl is an extension module patched to load OpenSSL from the closure.
      sslModule = r.files[3]!;
    }
    const closure = (await run('nix-store', ['-qR', py])).stdout.trim().split('\n');
    for (const dep of ['glibc-2.36', 'zlib-1.2.13', 'openssl-3.0', 'ncurses-6.4']) {
      expect(closure.some((p) => p.endsWith(`-${dep}`))).toBe(true);
    }
    expect(sslModule).toMatch(new RegExp(`^${py}/lib/python3\\.11/lib-dynload/_ssl\\..*\\.so$`));
    const rpath = (await run('patchelf', ['--print-rpath', sslModule])).stdout.trim().split(':');
    expect(rpath).toContain(`${closure.find((p) => p.endsWith('-openssl-3.0'))}/lib`);
    // Nothing byte-compiled, at build time or by the runs above.
    expect((await run('find', [py, '-name', '__pycache__', '-o', '-name', '*.pyc'])).stdout).toBe('');
  });
});
