import { describe, expect, it } from 'vitest';
import { DEFAULT_LAYER_BUDGET, loadConfig, parseConfig, type Env } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';

const base: Env = { NIXERY_PKGS_PATH: '/srv/pkgs', STORAGE_PATH: '/var/lib/nixery' };

function problems(env: Env): string[] {
  try {
    parseConfig(env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return [...(e as ConfigError).problems];
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfig', () => {
  it('gives the documented defaults for a minimal configuration', () => {
    const c = parseConfig(base);
    expect(c).toMatchObject({
      host: '0.0.0.0',
      port: 8080,
      pkgs: { kind: 'path', path: '/srv/pkgs' },
      storage: { kind: 'filesystem', path: '/var/lib/nixery' },
      nixTimeoutSeconds: 60,
      layerBudget: DEFAULT_LAYER_BUDGET,
      offline: false,
      popularityUrl: undefined,
      webDir: undefined,
    });
    expect(c.layerBudget).toBeLessThan(94);
  });

  it('reads every variable Nixery knows with the same meaning', () => {
    const c = parseConfig({
      PORT: '5000',
      NIXERY_HOST: '127.0.0.1',
      NIXERY_CHANNEL: 'nixos-unstable',
      NIXERY_STORAGE_BACKEND: 'gcs',
      GCS_BUCKET: 'layers',
      GOOGLE_APPLICATION_CREDENTIALS: '/secrets/key.json',
      NIX_TIMEOUT: '120',
      NIX_POPULARITY_URL: 'https://example.org/popularity.json',
      WEB_DIR: '/srv/web',
      NIXERY_LAYER_BUDGET: '40',
      NIXERY_OFFLINE: 'true',
    });
    expect(c).toMatchObject({
      host: '127.0.0.1',
      port: 5000,
      pkgs: { kind: 'channel', channel: 'nixos-unstable' },
      storage: { kind: 'gcs', bucket: 'layers', credentialsFile: '/secrets/key.json', signedUrlTtlSeconds: 300 },
      nixTimeoutSeconds: 120,
      popularityUrl: 'https://example.org/popularity.json',
      webDir: '/srv/web',
      layerBudget: 40,
      offline: true,
    });
  });

  it('reads the channel templates and the revision TTL', () => {
    const c = parseConfig({
      ...base,
      NIXERY_PKGS_PATH: undefined,
      NIXERY_CHANNEL: 'nixos-24.05',
      NIXERY_CHANNEL_URL: 'http://mirror/{rev}.tar.gz',
      NIXERY_CHANNEL_REVISION_URL: 'http://mirror/{channel}/rev',
      NIXERY_REVISION_TTL: '5',
    });
    expect(c.pkgs).toEqual({
      kind: 'channel',
      channel: 'nixos-24.05',
      urlTemplate: 'http://mirror/{rev}.tar.gz',
      revisionUrlTemplate: 'http://mirror/{channel}/rev',
    });
    expect(c.revisionTtlSeconds).toBe(5);
    expect(parseConfig(base).revisionTtlSeconds).toBe(30);
    expect(problems({ ...base, NIXERY_CHANNEL_REVISION_URL: 'http://x/rev' })).toEqual([
      'NIXERY_CHANNEL_REVISION_URL: "http://x/rev" must contain the placeholder {channel}',
    ]);
  });

  it('accepts a git repository as the package source', () => {
    expect(parseConfig({ ...base, NIXERY_PKGS_PATH: undefined, NIXERY_PKGS_REPO: 'git@github.com:org/pkgs.git' }).pkgs)
      .toEqual({ kind: 'git', repository: 'git@github.com:org/pkgs.git' });
  });

  it('infers the storage backend from STORAGE_PATH or GCS_BUCKET when it is not named', () => {
    expect(parseConfig(base).storage.kind).toBe('filesystem');
    expect(parseConfig({ NIXERY_PKGS_PATH: '/p', GCS_BUCKET: 'b' }).storage.kind).toBe('gcs');
  });

  it('rejects two package sources, naming both', () => {
    expect(problems({ ...base, NIXERY_CHANNEL: 'nixos-unstable' })).toEqual([
      'NIXERY_CHANNEL: only one package source may be set, but NIXERY_CHANNEL and NIXERY_PKGS_PATH are set',
    ]);
  });

  it('rejects no package source', () => {
    expect(problems({ STORAGE_PATH: '/s' })).toEqual([
      'NIXERY_CHANNEL: no package source: set one of NIXERY_CHANNEL, NIXERY_PKGS_REPO or NIXERY_PKGS_PATH',
    ]);
  });

  it('rejects NIX_TIMEOUT=abc and out-of-range numbers', () => {
    expect(problems({ ...base, NIX_TIMEOUT: 'abc' })).toEqual(['NIX_TIMEOUT: "abc" is not a whole number']);
    expect(problems({ ...base, NIX_TIMEOUT: '0' })).toEqual(['NIX_TIMEOUT: 0 is out of range (1..86400)']);
    expect(problems({ ...base, PORT: '70000' })).toEqual(['PORT: 70000 is out of range (0..65535)']);
    expect(problems({ ...base, NIXERY_LAYER_BUDGET: '200' })).toEqual(['NIXERY_LAYER_BUDGET: 200 is out of range (2..125)']);
  });

  it('rejects an unknown storage backend and missing backend settings', () => {
    expect(problems({ ...base, NIXERY_STORAGE_BACKEND: 's3' })).toEqual([
      'NIXERY_STORAGE_BACKEND: "s3" is not a storage backend (use filesystem or gcs)',
    ]);
    expect(problems({ NIXERY_PKGS_PATH: '/p', NIXERY_STORAGE_BACKEND: 'gcs' })).toEqual([
      'GCS_BUCKET: required by the gcs storage backend',
    ]);
    expect(problems({ NIXERY_PKGS_PATH: '/p', NIXERY_STORAGE_BACKEND: 'filesystem' })).toEqual([
      'STORAGE_PATH: required by the filesystem storage backend',
    ]);
    expect(problems({ NIXERY_PKGS_PATH: '/p' })).toEqual([
      'NIXERY_STORAGE_BACKEND: not set: use filesystem (with STORAGE_PATH) or gcs (with GCS_BUCKET)',
    ]);
  });

  it('rejects relative paths, bad URLs and bad booleans', () => {
    expect(problems({ ...base, STORAGE_PATH: 'data' })).toEqual(['STORAGE_PATH: "data" must be an absolute path']);
    expect(problems({ ...base, NIX_POPULARITY_URL: 'ftp://x/y' })).toEqual([
      'NIX_POPULARITY_URL: "ftp://x/y" must use http: or https: or file:',
    ]);
    expect(problems({ ...base, NIX_POPULARITY_URL: 'not a url' })).toEqual(['NIX_POPULARITY_URL: "not a url" is not a URL']);
    expect(problems({ ...base, NIXERY_OFFLINE: 'maybe' })).toEqual([
      'NIXERY_OFFLINE: "maybe" is not a boolean (use true or false)',
    ]);
    expect(problems({ ...base, NIXERY_CHANNEL_URL: 'https://x/y.tar.gz' })).toEqual([
      'NIXERY_CHANNEL_URL: "https://x/y.tar.gz" must contain the placeholder {rev}',
    ]);
  });

  it('reports every problem at once, one line each naming its variable', () => {
    const p = problems({ NIXERY_PKGS_PATH: 'rel', NIXERY_CHANNEL: 'c', NIX_TIMEOUT: 'abc', PORT: 'x' });
    expect(p).toHaveLength(5);
    for (const line of p) {
      expect(line).toMatch(/^[A-Z_]+: /);
      expect(line).not.toContain('\n');
    }
    expect(p.map((l) => l.split(':')[0]).sort()).toEqual(
      ['NIXERY_CHANNEL', 'NIXERY_PKGS_PATH', 'NIXERY_STORAGE_BACKEND', 'NIX_TIMEOUT', 'PORT'].sort(),
    );
  });

  it('passes NIXERY_IMPORT_ARGS on as a JSON object and rejects anything else', () => {
    expect(parseConfig({ ...base, NIXERY_IMPORT_ARGS: '{"config":{"allowUnfree":true}}' }).importArgs).toEqual({
      config: { allowUnfree: true },
    });
    expect(parseConfig(base).importArgs).toEqual({});
    for (const bad of ['[1]', 'nope', '3']) {
      expect(problems({ ...base, NIXERY_IMPORT_ARGS: bad })).toEqual([
        'NIXERY_IMPORT_ARGS: must be a JSON object, e.g. {"config":{"allowUnfree":true}}',
      ]);
    }
  });

  it('treats empty variables as unset', () => {
    expect(parseConfig({ ...base, NIXERY_CHANNEL: '', NIX_TIMEOUT: ' ' }).nixTimeoutSeconds).toBe(60);
  });
});

describe('loadConfig', () => {
  it('adds probe problems (a storage directory without user xattrs) to the parse problems', async () => {
    const err = await loadConfig(
      { ...base, NIX_TIMEOUT: 'abc' },
      { storageDirectory: async (p) => `the filesystem of ${p} does not support user extended attributes` },
    ).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).problems).toEqual([
      'NIX_TIMEOUT: "abc" is not a whole number',
      'STORAGE_PATH: the filesystem of /var/lib/nixery does not support user extended attributes',
    ]);
  });

  it('passes when every probe is happy', async () => {
    const c = await loadConfig(base, { storageDirectory: async () => undefined, packagePath: async () => undefined });
    expect(c.storage).toEqual({ kind: 'filesystem', path: '/var/lib/nixery' });
  });
});

