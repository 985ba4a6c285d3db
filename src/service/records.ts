/**
 * What a build produces and how it is kept in storage (records/manifests/<key>).
 * Pure. A record lists every blob the image references, per platform, so
 * that garbage collection can tell what is in use; records written before
 * that (version 1: only the manifest digests) stay readable.
 *
 * An index record (version 3, kind "index") is what a tag serves with more
 * than one platform: the index in both flavours and every platform that
 * built, each with its own manifests, so that garbage collection keeps all
 * of them for as long as the index is kept.
 */
import type { Digest } from '../digest.js';
import { EMPTY_CONFIG, MediaType, type IndexMediaType, type ManifestMediaType, type ReferrerDescriptor } from '../manifest/build.js';

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
  /** Annotations of its OCI manifest (the config's labels). */
  readonly annotations?: Readonly<Record<string, string>>;
  /** Its SBOM (SPDX JSON), attached to its manifests as artifacts (`referrers` of the image). */
  readonly sbom?: BlobRef;
}

/** One platform of an index: its image and its own manifests. */
export interface IndexedPlatform extends PlatformImage {
  readonly manifests: Readonly<Record<ManifestMediaType, BlobRef>>;
  readonly referrers?: Readonly<Record<ManifestMediaType, BlobRef>> | undefined;
}

export interface BuiltIndex {
  readonly kind: 'index';
  readonly revision: string;
  readonly packages: readonly string[];
  /** The platforms that built, in index order. */
  readonly platforms: readonly IndexedPlatform[];
  /** Platforms that did not build (`linux/arm64`) and why. */
  readonly missing: readonly { readonly platform: string; readonly reason: string }[];
  readonly indexes: Readonly<Record<IndexMediaType, BlobRef>>;
}

export type StoredRecord = BuiltImage | BuiltIndex;

export function isIndex(r: StoredRecord): r is BuiltIndex {
  return 'kind' in r && r.kind === 'index';
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
  /** Per manifest flavour, the artifact manifest attaching the SBOM to it (absent in older records). */
  readonly referrers?: Readonly<Record<ManifestMediaType, BlobRef>> | undefined;
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
  readonly referrers?: Readonly<Record<ManifestMediaType, BlobRef>> | undefined;
}

interface RecordV3 extends BuiltIndex {
  readonly version: 3;
}

export function encodeRecord(record: StoredRecord): Buffer {
  if (isIndex(record)) return Buffer.from(JSON.stringify({ version: 3, ...record } satisfies RecordV3));
  return Buffer.from(JSON.stringify({ version: 2, ...record } satisfies RecordV2));
}

/** An image record; undefined for an index record or one this version cannot read (the image is then rebuilt). */
export function decodeRecord(bytes: Buffer): BuiltImage | undefined {
  const r = decodeStoredRecord(bytes);
  return r === undefined || isIndex(r) ? undefined : r;
}

/** An index record; undefined otherwise. */
export function decodeIndexRecord(bytes: Buffer): BuiltIndex | undefined {
  const r = decodeStoredRecord(bytes);
  return r !== undefined && isIndex(r) ? r : undefined;
}

/** Any record kept under records/manifests/; undefined for one this version cannot read. */
export function decodeStoredRecord(bytes: Buffer): StoredRecord | undefined {
  let r: RecordV1 | RecordV2 | RecordV3;
  try {
    r = JSON.parse(bytes.toString()) as RecordV1 | RecordV2 | RecordV3;
  } catch {
    return undefined;
  }
  if (typeof r !== 'object' || r === null) return undefined;
  if (r.version === 3) {
    if (r.kind !== 'index' || !r.indexes?.[MediaType.ociIndex] || !r.indexes[MediaType.dockerManifestList] || !Array.isArray(r.platforms)) return undefined;
    return { kind: 'index', revision: r.revision, packages: r.packages, platforms: r.platforms, missing: r.missing ?? [], indexes: r.indexes };
  }
  if (!r.manifests?.[MediaType.ociManifest] || !r.manifests[MediaType.dockerManifest]) return undefined;
  if (r.version === 1) return { revision: r.revision, packages: r.packages, system: r.arch, platforms: [], manifests: r.manifests };
  if (r.version === 2) {
    return { revision: r.revision, packages: r.packages, system: r.system, platforms: r.platforms, manifests: r.manifests, ...(r.referrers ? { referrers: r.referrers } : {}) };
  }
  return undefined;
}

/** What a tag serves: an image's manifests or an index's indexes (their digests are how pulls by digest are counted). */
export function servedRefs(record: StoredRecord): BlobRef[] {
  return Object.values(isIndex(record) ? record.indexes : record.manifests);
}

/** Every blob the record references: indexes, manifests, configs and layers, without repeats. */
export function imageBlobs(record: StoredRecord): Digest[] {
  const all = new Set<Digest>(servedRefs(record).map((m) => m.digest));
  const artifacts = (refs: Readonly<Record<string, BlobRef>> | undefined) => {
    for (const m of Object.values(refs ?? {})) all.add(m.digest);
  };
  if (!isIndex(record)) artifacts(record.referrers);
  for (const p of record.platforms) {
    if ('manifests' in p) artifacts(p.manifests as Record<string, BlobRef>);
    if ('referrers' in p) artifacts(p.referrers as Record<string, BlobRef> | undefined);
    all.add(p.config.digest);
    for (const l of p.layers) all.add(l.digest);
    if (p.sbom) {
      all.add(p.sbom.digest);
      all.add(EMPTY_CONFIG.digest as Digest);
    }
  }
  return [...all];
}

/** records/referrers/<subject hex>: the artifacts attached to one manifest. */
export interface ReferrersRecord {
  readonly referrers: readonly ReferrerDescriptor[];
}

export function encodeReferrers(r: ReferrersRecord): Buffer {
  return Buffer.from(JSON.stringify({ version: 1, ...r }));
}

export function decodeReferrers(bytes: Buffer): ReferrersRecord | undefined {
  try {
    const r = JSON.parse(bytes.toString()) as { version?: number; referrers?: ReferrerDescriptor[] };
    return r.version === 1 && Array.isArray(r.referrers) ? { referrers: r.referrers } : undefined;
  } catch {
    return undefined;
  }
}
