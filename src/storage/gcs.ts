/**
 * Google Cloud Storage backend: the layout of backend.ts in one bucket that
 * several replicas share, written with @google-cloud/storage (7.x: Node 20).
 *
 * Writes. A blob streams through a HashingStream into a resumable upload of
 * `staging/<uuid>` (one PUT carrying the whole stream: never buffered in
 * memory, any size; the SDK checks the CRC32C the server reports), then the
 * staging object is copied server-side (a rewrite) to `blobs/sha256/<hex>`
 * with contentType = the media type, and the staging object is deleted. A GCS
 * object only becomes visible once its upload or rewrite has completed, so
 * nothing half-written ever appears under a digest; a failed write deletes
 * its staging object (a process killed mid-write leaves one behind: give the
 * bucket a lifecycle rule deleting `staging/` objects older than a day).
 * Small blobs and records take the same path with a single-request upload.
 * Objects are stored without a content encoding, so GCS never transcodes.
 *
 * Blob GET/HEAD: a redirect to the object, as Nixery does. With a
 * service-account key (GOOGLE_APPLICATION_CREDENTIALS) the URL is a V4 signed
 * URL for GET that expires after `signedUrlTtlSeconds`; without one it is the
 * public object URL `https://storage.googleapis.com/<bucket>/<object>` (the
 * bucket must then be publicly readable). A missing blob is `undefined`, so
 * the registry answers BLOB_UNKNOWN itself.
 *
 * Retries. Every request goes through the SDK's retry (RETRY_OPTIONS below):
 * 408, 429, 5xx and connection failures (refused, reset, DNS) are retried up
 * to 3 times with exponential backoff (2, 4, 8 s plus up to 1 s of jitter, so
 * a request to a bucket that stays down fails after about 15 s). An upload
 * broken mid-stream resumes only if the server already has every byte sent:
 * the bytes are not kept for a replay (a `chunkSize` would keep one chunk in
 * memory and let it resume, but the emulator cannot take chunked uploads), so
 * the write fails and the next pull builds the layer again. All
 * operations may be retried (IdempotencyStrategy.RetryAlways): uploads target
 * a fresh staging name, blobs are content-addressed (a repeated copy writes
 * the same bytes), a record write replaces the whole object, a mark sets a
 * time, and the one conditional request, the collector's delete, answers
 * false if a retry finds the object already gone (deleted by the lost first
 * attempt: gone all the same). What still fails afterwards rejects with a
 * StorageError, before any record can point at the object. check() alone
 * does not retry: it answers readiness at once, and is asked again.
 *
 * Garbage-collection primitives. Every blob carries custom metadata
 * `nixery-used-at` (ms, the backend's clock), set by the write (in the
 * rewrite into place) and by markBlobUsed (a metadata PATCH; 404: gone,
 * false). Its version is `<generation>:<metageneration>`: a rewrite makes a
 * new generation, a PATCH a new metageneration, both atomically on the
 * server. deleteBlobIfUnchanged is a DELETE with ifGenerationMatch and
 * ifMetagenerationMatch: GCS applies it only if neither changed, so a mark
 * and a delete cannot cross (412 or 404: false). NOTE: the firebase-tools
 * storage emulator the tests use ignores both preconditions (a stale DELETE
 * succeeds), so there the atomicity is tested through a proxy that enforces
 * them (test/integration/storage-gcs.test.ts). Records carry
 * `nixery-written-at` the same way, and staging uploads `nixery-staged-at`
 * (cleanStaging's age; objects without it, such as readiness probes, use
 * timeCreated). Listings page through the bucket 1000 objects at a time.
 *
 * `apiEndpoint` (from STORAGE_EMULATOR_HOST, for tests and emulators) replaces
 * https://storage.googleapis.com for the API and for the URLs handed to
 * clients; the SDK sends no credentials to a custom endpoint.
 */
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { IdempotencyStrategy, Storage, type Bucket, type File, type FileMetadata, type GetFilesOptions, type StorageOptions } from '@google-cloud/storage';
import { HashingStream, digestHex, sha256Digest, type Digest } from '../digest.js';
import { StorageError } from '../errors.js';
import {
  assertRecordKey,
  isRecordKey,
  type BlobInfo,
  type ByteRange,
  type PersistOptions,
  type PersistResult,
  type RecordEntry,
  type RecordKind,
  type ServedBlob,
  type StorageBackend,
  type StoredBlob,
} from './backend.js';

