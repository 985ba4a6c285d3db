/**
 * The package index against the real Nix: prepare-image/list-packages.nix on
 * the demo package set agrees with resolve-names.nix (what it lists resolves,
 * by its real name and by its image-name spelling; what resolves is listed),
 * skips what throws and what is not a derivation, instantiates nothing, and
 * handles the corners of a package set; PackageIndexes over memory storage.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PackagesNotFoundError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { PackageEntry } from '../../src/nix/runner.js';
import { imageNameOf } from '../../src/packages/index.js';
import { PackageIndexes } from '../../src/packages/indexes.js';
import { MemoryStorage } from '../../src/storage/memory.js';
import { DEMO_PKGS, demoSource, freshSalt, makeRunner } from '../helpers/nix.js';

const SYSTEM = 'x86_64-linux';
const run = promisify(execFile);

async function evalJson<T>(expr: string): Promise<T> {
  const { stdout } = await run('nix-instantiate', ['--eval', '--strict', '--json', '--expr', expr], { maxBuffer: 1 << 24 });
  return JSON.parse(stdout) as T;
}

/** The names of `names` that resolve-names.nix resolves (the rest come back as PackagesNotFoundError). */
async function resolvable(runner: ReturnType<typeof makeRunner>, source: Parameters<typeof runner.resolve>[0], names: string[]) {
  const missing = await runner.resolve(source, names, SYSTEM).then(
    () => [] as { name: string; kind: string }[],
    (e: unknown) => {
      if (!(e instanceof PackagesNotFoundError)) throw e;
      return e.packages.map((p) => ({ name: p.name, kind: p.kind }));
    },
  );
  const gone = new Set(missing.map((m) => m.name));
  return { ok: names.filter((n) => !gone.has(n)), missing };
}

const attrsOf = (entries: readonly PackageEntry[]) => entries.map((e) => e.attr);

