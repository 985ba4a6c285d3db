/**
 * Package meta through the real Nix: prepare-image/resolve-names.nix reads
 * mainProgram, license, homepage and description from the package set, and
 * NixRunner.resolve carries them on the resolved packages.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { demoSource, makeRunner } from '../helpers/nix.js';

describe('NixRunner.resolve: meta', () => {
  const runner = makeRunner();

  it('gives the meta of hello, jq, htop and bashInteractive', async () => {
    const r = await runner.resolve(demoSource, ['hello', 'jq', 'htop', 'bashinteractive'], 'x86_64-linux');
    expect(r.map((p) => [p.name, p.meta])).toEqual([
      ['hello', {
        mainProgram: 'hello',
        license: 'GPL-3.0-or-later',
        homepage: 'https://www.gnu.org/software/hello/',
        description: 'Prints the greeting from nix/demo-pkgs/greeting.txt',
      }],
      ['jq', { mainProgram: 'jq', license: 'MIT', homepage: 'https://jqlang.github.io/jq/', description: 'Command-line JSON processor' }],
      ['htop', { mainProgram: 'htop', license: 'GPL-2.0-only', homepage: 'https://htop.dev/', description: 'Interactive process viewer' }],
      ['bashinteractive', {
        mainProgram: 'bash',
        license: 'GPL-3.0-or-later',
        homepage: 'https://www.gnu.org/software/bash/',
        description: 'GNU Bourne-Again SHell',
      }],
    ]);
  });

  it('gives no meta for a package whose meta is empty (glibc) or absent (motd)', async () => {
    const r = await runner.resolve(demoSource, ['glibc', 'motd'], 'x86_64-linux');
    for (const p of r) expect(p).not.toHaveProperty('meta');
  });

  it('joins a list of licenses with AND: spdxId, else shortName', async () => {
    const r = await runner.resolve(demoSource, ['acl', '7zip'], 'x86_64-linux');
    expect(r.map((p) => p.meta?.license)).toEqual([
      'GPL-2.0-or-later AND LGPL-2.1-or-later',
      // unfreeRedistributable has no spdxId, as in nixpkgs
      'LGPL-2.1-or-later AND unfreeRedistributable',
    ]);
  });

  it('gives the same meta for aarch64-linux', async () => {
    const [x86, arm] = await Promise.all([
      runner.resolve(demoSource, ['hello', 'acl'], 'x86_64-linux'),
      runner.resolve(demoSource, ['hello', 'acl'], 'aarch64-linux'),
    ]);
    expect(arm.map((p) => p.meta)).toEqual(x86.map((p) => p.meta));
    expect(arm[0]!.drv).not.toBe(x86[0]!.drv);
  });

  it('keeps meta out of the derivations (so it never changes a store path)', async () => {
    for (const system of ['x86_64-linux', 'aarch64-linux']) {
      const [hello] = await runner.resolve(demoSource, ['hello'], system);
      const drv = await readFile(hello!.drv, 'utf8');
      expect(drv).toContain('Derive(');
      expect(drv).not.toContain('www.gnu.org/software/hello');
      expect(drv).not.toContain('GPL-3.0-or-later');
      expect(drv).not.toContain('mainProgram');
    }
  });
});

describe('NixRunner.resolve: meta that is broken in every way never fails a name', () => {
  const runner = makeRunner();
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'nixery-meta-'));
    await writeFile(
      path.join(dir, 'default.nix'),
      `{ system ? builtins.currentSystem, ... }:
let mk = name: derivation { inherit name system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }; in
{
  throwingMeta = mk "a" // { meta = throw "no meta"; };
  badFields = mk "b" // { meta = {
    mainProgram = throw "x";
    license = [ { spdxId = "MIT"; } { free = false; } ];   # an entry with no name: no license at all
    homepage = [ "https://example.org" ];
    description = { text = "a set"; };
  }; };
  stringMeta = mk "c" // { meta = "not a set"; };
  partly = mk "d" // { meta = { mainProgram = 3; license = "BSD-3-Clause"; homepage = ""; description = "fine"; }; };
  fullNameOnly = mk "e" // { meta = { license = { spdxId = null; fullName = "Some License"; }; }; };
  throwingLicense = mk "f" // { meta = { license = [ (throw "t") ]; mainProgram = "f"; }; };
  noMeta = mk "g";
}
`,
    );
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('resolves every name and keeps only the string fields that evaluate', async () => {
    const names = ['throwingMeta', 'badFields', 'stringMeta', 'partly', 'fullNameOnly', 'throwingLicense', 'noMeta'];
    const r = await runner.resolve({ srcType: 'path', path: dir }, names, 'x86_64-linux');
    expect(r.map((p) => p.name)).toEqual(names);
    expect(Object.fromEntries(r.map((p) => [p.name, p.meta ?? null]))).toEqual({
      throwingMeta: null,
      badFields: null,
      stringMeta: null,
      partly: { license: 'BSD-3-Clause', description: 'fine' },
      fullNameOnly: { license: 'Some License' },
      throwingLicense: { mainProgram: 'f' },
      noMeta: null,
    });
  });
});