export type RetryOptions = NonNullable<StorageOptions['retryOptions']>;

export interface GcsStorageOptions {
  readonly bucket: string;
  /** A service-account key file: blob redirects are then V4 signed URLs. */
  readonly credentialsFile?: string | undefined;
  /** Lifetime of a signed URL, 1 s to 7 days (the V4 maximum). */
  readonly signedUrlTtlSeconds: number;
  /** Instead of https://storage.googleapis.com (STORAGE_EMULATOR_HOST, for tests). */
  readonly apiEndpoint?: string | undefined;
  /** Milliseconds since the epoch; the clock of signed URLs, usedAt, updatedAt and staging ages (tests pass their own). */
  readonly now?: () => number;
  /** Overrides parts of RETRY_OPTIONS (tests). */
  readonly retryOptions?: RetryOptions;
}

/** See the module comment. Delays are seconds: retry n waits min(2^n s + jitter, maxRetryDelay). */
const RETRY_OPTIONS: RetryOptions = {
  autoRetry: true,
  maxRetries: 3,
  retryDelayMultiplier: 2,
  maxRetryDelay: 8,
  totalTimeout: 600,
  idempotencyStrategy: IdempotencyStrategy.RetryAlways,
};

const PUBLIC_ENDPOINT = 'https://storage.googleapis.com';
const MAX_SIGNED_URL_TTL = 7 * 24 * 3600;
/** How long check() waits for the bucket to answer. */
const CHECK_TIMEOUT_MS = 10_000;
// GCS bucket naming rules, loosely: lowercase letters, digits, - _ and dots.
const BUCKET_NAME = /^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$/;
/** Custom metadata (see the module comment): ms since the epoch, as a decimal string. */
const USED_AT = 'nixery-used-at';
const WRITTEN_AT = 'nixery-written-at';
const STAGED_AT = 'nixery-staged-at';
const BLOB_PREFIX = 'blobs/sha256/';
const BLOB_HEX = /^[0-9a-f]{64}$/;
/** Objects per listing request (the JSON API's maximum). */
const LIST_PAGE = 1000;

export class GcsStorage implements StorageBackend {
  readonly name = 'gcs';
  private readonly storage: Storage;
  private readonly bucket: Bucket;
  private readonly probeBucket: Bucket;
  private readonly bucketName: string;
  private readonly credentialsFile: string | undefined;
  private readonly ttlSeconds: number;
  private readonly now: () => number;

  constructor(opts: GcsStorageOptions) {
    if (opts.bucket === '') throw new StorageError('gcs storage: no bucket name configured (GCS_BUCKET)');
    if (!BUCKET_NAME.test(opts.bucket)) {
      throw new StorageError(`gcs storage: ${JSON.stringify(opts.bucket)} is not a valid bucket name`);
    }
    if (!Number.isInteger(opts.signedUrlTtlSeconds) || opts.signedUrlTtlSeconds < 1 || opts.signedUrlTtlSeconds > MAX_SIGNED_URL_TTL) {
      throw new StorageError(`gcs storage: signed URL lifetime must be 1 to ${MAX_SIGNED_URL_TTL} seconds, not ${opts.signedUrlTtlSeconds}`);
    }
    this.bucketName = opts.bucket;
    this.credentialsFile = opts.credentialsFile;
    this.ttlSeconds = opts.signedUrlTtlSeconds;
    this.now = opts.now ?? Date.now;
    const client = {
      ...(opts.credentialsFile !== undefined ? { keyFilename: opts.credentialsFile } : {}),
      ...(opts.apiEndpoint !== undefined ? { apiEndpoint: opts.apiEndpoint } : {}),
    };
    this.storage = new Storage({ ...client, retryOptions: { ...RETRY_OPTIONS, ...opts.retryOptions } });
    this.bucket = this.storage.bucket(opts.bucket);
    // check() asks once and answers at once; whoever polls readiness asks again.
    this.probeBucket = new Storage({ ...client, retryOptions: { autoRetry: false } }).bucket(opts.bucket);
  }

