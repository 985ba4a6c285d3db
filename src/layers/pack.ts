/**
 * Turns a sequence of tar entries into a gzipped layer tarball, streaming
 * into a caller-supplied sink. One pass over the bytes yields all three
 * facts the manifest needs: the sha256 of the uncompressed tar (diff_id,
 * goes into the image config), the sha256 and size of the gzip stream
 * (digest and size, go into the manifest).
 *
 *   entries -> tar-stream pack -> [sha256: diffId] -> gzip -> [sha256 + count: digest, size] -> out
 *
 * Determinism: every header carries mtime 1 (as in the Nix store), uid/gid 0
 * (or the owner an image file of our own names),
 * empty user and group names, the mode given by the caller, and entries are
 * written in the order given (walk.ts sorts them). Node's gzip header has no
 * file name and mtime 0, so the same entries give the same bytes on every
 * run. The compressed bytes depend on the zlib build inside Node, so
 * replicas that should share layers must run the same Node release; the
 * diff_id does not depend on it.
 *
 * No fs here: file contents come from each entry's `open()`.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { constants as zc, createGzip } from 'node:zlib';
import tar from 'tar-stream';

type TarHeader = Parameters<tar.Pack['entry']>[0];
type TarSink = ReturnType<tar.Pack['entry']>;
import { HashingStream, type Digest } from '../digest.js';

export interface TarEntry {
  /** Path inside the layer without a leading slash, e.g. `nix/store/<hash>-htop-3.2.2/bin/htop`. */
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'hardlink';
  /** Permission bits (0o7777 at most); file type bits are ignored. */
  mode: number;
  /** Byte length of a file's contents; required for files. */
  size?: number;
  /** Symlink target, or for a hardlink the `name` of an earlier entry of the same layer. */
  linkname?: string;
  /** Opens the contents of a file; called once, when the entry's turn comes. */
  open?: () => NodeJS.ReadableStream;
  /**
   * Reads a small file's contents at once, used instead of `open()` when
   * present. A stream costs a thread-pool round trip per open, read and
   * close, which for a tree of small files costs ten times the reading.
   */
  read?: () => Buffer;
  /** Owner; 0 (root) when absent. Only the image's own files have another (a non-root user's home). */
  uid?: number;
  gid?: number;
}

export interface PackOptions {
  /** zlib level 0-9; 6 is what `gzip` uses by default. */
  gzipLevel?: number;
  signal?: AbortSignal;
}

export interface PackResult {
  /** sha256 of the uncompressed tar. */
  diffId: Digest;
  /** sha256 of the gzip stream as written to `out`. */
  digest: Digest;
  /** Byte length of the gzip stream. */
  size: number;
}

/** Epoch second 1: what the Nix store sets on every path, so layers match `ls -l` of the store. */
const MTIME = new Date(1000);

// Bigger than the 16 KiB defaults: 1 MiB file reads pass the hashers and zlib
// in few pieces (faster in bench/pack.mjs); a layer in flight holds ~10 MiB at most.
const GZIP_CHUNK = 128 * 1024;
const HWM = 256 * 1024;

// tar-stream replaces a falsy mode with its own default (0o644/0o755), so a
// genuine mode 0 would silently change. Its encoder masks the mode with 0o7777,
// so or-ing in the file type bits keeps the value truthy without changing the
// bytes written.
const TYPE_BITS = { file: 0o100000, directory: 0o040000, symlink: 0o120000, hardlink: 0o100000 } as const;
const TAR_TYPE = { file: 'file', directory: 'directory', symlink: 'symlink', hardlink: 'link' } as const;

/**
 * Writes the layer for `entries` into `out` and resolves with its digests
 * once `out` has finished. Rejects, with every stream destroyed (including
 * `out`), on the first error from an entry, a stream, or the signal.
 */
