/**
 * The SPDX 2.3 SBOM of an image, checked against the official SPDX 2.3 JSON
 * schema (test/fixtures/spdx-schema-2.3.json; where it comes from:
 * test/fixtures/README.md). The schema is draft-07, hence plain `ajv`.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Ajv } from 'ajv';
import { describe, expect, it } from 'vitest';
import { makeClosureGraph, type ClosureGraph } from '../../../src/layers/graph.js';
import { buildSpdx, SPDX_MEDIA_TYPE, spdxIdOf, spdxLicenseExpression, type SbomInput } from '../../../src/sbom/spdx.js';

const schema = JSON.parse(readFileSync(path.join(import.meta.dirname, '../../fixtures/spdx-schema-2.3.json'), 'utf8')) as object;
const validate = new Ajv({ allErrors: true }).compile(schema);

/** A realistic store path: 32 characters of Nix's base32 alphabet, derived from the name. */
function sp(name: string): string {
  const alphabet = '0123456789abcdfghijklmnpqrsvwxyz';
  const bytes = createHash('sha256').update(name).digest();
  let hash = '';
  for (let i = 0; i < 32; i++) hash += alphabet[bytes[i]! % 32];
  return `/nix/store/${hash}-${name}`;
}

const P = {
  glibc: sp('glibc-2.36'),
  ti: sp('ti'),
  ncurses: sp('ncurses-6.4'),
  libnl: sp('libnl-3.7.0'),
  htop: sp('htop-3.2.2'),
  bash: sp('bash-5.2.15'),
  gccLib: sp('gcc-12.2.0-lib'),
  stdcxx: sp('libstdc++-12'),
  tryTiny: sp('perl5.36.0-Try-Tiny-0.31'),
  sevenZip: sp('7zip-16.02'),
  acl: sp('acl-2.3.1'),
  cacert: sp('nss-cacert-debian'),
  ianaEtc: sp('iana-etc-20230316'),
};

const EDGES: Record<string, string[]> = {
  [P.glibc]: [],
  [P.ti]: [],
  [P.ncurses]: [P.glibc, P.ti, P.ncurses], // the self reference is dropped by makeClosureGraph
  [P.libnl]: [P.glibc],
  [P.htop]: [P.glibc, P.ncurses, P.libnl],
  [P.bash]: [P.glibc, P.ncurses],
  [P.gccLib]: [P.glibc],
  [P.stdcxx]: [P.glibc, P.gccLib],
  [P.tryTiny]: [],
  [P.sevenZip]: [P.glibc, P.stdcxx],
  [P.acl]: [P.glibc],
  [P.cacert]: [],
  [P.ianaEtc]: [],
};

const ROOTS = [P.htop, P.bash, P.sevenZip, P.acl, P.cacert, P.ianaEtc, P.tryTiny];

function graphOf(order: (entries: [string, string[]][]) => [string, string[]][] = (e) => e): ClosureGraph {
  return makeClosureGraph(
    ROOTS,
    order(Object.entries(EDGES)).map(([p, references]) => ({ path: p, narSize: 1000 + p.length, references })),
  );
}

const PACKAGES: SbomInput['packages'] = [
  {
    name: 'htop',
    attr: 'htop',
    out: P.htop,
    meta: { mainProgram: 'htop', license: 'GPL-2.0-only', homepage: 'https://htop.dev/', description: 'Interactive process viewer' },
  },
  { name: 'bash', attr: 'bash', out: P.bash, meta: { mainProgram: 'bash', license: 'GPL-3.0-or-later' } },
  { name: 'bashinteractive', attr: 'bashInteractive', out: P.bash, meta: { mainProgram: 'bash', license: 'GPL-3.0-or-later' } },
  { name: '7zip', attr: '_7zip', out: P.sevenZip, meta: { license: 'LGPL-2.1-or-later AND unfreeRedistributable', homepage: 'not a url' } },
  { name: 'acl', attr: 'acl', out: P.acl, meta: { license: 'GPL-2.0-or-later AND LGPL-2.1-or-later' } },
  { name: 'cacert', attr: 'cacert', out: P.cacert, meta: { license: 'MPL-2.0', description: 'CA certificate bundle' } },
  { name: 'iana-etc', attr: 'iana-etc', out: P.ianaEtc },
  { name: 'perlpackages.trytiny', attr: 'perlPackages.TryTiny', out: P.tryTiny, meta: { license: 'MIT OR Apache-2.0 AND BSD-3-Clause' } },
];

