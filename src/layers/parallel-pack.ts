/**
 * Layer packing on every core, compressing each store path's bytes once.
 *
 * A gzip file may hold several members one after the other, and every
 * registry client reads them as one stream (Go's compress/gzip is
 * multistream by default; eStargz layers rely on it). So a layer here is a
 * sequence of independently compressed members:
 *
 *   [prefix: nix/, nix/store/] [path A: piece 1][A: piece 2] [path B: piece 1] ... [end of archive]
 *
 * Each *segment* (the layer's prefix directories, one store path, the
 * symlink layer as a whole) is the tar bytes of its entries without the
 * end-of-archive blocks, cut into pieces of PIECE_SIZE bytes (the last one
 * shorter). Each piece is one gzip member. Concatenating the segments'
 * uncompressed bytes and the end-of-archive blocks gives exactly the tar
 * that the single-stream packer (pack.ts) writes, so diff_ids do not change;
 * only the compressed bytes do.
 *
 * Determinism: a member depends only on its piece's bytes, and piece
 * boundaries only on the segment's bytes, so a layer's bytes do not depend
 * on the number of threads, on timing, or on which image asked for it: the
 * same store paths give the same layer on every server running the same
 * Node release (zlib's output is pinned by GZIP_OPTIONS and the level).
 *
 * Parallelism: pieces are compressed with Node's asynchronous zlib, which
 * runs on the libuv thread pool; a limiter shared by all layers keeps at
 * most `threads` compressions running (the pool is sized above that in
 * main.ts, so file reads are not starved). Members are written in order
 * through a small window of pieces in flight, so memory stays bounded by
 * about `2 × threads` pieces per layer however big the store path is.
 *
 * Compress once: the members of a store path's segment are kept in an LRU
 * by bytes, keyed by the store path (store paths are immutable), so a path
 * packed for one image is copied, not recompressed, into a layer of another
 * image grouped differently. The diff_id still needs the uncompressed bytes:
 * cached members are inflated (on the pool as well, several times faster
 * than deflate) and hashed, which needs nothing from the store.
 *
 * No fs here: segment contents come from entries' `open()` (walk.ts).
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { gunzip, gzip, type ZlibOptions } from 'node:zlib';
import { LRUCache } from 'lru-cache';
import pLimit from 'p-limit';
import type { Digest } from '../digest.js';
import { GZIP_OPTIONS, tarStream, type PackResult, type TarEntry } from './pack.js';

const gzipAsync = promisify<Buffer, ZlibOptions, Buffer>(gzip);
const gunzipAsync = promisify<Buffer, ZlibOptions, Buffer>(gunzip);

/**
 * Uncompressed bytes per member. Each member starts with an empty deflate
 * window, which costs ratio on the first ~32 KiB; at 1 MiB that is well under
 * 1% (measured: 0.1% on the Python path), while a 25 MB store path still
 * splits into 25 pieces for the cores.
 */
export const PIECE_SIZE = 1024 * 1024;

const LEVEL = 6;
/**
 * zlib's output buffer. Node's asynchronous zlib returns to the main thread
 * each time it fills, so the 16 KiB default costs ~20 round trips per piece
 * (measured: the Python path packed in 0.80 s with it, 0.45 s with this);
 * a typical member (a third of a piece) fits in two. The buffer size does
 * not change the bytes.
 */
const ZLIB_CHUNK = 256 * 1024;
/** Inflating a cached member: one output buffer holds a whole piece, so one round trip. */
const INFLATE_CHUNK = PIECE_SIZE + 1024;
const END_OF_ARCHIVE = Buffer.alloc(1024);

/**
 * Most compressed bytes one store path may take in the cache. A path is
 * kept while it is packed, so this is also what packing a huge path holds
 * before giving up on caching it (1 GiB path: 152 MiB peak RSS with 32 MiB,
 * well under that with 16). 16 MiB covers a 50 MB library tree.
 */
const MAX_ENTRY_BYTES = 16 * 1024 * 1024;

