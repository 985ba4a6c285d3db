/**
 * `nixery-ts build NAME[:TAG] -o FILE`: one image, built without a server
 * and written as a file for `docker load`, `podman load`, skopeo or umoci.
 *
 * It is the server's pipeline, not a second one: the same configuration
 * variables (package source, Nix, layering) make the same runtime, and
 * `service.image(spec)` builds the image into storage exactly as a pull
 * would; the archive is then written from the stored blobs, so its manifest,
 * config and layers are byte for byte what a server with the same settings
 * serves for that name. Storage is a local cache directory (`--cache-dir`,
 * default $XDG_CACHE_HOME/nixery-ts or ~/.cache/nixery-ts) used as
 * filesystem storage: a later build of an overlapping image reuses the
 * layers stored there, and a repeated build of the same image writes it
 * straight from the cache.
 *
 * The output is written under a temporary name beside it and renamed into
 * place at the end; an interrupted or failed build leaves no file behind.
 * SIGINT/SIGTERM abort the build (its Nix process groups are stopped),
 * remove the temporary output and exit 130/143; a second signal exits at once.
 *
 * Exit codes: 0 written; 1 the build failed, a package is missing, the
 * output cannot be written; 2 usage or configuration error; 128+n on signal n.
 */
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { loadConfig, type Env } from '../config.js';
import type { Digest } from '../digest.js';
import { BuildAbortedError, ConfigError, NixBuildError, PackagesNotFoundError } from '../errors.js';
import { ARCHITECTURES, isValidTag, parseImageName, parsePlatform, platformName, validateName, type Architecture, type ImageSpec } from '../image/name.js';
import { createLogger, type Logger } from '../log.js';
import { MediaType } from '../manifest/build.js';
import { createRuntime, type Runtime } from '../runtime.js';
import type { Build } from '../service/build.js';
import type { BuiltImage } from '../service/records.js';
import type { StorageBackend } from '../storage/backend.js';
import { probeStorageDirectory } from '../storage/xattr-probe.js';
import {
  CorruptBlobError,
  FORMATS,
  MissingBlobError,
  archiveBlobBytes,
  writeArchive,
  type ArchiveFormat,
  type ArchiveImage,
  type BlobSource,
} from './archive.js';
import { COLORS, NO_COLORS, PlainDisplay, QuietDisplay, Tracker, TtyDisplay, formatBytes, type Display } from './progress-display.js';

export const USAGE = `usage: nixery-ts build NAME[:TAG] -o OUTPUT [options]

Builds one image with Nix, without a server, and writes it as a file.
NAME is what you would pull from a nixery-ts server: shell/git/htop,
arm64/jq, nonroot/shell. TAG defaults to latest (for a git package source
it is the branch or commit to build).

  -o, --output PATH      where to write the image (required)
  -f, --format FORMAT    docker-archive (default): for docker load / podman load
                         oci-archive: an OCI image layout as a tar (skopeo, umoci)
                         oci: the same layout as a directory (must not exist)
      --platform P       linux/amd64 or linux/arm64 (default: this machine's,
                         or the first of NIXERY_PLATFORMS when that excludes it)
  -t, --tag REF          the name the image loads as, repeatable
                         (default: localhost/NAME:TAG)
      --cache-dir DIR    where built layers are kept and reused
                         (default: $XDG_CACHE_HOME/nixery-ts or ~/.cache/nixery-ts)
  -q, --quiet            no progress and no summary line (errors still print)
      --json             print a JSON summary on stdout at the end
  -h, --help             show this help

The package source, Nix and layering settings are the server's environment
variables: NIXERY_PKGS_PATH, NIXERY_PKGS_REPO or NIXERY_CHANNEL, NIX_TIMEOUT,
NIXERY_LAYER_BUDGET, NIX_POPULARITY_URL, NIXERY_IMPORT_ARGS, NIXERY_OFFLINE,
NIX_CONFIG. With the same settings the image is the one a server serves for
NAME:TAG, byte for byte. Server-only variables (storage, port, TLS, auth, GC)
are ignored.

Exit codes: 0 written; 1 build failed, package not found or output not
writable; 2 usage or configuration error; 130 interrupted.
`;

/** A mistake on the command line: exit 2 with the usage. */
export class UsageError extends Error {}

