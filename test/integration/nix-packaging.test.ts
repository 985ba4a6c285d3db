/**
 * The Nix packaging (default.nix, nix/*.nix) without nixpkgs: default.nix is
 * evaluated against nix/demo-pkgs/deploy-stubs.nix, the demo package set plus
 * recording stand-ins for buildNpmPackage, dockerTools, writeShellScriptBin,
 * makeWrapper, nix, nodejs and openssh. Each stand-in keeps the arguments it
 * got (`stubArgs`), so the tests read what default.nix would hand to nixpkgs.
 * What can be built from the demo set is built and run: nixery-prepare-image
 * (with the host's Nix) and the npm lock file given to fetchNpmDeps.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEMO_PKGS, ROOT } from '../helpers/nix.js';

const run = promisify(execFile);
const STUBS = 'import ./nix/demo-pkgs/deploy-stubs.nix { }';

interface Recorded<A> {
  kind: string | null;
  name: string;
  out: string;
  args: A;
}

interface NpmArgs {
  pname: string;
  version: string;
  src: string;
  npmDepsHash: string;
  nodejs: string;
  nativeBuildInputs: string[];
  postPatch: string;
  installPhase: string;
  passthru: { npmLockfile: string; 'nixery-prepare-image': string };
}

interface ImageArgs {
  name: string;
  contents: string[];
  extraCommands: string;
  config: {
    Entrypoint?: string[];
    Cmd?: string[];
    Env: string[];
    ExposedPorts: Record<string, object>;
  };
}

interface Packaging {
  attrs: string[];
  types: Record<string, string | null>;
  pkgs: Record<'nix' | 'git' | 'openssh' | 'bash' | 'bashInteractive' | 'coreutils' | 'cacert' | 'iana-etc' | 'nodejs' | 'makeWrapper', string>;
  nixery: Recorded<NpmArgs>;
  srcEntries: string[];
  srcHasMain: boolean;
  prepare: string;
  launch: Recorded<{ name: string; text: string }>;
  image: Recorded<ImageArgs>;
}

const PROJECTION = `
  let
    pkgs = ${STUBS};
    top = import ./default.nix { inherit pkgs; };
    recorded = d: { kind = d.stubKind or null; name = d.name; out = d.outPath; args = d.stubArgs or null; };
  in {
    attrs = builtins.attrNames top;
    types = builtins.mapAttrs (_: v: v.type or null) top;
    pkgs = { inherit (pkgs) nix git openssh bash bashInteractive coreutils cacert iana-etc nodejs makeWrapper; };
    nixery = recorded top.nixery;
    srcEntries = builtins.attrNames (builtins.readDir top.nixery.stubArgs.src);
    srcHasMain = builtins.pathExists (top.nixery.stubArgs.src + "/src/main.ts");
    prepare = top.nixery-prepare-image.outPath;
    launch = recorded top.nixery-launch;
    image = recorded top.nixery-image;
  }`;

/** nix-instantiate --eval --strict --json, in read-write mode so that sources really reach the store. */
async function nixEval<T>(expr: string): Promise<T> {
  const { stdout } = await run('nix-instantiate', ['--eval', '--strict', '--json', '--read-write-mode', '--show-trace', '-E', expr], {
    cwd: ROOT,
    maxBuffer: 64 << 20,
  });
  return JSON.parse(stdout) as T;
}

/** nix-build default.nix against the stub set, returning the output path of each attribute. */
async function buildAttrs(attrs: readonly string[]): Promise<string[]> {
  const { stdout } = await run('nix-build', ['default.nix', '--arg', 'pkgs', STUBS, '--no-out-link', ...attrs.flatMap((a) => ['-A', a])], {
    cwd: ROOT,
    maxBuffer: 16 << 20,
  });
  return stdout.trim().split('\n');
}