describe('NIXERY_LOG_LEVEL and NIX_CONFIG', () => {
  it('takes a pino level, info by default, in any case', () => {
    expect(parseConfig(base).logLevel).toBe('info');
    for (const level of ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const) {
      expect(parseConfig({ ...base, NIXERY_LOG_LEVEL: level }).logLevel).toBe(level);
    }
    expect(parseConfig({ ...base, NIXERY_LOG_LEVEL: ' DEBUG ' }).logLevel).toBe('debug');
    expect(parseConfig({ ...base, NIXERY_LOG_LEVEL: '' }).logLevel).toBe('info');
  });

  it('refuses any other level with one line naming the variable and the accepted levels', () => {
    expect(problems({ ...base, NIXERY_LOG_LEVEL: 'verbose' })).toEqual([
      'NIXERY_LOG_LEVEL: "verbose" is not a log level (use fatal, error, warn, info, debug, trace or silent)',
    ]);
    // Collected with the other problems, not thrown on its own.
    expect(problems({ ...base, NIXERY_LOG_LEVEL: '30', PORT: 'x' }).map((l) => l.split(':')[0]).sort()).toEqual(['NIXERY_LOG_LEVEL', 'PORT']);
  });

  it('carries NIX_CONFIG as given, and an empty one as unset', () => {
    expect(parseConfig(base).nixConfig).toBeUndefined();
    expect(parseConfig({ ...base, NIX_CONFIG: '' }).nixConfig).toBeUndefined();
    expect(parseConfig({ ...base, NIX_CONFIG: '  \n' }).nixConfig).toBeUndefined();
    const lines = 'substituters =\nsandbox = false\nextra-experimental-features = nix-command';
    expect(parseConfig({ ...base, NIX_CONFIG: lines }).nixConfig).toBe(lines);
  });
});