/** A run of a layer's entries; the layer is its segments in order. */
export interface LayerSegment {
  /** Set for a store path (immutable contents): its members are cached under this key. */
  readonly cacheKey?: string;
  readonly entries: () => AsyncIterable<TarEntry> | Iterable<TarEntry>;
}

export interface ParallelPackResult extends PackResult {
  /** Uncompressed tar bytes of the layer. */
  readonly tarBytes: number;
  /** Compressed bytes made by compressing now. */
  readonly compressedBytes: number;
  /** Compressed bytes copied from the piece cache. */
  readonly cachedBytes: number;
}

interface Piece {
  readonly raw: Buffer;
  readonly gz: Buffer;
  readonly fromCache: boolean;
}

interface CachedSegment {
  readonly members: readonly Buffer[];
  readonly bytes: number;
}

export interface ParallelPackerOptions {
  /** Compressions running at once, across all layers. */
  readonly threads: number;
  /** Most compressed bytes the piece cache holds; 0 disables it. */
  readonly cacheBytes: number;
}

export interface PieceCacheStats {
  readonly entries: number;
  readonly bytes: number;
  readonly hits: number;
  readonly misses: number;
}

export class ParallelPacker {
  private readonly limit: ReturnType<typeof pLimit>;
  private readonly cache: LRUCache<string, CachedSegment> | undefined;
  /** Largest segment worth keeping (an eighth of the cache, at most MAX_ENTRY_BYTES): a 1 GiB path would evict everything else and cost its size in memory while packing. */
  private readonly maxEntryBytes: number;
  private readonly window: number;
  private hits = 0;
  private misses = 0;
  private endMember: Promise<Buffer> | undefined;
  /**
   * Piece buffers already compressed, hashed and written, for the next
   * pieces. Without reuse every piece leaves a 1 MiB garbage buffer, and V8
   * collects external memory late: tens of MB on the peak RSS of a big path.
   */
  private readonly spare: Buffer[] = [];
  /** Store paths being compressed now, resolved when their members are cached (or given up). */
  private readonly producing = new Map<string, Promise<void>>();

  constructor(private readonly opts: ParallelPackerOptions) {
    if (!Number.isInteger(opts.threads) || opts.threads < 1) throw new RangeError(`threads must be a positive integer, got ${opts.threads}`);
    this.limit = pLimit(opts.threads);
    // Enough pieces in flight to keep every thread busy while the writer
    // waits on the oldest one.
    this.window = Math.max(4, opts.threads * 2);
    this.maxEntryBytes = Math.min(Math.floor(opts.cacheBytes / 8), MAX_ENTRY_BYTES);
    this.cache =
      opts.cacheBytes > 0
        ? new LRUCache({ maxSize: opts.cacheBytes, maxEntrySize: Math.max(1, this.maxEntryBytes), sizeCalculation: (s) => Math.max(1, s.bytes) })
        : undefined;
  }

  /** Compressions at once. */
  get threads(): number {
    return this.opts.threads;
  }

  stats(): PieceCacheStats {
    return { entries: this.cache?.size ?? 0, bytes: this.cache?.calculatedSize ?? 0, hits: this.hits, misses: this.misses };
  }