export interface BuildArgs {
  readonly name: string;
  readonly tag: string;
  /** Absolute. */
  readonly output: string;
  /** As given, for messages. */
  readonly outputArg: string;
  readonly format: ArchiveFormat;
  readonly platform: Architecture | undefined;
  /** Full references with a tag (`localhost/shell/htop:latest`); empty means the default. */
  readonly references: readonly string[];
  readonly cacheDir: string | undefined;
  readonly quiet: boolean;
  readonly json: boolean;
}

/** The command line, checked; `{ help: true }` for -h. Throws UsageError. */
export function parseBuildArgs(argv: readonly string[], cwd = process.cwd()): BuildArgs | { help: true } {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        output: { type: 'string', short: 'o' },
        format: { type: 'string', short: 'f' },
        platform: { type: 'string' },
        tag: { type: 'string', short: 't', multiple: true },
        'cache-dir': { type: 'string' },
        quiet: { type: 'boolean', short: 'q' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const v = parsed.values;
  if (v.help) return { help: true };
  if (parsed.positionals.length !== 1) {
    throw new UsageError(parsed.positionals.length === 0 ? 'an image NAME is required (e.g. shell/htop)' : `one image at a time, not ${parsed.positionals.length}: ${parsed.positionals.join(' ')}`);
  }
  const { name, tag } = splitNameTag(parsed.positionals[0]!);
  if (v.output === undefined || v.output === '') throw new UsageError('--output is required (e.g. -o image.tar)');
  const format = (v.format ?? 'docker-archive') as ArchiveFormat;
  if (!FORMATS.includes(format)) throw new UsageError(`--format ${JSON.stringify(v.format)} is not a format (use ${FORMATS.join(', ')})`);
  let platform: Architecture | undefined;
  if (v.platform !== undefined) {
    platform = parsePlatform(v.platform.includes('/') ? v.platform : `linux/${v.platform}`);
    if (platform === undefined) throw new UsageError(`--platform ${JSON.stringify(v.platform)} is not a platform nixery-ts builds (use ${ARCHITECTURES.map(platformName).join(' or ')})`);
  }
  const references = (v.tag ?? []).map(parseReference);
  if (v['cache-dir'] === '') throw new UsageError('--cache-dir is empty');
  return {
    name,
    tag,
    output: path.resolve(cwd, v.output),
    outputArg: v.output,
    format,
    platform,
    references,
    cacheDir: v['cache-dir'] === undefined ? undefined : path.resolve(cwd, v['cache-dir']),
    quiet: v.quiet === true,
    json: v.json === true,
  };
}

/** `shell/htop:v1` -> name and tag (latest when absent); both checked against the registry grammar. */
export function splitNameTag(arg: string): { name: string; tag: string } {
  const i = arg.indexOf(':');
  const name = i < 0 ? arg : arg.slice(0, i);
  const tag = i < 0 ? 'latest' : arg.slice(i + 1);
  try {
    validateName(name);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  if (!isValidTag(tag)) throw new UsageError(`invalid tag ${JSON.stringify(tag)}: up to 128 letters, digits, ".", "_" and "-", not starting with "." or "-"`);
  return { name, tag };
}

const DOMAIN = /^(?:localhost|[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*)(?::\d+)?$/;

/**
 * An image reference as docker and podman accept it in an archive: optional
 * registry host, lowercase path, tag (`:latest` added when absent). No digest.
 */
export function parseReference(ref: string): string {
  const bad = (why: string) => new UsageError(`--tag ${JSON.stringify(ref)} is not an image reference: ${why}`);
  if (ref.includes('@')) throw bad('a digest cannot be a tag');
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  const hasTag = colon > slash;
  const repo = hasTag ? ref.slice(0, colon) : ref;
  const tag = hasTag ? ref.slice(colon + 1) : 'latest';
  if (!isValidTag(tag)) throw bad(`invalid tag ${JSON.stringify(tag)}`);
  const parts = repo.split('/');
  const first = parts[0]!;
  const host = parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost');
  if (host && !DOMAIN.test(first)) throw bad(`invalid registry host ${JSON.stringify(first)}`);
  try {
    validateName((host ? parts.slice(1) : parts).join('/'));
  } catch (e) {
    throw bad((e as Error).message.replace(/^invalid image name "[^"]*": /, ''));
  }
  return `${repo}:${tag}`;
}

/** The name the image loads as when no --tag is given. */
export function defaultReference(name: string, tag: string): string {
  return `localhost/${name}:${tag}`;
}

/** $XDG_CACHE_HOME/nixery-ts (when absolute, as the XDG spec requires), else ~/.cache/nixery-ts. */
export function defaultCacheDir(env: Env): string {
  const xdg = env.XDG_CACHE_HOME?.trim();
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'nixery-ts');
  return path.join(env.HOME?.trim() || os.homedir(), '.cache', 'nixery-ts');
}

/** The server's variables that mean nothing to a local build; a bad value of one must not stop it. */
const SERVER_ONLY = [
  'PORT', 'NIXERY_HOST', 'WEB_DIR', 'NIXERY_AUTH_HTPASSWD', 'NIXERY_ANONYMOUS', 'NIXERY_TLS_CERT', 'NIXERY_TLS_KEY',
  'NIXERY_STORAGE_BACKEND', 'STORAGE_PATH', 'GCS_BUCKET', 'GOOGLE_APPLICATION_CREDENTIALS', 'STORAGE_EMULATOR_HOST', 'NIXERY_SIGNED_URL_TTL',
  'NIXERY_GC_INTERVAL', 'NIXERY_GC_KEEP_DAYS', 'NIXERY_GC_MAX_BYTES', 'NIXERY_GC_GRACE', 'NIXERY_GC_USAGE_FLUSH', 'NIXERY_GC_POLL',
  'NIXERY_SHUTDOWN_GRACE_SECONDS', 'NIXERY_MAX_BUILDS', 'NIXERY_MAX_QUEUED_BUILDS', 'NIXERY_FAILED_BUILD_TTL', 'NIXERY_REVISION_TTL',
];

/**
 * The environment loadConfig sees: the user's, less the server-only
 * variables, with the cache directory as filesystem storage and no package
 * limit unless one is set (a server's limit protects a shared machine).
 */
export function buildEnv(env: Env, cacheDir: string): Env {
  const out: Record<string, string | undefined> = { ...env };
  for (const k of SERVER_ONLY) delete out[k];
  out.NIXERY_STORAGE_BACKEND = 'filesystem';
  out.STORAGE_PATH = cacheDir;
  if (out.NIXERY_MAX_PACKAGES === undefined || out.NIXERY_MAX_PACKAGES.trim() === '') out.NIXERY_MAX_PACKAGES = '10000';
  return out;
}

/** The output's temporary name beside it, checked writable before any work starts. */
interface Output {
  readonly final: string;
  readonly temp: string;
  /** Empties the temporary output for another attempt. */
  reset(): Promise<void>;
  /** Renames the temporary output into place. */
  commit(): Promise<void>;
  remove(): Promise<void>;
  removeSync(): void;
}

/** The output cannot be written: exit 1 before any Nix work. */
export class OutputError extends Error {}

export async function prepareOutput(final: string, format: ArchiveFormat, shown: string): Promise<Output> {
  const dir = path.dirname(final);
  const dirStat = await stat(dir).catch(() => undefined);
  if (dirStat === undefined) throw new OutputError(`cannot write ${shown}: directory ${dir} does not exist`);
  if (!dirStat.isDirectory()) throw new OutputError(`cannot write ${shown}: ${dir} is not a directory`);
  const existing = await stat(final).catch(() => undefined);
  if (existing !== undefined) {
    if (format !== 'oci' && existing.isDirectory()) throw new OutputError(`cannot write ${shown}: it is a directory`);
    if (format === 'oci' && (!existing.isDirectory() || (await readdir(final)).length > 0)) {
      throw new OutputError(`cannot write ${shown}: it already exists (the oci format writes a new directory; remove it first)`);
    }
  }
  const temp = path.join(dir, `.${path.basename(final)}.nixery-ts-${process.pid}-${randomBytes(4).toString('hex')}.tmp`);
  const create = async () => {
    if (format === 'oci') await mkdir(temp);
    else await (await open(temp, 'wx')).close();
  };
  try {
    await create();
  } catch (e) {
    throw new OutputError(`cannot write ${shown}: ${errnoText(e)}`);
  }
  const remove = () => rm(temp, { recursive: true, force: true });
  return {
    final,
    temp,
    async reset() {
      await remove();
      await create();
    },
    async commit() {
      await rename(temp, final);
      // The rename itself made durable.
      const d = await open(dir, 'r');
      await d.sync().catch(() => undefined);
      await d.close();
    },
    remove,
    removeSync: () => rmSync(temp, { recursive: true, force: true }),
  };
}

function errnoText(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  const why: Record<string, string> = { EACCES: 'permission denied', EPERM: 'permission denied', EROFS: 'read-only file system', ENOSPC: 'no space left on device' };
  return (err.code && why[err.code]) ?? err.message;
}

/** The JSON summary (`--json`). */
export interface BuildSummary {
  readonly image: string;
  readonly tag: string;
  /** The references the image loads as. */
  readonly references: readonly string[];
  readonly platform: string;
  readonly revision: string;
  /** The OCI manifest's digest: what a server answers for an OCI pull of NAME:TAG. */
  readonly manifestDigest: string;
  /** The Docker schema 2 manifest's digest: what a server answers for a docker pull. */
  readonly dockerManifestDigest: string;
  /** Also the image ID docker and podman show. */
  readonly configDigest: string;
  /** Bottom first; `reused`: found in the cache rather than packed by this build. */
  readonly layers: readonly { readonly digest: string; readonly size: number; readonly reused: boolean }[];
  /** Sum of the layers' (compressed) sizes. */
  readonly totalBytes: number;
  /** Whether the whole image came from the cache (no build ran). */
  readonly cached: boolean;
  readonly output: string;
  readonly format: ArchiveFormat;
  /** Size of the archive (or the layout's files). */
  readonly outputBytes: number;
  readonly seconds: number;
}

export function summaryLine(s: BuildSummary): string {
  const reused = s.layers.filter((l) => l.reused).length;
  return `wrote ${s.output} (${s.format}): ${s.references.join(', ')} ${s.platform}, ${s.layers.length} layers (${reused} reused), ${formatBytes(s.totalBytes)}, manifest ${s.manifestDigest}`;
}

export interface Io {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WriteStream;
  readonly now: () => number;
}

const SIGNAL_NUMBERS: Partial<Record<NodeJS.Signals, number>> = { SIGHUP: 1, SIGINT: 2, SIGTERM: 15 };

export async function buildCommand(argv: readonly string[], env: Env, io: Io = { stdout: process.stdout, stderr: process.stderr, now: Date.now }): Promise<number> {
  const startedAt = io.now();
  const say = (line: string) => io.stderr.write(`nixery-ts build: ${line}\n`);
  let args: BuildArgs;
  try {
    const a = parseBuildArgs(argv);
    if ('help' in a) {
      io.stdout.write(USAGE);
      return 0;
    }
    args = a;
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    say(e.message);
    io.stderr.write(`try 'nixery-ts build --help'\n`);
    return 2;
  }

  const cacheDir = args.cacheDir ?? defaultCacheDir(env);
  let config;
  try {
    config = await loadConfig(buildEnv(env, cacheDir), { storageDirectory: probeStorageDirectory, packagePath: isDirectory, directory: isDirectory });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    for (const p of e.problems) say(`configuration error: ${p.replace(/^STORAGE_PATH: /, '--cache-dir: ')}`);
    return 2;
  }
  const arch = args.platform ?? config.defaultPlatform;
  let spec: ImageSpec;
  try {
    spec = parseImageName(args.name, args.tag, arch);
  } catch (e) {
    say((e as Error).message);
    return 2;
  }
  if (args.platform !== undefined && spec.pinned && spec.arch !== args.platform) {
    say(`${args.name} names ${platformName(spec.arch)}, but --platform asks for ${platformName(args.platform)}`);
    return 2;
  }
  const references = args.references.length > 0 ? args.references : [defaultReference(args.name, args.tag)];
  const label = `${args.name}:${args.tag}`;

  // Display: a live frame on a terminal, lines in a log, nothing with --quiet.
  const tty = io.stderr.isTTY === true && env.TERM !== 'dumb';
  const display: Display = args.quiet
    ? new QuietDisplay(io.stderr)
    : tty
      ? new TtyDisplay(io.stderr, io.now, env.NO_COLOR ? NO_COLORS : COLORS)
      : new PlainDisplay(io.stderr, io.now, startedAt);
  const tracker = new Tracker({ image: label, platform: platformName(spec.arch), format: args.format, output: args.outputArg }, io.now, () => display.update(tracker.status));

  // Signals: the first aborts the build and cleans up; a second exits at once.
  const interrupt = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  let runtime: Runtime | undefined;
  let output: Output | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled !== undefined) {
      runtime?.nix.killAll();
      output?.removeSync();
      process.exit(128 + (SIGNAL_NUMBERS[sig] ?? 2));
    }
    signalled = sig;
    interrupt.abort(new BuildAbortedError(`interrupted (${sig})`));
    runtime?.abortBuilds(`interrupted (${sig})`);
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const s of signals) process.on(s, onSignal);

  try {
    try {
      output = await prepareOutput(args.output, args.format, args.outputArg);
    } catch (e) {
      if (!(e instanceof OutputError)) throw e;
      say(e.message);
      return 1;
    }
    if (signalled) return 128 + (SIGNAL_NUMBERS[signalled] ?? 2);
    try {
      runtime = await createRuntime(config, cliLogger(config.logLevel === 'info' ? 'warn' : config.logLevel, (l) => display.log(l)));
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      for (const p of e.problems) say(`configuration error: ${p}`);
      return 2;
    }
    display.update(tracker.status);
    const work = produce(runtime, spec, label, references, args, cacheDir, output, tracker, display, interrupt.signal, io.now, startedAt);
    let summary: BuildSummary;
    try {
      summary = await untilAborted(work, interrupt.signal);
    } catch (e) {
      tracker.fail();
      display.stop(tracker.status);
      if (signalled !== undefined) {
        // Give the aborted build a moment to stop its Nix processes and remove its staging files.
        await Promise.race([work.catch(() => undefined), new Promise((r) => setTimeout(r, 10_000).unref())]);
        say(`interrupted (${signalled}); nothing written`);
        return 128 + (SIGNAL_NUMBERS[signalled] ?? 2);
      }
      reportFailure(e, tracker.status.log, args.quiet, say, io.stderr);
      return 1;
    }
    tracker.finish();
    display.stop(tracker.status);
    if (args.json) io.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    else if (!args.quiet) io.stdout.write(`${summaryLine(summary)}\n`);
    return 0;
  } finally {
    await output?.remove().catch(() => undefined);
    await runtime?.close().catch(() => undefined);
    for (const s of signals) process.off(s, onSignal);
  }
}

/** Waits for `p`, or rejects as soon as `signal` aborts. */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason as Error);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** The build's failure as one line; Nix's last output lines before it, unless quiet. */
function reportFailure(e: unknown, log: readonly string[], quiet: boolean, say: (l: string) => void, err: NodeJS.WritableStream): void {
  if (e instanceof NixBuildError) {
    if (!quiet && log.length > 0) err.write(`last lines of Nix's output:\n${log.map((l) => `  ${l}`).join('\n')}\n`);
    const detail = e.stderr
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('error:'))
      .at(-1);
    say(`${e.message}${detail ? `: ${detail.replace(/^error:\s*/, '')}` : ''}`);
  } else if (e instanceof PackagesNotFoundError) {
    say(`${e.message}`);
  } else {
    say((e as Error)?.message ?? String(e));
  }
}

