/**
 * Configuration from environment variables. Nixery's variable names keep
 * their meaning so that an existing deployment moves over unchanged; our
 * additions are prefixed NIXERY_. `parseConfig` is pure: it reads a plain
 * record, collects every problem and throws one ConfigError with one line per
 * problem, each naming the variable. Checks that need I/O (does the storage
 * directory support user xattrs?) are passed in as probes to `loadConfig`.
 */
import { ConfigError } from './errors.js';
import { parseMinFree, type MinFree } from './gc/nix-store.js';
import { AMD64, ARCHITECTURES, ARM64, parsePlatform, platformName, type Architecture } from './image/name.js';

export type Env = Readonly<Record<string, string | undefined>>;

export type PackageSource =
  | { readonly kind: 'channel'; readonly channel: string; readonly urlTemplate: string; readonly revisionUrlTemplate: string }
  | { readonly kind: 'git'; readonly repository: string }
  | { readonly kind: 'path'; readonly path: string };

export type StorageConfig =
  | { readonly kind: 'filesystem'; readonly path: string }
  | {
      readonly kind: 'gcs';
      readonly bucket: string;
      /** Service-account key used to sign blob URLs; without it blobs redirect to public object URLs. */
      readonly credentialsFile: string | undefined;
      readonly signedUrlTtlSeconds: number;
      /** STORAGE_EMULATOR_HOST: a GCS-compatible endpoint instead of Google's (emulators, tests). */
      readonly apiEndpoint: string | undefined;
    };

/** pino's levels; `silent` logs nothing. */
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  readonly host: string;
  readonly port: number;
  readonly pkgs: PackageSource;
  readonly storage: StorageConfig;
  /** Seconds a Nix build may run (and stay silent) before it is stopped. */
  readonly nixTimeoutSeconds: number;
  readonly popularityUrl: string | undefined;
  /** Directory of the start page; undefined means the bundled web/. */
  readonly webDir: string | undefined;
  /** Maximum number of layers in an image, the symlink layer included. */
  readonly layerBudget: number;
  /** No binary caches: every Nix call gets `substituters =` (for local package sets). */
  readonly offline: boolean;
  /** Directory holding the prepare-image Nix expressions; undefined means the bundled one. */
  readonly prepareImageDir: string | undefined;
  /** Seconds a resolved git ref or channel revision is trusted before asking again. */
  readonly revisionTtlSeconds: number;
  /** Seconds running builds may still finish after SIGTERM before they are aborted. */
  readonly shutdownGraceSeconds: number;
  /** Extra arguments for importing the package set, e.g. `{"config":{"allowUnfree":true}}`. */
  readonly importArgs: Readonly<Record<string, unknown>>;
  /** NIXERY_LOG_LEVEL: the least severe level that is logged. */
  readonly logLevel: LogLevel;
  /** NIX_CONFIG as given (nix.conf lines), passed on to every Nix process; undefined when unset or empty. */
  readonly nixConfig: string | undefined;
  /** NIXERY_AUTH_HTPASSWD: bcrypt htpasswd file; undefined means no authentication. */
  readonly htpasswdFile: string | undefined;
  /** NIXERY_ANONYMOUS: what a request without credentials may do (default: build without htpasswd, none with it). */
  readonly anonymous: AnonymousPolicy;
  /** NIXERY_TLS_CERT / NIXERY_TLS_KEY: PEM files; the server speaks HTTPS when set. */
  readonly tls: { readonly certFile: string; readonly keyFile: string } | undefined;
  /** Build admission: builds at once, builds waiting, packages per image, seconds a failed build is remembered. */
  readonly admission: AdmissionConfig;
  /** Layer packing: compressions at once (undefined: one per core) and the piece cache's size in bytes (0: off). */
  readonly pack: { readonly threads: number | undefined; readonly cacheBytes: number };
  /** Garbage collection: retention (all optional) and the timings that keep it safe. */
  readonly gc: GcConfig;
  /**
   * NIXERY_PLATFORMS, in index order; more than one serves an index per tag.
   * `defaultPlatform` is the one a client that accepts no index gets: the
   * server's own when listed, else the first listed.
   */
  readonly platforms: readonly Architecture[];
  readonly defaultPlatform: Architecture;
}

