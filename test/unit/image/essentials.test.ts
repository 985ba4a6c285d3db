import { describe, expect, it } from 'vitest';
import { essentialEntries } from '../../../src/image/essentials.js';
import { imageLabels, mainProgram } from '../../../src/image/labels.js';

const text = (e: { read?: () => Buffer }) => e.read!().toString();

describe('essentialEntries', () => {
  it('gives root and nobody, files-only name service, and a home for root', () => {
    const entries = essentialEntries({ nonroot: false }, () => false);
    expect(entries.map((e) => e.name)).toEqual(['etc', 'etc/group', 'etc/nsswitch.conf', 'etc/passwd', 'root']);
    const passwd = entries.find((e) => e.name === 'etc/passwd')!;
    expect(text(passwd)).toBe('root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/false\n');
    expect(passwd.size).toBe(text(passwd).length);
    expect(text(entries.find((e) => e.name === 'etc/group')!)).toBe('root:x:0:\nnobody:x:65534:\n');
    expect(entries.every((e) => (e.uid ?? 0) === 0)).toBe(true);
  });

  it('with nonroot adds the user and group 65532 and a home it owns', () => {
    const entries = essentialEntries({ nonroot: true }, () => false);
    expect(text(entries.find((e) => e.name === 'etc/passwd')!)).toContain('nonroot:x:65532:65532:nonroot:/home/nonroot:/bin/sh\n');
    expect(text(entries.find((e) => e.name === 'etc/group')!)).toContain('nonroot:x:65532:\n');
    expect(entries.find((e) => e.name === 'home/nonroot')).toMatchObject({ type: 'directory', mode: 0o755, uid: 65532, gid: 65532 });
  });

  it('leaves a package\'s own files alone', () => {
    const entries = essentialEntries({ nonroot: false }, (n) => n === 'etc' || n === 'etc/passwd');
    expect(entries.map((e) => e.name)).toEqual(['etc/group', 'etc/nsswitch.conf', 'root']);
  });

  it('is the same bytes every time', () => {
    const a = essentialEntries({ nonroot: true }, () => false).map((e) => [e.name, e.read?.().toString()]);
    const b = essentialEntries({ nonroot: true }, () => false).map((e) => [e.name, e.read?.().toString()]);
    expect(a).toEqual(b);
  });
});

describe('imageLabels and mainProgram', () => {
  it('labels title, revision, the fixed creation time, packages with versions, and a public source only', () => {
    const packages = [
      { name: 'htop', out: '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-htop-3.2.2' },
      { name: 'cacert', out: '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-cacert-debian' },
    ];
    expect(imageLabels({ title: 'htop', revision: 'abc', sourceUrl: 'https://example.org/pkgs.git', packages })).toEqual({
      'org.opencontainers.image.created': '1970-01-01T00:00:01Z',
      'org.opencontainers.image.description': 'Nix packages: cacert, htop 3.2.2',
      'org.opencontainers.image.revision': 'abc',
      'org.opencontainers.image.source': 'https://example.org/pkgs.git',
      'org.opencontainers.image.title': 'htop',
    });
    expect(imageLabels({ title: 'htop', revision: 'abc', sourceUrl: undefined, packages })).not.toHaveProperty('org.opencontainers.image.source');
  });

  it('prefers meta.mainProgram, else the only program in bin/, else none', () => {
    expect(mainProgram('hello', ['a', 'b'])).toBe('hello');
    expect(mainProgram(undefined, ['jq'])).toBe('jq');
    expect(mainProgram(undefined, ['a', 'b'])).toBeUndefined();
    expect(mainProgram(undefined, [])).toBeUndefined();
    expect(mainProgram('../x', ['jq'])).toBe('jq');
  });
});