describe('access control and admission', () => {
  it('defaults: anyone may build without htpasswd, nobody anonymous with it; admission limits as documented', () => {
    expect(parseConfig(base)).toMatchObject({
      htpasswdFile: undefined,
      anonymous: 'build',
      tls: undefined,
      admission: { maxBuilds: 2, maxQueuedBuilds: 32, maxPackages: 64, failedBuildTtlSeconds: 60 },
    });
    expect(parseConfig({ ...base, NIXERY_AUTH_HTPASSWD: '/etc/nixery/htpasswd' })).toMatchObject({ htpasswdFile: '/etc/nixery/htpasswd', anonymous: 'none' });
    expect(parseConfig({ ...base, NIXERY_AUTH_HTPASSWD: '/h', NIXERY_ANONYMOUS: 'PULL' }).anonymous).toBe('pull');
    expect(parseConfig({ ...base, NIXERY_TLS_CERT: '/t/tls.crt', NIXERY_TLS_KEY: '/t/tls.key' }).tls).toEqual({ certFile: '/t/tls.crt', keyFile: '/t/tls.key' });
  });

  it('refuses inconsistent settings, one line each', () => {
    expect(problems({ ...base, NIXERY_ANONYMOUS: 'pull' })).toEqual(['NIXERY_ANONYMOUS: pull needs logins, so NIXERY_AUTH_HTPASSWD must be set']);
    expect(problems({ ...base, NIXERY_AUTH_HTPASSWD: '/h', NIXERY_ANONYMOUS: 'some' })).toEqual([
      'NIXERY_ANONYMOUS: "some" is not an anonymous access policy (use build, pull or none)',
    ]);
    expect(problems({ ...base, NIXERY_TLS_CERT: '/t/tls.crt' })).toEqual(['NIXERY_TLS_KEY: NIXERY_TLS_CERT and NIXERY_TLS_KEY must be set together']);
    expect(problems({ ...base, NIXERY_AUTH_HTPASSWD: 'relative/htpasswd' })).toEqual(['NIXERY_AUTH_HTPASSWD: "relative/htpasswd" must be an absolute path']);
    expect(problems({ ...base, NIXERY_MAX_BUILDS: '0' })).toEqual(['NIXERY_MAX_BUILDS: 0 is out of range (1..1024)']);
  });

  it('refuses public blob URLs behind authentication: gcs with htpasswd needs a signing key', () => {
    const gcs = { NIXERY_PKGS_PATH: '/srv/pkgs', GCS_BUCKET: 'layers', NIXERY_AUTH_HTPASSWD: '/h' };
    expect(problems(gcs)).toEqual([
      'GOOGLE_APPLICATION_CREDENTIALS: required with NIXERY_AUTH_HTPASSWD and gcs storage: without a signing key blobs redirect to public object URLs that anyone can fetch',
    ]);
    expect(parseConfig({ ...gcs, GOOGLE_APPLICATION_CREDENTIALS: '/k.json' }).storage).toMatchObject({ kind: 'gcs', credentialsFile: '/k.json' });
  });
});