  /**
   * Writes the layer made of `segments` (then the end-of-archive blocks) to
   * `out`, ends it, and resolves with its digests once it has finished.
   * Rejects, with `out` destroyed, on the first error from an entry, the
   * output, or the signal.
   */
  async pack(segments: readonly LayerSegment[], out: NodeJS.WritableStream, opts: { signal?: AbortSignal } = {}): Promise<ParallelPackResult> {
    const { signal } = opts;
    signal?.throwIfAborted();
    const diff = createHash('sha256');
    const digest = createHash('sha256');
    let size = 0;
    let tarBytes = 0;
    let compressedBytes = 0;
    let cachedBytes = 0;
    const writable = out as NodeJS.WritableStream & { destroy?(e?: Error): void; writableNeedDrain?: boolean };
    let outError: unknown;
    const onOutError = (e: unknown) => (outError ??= e);
    writable.on('error', onOutError);

    const inFlight: Array<Promise<Piece>> = [];
    const write = async (pending: Promise<Piece>) => {
      const piece = await pending;
      if (outError !== undefined) throw outError;
      signal?.throwIfAborted();
      diff.update(piece.raw);
      digest.update(piece.gz);
      size += piece.gz.length;
      tarBytes += piece.raw.length;
      if (piece.fromCache) cachedBytes += piece.gz.length;
      else compressedBytes += piece.gz.length;
      if (!writable.write(piece.gz)) await drainOrFail(writable, signal);
      // zlib is done with it (its promise resolved), and so is the hash.
      if (!piece.fromCache && piece.raw.length === PIECE_SIZE && this.spare.length < this.window) this.spare.push(piece.raw);
    };
    try {
      for (const segment of segments) {
        for await (const { pending } of this.segmentPieces(segment, signal)) {
          // Rejections are handled when the writer reaches them; none may go unhandled meanwhile.
          pending.catch(() => undefined);
          inFlight.push(pending);
          if (inFlight.length >= this.window) await write(inFlight.shift() as Promise<Piece>);
        }
      }
      this.endMember ??= this.compress(END_OF_ARCHIVE);
      inFlight.push(this.endMember.then((gz) => ({ raw: END_OF_ARCHIVE, gz, fromCache: false })));
      while (inFlight.length > 0) await write(inFlight.shift() as Promise<Piece>);
      writable.end();
      await finished(writable, signal);
      if (outError !== undefined) throw outError;
    } catch (err) {
      for (const p of inFlight) p.catch(() => undefined);
      const cause = outError ?? (signal?.aborted ? (signal.reason ?? err) : err);
      // Our listener stays: destroying with an error emits it once more,
      // and an 'error' nobody listens to would crash the process.
      writable.destroy?.(cause instanceof Error ? cause : new Error(String(cause)));
      throw cause;
    }
    writable.off('error', onOutError);
    return {
      diffId: `sha256:${diff.digest('hex')}` as Digest,
      digest: `sha256:${digest.digest('hex')}` as Digest,
      size,
      tarBytes,
      compressedBytes,
      cachedBytes,
    };
  }

  /**
   * The segment's pieces in order, each a promise started as early as the
   * window allows. Boxed: an async generator would await a bare promise
   * before yielding it, one piece at a time.
   */
  private async *segmentPieces(
    segment: LayerSegment,
    signal: AbortSignal | undefined,
    warming = false,
  ): AsyncGenerator<{ pending: Promise<Piece> }> {
    const key = this.cache ? segment.cacheKey : undefined;
    // Being compressed for another layer (or ahead of time): wait for it
    // rather than compressing the same bytes twice.
    if (key !== undefined) await this.producing.get(key);
    const cached = key !== undefined ? this.cache?.get(key) : undefined;
    if (cached) {
      this.hits++;
      for (const gz of cached.members) yield { pending: this.limit(async () => ({ raw: await gunzipAsync(gz, { chunkSize: INFLATE_CHUNK }), gz, fromCache: true })) };
      return;
    }
    if (key !== undefined) this.misses++;
    let done = () => {};
    if (key !== undefined) {
      const producing = new Promise<void>((resolve) => (done = resolve));
      this.producing.set(key, producing);
    }
    try {
      // Members kept for the cache while they stay under its entry bound;
      // a path that outgrows it is given up at once, so packing a 1 GiB path
      // holds at most that bound, not the path.
      let kept: Array<Promise<Buffer>> | undefined = key !== undefined ? [] : undefined;
      let keptBytes = 0;
      const keep = (gz: Buffer) => {
        keptBytes += gz.length;
        if (keptBytes > this.maxEntryBytes) kept = undefined;
      };
      for await (const raw of cut(tarStream(segment.entries(), signal), () => this.spare.pop() ?? Buffer.allocUnsafe(PIECE_SIZE))) {
        // Compressing ahead of time is only worth it for what the cache keeps.
        if (warming && !kept) return;
        const gz = this.compress(raw);
        if (kept) {
          kept.push(gz);
          gz.then(keep, () => undefined);
        }
        yield { pending: gz.then((b) => ({ raw, gz: b, fromCache: false })) };
      }
      if (kept && key !== undefined) {
        const members = await Promise.all(kept);
        // Checked again: `keep` may not have run for the last members yet.
        const bytes = members.reduce((n, m) => n + m.length, 0);
        if (kept && bytes <= this.maxEntryBytes) this.cache?.set(key, { members, bytes });
      }
    } finally {
      if (key !== undefined) {
        this.producing.delete(key);
        done();
      }
    }
  }

