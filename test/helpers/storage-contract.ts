/**
 * The storage contract suite: every backend runs exactly these tests
 * (distribution's testsuites.Driver idea). A backend test file calls
 * `storageContract(name, (now) => fresh backend on the clock now, options)`.
 * The clock is the test's own (it starts at a fixed date and moves only when
 * a test moves it), so usedAt and updatedAt are checked exactly and nothing
 * depends on the real date.
 */
import { createHash } from 'node:crypto';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import type { Digest } from '../../src/digest.js';
import { RECORD_KINDS, type StorageBackend, type StoredBlob } from '../../src/storage/backend.js';

const sha = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function collect(s: ReadableStream<Uint8Array>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s as unknown as AsyncIterable<Uint8Array>) chunks.push(Buffer.from(c));
  return Buffer.concat(chunks);
}

/** 3 MiB of varied bytes, written in many chunks, so streaming and backpressure are exercised. */
function payload(seed: number, size = 3 * 1024 * 1024): Buffer {
  const b = Buffer.alloc(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

function writeAll(bytes: Buffer) {
  return async (out: Writable) => {
    await pipeline(Readable.from((function* () {
      for (let i = 0; i < bytes.length; i += 64 * 1024) yield bytes.subarray(i, i + 64 * 1024);
    })()), out);
    return 'written';
  };
}

/** The test's clock: a fixed start, moved only by the test. */
export interface TestClock {
  (): number;
  advance(ms: number): void;
}

/** Where the test clock starts (2023-11-14T22:13:20Z): any fixed date would do. */
export const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;

function testClock(): TestClock {
  let t = T0;
  return Object.assign(() => t, {
    advance(ms: number) {
      t += ms;
    },
  });
}

async function all<T>(it: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const x of it) out.push(x);
  return out;
}

async function listed(s: StorageBackend, d: Digest): Promise<StoredBlob | undefined> {
  return (await all(s.listBlobs())).find((b) => b.digest === d);
}

async function versionOf(s: StorageBackend, d: Digest): Promise<string> {
  const b = await listed(s, d);
  expect(b, `${d} is listed`).toBeDefined();
  return b!.version;
}

/** Everything left in staging, counted by removing it (the limit is below any age). */
function stagingLeft(s: StorageBackend): Promise<number> {
  return s.cleanStaging(-Number.MAX_SAFE_INTEGER);
}

export interface ContractOptions {
  /**
   * Leaves a staging object behind as a process killed mid-write would,
   * dated `at` by the backend's clock (each backend knows where its
   * staging objects live).
   */
  readonly strandStaging: (s: StorageBackend, at: number) => Promise<void>;
  /**
   * Set, to the reason, when the server under test does not honour
   * conditional deletes (the GCS emulator): the tests that rely on them are
   * then expected to fail (it.fails) and say so in their names.
   */
  readonly deletePreconditionsIgnored?: string;
}

export function storageContract(name: string, make: (now: () => number) => Promise<StorageBackend>, opts: ContractOptions): void {
  /** A test that needs the server to honour conditional deletes. */
  const atomic = (title: string, fn: () => Promise<void>): void => {
    if (opts.deletePreconditionsIgnored === undefined) it(title, fn);
    else it.fails(`${title} [EXPECTED TO FAIL HERE: ${opts.deletePreconditionsIgnored}]`, fn);
  };

  describe(`storage contract: ${name}`, () => {
    it('streams a blob in and reads it back with its digest, size and media type', async () => {
      const s = await make(testClock());
      const bytes = payload(1);
      const r = await s.persistBlob('application/vnd.oci.image.layer.v1.tar+gzip', writeAll(bytes));
      expect(r).toEqual({ digest: sha(bytes), size: bytes.length, value: 'written' });
      expect(await s.statBlob(r.digest)).toEqual({ size: bytes.length, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' });
      expect((await s.readBlob(r.digest))?.equals(bytes)).toBe(true);
    });

    it('calls beforeVisible with the digest before the blob appears, and stores nothing when it throws (a GC lease is written there)', async () => {
      const s = await make(testClock());
      const bytes = payload(11);
      const seen: Array<{ digest: string; visible: boolean }> = [];
      const r = await s.persistBlob('application/octet-stream', writeAll(bytes), {
        beforeVisible: async (d) => {
          seen.push({ digest: d, visible: (await s.statBlob(d)) !== undefined });
        },
      });
      expect(seen).toEqual([{ digest: sha(bytes), visible: false }]);
      expect(await s.statBlob(r.digest)).toBeDefined();

      const other = payload(12);
      await expect(
        s.persistBlob('application/octet-stream', writeAll(other), {
          beforeVisible: async () => {
            throw new Error('lease not written');
          },
        }),
      ).rejects.toThrow('lease not written');
      expect(await s.statBlob(sha(other))).toBeUndefined();
      const listed: string[] = [];
      for await (const b of s.listBlobs()) listed.push(b.digest);
      expect(listed).toEqual([r.digest]);
    });

    it('serves a whole blob and byte ranges', async () => {
      const s = await make(testClock());
      const bytes = payload(2);
      const { digest } = await s.persistBlob('application/octet-stream', writeAll(bytes));
      const whole = await s.serveBlob(digest);
      expect(whole).toBeDefined();
      if (whole!.kind === 'stream') {
        expect(whole!.range).toBeUndefined();
        expect((await collect(whole!.stream)).equals(bytes)).toBe(true);
        const part = await s.serveBlob(digest, { start: 1000, end: 1999 });
        expect(part?.kind).toBe('stream');
        if (part?.kind === 'stream') {
          expect(part.range).toEqual({ start: 1000, end: 1999 });
          expect((await collect(part.stream)).equals(bytes.subarray(1000, 2000))).toBe(true);
        }
      } else {
        // Redirecting backends must point at the blob's bytes.
        const res = await fetch(whole!.url);
        expect(res.status).toBe(200);
        expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
      }
      expect(whole!.info).toEqual({ size: bytes.length, mediaType: 'application/octet-stream' });
    });

    it('knows nothing of a blob that was never written', async () => {
      const s = await make(testClock());
      const d = sha(Buffer.from('never written'));
      expect(await s.statBlob(d)).toBeUndefined();
      expect(await s.readBlob(d)).toBeUndefined();
      expect(await s.serveBlob(d)).toBeUndefined();
    });

    it('leaves nothing under a digest when the writer fails halfway, and passes its error through', async () => {
      const s = await make(testClock());
      const half = payload(3, 1024 * 1024);
      const boom = new Error('the build died');
      const err = await s
        .persistBlob('application/octet-stream', async (out) => {
          await new Promise<void>((resolve, reject) => out.write(half, (e) => (e ? reject(e) : resolve())));
          throw boom;
        })
        .catch((e: unknown) => e);
      expect(err).toBe(boom);
      expect(await s.statBlob(sha(half))).toBeUndefined();
      // The same content written properly afterwards is fine.
      const ok = await s.persistBlob('application/octet-stream', writeAll(half));
      expect(ok.digest).toBe(sha(half));
    });

    it('stores small blobs from memory, idempotently', async () => {
      const s = await make(testClock());
      const bytes = Buffer.from('{"schemaVersion":2}');
      const d1 = await s.putBlob('application/vnd.oci.image.manifest.v1+json', bytes);
      const d2 = await s.putBlob('application/vnd.oci.image.manifest.v1+json', bytes);
      expect(d1).toBe(sha(bytes));
      expect(d2).toBe(d1);
      expect((await s.readBlob(d1))?.toString()).toBe('{"schemaVersion":2}');
      expect((await s.statBlob(d1))?.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
    });

    it('survives concurrent writes of the same content', async () => {
      const s = await make(testClock());
      const bytes = payload(4, 512 * 1024);
      const rs = await Promise.all([1, 2, 3, 4].map(() => s.persistBlob('application/octet-stream', writeAll(bytes))));
      expect(new Set(rs.map((r) => r.digest))).toEqual(new Set([sha(bytes)]));
      expect((await s.readBlob(sha(bytes)))?.equals(bytes)).toBe(true);
    });

    it('keeps records, replaces them atomically, and reports missing ones as undefined', async () => {
      const s = await make(testClock());
      const key = 'ab'.repeat(32);
      expect(await s.getRecord('manifests', key)).toBeUndefined();
      await s.putRecord('manifests', key, Buffer.from('{"v":1}'));
      expect((await s.getRecord('manifests', key))?.toString()).toBe('{"v":1}');
      await s.putRecord('manifests', key, Buffer.from('{"v":2}'));
      expect((await s.getRecord('manifests', key))?.toString()).toBe('{"v":2}');
      // Kinds are separate namespaces.
      expect(await s.getRecord('layers', key)).toBeUndefined();
    });

    it('refuses record keys that are not hex hashes', async () => {
      const s = await make(testClock());
      await expect(s.putRecord('layers', '../../etc/passwd', Buffer.from('x'))).rejects.toThrow(/invalid record key/);
    });

    it('passes its readiness check', async () => {
      const s = await make(testClock());
      await expect(s.check()).resolves.toBeUndefined();
    });

    // Garbage-collection primitives.

    it('lists exactly the stored blobs, with their sizes and when each was written', async () => {
      const clock = testClock();
      const s = await make(clock);
      expect(await all(s.listBlobs())).toEqual([]);
      const layer = payload(5, 256 * 1024);
      const { digest: d1 } = await s.persistBlob('application/vnd.oci.image.layer.v1.tar+gzip', writeAll(layer));
      clock.advance(1000);
      const config = Buffer.from('{"architecture":"amd64"}');
      const d2 = await s.putBlob('application/vnd.oci.image.config.v1+json', config);
      // Records and failed writes are not blobs.
      await s.putRecord('manifests', 'ab'.repeat(32), Buffer.from('{}'));
      await s.persistBlob('application/octet-stream', async () => Promise.reject(new Error('no'))).catch(() => undefined);
      const blobs = await all(s.listBlobs());
      const byDigest = (a: { digest: string }, b: { digest: string }) => a.digest.localeCompare(b.digest);
      expect(blobs.map(({ digest, size, usedAt }) => ({ digest, size, usedAt })).sort(byDigest)).toEqual(
        [
          { digest: d1, size: layer.length, usedAt: T0 },
          { digest: d2, size: config.length, usedAt: T0 + 1000 },
        ].sort(byDigest),
      );
      for (const b of blobs) expect(b.version).toMatch(/./);
    });

    it('markBlobUsed moves usedAt forward and changes the version, and answers false for a missing blob', async () => {
      const clock = testClock();
      const s = await make(clock);
      const bytes = Buffer.from('{"schemaVersion":2,"mediaType":"marked"}');
      const d = await s.putBlob('application/vnd.oci.image.manifest.v1+json', bytes);
      const before = await listed(s, d);
      clock.advance(HOUR);
      expect(await s.markBlobUsed(d)).toBe(true);
      const after = await listed(s, d);
      expect(after).toMatchObject({ size: bytes.length, usedAt: T0 + HOUR });
      expect(after!.version).not.toBe(before!.version);
      clock.advance(1);
      expect(await s.markBlobUsed(d)).toBe(true);
      expect(await versionOf(s, d)).not.toBe(after!.version);
      // Marking changes nothing else.
      expect((await s.readBlob(d))?.equals(bytes)).toBe(true);
      expect(await s.statBlob(d)).toEqual({ size: bytes.length, mediaType: 'application/vnd.oci.image.manifest.v1+json' });
      // A missing blob is not created by a mark.
      const missing = sha(Buffer.from('never written'));
      expect(await s.markBlobUsed(missing)).toBe(false);
      expect(await s.statBlob(missing)).toBeUndefined();
    });

    it('putBlob of a blob already stored marks it used', async () => {
      const clock = testClock();
      const s = await make(clock);
      const bytes = Buffer.from('{"config":"twice"}');
      const d = await s.putBlob('application/vnd.oci.image.config.v1+json', bytes);
      const v = await versionOf(s, d);
      clock.advance(HOUR);
      expect(await s.putBlob('application/vnd.oci.image.config.v1+json', bytes)).toBe(d);
      const after = await listed(s, d);
      expect(after?.usedAt).toBe(T0 + HOUR);
      expect(after?.version).not.toBe(v);
    });

    it('deleteBlobIfUnchanged deletes a blob whose version is current, once', async () => {
      const s = await make(testClock());
      const bytes = payload(6, 200 * 1024);
      const { digest } = await s.persistBlob('application/octet-stream', writeAll(bytes));
      const v = await versionOf(s, digest);
      expect(await s.deleteBlobIfUnchanged(digest, v)).toBe(true);
      expect(await s.statBlob(digest)).toBeUndefined();
      expect(await s.readBlob(digest)).toBeUndefined();
      expect(await s.serveBlob(digest)).toBeUndefined();
      expect(await listed(s, digest)).toBeUndefined();
      expect(await s.deleteBlobIfUnchanged(digest, v)).toBe(false);
      // Too late to mark it: the caller learns that it must write it again.
      expect(await s.markBlobUsed(digest)).toBe(false);
      const again = await s.persistBlob('application/octet-stream', writeAll(bytes));
      expect(again.digest).toBe(digest);
      expect((await s.readBlob(digest))?.equals(bytes)).toBe(true);
      expect(await stagingLeft(s)).toBe(0);
    });

    atomic('deleteBlobIfUnchanged refuses a version that is not the blob\'s', async () => {
      const s = await make(testClock());
      const d = await s.putBlob('application/octet-stream', Buffer.from('kept'));
      const other = await s.putBlob('application/octet-stream', Buffer.from('other'));
      expect(await s.deleteBlobIfUnchanged(d, 'not-a-version')).toBe(false);
      expect(await s.deleteBlobIfUnchanged(d, await versionOf(s, other))).toBe(false);
      expect((await s.readBlob(d))?.toString()).toBe('kept');
    });

    atomic('deleteBlobIfUnchanged keeps a blob marked used after its version was read', async () => {
      const clock = testClock();
      const s = await make(clock);
      const bytes = payload(7, 200 * 1024);
      const { digest } = await s.persistBlob('application/octet-stream', writeAll(bytes));
      const stale = await versionOf(s, digest);
      clock.advance(1000);
      expect(await s.markBlobUsed(digest)).toBe(true);
      expect(await s.deleteBlobIfUnchanged(digest, stale)).toBe(false);
      expect(await s.statBlob(digest)).toEqual({ size: bytes.length, mediaType: 'application/octet-stream' });
      expect((await s.readBlob(digest))?.equals(bytes)).toBe(true);
      // The version read after the mark is current again.
      expect(await s.deleteBlobIfUnchanged(digest, await versionOf(s, digest))).toBe(true);
      expect(await stagingLeft(s)).toBe(0);
    });

    atomic('deleteBlobIfUnchanged keeps a blob written again after its version was read', async () => {
      const clock = testClock();
      const s = await make(clock);
      // Streamed again (persistBlob always writes).
      const layer = payload(8, 200 * 1024);
      const { digest } = await s.persistBlob('application/octet-stream', writeAll(layer));
      const stale = await versionOf(s, digest);
      clock.advance(1000);
      await s.persistBlob('application/octet-stream', writeAll(layer));
      expect(await s.deleteBlobIfUnchanged(digest, stale)).toBe(false);
      expect((await s.readBlob(digest))?.equals(layer)).toBe(true);
      // Put again from memory (putBlob finds it stored and marks it).
      const manifest = Buffer.from('{"schemaVersion":2,"put":"twice"}');
      const d = await s.putBlob('application/vnd.oci.image.manifest.v1+json', manifest);
      const staleToo = await versionOf(s, d);
      clock.advance(1000);
      await s.putBlob('application/vnd.oci.image.manifest.v1+json', manifest);
      expect(await s.deleteBlobIfUnchanged(d, staleToo)).toBe(false);
      expect((await s.readBlob(d))?.equals(manifest)).toBe(true);
      expect(await stagingLeft(s)).toBe(0);
    });

    atomic('a mark and a conditional delete racing 50 times: never "marked" and deleted', async () => {
      const clock = testClock();
      const s = await make(clock);
      const bytes = Buffer.from('a blob a replica and a collector race for');
      const mediaType = 'application/octet-stream';
      const d = await s.putBlob(mediaType, bytes);
      const outcomes = { marked: 0, deleted: 0, neither: 0 };
      for (let round = 0; round < 50; round++) {
        if ((await s.statBlob(d)) === undefined) await s.putBlob(mediaType, bytes);
        const version = await versionOf(s, d);
        clock.advance(1000);
        // Alternate which request starts first, and start the other 0 to 3
        // event-loop turns later, so that their steps interleave differently.
        const lag = async <T>(f: () => Promise<T>): Promise<T> => {
          for (let i = 0; i < Math.floor(round / 2) % 4; i++) await new Promise((r) => setImmediate(r));
          return f();
        };
        let marked: boolean;
        let deleted: boolean;
        if (round % 2 === 0) [marked, deleted] = await Promise.all([s.markBlobUsed(d), lag(() => s.deleteBlobIfUnchanged(d, version))]);
        else [deleted, marked] = await Promise.all([s.deleteBlobIfUnchanged(d, version), lag(() => s.markBlobUsed(d))]);
        expect({ round, marked, deleted }).not.toEqual({ round, marked: true, deleted: true });
        // Deleted exactly when the delete says so; a blob marked is there, whole.
        expect({ round, present: (await s.statBlob(d)) !== undefined }).toEqual({ round, present: !deleted });
        if (marked) expect((await s.readBlob(d))?.equals(bytes)).toBe(true);
        outcomes[marked ? 'marked' : deleted ? 'deleted' : 'neither']++;
      }
      // Both sides won some rounds: the race was run, not one side alone.
      expect(outcomes.marked, JSON.stringify(outcomes)).toBeGreaterThan(0);
      expect(outcomes.deleted, JSON.stringify(outcomes)).toBeGreaterThan(0);
      expect(await stagingLeft(s)).toBe(0);
    });

    it('lists, replaces and deletes records of every kind, each kind its own namespace', async () => {
      const clock = testClock();
      const s = await make(clock);
      const key = 'cd'.repeat(32);
      for (const kind of RECORD_KINDS) {
        expect(await all(s.listRecords(kind))).toEqual([]);
        await s.putRecord(kind, key, Buffer.from(JSON.stringify({ kind })));
        clock.advance(1000);
      }
      for (const [i, kind] of RECORD_KINDS.entries()) {
        expect(await all(s.listRecords(kind))).toEqual([{ key, updatedAt: T0 + i * 1000 }]);
        expect((await s.getRecord(kind, key))?.toString()).toBe(JSON.stringify({ kind }));
      }
      // Rewritten: a new updatedAt. A second key (the fixed kind of key a collector picks).
      clock.advance(HOUR);
      await s.putRecord('usage', key, Buffer.from('{"kind":"usage","v":2}'));
      const fixed = '0000000000000001';
      await s.putRecord('gc', fixed, Buffer.from('{"state":"idle"}'));
      const written = T0 + RECORD_KINDS.length * 1000 + HOUR;
      expect(await all(s.listRecords('usage'))).toEqual([{ key, updatedAt: written }]);
      expect((await all(s.listRecords('gc'))).sort((a, b) => a.key.localeCompare(b.key))).toEqual(
        [
          { key: fixed, updatedAt: written },
          { key, updatedAt: T0 + RECORD_KINDS.indexOf('gc') * 1000 },
        ].sort((a, b) => a.key.localeCompare(b.key)),
      );
      // Deleted in one kind only; deleting again, or what never was, is fine.
      await s.deleteRecord('layers', key);
      expect(await s.getRecord('layers', key)).toBeUndefined();
      expect(await all(s.listRecords('layers'))).toEqual([]);
      await expect(s.deleteRecord('layers', key)).resolves.toBeUndefined();
      await expect(s.deleteRecord('leases', 'ef'.repeat(32))).resolves.toBeUndefined();
      for (const kind of RECORD_KINDS.filter((k) => k !== 'layers')) {
        expect((await s.getRecord(kind, key))?.toString()).toMatch(new RegExp(`"kind":"${kind}"`));
      }
      expect(await all(s.listRecords('gc'))).toHaveLength(2);
      await expect(s.deleteRecord('gc', '../blobs')).rejects.toThrow(/invalid record key/);
      // Records are not blobs, nor blobs records.
      expect(await all(s.listBlobs())).toEqual([]);
    });

    it('cleanStaging removes only staging leftovers older than the limit, never a blob or a record', async () => {
      const clock = testClock();
      const s = await make(clock);
      const layer = payload(9, 200 * 1024);
      const { digest } = await s.persistBlob('application/octet-stream', writeAll(layer));
      const config = await s.putBlob('application/vnd.oci.image.config.v1+json', Buffer.from('{}'));
      await s.putRecord('layers', 'ab'.repeat(32), Buffer.from('{"layer":1}'));
      expect(await s.cleanStaging(HOUR)).toBe(0);
      await opts.strandStaging(s, clock()); // left at T0
      clock.advance(2 * HOUR);
      await opts.strandStaging(s, clock()); // left at T0 + 2 h
      clock.advance(10 * 60_000);
      // 2 h 10 min and 10 min old: only the first goes.
      expect(await s.cleanStaging(HOUR)).toBe(1);
      expect(await s.cleanStaging(HOUR)).toBe(0);
      clock.advance(HOUR);
      expect(await s.cleanStaging(HOUR)).toBe(1);
      expect(await stagingLeft(s)).toBe(0);
      // Old as they are by now, the blobs and the record stay.
      expect((await s.readBlob(digest))?.equals(layer)).toBe(true);
      expect(await s.statBlob(config)).toBeDefined();
      expect((await all(s.listBlobs())).map((b) => b.digest).sort()).toEqual([digest, config].sort());
      expect((await s.getRecord('layers', 'ab'.repeat(32)))?.toString()).toBe('{"layer":1}');
    });
  });
}
