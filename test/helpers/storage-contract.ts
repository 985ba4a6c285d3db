/**
 * The storage contract suite: every backend runs exactly these tests
 * (distribution's testsuites.Driver idea). A backend test file calls
 * `storageContract(name, () => fresh backend)`.
 */
import { createHash } from 'node:crypto';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import type { Digest } from '../../src/digest.js';
import type { StorageBackend } from '../../src/storage/backend.js';

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

export function storageContract(name: string, make: () => Promise<StorageBackend>): void {
  describe(`storage contract: ${name}`, () => {
    it('streams a blob in and reads it back with its digest, size and media type', async () => {
      const s = await make();
      const bytes = payload(1);
      const r = await s.persistBlob('application/vnd.oci.image.layer.v1.tar+gzip', writeAll(bytes));
      expect(r).toEqual({ digest: sha(bytes), size: bytes.length, value: 'written' });
      expect(await s.statBlob(r.digest)).toEqual({ size: bytes.length, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' });
      expect((await s.readBlob(r.digest))?.equals(bytes)).toBe(true);
    });

    it('serves a whole blob and byte ranges', async () => {
      const s = await make();
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
      const s = await make();
      const d = sha(Buffer.from('never written'));
      expect(await s.statBlob(d)).toBeUndefined();
      expect(await s.readBlob(d)).toBeUndefined();
      expect(await s.serveBlob(d)).toBeUndefined();
    });

    it('leaves nothing under a digest when the writer fails halfway, and passes its error through', async () => {
      const s = await make();
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
      const s = await make();
      const bytes = Buffer.from('{"schemaVersion":2}');
      const d1 = await s.putBlob('application/vnd.oci.image.manifest.v1+json', bytes);
      const d2 = await s.putBlob('application/vnd.oci.image.manifest.v1+json', bytes);
      expect(d1).toBe(sha(bytes));
      expect(d2).toBe(d1);
      expect((await s.readBlob(d1))?.toString()).toBe('{"schemaVersion":2}');
      expect((await s.statBlob(d1))?.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');
    });

    it('survives concurrent writes of the same content', async () => {
      const s = await make();
      const bytes = payload(4, 512 * 1024);
      const rs = await Promise.all([1, 2, 3, 4].map(() => s.persistBlob('application/octet-stream', writeAll(bytes))));
      expect(new Set(rs.map((r) => r.digest))).toEqual(new Set([sha(bytes)]));
      expect((await s.readBlob(sha(bytes)))?.equals(bytes)).toBe(true);
    });

    it('keeps records, replaces them atomically, and reports missing ones as undefined', async () => {
      const s = await make();
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
      const s = await make();
      await expect(s.putRecord('layers', '../../etc/passwd', Buffer.from('x'))).rejects.toThrow(/invalid record key/);
    });

    it('passes its readiness check', async () => {
      const s = await make();
      await expect(s.check()).resolves.toBeUndefined();
    });
  });
}