export interface GcConfig {
  /** NIXERY_GC_INTERVAL: seconds between passes; undefined runs none (the `gc` command still can). */
  readonly intervalSeconds: number | undefined;
  /** NIXERY_GC_KEEP_DAYS: images not pulled for this long are dropped. */
  readonly keepDays: number | undefined;
  /** NIXERY_GC_MAX_BYTES: least recently pulled images are dropped while blobs exceed this. */
  readonly maxBytes: number | undefined;
  /** NIXERY_GC_GRACE: no blob used more recently is deleted. */
  readonly graceSeconds: number;
  /** NIXERY_GC_USAGE_FLUSH: seconds between writes of pull times to storage. */
  readonly usageFlushSeconds: number;
  /** NIXERY_GC_POLL: seconds between reads of the GC generation (a pass waits two of them before deleting). */
  readonly pollSeconds: number;
  /** NIXERY_NIX_GC_MIN_FREE: collect the Nix store when its filesystem has less free than this. */
  readonly nixMinFree: MinFree | undefined;
}

export const ANONYMOUS_POLICIES = ['build', 'pull', 'none'] as const;
/** build: anyone may pull and build; pull: anonymous pulls of built images only; none: a login for everything. */
export type AnonymousPolicy = (typeof ANONYMOUS_POLICIES)[number];

export interface AdmissionConfig {
  readonly maxBuilds: number;
  readonly maxQueuedBuilds: number;
  readonly maxPackages: number;
  readonly failedBuildTtlSeconds: number;
}

/** The default channel archive, as in Nixery: GitHub's tarball of a nixpkgs branch or commit. */
const DEFAULT_CHANNEL_URL = 'https://github.com/NixOS/nixpkgs/archive/{rev}.tar.gz';
/** Where a channel name is resolved to its current nixpkgs commit. */
const DEFAULT_CHANNEL_REVISION_URL = 'https://channels.nixos.org/{channel}/git-revision';

/**
 * Nixery uses 94 layers, which leaves images built `FROM` ours only ~30 layers
 * under the overlay limit of about 127. We default lower to keep headroom.
 */
export const DEFAULT_LAYER_BUDGET = 64;
const MAX_LAYER_BUDGET = 125;

/**
 * Compressed store-path pieces kept for reuse by differently grouped layers.
 * 256 MiB holds the compressed closures of a few hundred typical images.
 */
export const DEFAULT_PACK_CACHE_BYTES = 256 * 1024 * 1024;

/** Per-variable parsing: every helper records a problem and returns a fallback. */
class Reader {
  readonly problems: string[] = [];
  constructor(private readonly env: Env) {}

  /** Unset and empty are the same: an empty variable in a Kubernetes manifest means "not set". */
  str(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === '' ? undefined : v.trim();
  }

  problem(name: string, reason: string): void {
    this.problems.push(`${name}: ${reason}`);
  }

  int(name: string, def: number, min: number, max: number): number {
    const raw = this.str(name);
    if (raw === undefined) return def;
    if (!/^\d+$/.test(raw)) {
      this.problem(name, `${JSON.stringify(raw)} is not a whole number`);
      return def;
    }
    const n = Number(raw);
    if (n < min || n > max) {
      this.problem(name, `${n} is out of range (${min}..${max})`);
      return def;
    }
    return n;
  }

  bool(name: string, def: boolean): boolean {
    const raw = this.str(name);
    if (raw === undefined) return def;
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    this.problem(name, `${JSON.stringify(raw)} is not a boolean (use true or false)`);
    return def;
  }

  absolutePath(name: string): string | undefined {
    const raw = this.str(name);
    if (raw !== undefined && !raw.startsWith('/')) {
      this.problem(name, `${JSON.stringify(raw)} must be an absolute path`);
      return undefined;
    }
    return raw;
  }