  /** A GcsStorage whose bucket answered check(); throws a one-line StorageError otherwise. */
  static async open(opts: GcsStorageOptions): Promise<GcsStorage> {
    const s = new GcsStorage(opts);
    await s.check();
    return s;
  }

  /** Where the SDK sends requests (the emulator in tests). */
  get endpoint(): string {
    return this.storage.apiEndpoint;
  }

  private blobFile(digest: Digest): File {
    return this.bucket.file(`${BLOB_PREFIX}${digestHex(digest)}`);
  }

  private recordFile(kind: RecordKind, key: string): File {
    assertRecordKey(key);
    return this.bucket.file(`records/${kind}/${key}`);
  }

  private stagingFile(): File {
    return this.bucket.file(`staging/${randomUUID()}`);
  }

  async persistBlob<T>(mediaType: string, write: (out: Writable) => Promise<T>, opts: PersistOptions = {}): Promise<PersistResult<T>> {
    const staging = this.stagingFile();
    const hasher = new HashingStream({ highWaterMark: 1 << 20 });
    const upload = staging.createWriteStream({
      resumable: true,
      contentType: mediaType,
      gzip: false,
      validation: 'crc32c',
      metadata: { metadata: { [STAGED_AT]: this.clock() } },
    });
    // Which side failed first: the upload (the error then travels to the
    // writer through `out`) or the writer (destroying `out` with its error
    // travels to the upload); nothing here once we tear down below.
    let firstFailure: { side: 'writer' | 'upload'; error: unknown } | undefined;
    let tearingDown = false;
    hasher.on('error', (error) => {
      if (!tearingDown) firstFailure ??= { side: 'writer', error };
    });
    upload.on('error', (error) => {
      if (!tearingDown) firstFailure ??= { side: 'upload', error };
    });
    const done = pipeline(hasher, upload);
    let writerFailure: unknown;
    const written = (async () => write(hasher))().catch((e: unknown) => {
      writerFailure = e;
      throw e;
    });
    try {
      const [value] = await Promise.all([written, done]);
      const { digest, size } = hasher.result();
      await opts.beforeVisible?.(digest);
      await staging.copy(this.blobFile(digest), { contentType: mediaType, metadata: { [USED_AT]: this.clock() } });
      await this.removeStaging(staging);
      return { digest, size, value };
    } catch (e) {
      tearingDown = true;
      hasher.destroy();
      await done.catch(() => undefined);
      await this.removeStaging(staging);
      // The writer's own failure (a build error, an abort) passes through
      // unchanged, unless the upload broke first and the writer only saw that.
      if (firstFailure?.side === 'upload') throw this.wrap('writing a blob', firstFailure.error);
      if (e === writerFailure) throw e;
      throw this.wrap('writing a blob', e);
    }
  }

  async putBlob(mediaType: string, bytes: Buffer): Promise<Digest> {
    const digest = sha256Digest(bytes);
    // Already there: marked rather than rewritten (see backend.ts). The
    // PATCH answers with the metadata, so this costs no more than a stat.
    const md = await this.touch(digest);
    if (md !== undefined && (md.contentType ?? 'application/octet-stream') === mediaType) return digest;
    await this.putSmall(this.blobFile(digest), bytes, mediaType, `writing blob ${digest}`, { [USED_AT]: this.clock() });
    return digest;
  }

  async statBlob(digest: Digest): Promise<BlobInfo | undefined> {
    try {
      const [md] = await this.blobFile(digest).getMetadata();
      return { size: Number(md.size), mediaType: md.contentType ?? 'application/octet-stream' };
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw this.wrap(`reading blob ${digest}`, e);
    }
  }

  async readBlob(digest: Digest): Promise<Buffer | undefined> {
    try {
      const [bytes] = await this.blobFile(digest).download();
      return bytes;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw this.wrap(`reading blob ${digest}`, e);
    }
  }

