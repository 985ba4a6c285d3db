/**
 * Shared by the garbage-collection tests that run real servers: what storage
 * holds (image records by name, blob sizes, references to missing blobs,
 * pull times), a pull over the registry API that verifies every digest, and
 * the collector's counters from /debug/stats. Works on any backend.
 *
 * On GCS the collector deletes a blob only with a conditional DELETE
 * (ifGenerationMatch / ifMetagenerationMatch) that the emulator ignores, so
 * servers that run passes while they build and serve go through
 * startPreconditionProxy, which applies GCS's semantics in front of it (the
 * same proxy test/integration/storage-gcs.test.ts defines for the contract).
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Digest } from '../../src/digest.js';
import type { GcStats } from '../../src/gc/collector.js';
import { readUsage } from '../../src/gc/usage.js';
import { decodeRecord, decodeStoredRecord, imageBlobs } from '../../src/service/records.js';
import type { StorageBackend } from '../../src/storage/backend.js';
import type { RunningServer, ServerStats } from './server.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';

export interface StoredImage {
  /** The record key (records/manifests/<key>), also the image's usage id. */
  readonly key: string;
  readonly packages: readonly string[];
  /** Digests of its manifests (OCI and Docker). */
  readonly manifests: readonly string[];
  /** Every blob it references. */
  readonly blobs: readonly Digest[];
}

/** An image's name as pulled: its packages without the two every image gets. */
export function imageName(packages: readonly string[]): string {
  return packages.filter((p) => p !== 'cacert' && p !== 'iana-etc').join('/');
}

/** The readable manifest records, by image name. */
export async function imageRecords(storage: StorageBackend): Promise<Map<string, StoredImage>> {
  const out = new Map<string, StoredImage>();
  for await (const { key } of storage.listRecords('manifests')) {
    const raw = await storage.getRecord('manifests', key);
    // Image records only: an index record shares its name with its platforms' images.
    const image = raw && decodeRecord(raw);
    if (!image) continue;
    out.set(imageName(image.packages), {
      key,
      packages: image.packages,
      manifests: Object.values(image.manifests).map((m) => m.digest),
      blobs: imageBlobs(image),
    });
  }
  return out;
}

/**
 * Every reference from a manifest or layer record to a blob that does not
 * exist, one line each ("manifests/<key> -> <digest>"); empty when storage
 * is consistent.
 */
export async function danglingReferences(storage: StorageBackend): Promise<string[]> {
  const out: string[] = [];
  for await (const { key } of storage.listRecords('manifests')) {
    const raw = await storage.getRecord('manifests', key);
    const image = raw && decodeStoredRecord(raw);
    if (!image) continue;
    for (const d of imageBlobs(image)) if ((await storage.statBlob(d)) === undefined) out.push(`manifests/${key} -> ${d}`);
  }
  for await (const { key } of storage.listRecords('layers')) {
    const raw = await storage.getRecord('layers', key);
    if (!raw) continue;
    const d = (JSON.parse(raw.toString()) as { digest: Digest }).digest;
    if ((await storage.statBlob(d)) === undefined) out.push(`layers/${key} -> ${d}`);
  }
  for await (const { key } of storage.listRecords('referrers')) {
    const raw = await storage.getRecord('referrers', key);
    if (!raw) continue;
    const listed = (JSON.parse(raw.toString()) as { referrers: { digest: Digest }[] }).referrers.map((r) => r.digest);
    for (const d of [`sha256:${key}` as Digest, ...listed]) if ((await storage.statBlob(d)) === undefined) out.push(`referrers/${key} -> ${d}`);
  }
  return out;
}

/** Every stored blob's size, by digest. */
export async function blobSizes(storage: StorageBackend): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for await (const b of storage.listBlobs()) out.set(b.digest, b.size);
  return out;
}

/** The usage ids a pass reads for an image: its key (pulls by tag) and its manifests' hex (pulls by digest). */
function usageIds(image: StoredImage): string[] {
  return [image.key, ...image.manifests.map((d) => d.slice('sha256:'.length))];
}

/** The image's last pull as its server wrote it to storage (the newest of its usage records). */
export async function lastPull(storage: StorageBackend, image: StoredImage): Promise<number | undefined> {
  let at: number | undefined;
  for (const id of usageIds(image)) {
    const t = await readUsage(storage, id);
    if (t !== undefined) at = Math.max(at ?? 0, t);
  }
  return at;
}

/**
 * Rewrites every usage record of the image (by key and by manifest digest)
 * to `at`, as a replica's flush would have left them had it been pulled then.
 */
export async function setLastPull(storage: StorageBackend, image: StoredImage, at: number): Promise<void> {
  for (const id of usageIds(image)) await storage.putRecord('usage', id, Buffer.from(JSON.stringify({ lastPulledAt: at })));
}

/**
 * Waits until the usage records stop changing for `quietMs` (servers flush
 * pull times in batches, one record at a time), so that a rewrite of them is
 * not overwritten by a flush still under way. Throws after `timeoutMs`.
 */
export async function usageSettled(storage: StorageBackend, quietMs = 600, timeoutMs = 20_000): Promise<void> {
  const snapshot = async () => {
    const all: string[] = [];
    for await (const { key } of storage.listRecords('usage')) all.push(`${key}=${(await storage.getRecord('usage', key))?.toString()}`);
    return all.sort().join('\n');
  };
  const deadline = Date.now() + timeoutMs;
  let last = await snapshot();
  let since = Date.now();
  while (last === '' || Date.now() - since < quietMs) {
    if (Date.now() > deadline) throw new Error(`usage records still changing (or none) after ${timeoutMs} ms:\n${last}`);
    await new Promise((r) => setTimeout(r, 100));
    const now = await snapshot();
    if (now !== last) {
      last = now;
      since = Date.now();
    }
  }
}

