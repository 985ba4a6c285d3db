/**
 * The offline demo package set builds from Debian binaries in a fresh part
 * of the store (a new salt gives every package new store paths), and a
 * second build of the same paths is a no-op.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { DEMO_PKGS, freshSalt } from '../helpers/nix.js';

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
});
