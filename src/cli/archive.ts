/**
 * An image written out of storage for `nixery-ts build`: the exact blobs the
 * server serves (OCI manifest, config, layers), arranged for a consumer that
 * has no registry.
 *
 *   docker-archive  what `docker load` and `podman load` read: manifest.json
 *                   ({Config, RepoTags, Layers}) and the blobs under
 *                   blobs/sha256/<hex>, the paths `docker save` has used
 *                   since Docker 25. Layers stay gzip-compressed as stored
 *                   (both loaders decompress them, and check each against the
 *                   config's diff_ids).
 *   oci-archive     an OCI image layout as a tar: oci-layout, index.json and
 *                   blobs/sha256/<hex> (manifest, config, layers).
 *   oci             the same layout as a directory.
 *
 * The archive itself is deterministic (sorted metadata first, fixed times,
 * uid/gid 0), so the same image gives the same file. Every blob is hashed
 * while it is copied and checked against its digest: a damaged cache fails
 * the write (CorruptBlobError) instead of producing an image that loads
 * wrong. Writing goes to the path it is given; making that a temporary name
 * and renaming it is the caller's part (build.ts).
 */
import { createWriteStream } from 'node:fs';
import { mkdir, open, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import tar from 'tar-stream';
import { digestHex, type Digest } from '../digest.js';
import { MediaType } from '../manifest/build.js';

export const FORMATS = ['docker-archive', 'oci-archive', 'oci'] as const;
export type ArchiveFormat = (typeof FORMATS)[number];

/** The parts of one platform's image, as its OCI manifest names them. */
export interface ArchiveImage {
  /** The OCI manifest, byte for byte as served. */
  readonly manifest: { readonly digest: Digest; readonly bytes: Buffer };
  readonly config: { readonly digest: Digest; readonly bytes: Buffer };
  /** Bottom first, as in the manifest (and the config's diff_ids). */
  readonly layers: readonly { readonly digest: Digest; readonly size: number }[];
  readonly platform: { readonly os: string; readonly architecture: string };
}

/** How the written image is named for its consumer. */
export interface ArchiveNames {
  /** Full references (`localhost/shell/htop:latest`): docker-archive RepoTags, and containerd's image name in index.json. */
  readonly references: readonly string[];
}

/** Where blob bytes come from (the storage backend in the command). */
export interface BlobSource {
  /** A stream of the blob and its stored size; undefined when it is not stored. */
  open(digest: Digest): Promise<{ stream: Readable; size: number } | undefined>;
}

/** A blob the image needs is not in storage. */
export class MissingBlobError extends Error {
  constructor(readonly digest: Digest) {
    super(`blob ${digest} is missing from the cache`);
    this.name = 'MissingBlobError';
  }
}

/** A stored blob whose bytes do not hash to its name. */
export class CorruptBlobError extends Error {
  constructor(
    readonly digest: Digest,
    readonly actual: string,
  ) {
    super(`blob ${digest} in the cache is damaged (its bytes hash to ${actual})`);
    this.name = 'CorruptBlobError';
  }
}

export interface WriteOptions {
  readonly signal?: AbortSignal;
  /** Called as bytes of blobs are written (a running total). */
  readonly onBytes?: (written: number) => void;
}

/** Fixed times and owners: the same image writes the same archive. */
const MTIME = new Date(0);
const FILE = { mode: 0o644, uid: 0, gid: 0, uname: '', gname: '', mtime: MTIME } as const;
const DIR = { mode: 0o755, uid: 0, gid: 0, uname: '', gname: '', mtime: MTIME, type: 'directory' } as const;

const blobPath = (d: Digest) => `blobs/sha256/${digestHex(d)}`;

/** The bytes of every blob the format holds (manifests and configs included): the total for a progress display. */
export function archiveBlobBytes(format: ArchiveFormat, image: ArchiveImage): number {
  const layers = uniqueLayers(image).reduce((n, l) => n + l.size, 0);
  return layers + image.config.bytes.length + (format === 'docker-archive' ? 0 : image.manifest.bytes.length);
}

function uniqueLayers(image: ArchiveImage): ArchiveImage['layers'] {
  const seen = new Set<string>();
  return image.layers.filter((l) => !seen.has(l.digest) && seen.add(l.digest));
}

/** docker-archive's manifest.json. */
export function dockerManifestJson(image: ArchiveImage, names: ArchiveNames): Buffer {
  return Buffer.from(
    JSON.stringify([{ Config: blobPath(image.config.digest), RepoTags: [...names.references], Layers: image.layers.map((l) => blobPath(l.digest)) }]),
  );
}

/**
 * The layout's index.json: the manifest once per reference, named the way
 * `skopeo copy ... oci:DIR:TAG` names it (org.opencontainers.image.ref.name
 * = the tag) and the way containerd and Docker's own archives do
 * (io.containerd.image.name = the full reference).
 */
export function ociIndexJson(image: ArchiveImage, names: ArchiveNames): Buffer {
  const seen = new Set<string>();
  const manifests = [];
  for (const ref of names.references) {
    const tag = referenceTag(ref);
    if (seen.has(tag)) continue;
    seen.add(tag);
    manifests.push({
      mediaType: MediaType.ociManifest,
      digest: image.manifest.digest,
      size: image.manifest.bytes.length,
      annotations: { 'io.containerd.image.name': normalizeReference(ref), 'org.opencontainers.image.ref.name': tag },
      platform: image.platform,
    });
  }
  return Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.ociIndex, manifests }));
}

