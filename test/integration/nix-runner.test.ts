/**
 * The Nix boundary against the real Nix and the demo package set.
 */
import { describe, expect, it } from 'vitest';
import { BuildAbortedError, NixBuildError, PackagesNotFoundError } from '../../src/errors.js';
import { storePathName } from '../../src/layers/graph.js';
import type { NixLogEvent } from '../../src/nix/nix-log.js';
import { demoSource, freshSalt, makeRunner, processesMatching } from '../helpers/nix.js';

const SYSTEM = 'x86_64-linux';

describe('NixRunner.resolve', () => {
  const runner = makeRunner();

  it('resolves nested, camelCase and leading-digit names without building', async () => {
    const r = await runner.resolve(demoSource, ['htop', 'tools.greet', 'bashinteractive', 'extrapackages.prettyJson', '7zip'], SYSTEM);
    expect(r.map((p) => [p.name, p.attr])).toEqual([
      ['htop', 'htop'],
      ['tools.greet', 'tools.greet'],
      ['bashinteractive', 'bashInteractive'],
      ['extrapackages.prettyJson', 'extraPackages.prettyJson'],
      ['7zip', '_7zip'],
    ]);
    for (const p of r) {
      expect(p.drv).toMatch(/^\/nix\/store\/[a-z0-9]{32}-.*\.drv$/);
      expect(p.out).toMatch(/^\/nix\/store\/[a-z0-9]{32}-/);
    }
    expect(storePathName(r[0]!.out)).toMatch(/^htop-/);
  });

  it('returns unknown names as data, naming each one', async () => {
    const err = await runner
      .resolve(demoSource, ['htop', 'nosuchpkg', 'tools.nosuch', 'notAPackage', 'lib'], SYSTEM)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PackagesNotFoundError);
    expect((err as PackagesNotFoundError).packages).toEqual([
      { name: 'nosuchpkg', kind: 'not_found' },
      { name: 'tools.nosuch', kind: 'not_found' },
      { name: 'notAPackage', kind: 'not_a_derivation' },
      { name: 'lib', kind: 'not_a_derivation' },
    ]);
  });

  it('treats a name that looks like Nix code as a missing package, never evaluating it', async () => {
    const evil = 'hello"; builtins.abort "x';
    const err = await runner.resolve(demoSource, [evil, '${builtins.abort "y"}'], SYSTEM).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PackagesNotFoundError);
    expect((err as PackagesNotFoundError).packages.map((p) => p.name)).toEqual([evil, '${builtins.abort "y"}']);
  });

  it('fails with a NixBuildError when the package set itself is broken', async () => {
    const err = await runner.resolve({ srcType: 'path', path: '/nonexistent/pkgs' }, ['htop'], SYSTEM).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NixBuildError);
    expect((err as NixBuildError).exitCode).toBe(1);
    expect((err as NixBuildError).stderr).toContain('/nonexistent/pkgs');
  });
});