describe('list-packages.nix on the demo package set', () => {
  const runner = makeRunner();
  let entries: PackageEntry[];
  let listMs: number;

  beforeAll(async () => {
    const t = performance.now();
    entries = await runner.listPackages(demoSource, SYSTEM);
    listMs = performance.now() - t;
  });

  it('lists in a fraction of a second, one evaluation', () => {
    expect(entries.length).toBeGreaterThan(30);
    expect(listMs).toBeLessThan(5_000);
    expect(runner.stats.evaluations).toBe(1);
    console.log(`list-packages on demo-pkgs: ${entries.length} entries in ${listMs.toFixed(0)} ms`);
  });

  it('lists only attributes that resolve, by their real name and by their image-name spelling, to themselves', async () => {
    const attrs = attrsOf(entries);
    const byName = await runner.resolve(demoSource, attrs, SYSTEM);
    expect(byName.map((p) => p.attr)).toEqual(attrs);
    const spellings = attrs.map(imageNameOf);
    const bySpelling = await runner.resolve(demoSource, spellings, SYSTEM);
    expect(bySpelling.map((p) => p.attr)).toEqual(attrs);
    expect(spellings).toContain('7zip');
    expect(spellings).toContain('casefixture.inner.helloworld');
  });

  it('lists every top-level attribute that resolves, and nothing else at the top', async () => {
    const top = await evalJson<string[]>(`builtins.attrNames (import ${DEMO_PKGS} {})`);
    const { ok, missing } = await resolvable(runner, demoSource, top);
    expect(attrsOf(entries).filter((a) => !a.includes('.')).sort()).toEqual([...ok].sort());
    // what is left out, and why resolve-names refuses it
    expect(missing).toEqual(
      expect.arrayContaining([
        { name: 'notAPackage', kind: 'not_a_derivation' },
        { name: 'lib', kind: 'not_a_derivation' },
        { name: 'removedPackage', kind: 'not_found' },
        { name: 'tools', kind: 'not_a_derivation' },
      ]),
    );
  });

  it('lists every derivation of the nested sets marked recurseForDerivations, except names no image can spell', async () => {
    // Written independently of list-packages.nix: every derivation under a
    // recursable set, with no regard to names.
    const nested = await evalJson<string[]>(`
      let
        pkgs = import ${DEMO_PKGS} {};
        isDrv = v: builtins.isAttrs v && (v.type or null) == "derivation";
        walk = prefix: s: builtins.concatMap (n:
          let v = s.\${n}; p = prefix ++ [ n ]; in
          if isDrv v then [ (builtins.concatStringsSep "." p) ]
          else if builtins.isAttrs v && (v.recurseForDerivations or false) then walk p v
          else [ ]) (builtins.attrNames s);
      in builtins.concatMap (n:
        let v = pkgs.\${n}; in
        if builtins.isAttrs v && !(isDrv v) && (v.recurseForDerivations or false) then walk [ n ] v else [ ])
        (builtins.filter (n: (builtins.tryEval pkgs.\${n}).success) (builtins.attrNames pkgs))`);
    expect(nested).toEqual(expect.arrayContaining(['tools.greet', 'extraPackages.prettyJson', 'caseFixture.Inner.HelloWorld', 'caseFixture.Greet']));
    // caseFixture.Greet and caseFixture.GREET can only be spelled
    // "casefixture.greet", which is ambiguous: neither is suggested.
    const ambiguous = ['caseFixture.GREET', 'caseFixture.Greet'];
    await expect(runner.resolve(demoSource, ['casefixture.greet'], SYSTEM)).rejects.toMatchObject({
      packages: [{ name: 'casefixture.greet', kind: 'ambiguous', candidates: ambiguous }],
    });
    expect(attrsOf(entries).filter((a) => a.includes('.')).sort()).toEqual(nested.filter((a) => !ambiguous.includes(a)).sort());
  });

  it('leaves out what throws and what is not a derivation; x86only only for x86_64-linux', async () => {
    const attrs = attrsOf(entries);
    for (const a of ['removedPackage', 'notAPackage', 'lib', 'writeText', 'tools', 'caseFixture', 'caseFixture.Inner']) {
      expect(attrs).not.toContain(a);
    }
    expect(attrs).toContain('x86only');
    const arm = attrsOf(await runner.listPackages(demoSource, 'aarch64-linux'));
    expect(arm).not.toContain('x86only');
    expect(arm.sort()).toEqual(attrs.filter((a) => a !== 'x86only').sort());
  });

  it('gives versions and descriptions as the package set says them', () => {
    const get = (a: string) => entries.find((e) => e.attr === a);
    expect(get('hello')).toEqual({ attr: 'hello', version: '2.12', description: 'Prints the greeting from nix/demo-pkgs/greeting.txt' });
    expect(get('htop')).toEqual({ attr: 'htop', version: '3.2.2', description: 'Interactive process viewer' });
    expect(get('tools.greet')).toEqual({ attr: 'tools.greet', version: '1.0', description: 'Greets its first argument' });
    expect(get('glibc')).toEqual({ attr: 'glibc', version: '2.36' }); // empty meta
    expect(get('motd')).toEqual({ attr: 'motd' }); // writeText: no version, no meta
    expect(get('broken-build')).toEqual({ attr: 'broken-build', version: '1.0' }); // from its name
  });

  it('instantiates nothing: no .drv of a fresh package set is written', async () => {
    const salt = freshSalt();
    const salted = makeRunner({ importArgs: { salt } });
    const listed = await salted.listPackages(demoSource, SYSTEM);
    expect(attrsOf(listed)).toEqual(attrsOf(entries));
    // --eval without --read-write-mode computes drvPath without writing it.
    const drvs = await evalJson<string[]>(`let p = import ${DEMO_PKGS} { salt = "${salt}"; }; in [ p.hello.drvPath p.htop.drvPath p.tools.greet.drvPath ]`);
    for (const d of drvs) expect(existsSync(d), d).toBe(false);
  });
});

