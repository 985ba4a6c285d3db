/**
 * Dotted names are matched case-insensitively at every level (registry names
 * are lowercase, package sets are camelCase at any depth), with the `_` prefix
 * rule for digits at every level and "ambiguous" when only case tells two
 * attributes apart: against the real Nix, then end to end through the server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PackagesNotFoundError } from '../../src/errors.js';
import { inChroot, skopeoPull, unpack } from '../helpers/clients.js';
import { demoSource, makeRunner } from '../helpers/nix.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

const SYSTEM = 'x86_64-linux';
const CLASH = ['caseFixture.GREET', 'caseFixture.Greet'];

describe('NixRunner.resolve with nested names', () => {
  const runner = makeRunner();

  it('matches every component case-insensitively, exact spellings first', async () => {
    const names = [
      'extrapackages.prettyjson',
      'extrapackages.prettyJson',
      'EXTRAPACKAGES.PRETTYJSON',
      'tools.greet',
      'TOOLS.GREET',
      'Tools.Greet',
      'casefixture.inner.helloworld',
      'caseFixture.GREET',
      'caseFixture.Greet',
    ];
    const r = await runner.resolve(demoSource, names, SYSTEM);
    expect(r.map((p) => [p.name, p.attr])).toEqual([
      ['extrapackages.prettyjson', 'extraPackages.prettyJson'],
      ['extrapackages.prettyJson', 'extraPackages.prettyJson'],
      ['EXTRAPACKAGES.PRETTYJSON', 'extraPackages.prettyJson'],
      ['tools.greet', 'tools.greet'],
      ['TOOLS.GREET', 'tools.greet'],
      ['Tools.Greet', 'tools.greet'],
      ['casefixture.inner.helloworld', 'caseFixture.Inner.HelloWorld'],
      ['caseFixture.GREET', 'caseFixture.GREET'],
      ['caseFixture.Greet', 'caseFixture.Greet'],
    ]);
    // The same attribute is the same derivation, however it was spelled.
    expect(new Set(r.slice(0, 3).map((p) => p.out)).size).toBe(1);
    expect(r[0]!.out).toMatch(/^\/nix\/store\/[a-z0-9]{32}-jq-/);
    expect(r[6]!.out).toMatch(/-hello-/);
    expect(r[7]!.out).toMatch(/-hello-/);
    expect(r[8]!.out).toMatch(/-greet-/);
  });

  it('applies the "_" prefix for a leading digit at nested levels too', async () => {
    const r = await runner.resolve(demoSource, ['casefixture.7zip', 'CaseFixture.7ZIP', '7zip'], SYSTEM);
    expect(r.map((p) => [p.name, p.attr])).toEqual([
      ['casefixture.7zip', 'caseFixture._7zip'],
      ['CaseFixture.7ZIP', 'caseFixture._7zip'],
      ['7zip', '_7zip'],
    ]);
    expect(r[0]!.out).toBe(r[2]!.out);
  });

  it('answers "ambiguous" with every candidate when only case tells attributes apart', async () => {
    const err = await runner
      .resolve(demoSource, ['htop', 'casefixture.greet', 'casefixture.greet.x', 'casefixture.nosuch', 'tools.greet.nosuch'], SYSTEM)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PackagesNotFoundError);
    const e = err as PackagesNotFoundError;
    expect(e.packages).toEqual([
      { name: 'casefixture.greet', kind: 'ambiguous', candidates: CLASH },
      // The ambiguity is where the lookup stopped, even with components left.
      { name: 'casefixture.greet.x', kind: 'ambiguous', candidates: CLASH },
      { name: 'casefixture.nosuch', kind: 'not_found' },
      { name: 'tools.greet.nosuch', kind: 'not_found' },
    ]);
    expect(e.packages[2]).not.toHaveProperty('candidates');
    expect(e.message).toContain('casefixture.greet (ambiguous: caseFixture.GREET or caseFixture.Greet)');
  });
});

describe('nested names through the registry', () => {
  let server: RunningServer;
  let scratch: { path: string; remove: () => Promise<void> };

  beforeAll(async () => {
    server = await startServer();
    scratch = await scratchDir('nixery-nested-');
  });
  afterAll(async () => {
    await server?.stop();
    await scratch?.remove();
  });

  it('extrapackages.prettyjson pulls with skopeo and runs jq in a chroot', async () => {
    const layout = `${scratch.path}/prettyjson`;
    await skopeoPull(`${server.host}/extrapackages.prettyjson`, layout);
    const rootfs = await unpack(layout, `${scratch.path}/prettyjson-bundle`);
    expect(await inChroot(rootfs, ['jq', '--version'])).toMatch(/^jq-/);
  });

  it('an ambiguous name answers 404 MANIFEST_UNKNOWN naming both candidates', async () => {
    const res = await fetch(`${server.url}/v2/casefixture.greet/manifests/latest`, {
      headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' },
    });
    expect(res.status).toBe(404);
    const body = (await res.json()) as { errors: { code: string; message: string; detail: { packages: unknown } }[] };
    expect(body.errors).toHaveLength(1);
    const [e] = body.errors;
    expect(e!.code).toBe('MANIFEST_UNKNOWN');
    expect(e!.detail.packages).toEqual([{ name: 'casefixture.greet', kind: 'ambiguous', candidates: CLASH }]);
    for (const c of CLASH) expect(e!.message).toContain(c);
  });
});