const OCI_LAYOUT = Buffer.from(JSON.stringify({ imageLayoutVersion: '1.0.0' }));

/** The tag of a full reference (`localhost/shell/htop:latest` -> `latest`). */
export function referenceTag(ref: string): string {
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  return colon > slash ? ref.slice(colon + 1) : 'latest';
}

/** Docker's normalization: a name without a registry host is on docker.io, one without a path under library/. */
export function normalizeReference(ref: string): string {
  const first = ref.split('/')[0]!;
  const hasHost = ref.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  if (hasHost) return ref;
  return ref.includes('/') ? `docker.io/${ref}` : `docker.io/library/${ref}`;
}

/**
 * Writes the image to `target`: a file for the archive formats (created or
 * truncated), a directory for `oci` (created; it should be empty).
 * Returns the bytes written (the archive's size, or the layout's file bytes).
 */
export async function writeArchive(
  format: ArchiveFormat,
  target: string,
  image: ArchiveImage,
  names: ArchiveNames,
  source: BlobSource,
  opts: WriteOptions = {},
): Promise<number> {
  let written = 0;
  const count = (n: number) => {
    written += n;
    opts.onBytes?.(written);
  };
  const small: { name: string; bytes: Buffer }[] =
    format === 'docker-archive'
      ? [
          { name: 'manifest.json', bytes: dockerManifestJson(image, names) },
          { name: blobPath(image.config.digest), bytes: image.config.bytes },
        ]
      : [
          { name: 'index.json', bytes: ociIndexJson(image, names) },
          { name: 'oci-layout', bytes: OCI_LAYOUT },
          { name: blobPath(image.manifest.digest), bytes: image.manifest.bytes },
          { name: blobPath(image.config.digest), bytes: image.config.bytes },
        ];
  // The manifest and config come from storage too: checked like the layers.
  checkBytes(image.manifest.digest, image.manifest.bytes);
  checkBytes(image.config.digest, image.config.bytes);
  const layers = uniqueLayers(image);

  if (format === 'oci') {
    await mkdir(path.join(target, 'blobs', 'sha256'), { recursive: true });
    for (const { name, bytes } of small) {
      await writeFile(path.join(target, name), bytes, { flag: 'wx', signal: opts.signal });
      if (name.startsWith('blobs/')) count(bytes.length);
    }
    for (const l of layers) {
      const blob = await openChecked(source, l.digest, l.size, count);
      await pipeline(blob, createWriteStream(path.join(target, blobPath(l.digest)), { flags: 'wx' }), { signal: opts.signal });
    }
    await syncFiles([...small.map((s) => path.join(target, s.name)), ...layers.map((l) => path.join(target, blobPath(l.digest)))]);
    return written;
  }

  const pack = tar.pack();
  // tar-stream's streams (streamx) emit their error again after the pipelines
  // have let go of them; the pipelines' rejections are what report it.
  const ignore = () => undefined;
  pack.on('error', ignore);
  // Destroying the pack (a failed file write, an abort) destroys the entry being written, so nothing waits forever.
  const done = pipeline(pack, createWriteStream(target, { flags: 'w' }), { signal: opts.signal });
  let fileError: unknown;
  done.catch((e: unknown) => {
    fileError = e;
    pack.destroy(e as Error);
  });
  try {
    pack.entry({ name: 'blobs/', ...DIR }).on('error', ignore);
    pack.entry({ name: 'blobs/sha256/', ...DIR }).on('error', ignore);
    for (const { name, bytes } of small) {
      pack.entry({ name, size: bytes.length, ...FILE }, bytes).on('error', ignore);
      if (name.startsWith('blobs/')) count(bytes.length);
    }
    for (const l of layers) {
      const blob = await openChecked(source, l.digest, l.size, count);
      const entry = pack.entry({ name: blobPath(l.digest), size: l.size, ...FILE });
      entry.on('error', ignore);
      await pipeline(blob, entry, { signal: opts.signal });
    }
    pack.finalize();
    await done;
  } catch (e) {
    pack.destroy();
    await done.catch(() => undefined);
    // The cache's fault is reported as such; otherwise the file's own error (ENOSPC) says more than "entry destroyed".
    throw e instanceof MissingBlobError || e instanceof CorruptBlobError || fileError === undefined ? e : fileError;
  }
  await syncFiles([target]);
  return (await stat(target)).size;
}

function checkBytes(digest: Digest, bytes: Buffer): void {
  const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (actual !== digest) throw new CorruptBlobError(digest, actual);
}

/** The blob's stream, hashed on the way: it fails at its end when the bytes are not the digest's. */
async function openChecked(source: BlobSource, digest: Digest, size: number, count: (n: number) => void): Promise<Readable> {
  const blob = await source.open(digest);
  if (blob === undefined) throw new MissingBlobError(digest);
  if (blob.size !== size) {
    blob.stream.destroy();
    throw new CorruptBlobError(digest, `${blob.size} bytes instead of ${size}`);
  }
  const hash = createHash('sha256');
  const check = new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      hash.update(chunk);
      count(chunk.length);
      cb(null, chunk);
    },
    flush(cb: TransformCallback) {
      const actual = `sha256:${hash.digest('hex')}`;
      cb(actual === digest ? null : new CorruptBlobError(digest, actual));
    },
  });
  blob.stream.on('error', (e) => check.destroy(e));
  return blob.stream.pipe(check);
}

/** Flushes written files to disk before they are renamed into place. */
async function syncFiles(files: readonly string[]): Promise<void> {
  for (const f of files) {
    const fh = await open(f, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
}
