import { describe, expect, it } from 'vitest';
import { PackageIndex, imageNameOf, type PackageEntry } from '../../../src/packages/index.js';

const ENTRIES: PackageEntry[] = [
  { attr: 'lighttpd', version: '1.4.69', description: 'Lightweight high-performance web server' },
  { attr: 'htop', version: '3.2.2', description: 'Interactive process viewer' },
  { attr: 'httpie', version: '3.2.1' },
  { attr: 'ht', version: '2.1.0', description: 'File editor/viewer/analyzer for executables' },
  { attr: 'nghttp2', version: '1.51.0' },
  { attr: 'python3', version: '3.11' },
  { attr: 'python311Packages.requests', version: '2.28.2', description: 'HTTP library for Python' },
  { attr: 'python311Packages.requests-toolbelt' },
  { attr: 'python312Packages.requests', version: '2.31.0' },
  { attr: 'requestsWrapper' },
  { attr: 'haskellPackages.QuickCheck', version: '2.14.2', description: 'Automatic testing of Haskell programs' },
  { attr: 'tools.greet', version: '1.0', description: 'Greets its first argument' },
  { attr: 'tools.hello', version: '2.12' },
  { attr: 'greetings-tool' },
  { attr: '_7zip', version: '16.02' },
  { attr: 'caseFixture._7zip', version: '16.02' },
  { attr: 'motd' },
];

const attrs = (r: PackageEntry[]) => r.map((e) => e.attr);

describe('PackageIndex.search', () => {
  const index = new PackageIndex(ENTRIES);

  it('ranks an exact match first, then prefixes, then substrings; shorter first within a rank', () => {
    expect(attrs(index.search('ht'))).toEqual([
      'ht', // exact
      'htop', // prefixes, shorter first
      'httpie',
      'nghttp2', // substrings, shorter first
      'lighttpd',
    ]);
    expect(attrs(index.search('htop'))).toEqual(['htop']);
  });

  it('suggests htop before lighttpd-like substring matches', () => {
    const r = attrs(index.search('ht'));
    expect(r.indexOf('htop')).toBeLessThan(r.indexOf('lighttpd'));
    expect(r.indexOf('httpie')).toBeLessThan(r.indexOf('nghttp2'));
  });

  it('matches the last component of a nested name exactly or as a prefix, and the whole path', () => {
    expect(attrs(index.search('requests'))).toEqual([
      // exact last component, shorter (then alphabetical) first
      'python311Packages.requests',
      'python312Packages.requests',
      // prefix of the whole path or of the last component
      'requestsWrapper',
      'python311Packages.requests-toolbelt',
    ]);
    expect(attrs(index.search('greet'))).toEqual(['tools.greet', 'greetings-tool']);
    expect(attrs(index.search('tools'))).toEqual(['tools.greet', 'tools.hello']);
    expect(attrs(index.search('tool'))).toEqual(['tools.greet', 'tools.hello', 'greetings-tool', 'python311Packages.requests-toolbelt']);
    expect(attrs(index.search('tools.greet'))).toEqual(['tools.greet']);
    expect(attrs(index.search('s.gr'))).toEqual(['tools.greet']);
    expect(attrs(index.search('python3'))).toEqual([
      'python3',
      'python311Packages.requests',
      'python312Packages.requests',
      'python311Packages.requests-toolbelt',
    ]);
  });

  it('is case-insensitive both ways and answers the real attribute names', () => {
    expect(attrs(index.search('quickcheck'))).toEqual(['haskellPackages.QuickCheck']);
    expect(attrs(index.search('QUICKCHECK'))).toEqual(['haskellPackages.QuickCheck']);
    expect(attrs(index.search('HaskellPackages.quickCHECK'))).toEqual(['haskellPackages.QuickCheck']);
    expect(attrs(index.search('HTOP'))).toEqual(['htop']);
    expect(attrs(index.search('  htop  '))).toEqual(['htop']);
  });

  it('spells a leading-digit attribute as image names do: 7zip is exactly _7zip', () => {
    expect(attrs(index.search('7zip'))).toEqual(['_7zip', 'caseFixture._7zip']);
    expect(attrs(index.search('_7zip'))).toEqual(['_7zip', 'caseFixture._7zip']);
    expect(attrs(index.search('casefixture.7z'))).toEqual(['caseFixture._7zip']);
    expect(imageNameOf('caseFixture._7zip')).toBe('casefixture.7zip');
    expect(imageNameOf('haskellPackages.QuickCheck')).toBe('haskellpackages.quickcheck');
    expect(imageNameOf('foo_7bar')).toBe('foo_7bar');
  });

  it('gives versions and descriptions when known', () => {
    expect(index.search('htop')).toEqual([{ attr: 'htop', version: '3.2.2', description: 'Interactive process viewer' }]);
    expect(index.search('httpie')).toEqual([{ attr: 'httpie', version: '3.2.1' }]);
    expect(index.search('motd')).toEqual([{ attr: 'motd' }]);
  });

  it('finds nothing for an empty, blank or unknown query', () => {
    expect(index.search('')).toEqual([]);
    expect(index.search('   ')).toEqual([]);
    expect(index.search('nosuchpackage')).toEqual([]);
    expect(index.search('ht\nop')).toEqual([]);
    expect(new PackageIndex([]).search('ht')).toEqual([]);
  });

  it('returns at most `limit` entries, the best ones', () => {
    expect(attrs(index.search('ht', 2))).toEqual(['ht', 'htop']);
    expect(attrs(index.search('ht', 4))).toEqual(['ht', 'htop', 'httpie', 'nghttp2']);
    expect(index.search('ht', 0)).toEqual([]);
    expect(index.search('ht', -1)).toEqual([]);
    const many = new PackageIndex(Array.from({ length: 500 }, (_, i) => ({ attr: `pkg${i}` })));
    expect(many.search('pkg')).toHaveLength(20);
    expect(attrs(many.search('pkg', 3))).toEqual(['pkg0', 'pkg1', 'pkg2']);
    expect(attrs(many.search('pkg1', 4))).toEqual(['pkg1', 'pkg10', 'pkg11', 'pkg12']);
    // exact matches beyond the limit do not push out better ones
    const exact = new PackageIndex([{ attr: 'b.x' }, { attr: 'a.x' }, { attr: 'x' }, { attr: 'xx' }, { attr: 'c.x' }]);
    expect(attrs(exact.search('x', 2))).toEqual(['x', 'a.x']);
    expect(attrs(exact.search('x'))).toEqual(['x', 'a.x', 'b.x', 'c.x', 'xx']);
  });

  it('orders alphabetically (case-insensitively) within a rank and length', () => {
    const idx = new PackageIndex([{ attr: 'zeta-ab' }, { attr: 'Beta-ab' }, { attr: 'alfa-ab' }, { attr: 'beta-ab' }]);
    expect(attrs(idx.search('ab'))).toEqual(['alfa-ab', 'Beta-ab', 'beta-ab', 'zeta-ab']);
  });
});