  jsonObject(name: string): Record<string, unknown> {
    const raw = this.str(name);
    if (raw === undefined) return {};
    try {
      const v: unknown = JSON.parse(raw);
      if (typeof v === 'object' && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
    } catch {
      // reported below
    }
    this.problem(name, 'must be a JSON object, e.g. {"config":{"allowUnfree":true}}');
    return {};
  }

  /** A byte count: a whole number with an optional unit (k, M, G as powers of 1024; KiB, MiB, GiB too). */
  bytes(name: string, def: number): number {
    const raw = this.str(name);
    if (raw === undefined) return def;
    const m = /^(\d+)\s*([kmgt]?)(?:i?b)?$/i.exec(raw);
    if (!m) {
      this.problem(name, `${JSON.stringify(raw)} is not a byte count (e.g. 268435456, 256M or 2GiB)`);
      return def;
    }
    const n = Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase());
    if (!Number.isSafeInteger(n)) {
      this.problem(name, `${JSON.stringify(raw)} is too large`);
      return def;
    }
    return n;
  }

  /** A duration in seconds: a whole number, optionally with a unit ms, s, m, h or d. */
  duration(name: string, def: number | undefined, min = 0): number | undefined {
    const raw = this.str(name);
    if (raw === undefined) return def;
    const m = /^(\d+)\s*(ms|[smhd]?)$/i.exec(raw);
    if (!m) {
      this.problem(name, `${JSON.stringify(raw)} is not a duration (e.g. 90, 90s, 15m, 6h or 7d)`);
      return def;
    }
    const unit = (m[2] ?? '').toLowerCase() as '' | 'ms' | 's' | 'm' | 'h' | 'd';
    const n = Number(m[1]) * { '': 1, ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[unit];
    if (n < min) {
      this.problem(name, `${JSON.stringify(raw)} is shorter than ${min} s`);
      return def;
    }
    return n;
  }

  /** One of `choices`, compared case-insensitively; anything else is a problem naming them. */
  choice<T extends string>(name: string, choices: readonly T[], def: T, what: string): T {
    const raw = this.str(name);
    if (raw === undefined) return def;
    const v = choices.find((c) => c === raw.toLowerCase());
    if (v !== undefined) return v;
    const list = `${choices.slice(0, -1).join(', ')} or ${choices[choices.length - 1]}`;
    this.problem(name, `${JSON.stringify(raw)} is not ${what} (use ${list})`);
    return def;
  }

  /** The value exactly as given (no trimming), for settings passed on verbatim; blank is unset. */
  verbatim(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === '' ? undefined : v;
  }

  url(name: string, protocols: readonly string[]): string | undefined {
    const raw = this.str(name);
    if (raw === undefined) return undefined;
    let u: URL;
    try {
      u = new URL(raw);
    } catch {
      this.problem(name, `${JSON.stringify(raw)} is not a URL`);
      return undefined;
    }
    if (!protocols.includes(u.protocol)) {
      this.problem(name, `${JSON.stringify(raw)} must use ${protocols.join(' or ')}`);
      return undefined;
    }
    return raw;
  }
}

function parsePackageSource(r: Reader): PackageSource | undefined {
  const channel = r.str('NIXERY_CHANNEL');
  const repo = r.str('NIXERY_PKGS_REPO');
  const path = r.absolutePath('NIXERY_PKGS_PATH');
  const urlTemplate = r.str('NIXERY_CHANNEL_URL') ?? DEFAULT_CHANNEL_URL;
  if (!urlTemplate.includes('{rev}')) {
    r.problem('NIXERY_CHANNEL_URL', `${JSON.stringify(urlTemplate)} must contain the placeholder {rev}`);
  }
  const revisionUrlTemplate = r.str('NIXERY_CHANNEL_REVISION_URL') ?? DEFAULT_CHANNEL_REVISION_URL;
  if (!revisionUrlTemplate.includes('{channel}')) {
    r.problem('NIXERY_CHANNEL_REVISION_URL', `${JSON.stringify(revisionUrlTemplate)} must contain the placeholder {channel}`);
  }
  const set = [
    channel !== undefined && 'NIXERY_CHANNEL',
    repo !== undefined && 'NIXERY_PKGS_REPO',
    r.str('NIXERY_PKGS_PATH') !== undefined && 'NIXERY_PKGS_PATH',
  ].filter((x): x is string => typeof x === 'string');
  if (set.length === 0) {
    r.problem('NIXERY_CHANNEL', 'no package source: set one of NIXERY_CHANNEL, NIXERY_PKGS_REPO or NIXERY_PKGS_PATH');
    return undefined;
  }
  if (set.length > 1) {
    r.problem(set[0]!, `only one package source may be set, but ${set.join(' and ')} are set`);
    return undefined;
  }
  if (channel !== undefined) {
    if (!/^[A-Za-z0-9][A-Za-z0-9._\-]*$/.test(channel)) {
      r.problem('NIXERY_CHANNEL', `${JSON.stringify(channel)} is not a channel name or commit`);
      return undefined;
    }
    return { kind: 'channel', channel, urlTemplate, revisionUrlTemplate };
  }
  if (repo !== undefined) return { kind: 'git', repository: repo };
  if (path !== undefined) return { kind: 'path', path };
  return undefined;
}

function parseStorage(r: Reader): StorageConfig | undefined {
  const backend = r.str('NIXERY_STORAGE_BACKEND');
  const storagePath = r.absolutePath('STORAGE_PATH');
  const bucket = r.str('GCS_BUCKET');
  const credentialsFile = r.absolutePath('GOOGLE_APPLICATION_CREDENTIALS');
  const signedUrlTtlSeconds = r.int('NIXERY_SIGNED_URL_TTL', 300, 1, 7 * 24 * 3600);
  // Nixery requires the backend to be named; we infer it when only one is configured.
  const kind = backend ?? (r.str('STORAGE_PATH') !== undefined ? 'filesystem' : bucket !== undefined ? 'gcs' : undefined);
  switch (kind) {
    case undefined:
      r.problem('NIXERY_STORAGE_BACKEND', 'not set: use filesystem (with STORAGE_PATH) or gcs (with GCS_BUCKET)');
      return undefined;
    case 'filesystem':
      if (storagePath === undefined) {
        if (r.str('STORAGE_PATH') === undefined) r.problem('STORAGE_PATH', 'required by the filesystem storage backend');
        return undefined;
      }
      return { kind, path: storagePath };
    case 'gcs':
      if (bucket === undefined) {
        r.problem('GCS_BUCKET', 'required by the gcs storage backend');
        return undefined;
      }
      return { kind, bucket, credentialsFile, signedUrlTtlSeconds, apiEndpoint: r.url('STORAGE_EMULATOR_HOST', ['http:', 'https:']) };
    default:
      r.problem('NIXERY_STORAGE_BACKEND', `${JSON.stringify(kind)} is not a storage backend (use filesystem or gcs)`);
      return undefined;
  }
}

function parseAccess(r: Reader): Pick<Config, 'htpasswdFile' | 'anonymous' | 'tls'> {
  const htpasswdFile = r.absolutePath('NIXERY_AUTH_HTPASSWD');
  const anonymous = r.choice('NIXERY_ANONYMOUS', ANONYMOUS_POLICIES, r.str('NIXERY_AUTH_HTPASSWD') === undefined ? 'build' : 'none', 'an anonymous access policy');
  if (anonymous !== 'build' && r.str('NIXERY_AUTH_HTPASSWD') === undefined) {
    r.problem('NIXERY_ANONYMOUS', `${anonymous} needs logins, so NIXERY_AUTH_HTPASSWD must be set`);
  }
  const certFile = r.absolutePath('NIXERY_TLS_CERT');
  const keyFile = r.absolutePath('NIXERY_TLS_KEY');
  if ((r.str('NIXERY_TLS_CERT') === undefined) !== (r.str('NIXERY_TLS_KEY') === undefined)) {
    r.problem(r.str('NIXERY_TLS_CERT') === undefined ? 'NIXERY_TLS_CERT' : 'NIXERY_TLS_KEY', 'NIXERY_TLS_CERT and NIXERY_TLS_KEY must be set together');
  }
  return { htpasswdFile, anonymous, tls: certFile !== undefined && keyFile !== undefined ? { certFile, keyFile } : undefined };
}

/** The server's own platform. */
export function hostPlatform(arch: string = process.arch): Architecture {
  return arch === 'arm64' ? ARM64 : AMD64;
}

function parsePlatforms(r: Reader, host: Architecture): Pick<Config, 'platforms' | 'defaultPlatform'> {
  const raw = r.str('NIXERY_PLATFORMS');
  if (raw === undefined) return { platforms: [host], defaultPlatform: host };
  const chosen = new Set<Architecture>();
  for (const item of raw.split(',')) {
    const arch = parsePlatform(item);
    if (arch === undefined) {
      const known = ARCHITECTURES.map(platformName).join(' and ');
      r.problem('NIXERY_PLATFORMS', `${JSON.stringify(item.trim())} is not a platform this registry builds (use ${known}, comma-separated)`);
      return { platforms: [host], defaultPlatform: host };
    }
    if (chosen.has(arch)) {
      r.problem('NIXERY_PLATFORMS', `${platformName(arch)} is listed twice`);
      return { platforms: [host], defaultPlatform: host };
    }
    chosen.add(arch);
  }
  // Index order is fixed (amd64, arm64), so the order written changes no digest.
  const platforms = ARCHITECTURES.filter((a) => chosen.has(a));
  return { platforms, defaultPlatform: chosen.has(host) ? host : platforms[0]! };
}

function parseMinFreeVar(r: Reader): MinFree | undefined {
  const raw = r.str('NIXERY_NIX_GC_MIN_FREE');
  if (raw === undefined) return undefined;
  try {
    return parseMinFree(raw);
  } catch (e) {
    r.problem('NIXERY_NIX_GC_MIN_FREE', (e as Error).message);
    return undefined;
  }
}

export function parseConfig(env: Env): Config {
  const r = new Reader(env);
  const host = r.str('NIXERY_HOST') ?? '0.0.0.0';
  if (!/^[A-Za-z0-9.:\-\[\]]+$/.test(host)) r.problem('NIXERY_HOST', `${JSON.stringify(host)} is not a host name or address`);
  const config = {
    host,
    port: r.int('PORT', 8080, 0, 65535),
    pkgs: parsePackageSource(r),
    storage: parseStorage(r),
    nixTimeoutSeconds: r.int('NIX_TIMEOUT', 60, 1, 24 * 3600),
    popularityUrl: r.url('NIX_POPULARITY_URL', ['http:', 'https:', 'file:']),
    webDir: r.absolutePath('WEB_DIR'),
    layerBudget: r.int('NIXERY_LAYER_BUDGET', DEFAULT_LAYER_BUDGET, 2, MAX_LAYER_BUDGET),
    offline: r.bool('NIXERY_OFFLINE', false),
    prepareImageDir: r.absolutePath('NIXERY_PREPARE_IMAGE_DIR'),
    importArgs: r.jsonObject('NIXERY_IMPORT_ARGS'),
    revisionTtlSeconds: r.int('NIXERY_REVISION_TTL', 30, 0, 24 * 3600),
    // Kubernetes waits 30 s (terminationGracePeriodSeconds) before SIGKILL.
    shutdownGraceSeconds: r.int('NIXERY_SHUTDOWN_GRACE_SECONDS', 20, 0, 3600),
    logLevel: r.choice('NIXERY_LOG_LEVEL', LOG_LEVELS, 'info', 'a log level'),
    nixConfig: r.verbatim('NIX_CONFIG'),
    ...parseAccess(r),
    admission: {
      maxBuilds: r.int('NIXERY_MAX_BUILDS', 2, 1, 1024),
      maxQueuedBuilds: r.int('NIXERY_MAX_QUEUED_BUILDS', 32, 0, 100_000),
      maxPackages: r.int('NIXERY_MAX_PACKAGES', 64, 1, 10_000),
      failedBuildTtlSeconds: r.int('NIXERY_FAILED_BUILD_TTL', 60, 0, 24 * 3600),
    },
    pack: {
      threads: r.str('NIXERY_PACK_THREADS') === undefined ? undefined : r.int('NIXERY_PACK_THREADS', 1, 1, 256),
      cacheBytes: r.bytes('NIXERY_PACK_CACHE_BYTES', DEFAULT_PACK_CACHE_BYTES),
    },
    gc: {
      intervalSeconds: r.duration('NIXERY_GC_INTERVAL', undefined, 0.1),
      keepDays: r.str('NIXERY_GC_KEEP_DAYS') === undefined ? undefined : r.int('NIXERY_GC_KEEP_DAYS', 0, 0, 100_000),
      maxBytes: r.str('NIXERY_GC_MAX_BYTES') === undefined ? undefined : r.bytes('NIXERY_GC_MAX_BYTES', 0),
      graceSeconds: r.duration('NIXERY_GC_GRACE', 3600) as number,
      usageFlushSeconds: r.duration('NIXERY_GC_USAGE_FLUSH', 30, 0.1) as number,
      pollSeconds: r.duration('NIXERY_GC_POLL', 5, 0.1) as number,
      nixMinFree: parseMinFreeVar(r),
    },
    ...parsePlatforms(r, hostPlatform()),
  };
  if (config.htpasswdFile !== undefined && config.storage?.kind === 'gcs' && config.storage.credentialsFile === undefined) {
    r.problem(
      'GOOGLE_APPLICATION_CREDENTIALS',
      'required with NIXERY_AUTH_HTPASSWD and gcs storage: without a signing key blobs redirect to public object URLs that anyone can fetch',
    );
  }
  if (r.problems.length > 0 || config.pkgs === undefined || config.storage === undefined) {
    throw new ConfigError(r.problems);
  }
  return config as Config;
}

/** Start-up checks that need I/O; each returns a problem line or undefined. */
export interface ConfigProbes {
  storageDirectory?(path: string): Promise<string | undefined>;
  packagePath?(path: string): Promise<string | undefined>;
  directory?(path: string): Promise<string | undefined>;
}

/**
 * parseConfig plus the probes, so that a wrong value and an unusable
 * directory are reported together rather than one per restart.
 */
export async function loadConfig(env: Env, probes: ConfigProbes): Promise<Config> {
  let config: Config | undefined;
  let problems: string[] = [];
  try {
    config = parseConfig(env);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems = [...e.problems];
  }
  // Probe whatever parsed, even if something else did not.
  const probe = async (name: string, value: string | undefined, fn?: (p: string) => Promise<string | undefined>) => {
    if (value === undefined || fn === undefined || !value.startsWith('/')) return;
    const p = await fn(value);
    if (p !== undefined) problems.push(`${name}: ${p}`);
  };
  // The xattr check only matters when the filesystem backend is (or would be) used.
  const backend = env['NIXERY_STORAGE_BACKEND']?.trim() || 'filesystem';
  if (backend === 'filesystem') await probe('STORAGE_PATH', env['STORAGE_PATH']?.trim() || undefined, probes.storageDirectory);
  await probe('NIXERY_PKGS_PATH', env['NIXERY_PKGS_PATH']?.trim() || undefined, probes.packagePath);
  await probe('WEB_DIR', env['WEB_DIR']?.trim() || undefined, probes.directory);
  await probe('NIXERY_PREPARE_IMAGE_DIR', env['NIXERY_PREPARE_IMAGE_DIR']?.trim() || undefined, probes.directory);
  if (problems.length > 0 || config === undefined) throw new ConfigError(problems);
  return config;
}