describe('list-packages.nix on the corners of a package set', () => {
  let dir: string;
  const runner = makeRunner();

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'list-packages-'));
    // `d` is a derivation that is never built; only its attributes are read.
    await writeFile(
      path.join(dir, 'default.nix'),
      `{ system ? builtins.currentSystem, ... }:
      let d = name: derivation { inherit name system; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }; in {
        foo = d "foo-1.2";
        Foo = d "Foo-2";                      # "foo" is exactly foo: Foo cannot be named
        Bar = d "bar-1"; BAR = d "bar-2";      # "bar" is ambiguous: neither
        Baz = d "baz-3"; baz = throw "gone";   # a throwing baz is absent: "baz" is Baz
        "dvd+rw-tools" = d "dvd+rw-tools-7";   # not in the registry grammar
        "a.b" = d "ab-1";                      # a dot in a name: "a.b" is a path
        __internal = d "internal-1";
        "-lead" = d "lead-1";
        "tri___ple" = d "triple-1";
        "ok-name_2" = d "ok-name_2-0.1";
        "7z" = d "7z-1"; _7z = d "7z-2";      # "7z" is exactly "7z"
        _3proxy = d "3proxy-0.9";              # "3proxy" finds _3proxy
        metaThrows = d "mt-1" // { meta = throw "no meta"; };
        metaString = d "ms-1" // { meta = "nonsense"; };
        descList = d "dl-1" // { meta.description = [ "x" ]; };
        descThrows = d "dt-1" // { meta.description = throw "x"; };
        versionThrows = d "vt-3.0" // { version = throw "x"; };
        versionInt = d "vi" // { version = 5; };
        versionOwn = d "vo-1" // { version = "2.0-rc1"; };
        nameMissing = { type = "derivation"; };
        typeThrows = { type = throw "x"; };
        aString = "not a package";
        aFunction = x: x;
        brokenDrv = d "bd-1" // { drvPath = throw "marked as broken"; };
        nested = {
          recurseForDerivations = true;
          inner = d "inner-1";
          bad = throw "removed";
          deeper = { recurseForDerivations = true; x = d "x-1"; "y.z" = d "yz-1"; };
          hidden = { y = d "y-1"; };
        };
        recThrows = { recurseForDerivations = throw "x"; z = d "z-1"; };
        recNotTrue = { recurseForDerivations = "yes"; z = d "z-1"; };
        drvRecurses = d "dr-1" // { recurseForDerivations = true; sub = d "sub-1"; };
        Set = { recurseForDerivations = true; a = d "a-1"; };
        SET = { recurseForDerivations = true; b = d "b-1"; };   # "set" is ambiguous: neither is entered
      }`,
    );
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('lists exactly the derivations an image can name, with what is known of each', async () => {
    const source = { srcType: 'path' as const, path: dir };
    const entries = await runner.listPackages(source, SYSTEM);
    expect([...entries].sort((a, b) => (a.attr < b.attr ? -1 : 1))).toEqual([
      { attr: '7z', version: '1' },
      { attr: 'Baz', version: '3' },
      { attr: '_3proxy', version: '0.9' },
      { attr: 'brokenDrv', version: '1' },
      { attr: 'descList', version: '1' },
      { attr: 'descThrows', version: '1' },
      { attr: 'drvRecurses', version: '1' },
      { attr: 'foo', version: '1.2' },
      { attr: 'metaString', version: '1' },
      { attr: 'metaThrows', version: '1' },
      { attr: 'nameMissing' },
      { attr: 'nested.deeper.x', version: '1' },
      { attr: 'nested.inner', version: '1' },
      { attr: 'ok-name_2', version: '0.1' },
      { attr: 'versionInt' },
      { attr: 'versionOwn', version: '2.0-rc1' },
      { attr: 'versionThrows', version: '3.0' },
    ]);
    // Each spelling resolves to its attribute, except the two whose drvPath
    // list-packages never reads (the documented difference).
    const attrs = attrsOf(entries);
    const { missing } = await resolvable(runner, source, attrs.map(imageNameOf));
    expect(missing).toEqual([
      { name: 'brokendrv', kind: 'not_a_derivation' },
      { name: 'namemissing', kind: 'not_a_derivation' },
    ]);
    const ok = attrs.filter((a) => !['brokenDrv', 'nameMissing'].includes(a));
    expect((await runner.resolve(source, ok.map(imageNameOf), SYSTEM)).map((p) => p.attr)).toEqual(ok);
  });

  it('fails with a NixBuildError when the set cannot be loaded', async () => {
    await expect(runner.listPackages({ srcType: 'path', path: path.join(dir, 'nonexistent') }, SYSTEM)).rejects.toMatchObject({
      name: 'NixBuildError',
      exitCode: 1,
    });
  });
});

describe('PackageIndexes with the real Nix', () => {
  it('builds in the background, then a second instance reads the stored record without Nix', async () => {
    const storage = new MemoryStorage();
    const resolved = { revision: `demo-${freshSalt()}`, nix: demoSource };
    const runner = makeRunner();
    const indexes = new PackageIndexes({ nix: runner, storage, log: silentLogger(), now: Date.now });
    expect(indexes.get(resolved, SYSTEM)).toEqual({ state: 'building' });
    let state = indexes.get(resolved, SYSTEM);
    const deadline = Date.now() + 60_000;
    while (state.state === 'building' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      state = indexes.get(resolved, SYSTEM);
    }
    expect(state.state).toBe('ready');
    if (state.state !== 'ready') return;
    expect(state.index.search('greet').map((e) => e.attr)).toEqual(['tools.greet', 'extraPackages.greet']);
    expect(state.index.search('ht')[0]).toEqual({ attr: 'htop', version: '3.2.2', description: 'Interactive process viewer' });
    expect(state.index.search('7zip').map((e) => e.attr)).toEqual(['_7zip', 'caseFixture._7zip']);
    expect(runner.stats.evaluations).toBe(1);

    const runner2 = makeRunner();
    const again = new PackageIndexes({ nix: runner2, storage, log: silentLogger(), now: Date.now });
    expect(again.get(resolved, SYSTEM)).toEqual({ state: 'building' });
    const second = await again.wait(resolved, SYSTEM);
    expect(second.state === 'ready' && [...second.index.entries()]).toEqual([...state.index.entries()]);
    expect(runner2.stats.evaluations).toBe(0);
  });
});
