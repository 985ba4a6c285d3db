/**
 * The parallel packer: concatenated gzip members, byte-identical whatever
 * the thread count, the source's chunking or the grouping a store path is
 * packed in; the same tar (diff_id) as the single-stream packer; failures
 * and aborts tear down the output.
 */
import { createHash, randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { gunzipSync, gzipSync, inflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { collector } from '../../helpers/collector.js';
import { packLayer, type TarEntry } from '../../../src/layers/pack.js';
import { PIECE_SIZE, ParallelPacker, type LayerSegment } from '../../../src/layers/parallel-pack.js';

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;


/** Compressible but not trivial: repeated random words. */
function content(seed: number, size: number): Buffer {
  const words = Array.from({ length: 64 }, (_, i) => createHash('sha1').update(`${seed}:${i}`).digest('hex').slice(0, 3 + (i % 9)));
  const parts: string[] = [];
  let n = 0;
  for (let i = 0; n < size; i++) {
    const w = words[(i * 7 + seed) % words.length] as string;
    parts.push(w);
    n += w.length + 1;
  }
  return Buffer.from(parts.join(' ')).subarray(0, size);
}

/** A store path's entries; `chunk` sets how the file contents are delivered (the bytes must not depend on it). */
function storePath(name: string, files: Record<string, Buffer>, chunk = 1 << 20): TarEntry[] {
  const root = `nix/store/${name}`;
  return [
    { name: root, type: 'directory', mode: 0o555 },
    ...Object.entries(files).map(([f, data]): TarEntry => ({
      name: `${root}/${f}`,
      type: 'file',
      mode: 0o444,
      size: data.length,
      open: () => Readable.from(chunks(data, chunk)),
    })),
  ];
}

function* chunks(data: Buffer, size: number): Generator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
  if (data.length === 0) return;
}

const PREFIX: TarEntry[] = [
  { name: 'nix', type: 'directory', mode: 0o555 },
  { name: 'nix/store', type: 'directory', mode: 0o555 },
];

interface Path {
  readonly name: string;
  readonly files: Record<string, Buffer>;
}

// Three store paths; `big` spans several pieces.
const A: Path = { name: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-big-1.0', files: { 'lib.so': content(1, Math.floor(2.5 * PIECE_SIZE)), 'notes.txt': content(2, 5000) } };
const B: Path = { name: 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-small-2.0', files: { 'bin-tool': content(3, 70_000) } };
const C: Path = { name: 'cccccccccccccccccccccccccccccccc-other-3.0', files: { 'data': randomBytes(300_000), 'empty': Buffer.alloc(0) } };

function segments(paths: readonly Path[], chunk?: number): LayerSegment[] {
  return [{ entries: () => PREFIX }, ...paths.map((p) => ({ cacheKey: `/nix/store/${p.name}`, entries: () => storePath(p.name, p.files, chunk) }))];
}

async function pack(packer: ParallelPacker, segs: LayerSegment[]) {
  const { out, bytes } = collector();
  const result = await packer.pack(segs, out);
  return { ...result, bytes: bytes() };
}

/** The gzip members of a stream, split by inflating each in turn. */
function members(gz: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let rest = gz;
  while (rest.length > 0) {
    // 10-byte header (Node writes no name or extra field), raw deflate, 8-byte trailer.
    expect(rest.subarray(0, 3)).toEqual(Buffer.from([0x1f, 0x8b, 8]));
    const r = inflateRawSync(rest.subarray(10), { info: true }) as unknown as { engine: { bytesWritten: number } };
    const end = 10 + r.engine.bytesWritten + 8;
    out.push(rest.subarray(0, end));
    rest = rest.subarray(end);
  }
  return out;
}

describe('ParallelPacker', () => {
  it('writes the same tar as the single-stream packer, as several gzip members that decompress as one stream', async () => {
    const single = collector();
    const reference = await packLayer([...PREFIX, ...storePath(A.name, A.files), ...storePath(B.name, B.files)], single.out);
    const ours = await pack(new ParallelPacker({ threads: 2, cacheBytes: 0 }), segments([A, B]));

    expect(ours.diffId).toBe(reference.diffId);
    expect(ours.digest).toBe(sha256(ours.bytes));
    expect(ours.size).toBe(ours.bytes.length);
    expect(sha256(gunzipSync(ours.bytes))).toBe(ours.diffId);
    // prefix, big: 3 pieces, small: 1, end of archive.
    expect(members(ours.bytes)).toHaveLength(6);
    expect(ours.compressedBytes).toBe(ours.size);
    expect(ours.cachedBytes).toBe(0);
  });

  it('gives byte-identical layers with 1 and 4 threads and whatever the chunking of file reads', async () => {
    const one = await pack(new ParallelPacker({ threads: 1, cacheBytes: 0 }), segments([A, B, C]));
    const four = await pack(new ParallelPacker({ threads: 4, cacheBytes: 0 }), segments([A, B, C]));
    const oddChunks = await pack(new ParallelPacker({ threads: 3, cacheBytes: 0 }), segments([A, B, C], 4093));
    expect(four.bytes.equals(one.bytes)).toBe(true);
    expect(oddChunks.bytes.equals(one.bytes)).toBe(true);
    expect(four.digest).toBe(one.digest);
  });

  it('packs a store path into the same member bytes in differently grouped layers', async () => {
    const packer = new ParallelPacker({ threads: 2, cacheBytes: 0 });
    const alone = members((await pack(packer, [segments([A])[1] as LayerSegment])).bytes).slice(0, -1);
    expect(alone).toHaveLength(3);
    const aBytes = Buffer.concat(alone);
    const withB = (await pack(packer, segments([A, B]))).bytes;
    const withC = (await pack(packer, segments([C, A]))).bytes;
    expect(withB.indexOf(aBytes)).toBeGreaterThan(0);
    expect(withC.indexOf(aBytes)).toBeGreaterThan(0);
  });

  it('copies cached store paths into a differently grouped layer: same bytes as compressing them, counted as cached', async () => {
    const cold = await pack(new ParallelPacker({ threads: 2, cacheBytes: 0 }), segments([C, A]));
    const packer = new ParallelPacker({ threads: 2, cacheBytes: 64 << 20 });
    await pack(packer, segments([A, B]));
    await pack(packer, segments([C]));
    expect(packer.stats()).toMatchObject({ entries: 3, hits: 0, misses: 3 });
    const warm = await pack(packer, segments([C, A]));
    expect(warm.bytes.equals(cold.bytes)).toBe(true);
    expect(warm.diffId).toBe(cold.diffId);
    expect(packer.stats()).toMatchObject({ hits: 2 });
    // Everything but the prefix and the end-of-archive members came from the cache.
    expect(warm.cachedBytes).toBeGreaterThan(warm.size - 200);
    expect(warm.compressedBytes + warm.cachedBytes).toBe(warm.size);
  });

  it('keeps the piece cache within its byte bound and does not cache a path bigger than an eighth of it', async () => {
    const packer = new ParallelPacker({ threads: 2, cacheBytes: 400_000 });
    await pack(packer, segments([A, B, C]));
    const s = packer.stats();
    expect(s.bytes).toBeLessThanOrEqual(400_000);
    // C's 300 kB of random bytes do not compress: too big for this cache; A and B are kept.
    expect(s.entries).toBe(2);
    expect((await pack(packer, segments([C]))).cachedBytes).toBe(0);
    expect((await pack(packer, segments([A]))).cachedBytes).toBeGreaterThan(0);
  });

  it('compresses within 3% of one gzip -6 stream of the same tar', async () => {
    const ours = await pack(new ParallelPacker({ threads: 2, cacheBytes: 0 }), segments([A, B, C]));
    const one = gzipSync(gunzipSync(ours.bytes), { level: 6 });
    expect(ours.size / one.length).toBeLessThan(1.03);
  });

  it('streams: a 32 MiB file is never read far ahead of what the output took', async () => {
    const total = 32;
    let produced = 0;
    let consumed = 0;
    let worstLead = 0;
    // Incompressible, so compressed bytes out match raw bytes in.
    const block = randomBytes(1 << 20);
    let blocks = 0;
    const source = new Readable({
      read() {
        if (blocks++ === total) return void this.push(null);
        produced += block.length;
        this.push(block);
      },
    });
    const out = new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, cb) {
        consumed += chunk.length;
        worstLead = Math.max(worstLead, produced - consumed);
        setImmediate(cb);
      },
    });
    const entries: TarEntry[] = [{ name: 'nix/store/x-big/blob', type: 'file', mode: 0o444, size: total << 20, open: () => source }];
    const r = await new ParallelPacker({ threads: 2, cacheBytes: 1 << 30 }).pack([{ cacheKey: '/nix/store/x-big', entries: () => entries }], out);
    expect(r.tarBytes).toBeGreaterThan(total << 20);
    // A window of pieces in flight plus a read chunk or two, not the file.
    expect(worstLead).toBeLessThan(24 << 20);
  });

  it('rejects with the abort reason and destroys the output when the signal aborts', async () => {
    const controller = new AbortController();
    let reads = 0;
    const block = randomBytes(1 << 16);
    const endless = new Readable({
      read() {
        if (++reads === 40) controller.abort(new Error('stop now'));
        this.push(block);
      },
    });
    const { out } = collector();
    const packing = new ParallelPacker({ threads: 2, cacheBytes: 1 << 20 }).pack(
      [{ cacheKey: '/nix/store/x-endless', entries: () => [{ name: 'nix/store/x-endless', type: 'file', mode: 0o444, size: 1 << 40, open: () => endless }] }],
      out,
      { signal: controller.signal },
    );
    await expect(packing).rejects.toThrow('stop now');
    expect(out.destroyed).toBe(true);
    expect(endless.destroyed).toBe(true);
  });

  it('names a failing entry, and the output\'s own error when the output fails', async () => {
    const oops = new Error('disk on fire');
    const failing = new Readable({
      read() {
        this.destroy(oops);
      },
    });
    const a = collector();
    await expect(
      new ParallelPacker({ threads: 2, cacheBytes: 0 }).pack([{ entries: () => [{ name: 'bad', type: 'file', mode: 0o444, size: 10, open: () => failing }] }], a.out),
    ).rejects.toBe(oops);
    expect(a.out.destroyed).toBe(true);

    const full = new Error('no space left');
    const broken = new Writable({
      write(_c, _e, cb) {
        cb(full);
      },
    });
    broken.on('error', () => undefined);
    await expect(new ParallelPacker({ threads: 2, cacheBytes: 0 }).pack(segments([A]), broken)).rejects.toBe(full);
  });

  it('refuses a thread count that is not a positive integer', () => {
    expect(() => new ParallelPacker({ threads: 0, cacheBytes: 0 })).toThrow(RangeError);
  });
});