  /** A redirect; the client sends its Range header to the bucket itself. */
  async serveBlob(digest: Digest, _range?: ByteRange, known?: BlobInfo): Promise<ServedBlob | undefined> {
    const info = known ?? (await this.statBlob(digest));
    if (info === undefined) return undefined;
    return { kind: 'redirect', info, url: await this.blobUrl(digest) };
  }

  /** The URL a client is redirected to for a blob (whether or not it exists). */
  async blobUrl(digest: Digest): Promise<string> {
    const file = this.blobFile(digest);
    if (this.credentialsFile === undefined) {
      const path = file.name.split('/').map(encodeURIComponent).join('/');
      return `${this.storage.apiEndpoint || PUBLIC_ENDPOINT}/${this.bucketName}/${path}`;
    }
    // Whole seconds, so that X-Goog-Expires is exactly the configured lifetime.
    const nowSeconds = Math.floor(this.now() / 1000);
    try {
      const [url] = await file.getSignedUrl({
        version: 'v4',
        action: 'read',
        accessibleAt: new Date(nowSeconds * 1000),
        expires: (nowSeconds + this.ttlSeconds) * 1000,
      });
      return url;
    } catch (e) {
      throw this.wrap(`signing a URL for blob ${digest} with ${this.credentialsFile}`, e);
    }
  }

  async *listBlobs(): AsyncIterable<StoredBlob> {
    for await (const md of this.listObjects(BLOB_PREFIX)) {
      const hex = (md.name ?? '').slice(BLOB_PREFIX.length);
      if (!BLOB_HEX.test(hex)) continue;
      yield {
        digest: `sha256:${hex}`,
        size: Number(md.size),
        usedAt: msFrom(md.metadata?.[USED_AT]) ?? msFrom(md.timeCreated) ?? 0,
        // One object resource: the version and usedAt always belong together.
        version: `${md.generation}:${md.metageneration}`,
      };
    }
  }

  async markBlobUsed(digest: Digest): Promise<boolean> {
    return (await this.touch(digest)) !== undefined;
  }

  /** The mark: a metadata PATCH (new metageneration); its answer, or undefined when the blob is absent. */
  private async touch(digest: Digest): Promise<FileMetadata | undefined> {
    try {
      const [md] = await this.blobFile(digest).setMetadata({ metadata: { [USED_AT]: this.clock() } });
      return md;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw this.wrap(`marking blob ${digest} used`, e);
    }
  }

  async deleteBlobIfUnchanged(digest: Digest, version: string): Promise<boolean> {
    const m = /^(\d+):(\d+)$/.exec(version);
    // Not a version this backend lists: it cannot be the blob's.
    if (m === null) return false;
    try {
      await this.blobFile(digest).delete({ ifGenerationMatch: m[1]!, ifMetagenerationMatch: m[2]! });
      return true;
    } catch (e) {
      if (isNotFound(e) || (e as { code?: unknown })?.code === 412) return false;
      throw this.wrap(`deleting blob ${digest}`, e);
    }
  }

  async putRecord(kind: RecordKind, key: string, bytes: Buffer): Promise<void> {
    const target = this.recordFile(kind, key);
    await this.putSmall(target, bytes, 'application/json', `writing record ${kind}/${key}`, { [WRITTEN_AT]: this.clock() });
  }

  async getRecord(kind: RecordKind, key: string): Promise<Buffer | undefined> {
    const file = this.recordFile(kind, key);
    try {
      const [bytes] = await file.download();
      return bytes;
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw this.wrap(`reading record ${kind}/${key}`, e);
    }
  }

  async *listRecords(kind: RecordKind): AsyncIterable<RecordEntry> {
    const prefix = `records/${kind}/`;
    for await (const md of this.listObjects(prefix)) {
      const key = (md.name ?? '').slice(prefix.length);
      if (!isRecordKey(key)) continue;
      yield { key, updatedAt: msFrom(md.metadata?.[WRITTEN_AT]) ?? msFrom(md.updated) ?? 0 };
    }
  }