export interface PullTally {
  pulls: number;
  blobs: number;
  failures: string[];
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/**
 * Pulls `name` over the registry API as a client does: the OCI manifest by
 * tag (its body checked against Docker-Content-Digest), then its config and
 * every layer (redirects followed, each checked against its digest). What
 * goes wrong is added to `t.failures`, not thrown.
 */
export async function pullVerified(registryUrl: string, name: string, t: PullTally): Promise<void> {
  const res = await fetch(`${registryUrl}/v2/${name}/manifests/latest`, { headers: { Accept: OCI } });
  const body = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) {
    t.failures.push(`${name}: manifest ${res.status} ${body.toString().slice(0, 200)}`);
    return;
  }
  if (sha(body) !== res.headers.get('docker-content-digest')) t.failures.push(`${name}: manifest digest mismatch`);
  const manifest = JSON.parse(body.toString()) as { config: { digest: string }; layers: Array<{ digest: string }> };
  for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
    const blob = await fetch(`${registryUrl}/v2/${name}/blobs/${d}`);
    const bytes = Buffer.from(await blob.arrayBuffer());
    if (blob.status !== 200) t.failures.push(`${name}: blob ${d} ${blob.status}`);
    else if (sha(bytes) !== d) t.failures.push(`${name}: blob ${d} does not match its digest`);
    t.blobs++;
  }
  t.pulls++;
}

/** /debug/stats with the collector's counters. */
export async function gcStats(server: RunningServer): Promise<ServerStats & { gc: GcStats }> {
  return (await server.stats()) as ServerStats & { gc: GcStats };
}

export interface PreconditionProxy {
  readonly url: string;
  stop(): Promise<void>;
}

/**
 * GCS's conditional delete in front of the emulator, which ignores it: a
 * DELETE carrying ifGenerationMatch / ifMetagenerationMatch gets 412
 * conditionNotMet unless the object's generation and metageneration are
 * those, as on GCS. Requests that change an object (PATCH, DELETE, a
 * rewriteTo it) run one at a time per object, so the check and the delete
 * are atomic against a mark, as GCS guarantees. Everything else is passed
 * through as it is. The backend sends its requests here unchanged, so the
 * runs through it test what it sends and how it reads the answers.
 */
export async function startPreconditionProxy(upstream: string): Promise<PreconditionProxy> {
  const up = new URL(upstream);
  const queues = new Map<string, Promise<unknown>>();
  const oneAtATime = (key: string, fn: () => Promise<void>): void => {
    const run = (queues.get(key) ?? Promise.resolve()).then(fn, fn);
    const settled = run.catch(() => undefined);
    queues.set(key, settled);
    void settled.then(() => {
      if (queues.get(key) === settled) queues.delete(key);
    });
  };
  // Resolves once the upstream answer has been passed on.
  const forward = (req: http.IncomingMessage, res: http.ServerResponse, body?: Buffer): Promise<void> =>
    new Promise<void>((resolve) => {
      const out = http.request(
        { host: up.hostname, port: up.port, method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
          answer.on('end', resolve);
          answer.on('error', () => resolve());
        },
      );
      out.on('error', () => {
        res.destroy();
        resolve();
      });
      if (body === undefined) req.pipe(out);
      else out.end(body);
    });
  const readBody = async (req: http.IncomingMessage): Promise<Buffer> => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy');
    const object = /^\/(?:storage\/v1\/)?b\/([^/]+)\/o\/([^/]+)$/.exec(url.pathname);
    const rewrite = /^\/(?:storage\/v1\/)?b\/[^/]+\/o\/[^/]+\/(?:rewriteTo|copyTo)\/b\/([^/]+)\/o\/([^/]+)$/.exec(url.pathname);
    const target = req.method === 'POST' ? rewrite : req.method === 'PATCH' || req.method === 'DELETE' ? object : null;
    if (target === null) {
      void forward(req, res);
      return;
    }
    const [, bucket, encodedName] = target as unknown as [string, string, string];
    oneAtATime(`${bucket}/${decodeURIComponent(encodedName)}`, async () => {
      const body = await readBody(req);
      const ifGen = url.searchParams.get('ifGenerationMatch');
      const ifMeta = url.searchParams.get('ifMetagenerationMatch');
      if (req.method === 'DELETE' && (ifGen !== null || ifMeta !== null)) {
        const now = await fetch(`${upstream}/storage/v1/b/${bucket}/o/${encodedName}`);
        if (now.status === 200) {
          const md = (await now.json()) as { generation: string; metageneration: string };
          if ((ifGen !== null && ifGen !== String(md.generation)) || (ifMeta !== null && ifMeta !== String(md.metageneration))) {
            res.writeHead(412, { 'Content-Type': 'application/json' });
            res.end(
              JSON.stringify({
                error: {
                  code: 412,
                  message: 'At least one of the pre-conditions you specified did not hold.',
                  errors: [{ reason: 'conditionNotMet', message: 'At least one of the pre-conditions you specified did not hold.' }],
                },
              }),
            );
            return;
          }
        } else {
          await now.arrayBuffer();
        }
      }
      await forward(req, res, body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