  /**
   * Compresses store-path segments into the piece cache ahead of packing
   * (while Nix still builds other derivations of the same image), with the
   * same window as packing: a layer that needs the path meanwhile waits for
   * it rather than compressing it again. Segments already cached, or too
   * big for the cache, are skipped; failures are ignored (packing will
   * meet them again and report them). Resolves with the compressed bytes added.
   */
  async warm(segments: readonly LayerSegment[], signal?: AbortSignal): Promise<number> {
    let added = 0;
    for (const segment of segments) {
      const key = segment.cacheKey;
      if (key === undefined || !this.cache || this.cache.has(key) || this.producing.has(key) || signal?.aborted) continue;
      try {
        const inFlight: Array<Promise<Piece>> = [];
        for await (const { pending } of this.segmentPieces(segment, signal, true)) {
          pending.catch(() => undefined);
          inFlight.push(pending);
          if (inFlight.length >= this.window) await inFlight.shift();
        }
        await Promise.all(inFlight);
        added += this.cache.get(key)?.bytes ?? 0;
      } catch {
        // Reported by the packing that needs it, if it still does.
      }
    }
    return added;
  }

  private compress(raw: Buffer): Promise<Buffer> {
    return this.limit(() => gzipAsync(raw, { ...GZIP_OPTIONS, level: LEVEL, chunkSize: ZLIB_CHUNK }));
  }
}

/**
 * Cuts a segment's tar bytes into pieces of PIECE_SIZE, dropping the
 * trailing end-of-archive blocks (the layer gets one set, at its end).
 * Boundaries follow the bytes only, never the chunking of the source.
 */
async function* cut(source: AsyncIterable<Buffer>, alloc: () => Buffer): AsyncGenerator<Buffer> {
  // Chunks not yet in a piece (the first may be a view into a larger chunk).
  const parts: Buffer[] = [];
  let pending = 0;
  // Keep at least the end-of-archive blocks back until the source ends.
  const HOLD = END_OF_ARCHIVE.length;
  for await (const chunk of source) {
    parts.push(chunk);
    pending += chunk.length;
    while (pending >= PIECE_SIZE + HOLD) {
      // Copied once into a piece of its own, never by concatenating
      // everything pending (which copies each byte twice).
      const piece = alloc();
      let filled = 0;
      while (filled < PIECE_SIZE) {
        const head = parts[0] as Buffer;
        const take = Math.min(head.length, PIECE_SIZE - filled);
        head.copy(piece, filled, 0, take);
        filled += take;
        if (take === head.length) parts.shift();
        else parts[0] = head.subarray(take);
      }
      pending -= PIECE_SIZE;
      yield piece;
    }
  }
  const rest = Buffer.concat(parts, pending);
  if (rest.length < HOLD || rest.subarray(rest.length - HOLD).some((b) => b !== 0)) {
    throw new Error('tar segment did not end with end-of-archive blocks');
  }
  if (rest.length > HOLD) yield rest.subarray(0, rest.length - HOLD);
}

function drainOrFail(out: NodeJS.WritableStream, signal: AbortSignal | undefined): Promise<void> {
  return once(out as unknown as import('node:events').EventEmitter, 'drain', signal ? { signal } : {}).then(() => undefined);
}

async function finished(out: NodeJS.WritableStream, signal: AbortSignal | undefined): Promise<void> {
  const w = out as NodeJS.WritableStream & { writableFinished?: boolean };
  if (w.writableFinished) return;
  await once(out as unknown as import('node:events').EventEmitter, 'finish', signal ? { signal } : {});
}
