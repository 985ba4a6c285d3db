import { describe, expect, it } from 'vitest';
import { UsageError, buildEnv, defaultCacheDir, defaultReference, parseBuildArgs, parseReference, splitNameTag, summaryLine, type BuildSummary } from '../../../src/cli/build.js';
import { parseConfig } from '../../../src/config.js';
import { AMD64, ARM64 } from '../../../src/image/name.js';

describe('parseBuildArgs', () => {
  it('reads NAME[:TAG], the output (made absolute) and the defaults', () => {
    expect(parseBuildArgs(['shell/htop', '-o', 'img.tar'], '/work')).toEqual({
      name: 'shell/htop',
      tag: 'latest',
      output: '/work/img.tar',
      outputArg: 'img.tar',
      format: 'docker-archive',
      platform: undefined,
      references: [],
      cacheDir: undefined,
      quiet: false,
      json: false,
    });
  });

  it('reads every option', () => {
    const a = parseBuildArgs(
      ['jq:v1', '--output', '/o/x', '--format', 'oci', '--platform', 'linux/arm64', '-t', 'example.com:5000/a/b:c', '--tag', 'jq', '--cache-dir', 'c', '-q', '--json'],
      '/w',
    );
    expect(a).toMatchObject({ name: 'jq', tag: 'v1', output: '/o/x', format: 'oci', platform: ARM64, references: ['example.com:5000/a/b:c', 'jq:latest'], cacheDir: '/w/c', quiet: true, json: true });
    expect(parseBuildArgs(['jq', '-o', 'x', '--platform', 'amd64'])).toMatchObject({ platform: AMD64 });
    expect(parseBuildArgs(['jq', '-o', 'x', '--platform', 'linux/arm64/v8'])).toMatchObject({ platform: ARM64 });
    expect(parseBuildArgs(['--help'])).toEqual({ help: true });
    expect(parseBuildArgs(['-h'])).toEqual({ help: true });
  });

  it.each([
    [[], /an image NAME is required/],
    [['a', 'b', '-o', 'x'], /one image at a time, not 2: a b/],
    [['jq'], /--output is required/],
    [['jq', '-o', ''], /--output is required/],
    [['jq', '-o', 'x', '--format', 'tar'], /--format "tar" is not a format \(use docker-archive, oci-archive, oci\)/],
    [['jq', '-o', 'x', '--platform', 'linux/riscv64'], /--platform "linux\/riscv64" is not a platform nixery-ts builds \(use linux\/amd64 or linux\/arm64\)/],
    [['jq', '-o', 'x', '--nope'], /Unknown option '--nope'/],
    [['Jq', '-o', 'x'], /invalid image name "Jq"/],
    [['jq:', '-o', 'x'], /invalid tag ""/],
    [['jq', '-o', 'x', '-t', 'UPPER/case'], /--tag "UPPER\/case" is not an image reference/],
    [['jq', '-o', 'x', '--cache-dir', ''], /--cache-dir is empty/],
  ])('refuses %j', (argv, message) => {
    expect(() => parseBuildArgs(argv)).toThrow(UsageError);
    expect(() => parseBuildArgs(argv)).toThrow(message);
  });
});

