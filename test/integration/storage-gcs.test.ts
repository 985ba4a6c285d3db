/**
 * The gcs backend against a real server: the Cloud Storage emulator of
 * firebase-tools (test/gcs-emulator), spoken to over HTTP by the real SDK.
 * What the emulator cannot show (a missing bucket: it creates buckets on
 * first use; 401/403: it checks no credentials) is covered by the error
 * explanations at the end.
 *
 * The emulator ignores ifGenerationMatch and ifMetagenerationMatch on DELETE
 * (shown below), which the collector's conditional delete relies on. So the
 * contract runs twice: against the bare emulator, where the tests that need
 * the preconditions are expected to fail and say so, and through a small
 * proxy that applies GCS's precondition semantics in front of the emulator.
 */
import { createHash, randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ApiError, Storage } from '@google-cloud/storage';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Digest } from '../../src/digest.js';
import { StorageError } from '../../src/errors.js';
import type { StorageBackend } from '../../src/storage/backend.js';
import { GcsStorage, explainGcsError } from '../../src/storage/gcs.js';
import { startPreconditionProxy, type PreconditionProxy } from '../helpers/gc.js';
import { startGcsEmulator, type GcsEmulator } from '../helpers/gcs-emulator.js';
import { storageContract } from '../helpers/storage-contract.js';

let emu: GcsEmulator;
let proxy: PreconditionProxy;
beforeAll(async () => {
  emu = await startGcsEmulator();
  proxy = await startPreconditionProxy(emu.url);
});
afterAll(async () => {
  await proxy?.stop();
  await emu?.stop();
});

let buckets = 0;
/** Every test gets a bucket of its own (the emulator creates it on first use). */
function freshBucket(): string {
  return `nixery-test-${process.pid}-${++buckets}`;
}

const bucketOf = new WeakMap<StorageBackend, string>();
async function contractBackend(now: () => number, endpoint: string): Promise<GcsStorage> {
  const bucket = freshBucket();
  const s = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: endpoint, now });
  bucketOf.set(s, bucket);
  return s;
}

/**
 * A staging object as a process killed between its upload and the copy into
 * place leaves it (an upload in progress is no object yet), written with the
 * SDK directly.
 */
async function strandStaging(s: StorageBackend, at: number): Promise<void> {
  const bucket = new Storage({ apiEndpoint: emu.url }).bucket(bucketOf.get(s)!);
  await bucket.file(`staging/${randomUUID()}`).save(Buffer.from('half a layer'), {
    resumable: false,
    gzip: false,
    metadata: { metadata: { 'nixery-staged-at': String(at) } },
  });
}

storageContract('gcs, bare emulator', (now) => contractBackend(now, emu.url), {
  strandStaging,
  deletePreconditionsIgnored: 'the emulator ignores ifGenerationMatch/ifMetagenerationMatch on DELETE; see the proxy run',
});
storageContract('gcs, emulator behind a proxy applying GCS delete preconditions', (now) => contractBackend(now, proxy.url), {
  strandStaging,
});

interface ObjectResource {
  name: string;
  size: string;
  contentType?: string;
  contentEncoding?: string;
  generation: string;
  metageneration: string;
  timeCreated: string;
  metadata?: Record<string, string>;
}

/** The bucket as the JSON API shows it, read with plain fetch (not the code under test). */
async function listObjects(endpoint: string, bucket: string, prefix = ''): Promise<ObjectResource[]> {
  const res = await fetch(`${endpoint}/storage/v1/b/${bucket}/o?prefix=${encodeURIComponent(prefix)}`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { items?: ObjectResource[] }).items ?? [];
}

async function getObject(endpoint: string, bucket: string, name: string): Promise<ObjectResource> {
  const res = await fetch(`${endpoint}/storage/v1/b/${bucket}/o/${encodeURIComponent(name)}`);
  expect(res.status).toBe(200);
  return (await res.json()) as ObjectResource;
}

function bytesOf(seed: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed * 7 + (i >> 9)) & 0xff;
  return b;
}

function writeChunks(bytes: Buffer, chunk = 64 * 1024) {
  return async (out: Writable) => {
    await pipeline(
      Readable.from(
        (function* () {
          for (let i = 0; i < bytes.length; i += chunk) yield bytes.subarray(i, i + chunk);
        })(),
      ),
      out,
    );
  };
}