/** The image built (or found) and written: the summary. */
async function produce(
  runtime: Runtime,
  spec: ImageSpec,
  label: string,
  references: readonly string[],
  args: BuildArgs,
  cacheDir: string,
  output: Output,
  tracker: Tracker,
  display: Display,
  signal: AbortSignal,
  now: () => number,
  startedAt: number,
): Promise<BuildSummary> {
  const reused = new Map<string, boolean>();
  let built = false;
  const unsubscribe = runtime.service.subscribe((e) => {
    if (e.type !== 'build' && e.type !== 'join') return;
    const b: Build = e.build;
    built = true;
    tracker.buildStarted({ id: b.id, image: b.image, packages: b.packages, createdAt: b.createdAt });
    b.subscribe((ev) => {
      if (ev.type === 'layer') reused.set(ev.digest, ev.reused);
      tracker.buildEvent(ev);
    });
  });
  try {
    for (let attempt = 1; ; attempt++) {
      const image = await runtime.service.image(spec, { label });
      signal.throwIfAborted();
      const parts = await archiveImage(runtime.storage, image);
      if (!built) tracker.found(parts.layers.length, parts.layers.reduce((n, l) => n + l.size, 0));
      const total = archiveBlobBytes(args.format, parts);
      tracker.writing(0, total);
      let outputBytes: number;
      try {
        outputBytes = await writeArchive(args.format, output.temp, parts, { references }, blobSource(runtime.storage), {
          signal,
          onBytes: throttle((n) => tracker.writing(n, total)),
        });
        tracker.writing(total, total);
      } catch (e) {
        if (!(e instanceof MissingBlobError || e instanceof CorruptBlobError) || attempt > 1) throw e;
        // The cache lost or damaged a blob (a cleanup tool, a full disk):
        // forget the image and build it again, which packs what is missing.
        display.log(`nixery-ts build: warning: ${e.message}; building the image again`);
        if (e instanceof CorruptBlobError) await rm(path.join(cacheDir, 'blobs', 'sha256', e.digest.slice('sha256:'.length)), { force: true });
        const key = runtime.service.imageKey(spec, await runtime.source.resolve(spec.tag));
        await runtime.storage.deleteRecord('manifests', key);
        runtime.service.forgetCaches();
        reused.clear();
        await output.reset();
        continue;
      }
      await output.commit();
      const layers = parts.layers.map((l) => ({ digest: l.digest, size: l.size, reused: built ? (reused.get(l.digest) ?? true) : true }));
      return {
        image: args.name,
        tag: args.tag,
        references,
        platform: platformName(spec.arch),
        revision: image.revision,
        manifestDigest: image.manifests[MediaType.ociManifest].digest,
        dockerManifestDigest: image.manifests[MediaType.dockerManifest].digest,
        configDigest: parts.config.digest,
        layers,
        totalBytes: layers.reduce((n, l) => n + l.size, 0),
        cached: !built,
        output: args.output,
        format: args.format,
        outputBytes,
        seconds: Math.round((now() - startedAt) / 100) / 10,
      };
    }
  } finally {
    unsubscribe();
  }
}

