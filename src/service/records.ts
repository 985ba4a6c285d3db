/**
 * What a build produces and how it is kept in storage (records/manifests/<key>).
 * Pure. A record lists every blob the image references, per platform, so
 * that garbage collection can tell what is in use; records written before
 * that (version 1: only the manifest digests) stay readable.
 */
import type { Digest } from '../digest.js';
import { MediaType, type ManifestMediaType } from '../manifest/build.js';

export interface BlobRef {
  readonly digest: Digest;
  readonly size: number;
}

export interface StoredLayer extends BlobRef {
  readonly diffId: Digest;
}

export interface Platform {
  readonly os: 'linux';
  readonly architecture: 'amd64' | 'arm64';
}

/** One platform's image: its config and layers, bottom first. */
export interface PlatformImage {
  readonly platform: Platform;
  readonly config: BlobRef;
  readonly layers: readonly StoredLayer[];
}

export interface BuiltImage {
  /** Source revision the packages were built from. */
  readonly revision: string;
  readonly packages: readonly string[];
  /** Nix system, e.g. x86_64-linux. */
  readonly system: string;
  /** Empty for images recorded before blob lists were kept (version 1). */
  readonly platforms: readonly PlatformImage[];
  readonly manifests: Readonly<Record<ManifestMediaType, BlobRef>>;
}

interface RecordV1 {
  readonly version: 1;
  readonly revision: string;
  readonly packages: readonly string[];
  readonly arch: string;
  readonly manifests: Readonly<Record<ManifestMediaType, BlobRef>>;
}

interface RecordV2 {
  readonly version: 2;
  readonly revision: string;
  readonly packages: readonly string[];
  readonly system: string;
  readonly platforms: readonly PlatformImage[];
  readonly manifests: Readonly<Record<ManifestMediaType, BlobRef>>;
}

export function encodeRecord(image: BuiltImage): Buffer {
  const record: RecordV2 = { version: 2, ...image };
  return Buffer.from(JSON.stringify(record));
}

/** Undefined for a record this version cannot read (the image is then rebuilt). */
export function decodeRecord(bytes: Buffer): BuiltImage | undefined {
  let r: RecordV1 | RecordV2;
  try {
    r = JSON.parse(bytes.toString()) as RecordV1 | RecordV2;
  } catch {
    return undefined;
  }
  if (typeof r !== 'object' || r === null || !r.manifests?.[MediaType.ociManifest] || !r.manifests[MediaType.dockerManifest]) return undefined;
  if (r.version === 1) return { revision: r.revision, packages: r.packages, system: r.arch, platforms: [], manifests: r.manifests };
  if (r.version === 2) return { revision: r.revision, packages: r.packages, system: r.system, platforms: r.platforms, manifests: r.manifests };
  return undefined;
}

/** Every blob the image references: manifests, configs and layers, without repeats. */
export function imageBlobs(image: BuiltImage): Digest[] {
  const all = new Set<Digest>(Object.values(image.manifests).map((m) => m.digest));
  for (const p of image.platforms) {
    all.add(p.config.digest);
    for (const l of p.layers) all.add(l.digest);
  }
  return [...all];
}