  async deleteRecord(kind: RecordKind, key: string): Promise<void> {
    const file = this.recordFile(kind, key);
    try {
      await file.delete({ ignoreNotFound: true });
    } catch (e) {
      throw this.wrap(`deleting record ${kind}/${key}`, e);
    }
  }

  /** Deletes staging objects older than the limit (by nixery-staged-at, else timeCreated). */
  async cleanStaging(olderThanMs: number): Promise<number> {
    const now = this.now();
    let removed = 0;
    for await (const md of this.listObjects('staging/')) {
      const since = msFrom(md.metadata?.[STAGED_AT]) ?? msFrom(md.timeCreated);
      if (md.name === undefined || since === undefined || now - since <= olderThanMs) continue;
      try {
        await this.bucket.file(md.name).delete();
        removed++;
      } catch (e) {
        if (!isNotFound(e)) throw this.wrap(`cleaning staging object ${md.name}`, e);
      }
    }
    return removed;
  }

  /** The metadata of every object under `prefix`, a page at a time. */
  private async *listObjects(prefix: string): AsyncIterable<FileMetadata> {
    let query: GetFilesOptions | undefined = { prefix, autoPaginate: false, maxResults: LIST_PAGE };
    while (query !== undefined) {
      let files: File[];
      let next: Partial<GetFilesOptions> | undefined;
      try {
        [files, next] = await this.bucket.getFiles(query);
      } catch (e) {
        throw this.wrap(`listing ${prefix}`, e);
      }
      for (const f of files) yield f.metadata;
      query = next?.pageToken ? { prefix, autoPaginate: false, maxResults: LIST_PAGE, pageToken: next.pageToken } : undefined;
    }
  }

  /** The clock as GCS custom metadata wants it: a string. */
  private clock(): string {
    return String(Math.round(this.now()));
  }

  /**
   * Readiness: the credentials file is a service-account key, the bucket
   * exists and lists, and a probe object can be written and deleted under
   * staging/ (the emulator answers bucket metadata with 404 for every bucket,
   * so bucket.exists() cannot be used).
   */
  async check(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<string>((resolve) => {
      timer = setTimeout(
        () => resolve(`no answer from ${this.endpoint} within ${CHECK_TIMEOUT_MS / 1000} s (bucket ${this.bucketName})`),
        CHECK_TIMEOUT_MS,
      );
    });
    try {
      const problem = await Promise.race([this.probe(), timeout]);
      if (problem !== undefined) throw new StorageError(`gcs storage: ${problem}`);
    } finally {
      clearTimeout(timer);
    }
  }

  private async probe(): Promise<string | undefined> {
    if (this.credentialsFile !== undefined) {
      const problem = await checkServiceAccountKey(this.credentialsFile);
      if (problem !== undefined) return problem;
    }
    try {
      await this.probeBucket.getFiles({ prefix: 'staging/', maxResults: 1, autoPaginate: false });
    } catch (e) {
      return this.explain('listing', e);
    }
    const probe = this.probeBucket.file(`staging/probe-${randomUUID()}`);
    try {
      await probe.save(Buffer.from('nixery readiness probe\n'), { resumable: false, contentType: 'text/plain', gzip: false });
      await probe.delete({ ignoreNotFound: true });
    } catch (e) {
      await probe.delete({ ignoreNotFound: true }).catch(() => undefined);
      return this.explain('writing to', e);
    }
    return undefined;
  }

  /** One line saying what is wrong, from an SDK or connection error. */
  private explain(doing: string, e: unknown): string {
    return explainGcsError(e, { bucket: this.bucketName, endpoint: this.endpoint, doing });
  }

  /** Uploads bytes to staging in one request and copies them into place with `metadata` (custom metadata). */
  private async putSmall(target: File, bytes: Buffer, contentType: string, what: string, metadata: Record<string, string>): Promise<void> {
    const staging = this.stagingFile();
    try {
      await staging.save(bytes, {
        resumable: false,
        contentType,
        gzip: false,
        validation: 'crc32c',
        metadata: { metadata: { [STAGED_AT]: this.clock() } },
      });
      await staging.copy(target, { contentType, metadata });
    } catch (e) {
      await this.removeStaging(staging);
      throw this.wrap(what, e);
    }
    await this.removeStaging(staging);
  }