/** The OCI manifest and config from storage, and the layers the manifest names. */
async function archiveImage(storage: StorageBackend, image: BuiltImage): Promise<ArchiveImage> {
  const ref = image.manifests[MediaType.ociManifest];
  const manifestBytes = await storage.readBlob(ref.digest);
  if (manifestBytes === undefined) throw new MissingBlobError(ref.digest);
  const m = JSON.parse(manifestBytes.toString()) as { config: { digest: Digest }; layers: { digest: Digest; size: number }[] };
  const configBytes = await storage.readBlob(m.config.digest);
  if (configBytes === undefined) throw new MissingBlobError(m.config.digest);
  const c = JSON.parse(configBytes.toString()) as { os?: string; architecture?: string };
  return {
    manifest: { digest: ref.digest, bytes: manifestBytes },
    config: { digest: m.config.digest, bytes: configBytes },
    layers: m.layers.map((l) => ({ digest: l.digest, size: l.size })),
    platform: { os: c.os ?? 'linux', architecture: c.architecture ?? 'amd64' },
  };
}

function blobSource(storage: StorageBackend): BlobSource {
  return {
    async open(digest) {
      const served = await storage.serveBlob(digest);
      if (served === undefined) return undefined;
      if (served.kind !== 'stream') throw new Error(`blob ${digest} is not readable from this storage`);
      return { stream: Readable.fromWeb(served.stream as import('node:stream/web').ReadableStream<Uint8Array>), size: served.info.size };
    },
  };
}