describe('PackageIndex construction and serialisation', () => {
  it('counts entries, dropping repeated attrs and ones without a name', () => {
    const idx = new PackageIndex([
      { attr: 'htop', version: '1' },
      { attr: 'htop', version: '2' },
      { attr: '' },
      { attr: 'a\nb' },
      { attr: 'jq', version: '', description: '' },
    ]);
    expect(idx.size).toBe(2);
    expect(idx.search('htop')).toEqual([{ attr: 'htop', version: '1' }]);
    expect(idx.search('jq')).toEqual([{ attr: 'jq' }]);
    expect([...idx.entries()].map((e) => e.attr)).toEqual(['jq', 'htop']);
  });

  it('round-trips through JSON, unicode included', () => {
    const entries = [...ENTRIES, { attr: 'coq', description: 'Gödel — naïve → proofs' }];
    const idx = new PackageIndex(entries);
    const json = JSON.stringify(idx);
    const parsed = JSON.parse(json) as { format: number; attrs: string[] };
    expect(parsed.format).toBe(1);
    expect(parsed.attrs).toHaveLength(entries.length);
    const back = PackageIndex.fromJSON(JSON.parse(json));
    expect(back.size).toBe(idx.size);
    expect([...back.entries()]).toEqual([...idx.entries()]);
    expect(PackageIndex.fromJSON(json).search('coq')).toEqual([{ attr: 'coq', description: 'Gödel — naïve → proofs' }]);
    expect([...back.entries()].sort((a, b) => (a.attr < b.attr ? -1 : 1))).toEqual(
      [...entries].sort((a, b) => (a.attr < b.attr ? -1 : 1)),
    );
    for (const q of ['ht', 'requests', 'greet', '7zip', 'quickcheck']) expect(back.search(q)).toEqual(idx.search(q));
  });

  it('refuses anything that is not a serialised index', () => {
    expect(() => PackageIndex.fromJSON({})).toThrow(/not a serialised PackageIndex/);
    expect(() => PackageIndex.fromJSON({ format: 2, attrs: [], versions: [], descriptions: [] })).toThrow();
    expect(() => PackageIndex.fromJSON({ format: 1, attrs: ['a'], versions: [], descriptions: [] })).toThrow();
    expect(() => PackageIndex.fromJSON({ format: 1, attrs: [1], versions: [''], descriptions: [''] })).toThrow();
    expect(() => PackageIndex.fromJSON(null)).toThrow();
    expect(PackageIndex.fromJSON({ format: 1, attrs: [], versions: [], descriptions: [] }).size).toBe(0);
  });
});