describe('names', () => {
  it('splits NAME[:TAG]', () => {
    expect(splitNameTag('shell/git/htop')).toEqual({ name: 'shell/git/htop', tag: 'latest' });
    expect(splitNameTag('arm64/jq:Release_1.0')).toEqual({ name: 'arm64/jq', tag: 'Release_1.0' });
    expect(() => splitNameTag('a//b')).toThrow(/empty path component/);
    expect(() => splitNameTag('jq:-x')).toThrow(UsageError);
  });

  it('checks references as docker and podman accept them, adding :latest', () => {
    expect(parseReference('localhost/shell/htop')).toBe('localhost/shell/htop:latest');
    expect(parseReference('localhost:5000/a:b')).toBe('localhost:5000/a:b');
    expect(parseReference('registry.example.com/team/tool:1.2.3')).toBe('registry.example.com/team/tool:1.2.3');
    expect(parseReference('jq')).toBe('jq:latest');
    expect(() => parseReference('jq@sha256:abc')).toThrow(/a digest cannot be a tag/);
    expect(() => parseReference('Foo/bar')).toThrow(/must be lowercase/);
    expect(() => parseReference('Example.com/bar')).toThrow(/invalid registry host "Example.com"/);
    expect(() => parseReference('a/b:')).toThrow(/invalid tag ""/);
    expect(() => parseReference('a/-b')).toThrow(UsageError);
  });

  it('names an image without --tag localhost/NAME:TAG, which docker and podman both keep as given', () => {
    expect(defaultReference('shell/htop', 'latest')).toBe('localhost/shell/htop:latest');
    expect(parseReference(defaultReference('arm64/jq', 'v1'))).toBe('localhost/arm64/jq:v1');
  });
});

describe('defaultCacheDir', () => {
  it('follows XDG_CACHE_HOME when it is absolute, else ~/.cache', () => {
    expect(defaultCacheDir({ XDG_CACHE_HOME: '/x/cache', HOME: '/home/u' })).toBe('/x/cache/nixery-ts');
    expect(defaultCacheDir({ XDG_CACHE_HOME: 'relative', HOME: '/home/u' })).toBe('/home/u/.cache/nixery-ts');
    expect(defaultCacheDir({ HOME: '/home/u' })).toBe('/home/u/.cache/nixery-ts');
  });
});

describe('buildEnv', () => {
  it('makes the cache directory filesystem storage and drops the server-only variables, so their values cannot stop a build', () => {
    const env = buildEnv(
      { NIXERY_PKGS_PATH: '/p', NIXERY_STORAGE_BACKEND: 'gcs', GCS_BUCKET: 'b', STORAGE_PATH: '/srv', PORT: 'eighty', NIXERY_GC_GRACE: 'soon', NIXERY_LAYER_BUDGET: '20' },
      '/c',
    );
    expect(env).toEqual({ NIXERY_PKGS_PATH: '/p', NIXERY_STORAGE_BACKEND: 'filesystem', STORAGE_PATH: '/c', NIXERY_LAYER_BUDGET: '20', NIXERY_MAX_PACKAGES: '10000' });
    const config = parseConfig(env);
    expect(config.storage).toEqual({ kind: 'filesystem', path: '/c' });
    expect(config.layerBudget).toBe(20);
  });

  it('keeps a package limit that is set', () => {
    expect(buildEnv({ NIXERY_MAX_PACKAGES: '5' }, '/c').NIXERY_MAX_PACKAGES).toBe('5');
  });
});

describe('summaryLine', () => {
  it('says where, what and how much', () => {
    const s: BuildSummary = {
      image: 'shell/htop',
      tag: 'latest',
      references: ['localhost/shell/htop:latest'],
      platform: 'linux/amd64',
      revision: 'path:x',
      manifestDigest: `sha256:${'a'.repeat(64)}`,
      dockerManifestDigest: `sha256:${'b'.repeat(64)}`,
      configDigest: `sha256:${'c'.repeat(64)}`,
      layers: [
        { digest: `sha256:${'1'.repeat(64)}`, size: 5_000_000, reused: true },
        { digest: `sha256:${'2'.repeat(64)}`, size: 2_300_000, reused: false },
      ],
      totalBytes: 7_300_000,
      cached: false,
      output: '/w/img.tar',
      format: 'docker-archive',
      outputBytes: 7_400_000,
      seconds: 1.2,
    };
    expect(summaryLine(s)).toBe(`wrote /w/img.tar (docker-archive): localhost/shell/htop:latest linux/amd64, 2 layers (1 reused), 7.3 MB, manifest sha256:${'a'.repeat(64)}`);
  });
});