function input(over: Partial<SbomInput> = {}): SbomInput {
  return {
    imageName: 'shell/htop',
    architecture: 'amd64',
    revision: '3b0c652e1f4a1f0e0a8d2d9a6c1f6f7b5d0c9e21',
    source: 'https://github.com/example/pkgs.git',
    graph: graphOf(),
    packages: PACKAGES,
    ...over,
  };
}

interface Doc {
  spdxVersion: string;
  dataLicense: string;
  SPDXID: string;
  name: string;
  documentNamespace: string;
  creationInfo: { created: string; creators: string[]; comment: string };
  packages: {
    SPDXID: string;
    name: string;
    versionInfo?: string;
    licenseDeclared: string;
    licenseConcluded: string;
    licenseComments?: string;
    homepage?: string;
    description?: string;
    sourceInfo?: string;
    comment?: string;
    primaryPackagePurpose?: string;
    externalRefs?: { referenceCategory: string; referenceType: string; referenceLocator: string }[];
  }[];
  relationships: { spdxElementId: string; relationshipType: string; relatedSpdxElement: string }[];
}

const parse = (b: Buffer): Doc => JSON.parse(b.toString('utf8')) as Doc;
const storePathOf = (p: Doc['packages'][number]) => p.externalRefs?.find((r) => r.referenceType === 'nix-store-path')?.referenceLocator;
const byPath = (doc: Doc) => new Map(doc.packages.filter((p) => storePathOf(p)).map((p) => [storePathOf(p)!, p]));