export async function packLayer(
  entries: AsyncIterable<TarEntry> | Iterable<TarEntry>,
  out: NodeJS.WritableStream,
  opts: PackOptions = {},
): Promise<PackResult> {
  const level = opts.gzipLevel ?? 6;
  if (!Number.isInteger(level) || level < 0 || level > 9) {
    throw new RangeError(`gzipLevel must be an integer 0-9, got ${level}`);
  }
  const signal = opts.signal;
  signal?.throwIfAborted();

  const source = tarStream(entries, signal);
  const diff = new HashingStream({ highWaterMark: HWM });
  // Every parameter that shapes the deflate output is pinned, so that a
  // changed default in some Node release cannot silently change every digest.
  const gzip = createGzip({ ...GZIP_OPTIONS, level, chunkSize: GZIP_CHUNK });
  const compressed = new HashingStream({ highWaterMark: HWM });

  let firstError: unknown;
  await pipeline(source, diff, gzip, compressed, out, signal ? { signal } : {}).catch((err: unknown) => {
    // The tar side's own error (a failing entry) names the failure; a
    // pipeline error caused by our tearing down is only its echo.
    firstError = source.failure ?? (signal?.aborted ? abortReason(signal) : err);
  });
  if (firstError !== undefined) throw firstError;

  return { diffId: diff.result().digest, digest: compressed.result().digest, size: compressed.result().size };
}

/** zlib parameters that shape deflate output; pinned so a changed Node default cannot change digests. */
export const GZIP_OPTIONS = { memLevel: 8, windowBits: 15, strategy: zc.Z_DEFAULT_STRATEGY } as const;

/**
 * The uncompressed tar bytes of `entries`, end-of-archive blocks included,
 * as a Node stream. The first failure (an entry, the signal) destroys the
 * stream and is kept in `failure`, so a consumer can name it rather than the
 * echo of the teardown.
 */
export function tarStream(
  entries: AsyncIterable<TarEntry> | Iterable<TarEntry>,
  signal?: AbortSignal,
): Readable & { readonly failure: unknown } {
  const tarball = tar.pack();
  const source = new TarSource(tarball);
  const fail = (err: unknown): void => {
    // Torn down already (by a consumer's pipeline): its error is the cause, ours the echo.
    if (source.failed) return;
    source.failure = err;
    source.destroy(err instanceof Error ? err : new Error(String(err)));
  };
  const onAbort = () => fail(abortReason(signal as AbortSignal));
  signal?.addEventListener('abort', onAbort, { once: true });
  source.once('close', () => signal?.removeEventListener('abort', onAbort));
  feed(entries, tarball, source, signal).catch(fail);
  return source;
}

function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

async function feed(
  entries: AsyncIterable<TarEntry> | Iterable<TarEntry>,
  tarball: tar.Pack,
  source: TarSource,
  signal: AbortSignal | undefined,
): Promise<void> {
  for await (const entry of entries) {
    if (signal?.aborted) throw abortReason(signal);
    if (source.failed) return;
    const header = toHeader(entry);
    if (entry.type === 'file') {
      if (entry.read) await writeSmallFile(tarball, header, entry.read());
      else await writeFile(tarball, header, entry);
    } else {
      await new Promise<void>((resolve, reject) => {
        tarball.entry(header, (err) => (err ? reject(err) : resolve()));
      });
      // Headers bypass tar-stream's backpressure (only entry bodies wait for
      // the reader), so a long run of symlinks would otherwise pile up in
      // memory while gzip is busy.
      await source.room();
    }
  }
  tarball.finalize();
}

function toHeader(e: TarEntry): TarHeader {
  checkName(e.name);
  if (!Number.isInteger(e.mode) || e.mode < 0 || e.mode > 0o7777) {
    throw new RangeError(`tar entry ${e.name}: mode ${e.mode} is not a permission mode`);
  }
  const header: TarHeader = {
    // GNU tar and Go's archive/tar end directory names with a slash; some
    // unpackers rely on it where the type flag is lost (e.g. old v7 readers).
    name: e.type === 'directory' ? `${e.name}/` : e.name,
    type: TAR_TYPE[e.type],
    mode: e.mode | TYPE_BITS[e.type],
    uid: e.uid ?? 0,
    gid: e.gid ?? 0,
    uname: '',
    gname: '',
    mtime: MTIME,
    size: 0,
  };
  switch (e.type) {
    case 'file':
      if (e.size === undefined || !Number.isSafeInteger(e.size) || e.size < 0) {
        throw new RangeError(`tar entry ${e.name}: a file needs a size`);
      }
      if (e.open === undefined && e.read === undefined) throw new TypeError(`tar entry ${e.name}: a file needs open() or read()`);
      header.size = e.size;
      break;
    case 'symlink':
      if (!e.linkname) throw new TypeError(`tar entry ${e.name}: a symlink needs a linkname`);
      header.linkname = e.linkname;
      break;
    case 'hardlink':
      if (!e.linkname) throw new TypeError(`tar entry ${e.name}: a hardlink needs a linkname`);
      checkName(e.linkname);
      header.linkname = e.linkname;
      break;
    case 'directory':
      break;
  }
  return header;
}