describe('NixRunner.realise and closure', () => {
  it('builds packages and reads the closure graph of htop with glibc and ncurses', async () => {
    const runner = makeRunner();
    const [htop] = await runner.resolve(demoSource, ['htop'], SYSTEM);
    await runner.realise([htop!.drv]);
    const graph = await runner.closure([htop!.out]);
    expect(graph.roots).toEqual([htop!.out]);
    const byName = new Map([...graph.nodes.values()].map((n) => [storePathName(n.path).replace(/-[0-9.]+$/, ''), n]));
    expect([...byName.keys()].sort()).toEqual(['glibc', 'htop', 'libnl', 'ncurses', 'ti']);
    const refNames = (n: string) => byName.get(n)!.references.map((r) => storePathName(r).replace(/-[0-9.]+$/, '')).sort();
    expect(refNames('htop')).toEqual(['glibc', 'libnl', 'ncurses']);
    expect(refNames('ncurses')).toEqual(['glibc', 'ti']); // its self reference is dropped
    expect(refNames('glibc')).toEqual([]);
    for (const n of graph.nodes.values()) expect(n.narSize).toBeGreaterThan(0);
  });

  it('reports each derivation as Nix finishes building it, dependencies first, with build log lines', async () => {
    const runner = makeRunner({ importArgs: { salt: freshSalt() } });
    const [htop] = await runner.resolve(demoSource, ['htop'], SYSTEM);
    const events: NixLogEvent[] = [];
    await runner.realise([htop!.drv], { onEvent: (e) => events.push(e) });
    const built = events.filter((e) => e.kind === 'built').map((e) => storePathName((e as { drv: string }).drv).replace(/-[0-9.]+\.drv$/, ''));
    // A fresh salt: every package of the closure is built, htop last (it needs the others).
    expect([...built].sort()).toEqual(expect.arrayContaining(['glibc', 'htop', 'libnl', 'ncurses']));
    expect(built.at(-1)).toBe('htop');
    expect(await runner.outputs(htop!.drv)).toEqual([htop!.out]);
  });

  it('reports a failing build as NixBuildError with its stderr', async () => {
    const runner = makeRunner();
    const [broken] = await runner.resolve(demoSource, ['broken-build'], SYSTEM);
    const events: NixLogEvent[] = [];
    const err = await runner.realise([broken!.drv], { onEvent: (e) => events.push(e) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NixBuildError);
    expect(err).toMatchObject({ exitCode: 100, timedOut: false });
    // Nix's machine-readable log turned back into its words, without colour codes.
    expect((err as NixBuildError).stderr).toContain('broken-build: this package fails on purpose');
    expect((err as NixBuildError).stderr).toMatch(/^error: builder for '.*broken-build.*' failed with exit code 1$/m);
    expect((err as NixBuildError).stderr).not.toContain('@nix');
    expect(events).toContainEqual({ kind: 'log', line: 'broken-build: this package fails on purpose' });
  });

  // slowSeconds values are unique to each case so that `ps` finds only this test's builders.
  it.each([
    ['slow-build', 'silent', 291],
    ['slow-chatty-build', 'chatty', 293],
  ])('stops %s (%s) within NIX_TIMEOUT + 2 s and leaves no process behind', async (attr, _kind, slowSeconds) => {
    const timeoutSeconds = 3;
    const runner = makeRunner({ timeoutSeconds, importArgs: { slowSeconds, salt: freshSalt() } });
    const [slow] = await runner.resolve(demoSource, [attr], SYSTEM);
    const started = Date.now();
    const err = await runner.realise([slow!.drv]).catch((e: unknown) => e);
    const elapsed = (Date.now() - started) / 1000;
    expect(err).toBeInstanceOf(NixBuildError);
    expect((err as NixBuildError).timedOut).toBe(true);
    expect(elapsed).toBeLessThan(timeoutSeconds + 2);
    expect(await processesMatching(`sleep ${slowSeconds}`)).toEqual([]);
    expect(await processesMatching(slow!.drv)).toEqual([]);
    expect(runner.stats.running).toBe(0);
  });

  it('kills the whole Nix process group when the build is aborted', async () => {
    const slowSeconds = 297;
    const runner = makeRunner({ timeoutSeconds: 60, importArgs: { slowSeconds, salt: freshSalt() } });
    const [slow] = await runner.resolve(demoSource, ['slow-chatty-build'], SYSTEM);
    const ac = new AbortController();
    const pending = runner.realise([slow!.drv], { signal: ac.signal }).catch((e: unknown) => e);
    // Wait (bounded) until the builder really runs, then abort.
    for (let i = 0; i < 100 && (await processesMatching(`sleep 1`)).length === 0; i++) await new Promise((r) => setTimeout(r, 100));
    ac.abort('client went away');
    const err = await pending;
    expect(err).toBeInstanceOf(BuildAbortedError);
    expect(await processesMatching(slow!.drv)).toEqual([]);
    expect(await processesMatching(`le $i -lt ${slowSeconds}`)).toEqual([]);
  });
});