/** The arguments of the `makeWrapper` call in a build script, backslash continuations joined. */
function makeWrapperCall(script: string): string[] {
  const line = script
    .replace(/\\\n\s*/g, ' ')
    .split('\n')
    .map((l) => l.trim())
    .find((l) => l.startsWith('makeWrapper '));
  expect(line, 'a makeWrapper call').toBeDefined();
  return line!.split(/\s+/);
}

/** The value after `flag name` (--set-default NAME VALUE, --prefix NAME SEP VALUE). */
function flagValue(argv: readonly string[], flag: string, name: string): string | undefined {
  for (let i = 0; i < argv.length - 2; i++) {
    if (argv[i] === flag && argv[i + 1] === name) return flag === '--prefix' || flag === '--suffix' ? argv[i + 3] : argv[i + 2];
  }
  return undefined;
}

describe('Nix files', () => {
  it('parses every .nix file in the repository', async () => {
    const { stdout } = await run('git', ['ls-files', '--cached', '--others', '--exclude-standard', '--', '*.nix'], { cwd: ROOT });
    const files = [...new Set(stdout.trim().split('\n').filter(Boolean))].sort();
    expect(files).toEqual(
      expect.arrayContaining([
        'default.nix',
        'nix/demo-pkgs/default.nix',
        'nix/demo-pkgs/deploy-stubs.nix',
        'nix/image.nix',
        'nix/launch.nix',
        'nix/nixery.nix',
        'nix/prepare-image.nix',
        'prepare-image/load-pkgs.nix',
        'prepare-image/resolve-names.nix',
      ]),
    );
    const failures: string[] = [];
    for (const f of files) {
      try {
        await run('nix-instantiate', ['--parse', f], { cwd: ROOT, maxBuffer: 16 << 20 });
      } catch (e) {
        failures.push(`${f}: ${(e as { stderr?: string }).stderr ?? String(e)}`);
      }
    }
    expect(failures).toEqual([]);
  });
});