/**
 * A layer is unpacked at the image root by runtimes that do not all guard
 * against escapes, so names that would leave the root are a bug upstream.
 */
function checkName(name: string): void {
  if (
    name === '' ||
    name.startsWith('/') ||
    name.endsWith('/') ||
    name.includes('\0') ||
    name.split('/').some((c) => c === '' || c === '.' || c === '..')
  ) {
    throw new TypeError(`tar entry name ${JSON.stringify(name)} is not a clean relative path`);
  }
}

async function writeSmallFile(tarball: tar.Pack, header: TarHeader, contents: Buffer): Promise<void> {
  // tar-stream takes a buffer's length as the size; a file that changed
  // since it was listed must fail like a streamed one does.
  if (contents.length !== header.size) throw new Error(`Size mismatch: ${header.name} is ${contents.length} bytes, listed as ${header.size}`);
  await new Promise<void>((resolve, reject) => {
    tarball.entry(header, contents, (err) => (err ? reject(err) : resolve()));
  });
}

async function writeFile(tarball: tar.Pack, header: TarHeader, entry: TarEntry): Promise<void> {
  let settled: (err?: Error | null) => void = () => {};
  const done = new Promise<void>((resolve, reject) => {
    settled = (err) => (err ? reject(err) : resolve());
  });
  // tar-stream calls this once the body is complete or the entry failed
  // (including "Size mismatch" when a file changed while we read it).
  const sink = tarball.entry(header, (err) => settled(err));
  // Failures reach us through the callback above; without a listener
  // streamx would also raise them as uncaught 'error' events.
  sink.on('error', () => {});
  // Attach before the first await so that a rejection never goes unhandled.
  done.catch(() => {});

  const contents = (entry.open as () => NodeJS.ReadableStream)();
  // When the entry is torn down (abort, broken output) stop reading at once,
  // not at the next chunk, which a stalled source might never deliver; this
  // also closes the file.
  sink.on('close', () => (contents as Partial<Readable>).destroy?.());
  try {
    for await (const chunk of contents as AsyncIterable<Buffer | string>) {
      const buf = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      if (!sink.write(buf)) await drained(sink);
    }
  } catch (err) {
    sink.destroy(err instanceof Error ? err : new Error(String(err)));
    // If the entry failed first (abort, broken output), that is the cause;
    // our error is only its consequence.
    throw await done.then(
      () => err,
      (cause: unknown) => cause,
    );
  }
  sink.end(undefined);
  await done;
}

/** Resolves on 'drain'; rejects if the entry closes first, so a failure never leaves us waiting. */
function drained(sink: TarSink): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    // The entry may have been torn down while we awaited the next chunk
    // (abort, broken output); then neither event will come.
    if (sink.destroying || sink.destroyed) {
      reject(new Error('tar entry closed before its contents were written'));
      return;
    }
    const cleanup = (): void => {
      sink.off('drain', ondrain);
      sink.off('close', onclose);
    };
    const ondrain = (): void => {
      cleanup();
      resolve();
    };
    const onclose = (): void => {
      cleanup();
      reject(new Error('tar entry closed before its contents were written'));
    };
    sink.on('drain', ondrain);
    sink.on('close', onclose);
  });
}

/**
 * Node stream view of tar-stream's (streamx) readable side. Node's
 * `pipeline` does not understand streamx's error and close semantics, and
 * `Readable.from` would cost a promise per 512-byte header, so we bridge with
 * plain flow control: pause the tarball while Node's buffer is full.
 */
class TarSource extends Readable {
  failed = false;
  failure: unknown = undefined;
  #waiters: Array<() => void> = [];

  constructor(private readonly tarball: tar.Pack) {
    super({ highWaterMark: HWM });
    tarball.on('data', (chunk: unknown) => {
      if (!this.push(chunk as Buffer)) tarball.pause();
    });
    tarball.on('end', () => this.push(null));
    tarball.on('error', (err: Error) => this.destroy(err));
    tarball.pause();
  }

  override _read(): void {
    this.tarball.resume();
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Resolves when the reader wants more (or immediately if it does). */
  room(): Promise<void> {
    if (this.failed || this.readableLength < this.readableHighWaterMark) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.failed = true;
    this.tarball.destroy(err ?? undefined);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
    cb(err);
  }
}