describe('buildSpdx', () => {
  const bytes = buildSpdx(input());
  const doc = parse(bytes);

  it('is an SPDX 2.3 JSON document that the official schema accepts', () => {
    expect(SPDX_MEDIA_TYPE).toBe('application/spdx+json');
    expect(validate(doc), JSON.stringify(validate.errors, null, 2)).toBe(true);
    // The schema is not vacuous: a package without downloadLocation, or an unknown field, is refused.
    expect(validate({ ...doc, packages: [{ SPDXID: 'SPDXRef-x', name: 'x' }] })).toBe(false);
    expect(validate({ ...doc, packages: [{ ...doc.packages[0], checksum: 'x' }] })).toBe(false);
    expect(doc).toMatchObject({
      spdxVersion: 'SPDX-2.3',
      dataLicense: 'CC0-1.0',
      SPDXID: 'SPDXRef-DOCUMENT',
      name: 'shell/htop (linux/amd64)',
      creationInfo: { created: '1970-01-01T00:00:01Z', creators: ['Tool: nixery-ts'] },
    });
    expect(doc.creationInfo.comment).toContain('https://github.com/example/pkgs.git');
    expect(doc.creationInfo.comment).toContain('3b0c652e1f4a1f0e0a8d2d9a6c1f6f7b5d0c9e21');
    expect(doc.documentNamespace).toMatch(/^https:\/\/nixery-ts\.invalid\/spdx\/shell\/htop\/amd64-[0-9a-f]{64}$/);
  });

  it('uses only SPDX ids made of letters, digits, "." and "-", each defined once, and relates only defined elements', () => {
    const ids = doc.packages.map((p) => p.SPDXID);
    for (const id of ids) expect(id).toMatch(/^SPDXRef-[A-Za-z0-9.-]+$/);
    expect(new Set(ids).size).toBe(ids.length);
    const known = new Set([...ids, 'SPDXRef-DOCUMENT']);
    for (const r of doc.relationships) {
      expect(known.has(r.spdxElementId)).toBe(true);
      expect(known.has(r.relatedSpdxElement)).toBe(true);
    }
    expect(spdxIdOf(P.stdcxx)).toMatch(/^SPDXRef-[0-9a-z]{32}-libstdc---12$/);
  });

  it('has one package per store path of the closure, plus the image', () => {
    const graph = graphOf();
    expect([...byPath(doc).keys()]).toEqual([...graph.nodes.keys()].sort());
    expect(doc.packages).toHaveLength(graph.nodes.size + 1);
    for (const [p, pkg] of byPath(doc)) {
      expect(pkg.SPDXID).toBe(spdxIdOf(p));
      expect(pkg.comment).toContain(p.slice('/nix/store/'.length, '/nix/store/'.length + 32));
      expect(pkg.licenseConcluded).toBe('NOASSERTION');
    }
    const image = doc.packages.filter((p) => !storePathOf(p));
    expect(image).toEqual([
      expect.objectContaining({
        SPDXID: 'SPDXRef-Image',
        name: 'shell/htop',
        versionInfo: '3b0c652e1f4a1f0e0a8d2d9a6c1f6f7b5d0c9e21',
        primaryPackagePurpose: 'CONTAINER',
      }),
    ]);
  });

  it('relates document, image, requested packages and references exactly as the graph does', () => {
    const graph = graphOf();
    const rel = (type: string) =>
      doc.relationships.filter((r) => r.relationshipType === type).map((r) => [r.spdxElementId, r.relatedSpdxElement]);
    expect(rel('DESCRIBES')).toEqual([['SPDXRef-DOCUMENT', 'SPDXRef-Image']]);
    expect(rel('CONTAINS')).toEqual(graph.roots.map((r) => ['SPDXRef-Image', spdxIdOf(r)]).sort());
    const edges = [...graph.nodes.values()].flatMap((n) => n.references.map((r) => [spdxIdOf(n.path), spdxIdOf(r)]));
    expect(rel('DEPENDS_ON').sort()).toEqual(edges.sort());
    expect(rel('DEPENDS_ON')).toHaveLength(14);
    expect(doc.relationships).toHaveLength(1 + ROOTS.length + 14);
    // Sorted by element, type, related element.
    const keys = doc.relationships.map((r) => [r.spdxElementId, r.relationshipType, r.relatedSpdxElement].join('\0'));
    expect(keys).toEqual([...keys].sort());
  });

  it('splits names and versions as Nix does', () => {
    const nv = (p: string) => [byPath(doc).get(p)!.name, byPath(doc).get(p)!.versionInfo];
    expect(nv(P.htop)).toEqual(['htop', '3.2.2']);
    expect(nv(P.gccLib)).toEqual(['gcc', '12.2.0-lib']);
    expect(nv(P.stdcxx)).toEqual(['libstdc++', '12']);
    expect(nv(P.tryTiny)).toEqual(['perl5.36.0-Try-Tiny', '0.31']);
    expect(nv(P.ianaEtc)).toEqual(['iana-etc', '20230316']);
    expect(nv(P.cacert)).toEqual(['nss-cacert-debian', undefined]);
    expect(nv(P.ti)).toEqual(['ti', undefined]);
    expect(byPath(doc).get(P.ti)).not.toHaveProperty('versionInfo');
  });

  it('takes license, homepage and description from the meta of the requested packages only', () => {
    const m = byPath(doc);
    expect(m.get(P.htop)).toMatchObject({
      licenseDeclared: 'GPL-2.0-only',
      homepage: 'https://htop.dev/',
      description: 'Interactive process viewer',
      sourceInfo: 'Requested as "htop" (attribute htop) from the package set.',
    });
    expect(m.get(P.acl)!.licenseDeclared).toBe('GPL-2.0-or-later AND LGPL-2.1-or-later');
    expect(m.get(P.cacert)).toMatchObject({ licenseDeclared: 'MPL-2.0', description: 'CA certificate bundle' });
    // AND binds tighter than OR: no parentheses needed (see spdxLicenseExpression).
    expect(m.get(P.tryTiny)!.licenseDeclared).toBe('MIT OR Apache-2.0 AND BSD-3-Clause');
    // Two names, one store path: one package, both names.
    expect(m.get(P.bash)).toMatchObject({
      licenseDeclared: 'GPL-3.0-or-later',
      sourceInfo: 'Requested as "bash" (attribute bash), "bashinteractive" (attribute bashInteractive) from the package set.',
    });
    // Not an SPDX expression (no spdxId in the package set): NOASSERTION, the text kept; a homepage that is no URL is left out.
    expect(m.get(P.sevenZip)).toMatchObject({
      licenseDeclared: 'NOASSERTION',
      licenseComments: expect.stringContaining('"LGPL-2.1-or-later AND unfreeRedistributable"'),
    });
    expect(m.get(P.sevenZip)).not.toHaveProperty('homepage');
    // Requested without meta, and the rest of the closure: nothing asserted.
    for (const p of [P.ianaEtc, P.glibc, P.ncurses, P.libnl, P.ti, P.gccLib, P.stdcxx]) {
      const pkg = m.get(p)!;
      expect(pkg.licenseDeclared).toBe('NOASSERTION');
      expect(pkg).not.toHaveProperty('homepage');
      expect(pkg).not.toHaveProperty('description');
      expect(pkg).not.toHaveProperty('licenseComments');
    }
    expect(m.get(P.glibc)).not.toHaveProperty('sourceInfo');
  });

  it('gives byte-identical output for the same input, whatever the order of the inputs', () => {
    const shuffled = buildSpdx(
      input({ graph: graphOf((e) => [...e].reverse()), packages: [...PACKAGES].reverse() }),
    );
    expect(shuffled.equals(bytes)).toBe(true);
    expect(buildSpdx(input()).equals(bytes)).toBe(true);
  });

  it('gives another documentNamespace for another revision, architecture or closure', () => {
    const ns = (i: SbomInput) => parse(buildSpdx(i)).documentNamespace;
    const base = ns(input());
    expect(ns(input({ revision: '0000000000000000000000000000000000000000' }))).not.toBe(base);
    expect(ns(input({ architecture: 'arm64' }))).toMatch(/\/shell\/htop\/arm64-[0-9a-f]{64}$/);
    expect(ns(input({ imageName: 'htop' }))).toMatch(/\/spdx\/htop\/amd64-/);
    const smaller = makeClosureGraph([P.cacert], [{ path: P.cacert, narSize: 1, references: [] }]);
    expect(ns(input({ graph: smaller, packages: [PACKAGES[5]!] }))).not.toBe(base);
  });

  it('holds no absolute filesystem path other than store paths', () => {
    const strings: string[] = [];
    const walk = (v: unknown): void => {
      if (typeof v === 'string') strings.push(v);
      else if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === 'object') Object.values(v).forEach(walk);
    };
    walk(parse(buildSpdx(input({ source: 'local package set' }))));
    const absolute = strings
      .flatMap((s) => s.split(/[\s"'(),;]+/))
      .filter((t) => t.startsWith('/'));
    expect(absolute.length).toBeGreaterThan(0);
    for (const t of absolute) expect(t).toMatch(/^\/nix\/store\/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$/);
  });

  it('refuses requested packages that are not in the closure, and roots that were not requested', () => {
    expect(() => buildSpdx(input({ packages: [...PACKAGES, { name: 'jq', attr: 'jq', out: sp('jq-1.6') }] }))).toThrow(/jq/);
    expect(() => buildSpdx(input({ packages: PACKAGES.filter((p) => p.name !== 'acl') }))).toThrow(/acl-2\.3\.1/);
  });
});

describe('spdxLicenseExpression', () => {
  it('accepts expressions over SPDX license ids, in canonical form', () => {
    expect(spdxLicenseExpression('MIT')).toBe('MIT');
    expect(spdxLicenseExpression('GPL-2.0-or-later AND LGPL-2.1-or-later')).toBe('GPL-2.0-or-later AND LGPL-2.1-or-later');
    expect(spdxLicenseExpression('(MIT OR Apache-2.0) AND BSD-3-Clause')).toBe('(MIT OR Apache-2.0) AND BSD-3-Clause');
    expect(spdxLicenseExpression('MIT OR (Apache-2.0 AND BSD-3-Clause)')).toBe('MIT OR Apache-2.0 AND BSD-3-Clause');
    expect(spdxLicenseExpression('GPL-2.0-only WITH Classpath-exception-2.0')).toBe('GPL-2.0-only WITH Classpath-exception-2.0');
    expect(spdxLicenseExpression('LGPL-2.1+')).toBe('LGPL-2.1+');
    expect(spdxLicenseExpression('MIT or Apache-2.0')).toBe('MIT OR Apache-2.0');
    expect(spdxLicenseExpression('mit or apache-2.0')).toBeUndefined();
  });

  it('refuses names that are not SPDX ids, free text and references needing definitions', () => {
    for (const t of ['unfreeRedistributable', 'unfree', 'GNU General Public License v2.0 only', 'LicenseRef-foo', 'DocumentRef-x:LicenseRef-y', '', 'MIT AND']) {
      expect(spdxLicenseExpression(t), t).toBeUndefined();
    }
  });
});