/** At most one call per 100 ms (the final count is reported after the write). */
function throttle(fn: (n: number) => void): (n: number) => void {
  let last = 0;
  return (n) => {
    const t = Date.now();
    if (t - last >= 100) {
      last = t;
      fn(n);
    }
  };
}

async function isDirectory(p: string): Promise<string | undefined> {
  try {
    return (await stat(p)).isDirectory() ? undefined : `${p} is not a directory`;
  } catch {
    return `${p} does not exist`;
  }
}

/**
 * The runtime's logger for a terminal: warnings and errors as readable
 * lines through the display (never JSON across the progress frame). The
 * service's "image build failed" is left out: the command reports the
 * failure itself, once.
 */
export function cliLogger(level: string, sink: (line: string) => void): Logger {
  return createLogger({
    level,
    destination: {
      write(chunk: string) {
        for (const raw of chunk.split('\n')) {
          if (raw.trim() === '') continue;
          let rec: Record<string, unknown>;
          try {
            rec = JSON.parse(raw) as Record<string, unknown>;
          } catch {
            sink(`nixery-ts build: ${raw}`);
            continue;
          }
          const { level: lvl, msg, time: _t, service: _s, ...fields } = rec;
          if (msg === 'image build failed') continue;
          const extra = Object.entries(fields)
            .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
            .join(' ');
          sink(`nixery-ts build: ${lvl === 'warn' ? 'warning' : String(lvl)}: ${String(msg)}${extra ? ` (${extra})` : ''}`);
        }
      },
    },
  });
}