describe('Nix packaging', () => {
  let p: Packaging;

  beforeAll(async () => {
    p = await nixEval<Packaging>(PROJECTION);
  });

  it('exposes nixery, nixery-prepare-image, nixery-launch and nixery-image as derivations', () => {
    expect(p.attrs).toEqual(expect.arrayContaining(['nixery', 'nixery-prepare-image', 'nixery-launch', 'nixery-image']));
    for (const a of ['nixery', 'nixery-prepare-image', 'nixery-launch', 'nixery-image']) expect(p.types[a], a).toBe('derivation');
  });

  it('builds the server with buildNpmPackage from a source holding only what the build reads', async () => {
    const pkg = JSON.parse(await readFile(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
    expect(p.nixery.kind).toBe('buildNpmPackage');
    expect(p.nixery.args.pname).toBe(pkg.name);
    expect(p.nixery.args.version).toBe(pkg.version);
    expect(p.nixery.name).toBe(`${pkg.name}-${pkg.version}`);
    expect(p.nixery.args.npmDepsHash).toMatch(/^sha256-[A-Za-z0-9+/]{43}=$/);
    expect(p.nixery.args.nodejs).toBe(p.pkgs.nodejs);
    expect(p.nixery.args.nativeBuildInputs).toContain(p.pkgs.makeWrapper);
    expect(p.srcEntries.sort()).toEqual(['package-lock.json', 'package.json', 'prepare-image', 'src', 'tsconfig.build.json', 'tsconfig.json', 'web']);
    expect(p.srcHasMain).toBe(true);
  });

  it('wraps the compiled server: NIXERY_PREPARE_IMAGE_DIR is nixery-prepare-image, nix and git come first on PATH', () => {
    const argv = makeWrapperCall(p.nixery.args.installPhase);
    expect(argv[1]).toBe(`${p.pkgs.nodejs}/bin/node`);
    expect(argv[2]).toBe('$out/bin/nixery');
    expect(argv[argv.indexOf('--add-flags') + 1]).toBe('$app/dist/launch.cjs');
    expect(p.nixery.args.installPhase).toMatch(/^app=\$out\/lib\/nixery-ts$/m);
    expect(p.nixery.args.installPhase).toMatch(/^cp -r dist node_modules package\.json web prepare-image \$app\/$/m);
    expect(p.nixery.args.installPhase).toMatch(/^npm prune --omit=dev/m);

    const prepareDir = flagValue(argv, '--set-default', 'NIXERY_PREPARE_IMAGE_DIR') ?? flagValue(argv, '--set', 'NIXERY_PREPARE_IMAGE_DIR');
    expect(prepareDir).toBe(`${p.prepare}/share/nixery/prepare-image`);
    expect(p.nixery.args.passthru['nixery-prepare-image']).toBe(p.prepare);

    const pathDirs = flagValue(argv, '--prefix', 'PATH')?.split(':') ?? [];
    expect(pathDirs).toContain(`${p.pkgs.nix}/bin`);
    expect(pathDirs).toContain(`${p.pkgs.git}/bin`);
  });

  it('builds nixery-prepare-image from the demo set: the expressions, and a wrapper that resolves names', async () => {
    const [out] = await buildAttrs(['nixery-prepare-image']);
    expect(out).toBe(p.prepare);
    const dir = `${out}/share/nixery/prepare-image`;
    for (const f of ['load-pkgs.nix', 'resolve-names.nix']) {
      expect(await readFile(path.join(dir, f), 'utf8'), f).toBe(await readFile(path.join(ROOT, 'prepare-image', f), 'utf8'));
    }
    const { stdout } = await run(
      `${out}/bin/nixery-prepare-image`,
      ['--argstr', 'srcType', 'path', '--argstr', 'srcArgs', JSON.stringify({ path: DEMO_PKGS }), '--argstr', 'packages', JSON.stringify(['hello', 'tools.greet', 'nosuch'])],
      { maxBuffer: 16 << 20 },
    );
    const r = JSON.parse(stdout) as { ok: { name: string; out: string }[]; errors: { name: string; kind: string }[] };
    expect(r.ok.map((o) => o.name)).toEqual(['hello', 'tools.greet']);
    expect(r.ok[0]!.out).toMatch(/^\/nix\/store\/[a-z0-9]{32}-hello-/);
    expect(r.errors).toEqual([{ name: 'nosuch', kind: 'not_found' }]);
  });

  it('gives fetchNpmDeps a lock file with a registry URL for every package, and nothing else changed', async () => {
    const [lockPath] = await buildAttrs(['nixery.npmLockfile']);
    expect(lockPath).toBe(p.nixery.args.passthru.npmLockfile);
    expect(p.nixery.args.postPatch).toContain(`${lockPath} package-lock.json`);

    type Entry = Record<string, unknown> & { version?: string; resolved?: string; name?: string; link?: boolean; inBundle?: boolean };
    type Lock = Record<string, unknown> & { packages: Record<string, Entry> };
    const original = JSON.parse(await readFile(path.join(ROOT, 'package-lock.json'), 'utf8')) as Lock;
    const patched = JSON.parse(await readFile(lockPath!, 'utf8')) as Lock;
    expect(Object.keys(patched.packages).sort()).toEqual(Object.keys(original.packages).sort());

    const expected = structuredClone(original);
    for (const [key, entry] of Object.entries(expected.packages)) {
      if (key === '' || entry.resolved !== undefined || entry.link || entry.inBundle || entry.version === undefined) continue;
      const name = entry.name ?? key.slice(key.lastIndexOf('node_modules/') + 'node_modules/'.length);
      entry.resolved = `https://registry.npmjs.org/${name}/-/${name.split('/').pop()}-${entry.version}.tgz`;
    }
    expect(patched).toEqual(expected);
    for (const [key, entry] of Object.entries(patched.packages)) {
      if (key === '' || entry.link) continue;
      expect(entry.resolved, key).toMatch(/^https:\/\/registry\.npmjs\.org\/(@[^/]+\/)?[^/@]+\/-\/[^/]+\.tgz$/);
    }
    const hono = patched.packages['node_modules/hono']!;
    expect(hono.resolved).toBe(`https://registry.npmjs.org/hono/-/hono-${hono.version}.tgz`);
    const nodeServer = patched.packages['node_modules/@hono/node-server']!;
    expect(nodeServer.resolved).toBe(`https://registry.npmjs.org/@hono/node-server/-/node-server-${nodeServer.version}.tgz`);
  });

  it('launches through nix/nixery-launch.sh with the server, coreutils and bash on PATH', async () => {
    expect(p.launch.kind).toBe('writeShellScriptBin');
    expect(p.launch.args.name).toBe('nixery-launch');
    const text = p.launch.args.text;
    const pathLine = text.split('\n').find((l) => l.startsWith('export PATH='));
    expect(pathLine, 'export PATH=...').toBeDefined();
    const dirs = pathLine!.slice('export PATH='.length).split(/[:$]/);
    expect(dirs).toEqual(expect.arrayContaining([`${p.nixery.out}/bin`, `${p.pkgs.coreutils}/bin`, `${p.pkgs.bash}/bin`]));
    expect(text).toContain(`${p.pkgs.cacert}/etc/ssl/certs/ca-bundle.crt`);
    const exec = /^exec (\S+) (\/nix\/store\/[a-z0-9]{32}-nixery-launch\.sh) "\$@"$/m.exec(text);
    expect(exec, 'exec <bash> <store>/nixery-launch.sh "$@"').not.toBeNull();
    expect(exec![1]).toBe(`${p.pkgs.bash}/bin/bash`);
    expect(await readFile(exec![2]!, 'utf8')).toBe(await readFile(path.join(ROOT, 'nix/nixery-launch.sh'), 'utf8'));
  });

  it('packs the server, Nix and its tools into a layered image started by the launch script', () => {
    expect(p.image.kind).toMatch(/^dockerTools\.buildLayeredImage(WithNixDb)?$/);
    const { contents, config, extraCommands } = p.image.args;
    expect(p.image.args.name).toBe('nixery-ts');
    for (const dep of ['nix', 'git', 'openssh', 'coreutils', 'cacert', 'iana-etc'] as const) expect(contents, dep).toContain(p.pkgs[dep]);
    expect(contents.includes(p.pkgs.bash) || contents.includes(p.pkgs.bashInteractive), 'bash').toBe(true);
    expect(contents).toContain(p.nixery.out);
    expect(contents).toContain(p.prepare);
    expect(contents).toContain(p.launch.out);

    const launcher = `${p.launch.out}/bin/nixery-launch`;
    expect(config.Entrypoint ?? config.Cmd).toEqual([launcher]);

    const env = new Map(config.Env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)]));
    const bundle = `${p.pkgs.cacert}/etc/ssl/certs/ca-bundle.crt`;
    expect(env.get('NIX_SSL_CERT_FILE')).toBe(bundle);
    expect(env.get('SSL_CERT_FILE')).toBe(bundle);
    const port = env.get('PORT');
    expect(port).toMatch(/^\d+$/);
    expect(Object.keys(config.ExposedPorts)).toEqual([`${port}/tcp`]);
    expect(extraCommands).toMatch(/mkdir -p -m 1777 tmp/);
  });

  it('has no catch-all in the stub set: a package it lacks makes evaluation fail', async () => {
    const expr = `
      let
        pkgs = builtins.removeAttrs (${STUBS}) [ "openssh" ];
        top = import ./default.nix { inherit pkgs; };
      in top.nixery-image.stubArgs.contents`;
    await expect(nixEval(expr)).rejects.toThrow(/attribute 'openssh' missing/);
  });
});