describe('layer packing', () => {
  it('packs on every core with a 256 MiB piece cache unless told otherwise; sizes take k/M/G units', () => {
    expect(parseConfig(base).pack).toEqual({ threads: undefined, cacheBytes: 256 * 1024 * 1024 });
    expect(parseConfig({ ...base, NIXERY_PACK_THREADS: '3', NIXERY_PACK_CACHE_BYTES: '0' }).pack).toEqual({ threads: 3, cacheBytes: 0 });
    expect(parseConfig({ ...base, NIXERY_PACK_CACHE_BYTES: '512M' }).pack.cacheBytes).toBe(512 * 1024 * 1024);
    expect(parseConfig({ ...base, NIXERY_PACK_CACHE_BYTES: '2GiB' }).pack.cacheBytes).toBe(2 * 1024 ** 3);
    expect(parseConfig({ ...base, NIXERY_PACK_CACHE_BYTES: '100000' }).pack.cacheBytes).toBe(100_000);
  });

  it('refuses a thread count of 0 and a size without a number, naming the variable', () => {
    expect(problems({ ...base, NIXERY_PACK_THREADS: '0' })).toEqual(['NIXERY_PACK_THREADS: 0 is out of range (1..256)']);
    expect(problems({ ...base, NIXERY_PACK_CACHE_BYTES: 'lots' })).toEqual([
      'NIXERY_PACK_CACHE_BYTES: "lots" is not a byte count (e.g. 268435456, 256M or 2GiB)',
    ]);
  });
});