describe('gcs storage specifics', () => {
  it('the emulator IGNORES delete preconditions (GCS answers 412): a DELETE with a stale ifMetagenerationMatch or ifGenerationMatch deletes', async () => {
    const bucket = freshBucket();
    const sdk = new Storage({ apiEndpoint: emu.url }).bucket(bucket);
    const api = `${emu.url}/storage/v1/b/${bucket}/o`;
    for (const stale of ['metageneration', 'generation'] as const) {
      const name = `blobs/sha256/${stale}`;
      await sdk.file(name).save(Buffer.from('x'), { resumable: false, gzip: false });
      const md = await getObject(emu.url, bucket, name);
      // A metadata PATCH: metageneration 1 -> 2 (the emulator does count it).
      const patched = await fetch(`${api}/${encodeURIComponent(name)}`, {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ metadata: { 'nixery-used-at': '1' } }),
      });
      expect(((await patched.json()) as { metageneration: string }).metageneration).toBe('2');
      const query =
        stale === 'metageneration'
          ? `ifGenerationMatch=${md.generation}&ifMetagenerationMatch=1`
          : `ifGenerationMatch=${Number(md.generation) - 1}&ifMetagenerationMatch=2`;
      const res = await fetch(`${api}/${encodeURIComponent(name)}?${query}`, { method: 'DELETE' });
      expect(res.status).toBe(204); // GCS: 412
      expect((await fetch(`${api}/${encodeURIComponent(name)}`)).status).toBe(404);
    }
  });

  it('the precondition proxy answers a stale conditional delete 412 and lets a current one through', async () => {
    const bucket = freshBucket();
    const s = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: proxy.url });
    const d = await s.putBlob('application/octet-stream', Buffer.from('behind the proxy'));
    const md = await getObject(emu.url, bucket, `blobs/sha256/${d.slice(7)}`);
    const api = `${proxy.url}/storage/v1/b/${bucket}/o/${encodeURIComponent(`blobs/sha256/${d.slice(7)}`)}`;
    expect((await fetch(`${api}?ifGenerationMatch=${md.generation}&ifMetagenerationMatch=${Number(md.metageneration) + 1}`, { method: 'DELETE' })).status).toBe(412);
    expect(await s.statBlob(d)).toBeDefined();
    expect((await fetch(`${api}?ifGenerationMatch=${md.generation}&ifMetagenerationMatch=${md.metageneration}`, { method: 'DELETE' })).status).toBe(204);
    expect(await s.statBlob(d)).toBeUndefined();
  });

  it('keeps usedAt in nixery-used-at, versions as generation:metageneration, and lists past a page', async () => {
    const bucket = freshBucket();
    let now = 1_700_000_000_000;
    const s = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: emu.url, now: () => now });
    const digests = new Set<string>();
    // More than one page of 1000: written straight into blobs/ with the SDK, as an older nixery-ts would (no nixery-used-at).
    const sdk = new Storage({ apiEndpoint: emu.url }).bucket(bucket);
    for (let i = 0; i < 1005; i += 15) {
      await Promise.all(
        Array.from({ length: Math.min(15, 1005 - i) }, async (_, j) => {
          const bytes = Buffer.from(`blob ${i + j}`);
          const d = sha256Digest(bytes);
          digests.add(d);
          await sdk.file(`blobs/sha256/${d.slice(7)}`).save(bytes, { resumable: false, gzip: false });
        }),
      );
    }
    await sdk.file('blobs/sha256/not-a-digest').save(Buffer.from('?'), { resumable: false, gzip: false });
    const ours = await s.putBlob('application/octet-stream', Buffer.from('ours'));
    digests.add(ours);
    const listed: { digest: string; usedAt: number; version: string }[] = [];
    for await (const b of s.listBlobs()) listed.push(b);
    expect(listed).toHaveLength(1006);
    expect(new Set(listed.map((b) => b.digest))).toEqual(digests);
    const mine = listed.find((b) => b.digest === ours)!;
    const md = await getObject(emu.url, bucket, `blobs/sha256/${ours.slice(7)}`);
    expect(mine.usedAt).toBe(1_700_000_000_000);
    expect(md.metadata?.['nixery-used-at']).toBe('1700000000000');
    expect(mine.version).toBe(`${md.generation}:${md.metageneration}`);
    // Without nixery-used-at: timeCreated.
    const old = listed.find((b) => b.digest !== ours)!;
    const oldMd = await getObject(emu.url, bucket, `blobs/sha256/${old.digest.slice(7)}`);
    expect(old.usedAt).toBe(Date.parse(oldMd.timeCreated));
    now += 1000;
    expect(await s.markBlobUsed(old.digest as `sha256:${string}`)).toBe(true);
    const after = await getObject(emu.url, bucket, `blobs/sha256/${old.digest.slice(7)}`);
    expect(after.metadata?.['nixery-used-at']).toBe('1700000001000');
    expect(after.metageneration).toBe('2');
  });

  it('stores a blob as blobs/sha256/<hex> with the media type as contentType, no content encoding, and no staging leftovers', async () => {
    const bucket = freshBucket();
    const s = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: emu.url });
    const bytes = bytesOf(1, 2 * 1024 * 1024 + 17);
    const layerType = 'application/vnd.oci.image.layer.v1.tar+gzip';
    const { digest } = await s.persistBlob(layerType, writeChunks(bytes));
    const config = await s.putBlob('application/vnd.oci.image.config.v1+json', Buffer.from('{"architecture":"amd64"}'));
    await s.putRecord('manifests', 'cd'.repeat(32), Buffer.from('{}'));

    const layer = await getObject(emu.url, bucket, `blobs/sha256/${digest.slice(7)}`);
    expect(layer.contentType).toBe(layerType);
    expect(layer.size).toBe(String(bytes.length));
    expect(layer.contentEncoding ?? '').toBe('');
    expect((await getObject(emu.url, bucket, `blobs/sha256/${config.slice(7)}`)).contentType).toBe(
      'application/vnd.oci.image.config.v1+json',
    );
    expect((await listObjects(emu.url, bucket)).map((o) => o.name).sort()).toEqual(
      [`blobs/sha256/${config.slice(7)}`, `blobs/sha256/${digest.slice(7)}`, `records/manifests/${'cd'.repeat(32)}`].sort(),
    );
  });

  it('streams a layer larger than any single-request upload the emulator takes (130 MB), without holding it in memory', async () => {
    const bucket = freshBucket();
    const s = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: emu.url });
    const size = 150 * 1024 * 1024;
    const chunk = bytesOf(5, 1024 * 1024);
    const expected = createHash('sha256');
    for (let i = 0; i < size / chunk.length; i++) expected.update(chunk);
    const digest = `sha256:${expected.digest('hex')}`;
    const baseline = process.memoryUsage().rss;
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    try {
      const r = await s.persistBlob('application/vnd.oci.image.layer.v1.tar', async (out) => {
        await pipeline(
          Readable.from(
            (function* () {
              for (let i = 0; i < size / chunk.length; i++) yield chunk;
            })(),
          ),
          out,
        );
      });
      expect(r).toEqual({ digest, size, value: undefined });
    } finally {
      clearInterval(sampler);
    }
    expect(peak - baseline).toBeLessThan(64 * 1024 * 1024);
    expect((await listObjects(emu.url, bucket)).map((o) => [o.name, o.size])).toEqual([[`blobs/sha256/${digest.slice(7)}`, String(size)]]);
  });

  it('leaves no staging object after a failed write', async () => {
    const bucket = freshBucket();
    const s = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: emu.url });
    const boom = new Error('the build died');
    const half = bytesOf(2, 3 * 1024 * 1024);
    const err = await s
      .persistBlob('application/octet-stream', async (out) => {
        for (let i = 0; i < half.length; i += 256 * 1024) {
          const part = half.subarray(i, i + 256 * 1024);
          await new Promise<void>((resolve, reject) => out.write(part, (e) => (e ? reject(e) : resolve())));
        }
        throw boom;
      })
      .catch((e: unknown) => e);
    expect(err).toBe(boom);
    // A source that fails mid-stream destroys `out` with its error: still the writer's error.
    const broken = new Error('tar stream broke');
    const err2 = await s
      .persistBlob('application/octet-stream', async (out) => {
        await pipeline(
          Readable.from(
            (function* () {
              yield half.subarray(0, 1024 * 1024);
              yield half.subarray(1024 * 1024, 2 * 1024 * 1024);
              throw broken;
            })(),
          ),
          out,
        );
      })
      .catch((e: unknown) => e);
    expect(err2).toBe(broken);
    expect(await listObjects(emu.url, bucket)).toEqual([]);
  });

  it('redirects to the public object URL when no key is configured, and never for a missing blob', async () => {
    const bucket = freshBucket();
    const s = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: emu.url });
    const d = await s.putBlob('application/vnd.oci.image.manifest.v1+json', Buffer.from('{"schemaVersion":2}'));
    const served = await s.serveBlob(d, { start: 0, end: 3 });
    expect(served).toMatchObject({ kind: 'redirect', url: `${emu.url}/${bucket}/blobs/sha256/${d.slice(7)}` });
    // The client's Range goes to the bucket with the redirect.
    const res = await fetch((served as { url: string }).url, { headers: { Range: 'bytes=0-3' } });
    expect(res.status).toBe(206);
    expect(await res.text()).toBe('{"sc');
    expect(await s.serveBlob(sha256Digest('missing'))).toBeUndefined();
    // Against real GCS the URL is the one Nixery documents.
    const prod = new GcsStorage({ bucket: 'my-layers', signedUrlTtlSeconds: 300 });
    expect(await prod.blobUrl(d)).toBe(`https://storage.googleapis.com/my-layers/blobs/sha256/${d.slice(7)}`);
  });

  it('refuses a missing bucket name and bad credential files in one line', async () => {
    expect(() => new GcsStorage({ bucket: '', signedUrlTtlSeconds: 300, apiEndpoint: emu.url })).toThrow(StorageError);
    expect(() => new GcsStorage({ bucket: 'Not_A/Bucket', signedUrlTtlSeconds: 300 })).toThrow(/not a valid bucket name/);
    const dir = await mkdtemp(path.join(tmpdir(), 'nixery-gcs-'));
    try {
      const cases: [string, string | undefined, RegExp][] = [
        ['missing.json', undefined, /cannot read credentials file .*missing\.json/],
        ['garbage.json', 'not json', /is not JSON/],
        ['user.json', JSON.stringify({ type: 'authorized_user', client_id: 'x', refresh_token: 'y' }), /not a service-account key/],
      ];
      for (const [name, content, message] of cases) {
        const file = path.join(dir, name);
        if (content !== undefined) await writeFile(file, content);
        const err = await GcsStorage.open({ bucket: freshBucket(), credentialsFile: file, signedUrlTtlSeconds: 300, apiEndpoint: emu.url }).catch(
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(StorageError);
        expect((err as Error).message).toMatch(message);
        expect((err as Error).message).not.toContain('\n');
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('gcs storage when the server goes away', () => {
  let own: GcsEmulator;
  beforeAll(async () => {
    own = await startGcsEmulator();
  });
  afterAll(async () => {
    await own?.stop();
  });

  it('retries a request made while the server is down until it is back', async () => {
    const s = await GcsStorage.open({ bucket: freshBucket(), signedUrlTtlSeconds: 300, apiEndpoint: own.url });
    await own.stop();
    // Default retry options: refused connections are retried after about 2, 4 and 8 s.
    const pending = s.putBlob('application/vnd.oci.image.config.v1+json', Buffer.from('{"written":"while down"}'));
    await own.restart();
    const digest = await pending;
    expect((await s.readBlob(digest))?.toString()).toBe('{"written":"while down"}');
  });

  it('fails check() and open() in one line, turns a broken upload into a StorageError, and recovers after a restart on the same port', async () => {
    const bucket = freshBucket();
    // One retry after at most 1 s, to keep the outage below short.
    const s = await GcsStorage.open({
      bucket,
      signedUrlTtlSeconds: 300,
      apiEndpoint: own.url,
      retryOptions: { maxRetries: 1, maxRetryDelay: 1 },
    });
    const before = await s.putBlob('application/octet-stream', Buffer.from('before'));
    expect(await s.statBlob(before)).toEqual({ size: 6, mediaType: 'application/octet-stream' });

    // The server dies while a layer is being written.
    const bytes = bytesOf(3, 4 * 1024 * 1024);
    const err = await s
      .persistBlob('application/octet-stream', async (out) => {
        const first = bytes.subarray(0, 1024 * 1024);
        await new Promise<void>((resolve, reject) => out.write(first, (e) => (e ? reject(e) : resolve())));
        await own.stop();
        await writeChunks(bytes.subarray(first.length))(out);
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageError);
    expect((err as Error).message).toMatch(/^gcs storage: writing a blob: /);
    expect((err as Error).message).not.toContain('\n');

    // Down: readiness and start-up say so in one line, at once; reads are errors, not misses.
    const t0 = Date.now();
    const down = await s.check().catch((e: unknown) => e);
    expect(Date.now() - t0).toBeLessThan(5000);
    expect(down).toBeInstanceOf(StorageError);
    expect((down as Error).message).toMatch(new RegExp(`^gcs storage: cannot reach ${own.url.replace(/\./g, '\\.')} \\(ECONNREFUSED\\)`));
    expect((down as Error).message).not.toContain('\n');
    const openErr = await GcsStorage.open({ bucket, signedUrlTtlSeconds: 300, apiEndpoint: own.url }).catch((e: unknown) => e);
    expect(openErr).toBeInstanceOf(StorageError);
    expect((openErr as Error).message).toMatch(/^gcs storage: cannot reach/);
    await expect(s.statBlob(before)).rejects.toBeInstanceOf(StorageError);
    await expect(s.getRecord('layers', 'ef'.repeat(32))).rejects.toBeInstanceOf(StorageError);
    await expect(s.serveBlob(before)).rejects.toBeInstanceOf(StorageError);

    // Back on the same port (empty: the emulator keeps its object index in memory): the same instance works again.
    await own.restart();
    await expect(s.check()).resolves.toBeUndefined();
    const r = await s.persistBlob('application/octet-stream', writeChunks(bytes));
    expect(r.digest).toBe(sha256Digest(bytes));
    expect((await s.readBlob(r.digest))?.equals(bytes)).toBe(true);
    const served = await s.serveBlob(r.digest);
    expect(served?.kind).toBe('redirect');
    const res = await fetch((served as { url: string }).url);
    expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
    expect(await listObjects(own.url, bucket, 'staging/')).toEqual([]);
  });
});

describe('gcs error explanations (what the emulator cannot produce)', () => {
  const ctx = { bucket: 'layers', endpoint: 'https://storage.googleapis.com', doing: 'listing' };
  it('names a missing bucket, refused credentials and missing permissions', () => {
    const notFound = apiError(404, 'The specified bucket does not exist.');
    expect(explainGcsError(notFound, ctx)).toBe('bucket "layers" does not exist (The specified bucket does not exist.)');
    const denied = apiError(403, 'x@y.iam.gserviceaccount.com does not have storage.objects.list access');
    expect(explainGcsError(denied, ctx)).toMatch(/^permission denied listing bucket "layers" \(403; .*roles\/storage\.objectAdmin/);
    const unauth = apiError(401, 'Invalid Credentials');
    expect(explainGcsError(unauth, ctx)).toMatch(/^the credentials were rejected listing bucket "layers" \(401\)/);
  });
  it('names missing credentials and unreachable endpoints', () => {
    const noCreds = new Error('Could not load the default credentials. Browse to https://cloud.google.com/docs/authentication/getting-started for more information.');
    expect(explainGcsError(noCreds, ctx)).toMatch(/^no usable Google credentials \(set GOOGLE_APPLICATION_CREDENTIALS/);
    const dns = Object.assign(new Error('request to https://storage.googleapis.com/storage/v1/b/layers/o failed, reason: getaddrinfo ENOTFOUND storage.googleapis.com'), {
      code: 'ENOTFOUND',
    });
    expect(explainGcsError(dns, ctx)).toMatch(/^cannot reach https:\/\/storage\.googleapis\.com \(ENOTFOUND\)/);
    for (const e of [notFoundLike(), new Error('a\nb')]) expect(explainGcsError(e, ctx)).not.toContain('\n');
  });
});

/** An error as the SDK throws it for an HTTP status. */
function apiError(code: number, message: string): ApiError {
  return Object.assign(new ApiError(message), { code });
}

function notFoundLike(): Error {
  return Object.assign(new Error('No such object: layers/blobs\nsecond line'), { code: 404 });
}