  /**
   * Best effort: once the object is in place, a staging leftover is garbage
   * (for the bucket's lifecycle rule), not a failed write.
   */
  private async removeStaging(staging: File): Promise<void> {
    await staging.delete({ ignoreNotFound: true }).catch(() => undefined);
  }

  private wrap(what: string, e: unknown): StorageError {
    if (e instanceof StorageError) return e;
    return new StorageError(`gcs storage: ${what}: ${this.explain('using', e)}`, { cause: e });
  }
}

function isNotFound(e: unknown): boolean {
  return (e as { code?: unknown })?.code === 404;
}

/** Milliseconds from custom metadata (a decimal string) or an RFC 3339 time; undefined when neither. */
function msFrom(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) ? v : undefined;
  if (typeof v !== 'string' || v === '') return undefined;
  const n = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  return Number.isFinite(n) ? n : undefined;
}

const CONNECTION_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE']);

/**
 * One line for an error of the SDK (an ApiError with an HTTP status, an auth
 * library error, or a connection error), naming the likely cause.
 */
export function explainGcsError(e: unknown, ctx: { bucket: string; endpoint: string; doing: string }): string {
  const err = e as { code?: unknown; message?: unknown; errno?: unknown; cause?: unknown } | undefined;
  const message = oneLine(typeof err?.message === 'string' ? err.message : String(e));
  const code = err?.code;
  const connCode = [code, (err?.cause as { code?: unknown } | undefined)?.code].find(
    (c): c is string => typeof c === 'string' && CONNECTION_CODES.has(c),
  );
  if (connCode !== undefined || /\b(ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|EHOSTUNREACH|socket hang up)\b/.test(message)) {
    return `cannot reach ${ctx.endpoint} (${connCode ?? 'connection failed'}): ${message}`;
  }
  if (/could not load the default credentials|no credentials|invalid_grant|unable to impersonate|getting metadata from plugin/i.test(message)) {
    return `no usable Google credentials (set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run where the metadata server provides an identity): ${message}`;
  }
  switch (code) {
    case 404:
      if (ctx.doing === 'listing') return `bucket ${JSON.stringify(ctx.bucket)} does not exist (${message})`;
      break;
    case 401:
      return `the credentials were rejected ${ctx.doing} bucket ${JSON.stringify(ctx.bucket)} (401): ${message}`;
    case 403:
      return `permission denied ${ctx.doing} bucket ${JSON.stringify(ctx.bucket)} (403; the service account needs roles/storage.objectAdmin on it): ${message}`;
  }
  if (ctx.doing === 'using') return typeof code === 'number' ? `${message} (HTTP ${code})` : message;
  return `${ctx.doing} bucket ${JSON.stringify(ctx.bucket)} failed${typeof code === 'number' ? ` (HTTP ${code})` : ''}: ${message}`;
}

/** One line, or a problem with the key file: signing needs a service-account key. */
async function checkServiceAccountKey(file: string): Promise<string | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    return `cannot read credentials file ${file}: ${oneLine((e as Error).message)}`;
  }
  let key: { type?: unknown; client_email?: unknown; private_key?: unknown };
  try {
    key = JSON.parse(text) as typeof key;
  } catch (e) {
    return `credentials file ${file} is not JSON: ${oneLine((e as Error).message)}`;
  }
  if (key?.type !== 'service_account') {
    return `credentials file ${file} is not a service-account key (type ${JSON.stringify(key?.type)}); signing blob URLs needs one`;
  }
  if (typeof key.client_email !== 'string' || typeof key.private_key !== 'string' || !key.private_key.includes('PRIVATE KEY')) {
    return `credentials file ${file} lacks client_email or private_key`;
  }
  return undefined;
}

function oneLine(s: string): string {
  return s.split('\n').map((l) => l.trim()).filter((l) => l !== '').join('; ');
}
