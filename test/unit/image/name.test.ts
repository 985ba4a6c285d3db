import { describe, expect, it } from 'vitest';
import { InvalidImageNameError, InvalidTagError } from '../../../src/errors.js';
import { AMD64, ARM64, parseImageName } from '../../../src/image/name.js';

describe('parseImageName', () => {
  it.each([
    ['htop', ['cacert', 'htop', 'iana-etc']],
    ['git/htop', ['cacert', 'git', 'htop', 'iana-etc']],
    ['htop/git', ['cacert', 'git', 'htop', 'iana-etc']],
    ['htop/htop/cacert', ['cacert', 'htop', 'iana-etc']],
    ['shell', ['bashInteractive', 'cacert', 'coreutils', 'iana-etc', 'moreutils', 'nano']],
    ['shell/htop', ['bashInteractive', 'cacert', 'coreutils', 'htop', 'iana-etc', 'moreutils', 'nano']],
    ['tools.greet/7zip', ['7zip', 'cacert', 'iana-etc', 'tools.greet']],
  ])('%s -> %j', (name, packages) => {
    const spec = parseImageName(name, 'latest');
    expect(spec.packages).toEqual(packages);
    expect(spec.arch).toEqual(AMD64);
    expect(spec.name).toBe(name);
  });

  it('is insensitive to package order, so both orders share one image', () => {
    expect(parseImageName('jq/hello', 'latest').packages).toEqual(parseImageName('hello/jq', 'latest').packages);
  });

  it('recognises arm64 and shell only at the front', () => {
    const a = parseImageName('arm64/shell/htop', 'latest');
    expect(a.arch).toEqual(ARM64);
    expect(a.packages).toContain('bashInteractive');
    // Behind a package they are ordinary package names.
    const b = parseImageName('htop/arm64/shell', 'latest');
    expect(b.arch).toEqual(AMD64);
    expect(b.packages).toEqual(['arm64', 'cacert', 'htop', 'iana-etc', 'shell']);
  });

  it('amd64/ and arm64/ pin the platform; without them the default platform is used, unpinned', () => {
    expect(parseImageName('amd64/htop', 'latest')).toMatchObject({ arch: AMD64, pinned: true, packages: ['cacert', 'htop', 'iana-etc'] });
    expect(parseImageName('arm64/htop', 'latest', AMD64)).toMatchObject({ arch: ARM64, pinned: true });
    expect(parseImageName('htop', 'latest', ARM64)).toMatchObject({ arch: ARM64, pinned: false });
    expect(parseImageName('shell/amd64/htop', 'latest', ARM64)).toMatchObject({ arch: AMD64, pinned: true });
    // The same packages whatever the platform: the key adds the platform.
    expect(parseImageName('arm64/htop', 'latest').packages).toEqual(parseImageName('htop', 'latest').packages);
  });

  it('keeps the tag', () => {
    expect(parseImageName('hello', 'v1.2_rc-3').tag).toBe('v1.2_rc-3');
  });

  it.each([
    ['Shell/HTOP', /lowercase/],
    ['../etc', /path component "\.\."/],
    ['a//b', /empty path component/],
    ['/htop', /empty path component/],
    ['htop/', /empty path component/],
    ['-htop', /lowercase/],
    ['htop.', /lowercase/],
    ['', /empty/],
    ['a'.repeat(300), /300 characters long; the limit is 255/],
  ])('rejects the name %j', (name, reason) => {
    expect(() => parseImageName(name, 'latest')).toThrow(InvalidImageNameError);
    expect(() => parseImageName(name, 'latest')).toThrow(reason);
  });

  it('accepts a name of exactly 255 characters', () => {
    const name = Array.from({ length: 63 }, () => 'abc').join('/') + '/abc';
    expect(name.length).toBe(255);
    expect(() => parseImageName(name, 'latest')).not.toThrow();
  });

  it.each(['feature/x', '.hidden', '-x', '', 'a'.repeat(129), 'v1 2'])('rejects the tag %j', (tag) => {
    expect(() => parseImageName('htop', tag)).toThrow(InvalidTagError);
  });
});
