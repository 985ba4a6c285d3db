/**
 * Image config and manifests, in both media types. Pure: layers come in as
 * digests and sizes, JSON bytes go out with their digests.
 *
 * The config is the same bytes for both manifest flavours (the Docker and OCI
 * config formats agree on every field we set), so a layer set has one config
 * digest; only the descriptors' media types differ.
 */
import { sha256Digest } from '../digest.js';
import type { Architecture } from '../image/name.js';

export const MediaType = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;

export type ManifestMediaType = typeof MediaType.ociManifest | typeof MediaType.dockerManifest;
export type IndexMediaType = typeof MediaType.ociIndex | typeof MediaType.dockerManifestList;
/** Everything served under /manifests/. */
export type ServedMediaType = ManifestMediaType | IndexMediaType;

/** The manifest flavour an index flavour lists: OCI with OCI, Docker with Docker. */
export const INDEX_ENTRY_TYPE: Readonly<Record<IndexMediaType, ManifestMediaType>> = {
  [MediaType.ociIndex]: MediaType.ociManifest,
  [MediaType.dockerManifestList]: MediaType.dockerManifest,
};
export const INDEX_TYPES: readonly IndexMediaType[] = [MediaType.ociIndex, MediaType.dockerManifestList];

export interface LayerInfo {
  /** sha256 of the gzip stream, as served. */
  readonly digest: string;
  readonly size: number;
  /** sha256 of the uncompressed tar. */
  readonly diffId: string;
  /** What the layer holds, for the config's history. */
  readonly description: string;
}

export interface Blob {
  readonly bytes: Buffer;
  readonly digest: string;
  readonly size: number;
  readonly mediaType: string;
}

/**
 * Fixed creation time: a changing timestamp would give a new config digest
 * (and image ID) on every build of the same content.
 */
export const CREATED = '1970-01-01T00:00:01Z';

export interface ImageConfigInput {
  readonly arch: Architecture;
  /** Layers in manifest order (lowest first). */
  readonly layers: readonly LayerInfo[];
  /** Start `bash` by default, as Nixery does, when bashInteractive is in the image. */
  readonly hasShell: boolean;
  /** The default command otherwise (an image of one package: its main program). */
  readonly cmd?: readonly string[] | undefined;
  /** Run as this user (`65532:65532`) with this home, which is also the working directory. */
  readonly user?: { readonly id: string; readonly home: string } | undefined;
  /** OCI labels (org.opencontainers.image.*). */
  readonly labels?: Readonly<Record<string, string>> | undefined;
}

function blob(value: unknown, mediaType: string): Blob {
  const bytes = Buffer.from(JSON.stringify(value));
  return { bytes, digest: sha256Digest(bytes), size: bytes.length, mediaType };
}

export function buildImageConfig(input: ImageConfigInput): Blob {
  const env = ['PATH=/bin:/usr/bin:/sbin:/usr/sbin', 'SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt'];
  if (input.user) env.push(`HOME=${input.user.home}`);
  const config: Record<string, unknown> = { Env: env };
  if (input.hasShell) config['Cmd'] = ['bash'];
  else if (input.cmd && input.cmd.length > 0) config['Cmd'] = [...input.cmd];
  if (input.user) {
    config['User'] = input.user.id;
    config['WorkingDir'] = input.user.home;
  }
  if (input.labels && Object.keys(input.labels).length > 0) config['Labels'] = sortedRecord(input.labels);
  return blob(
    {
      created: CREATED,
      architecture: input.arch.ociArch,
      os: 'linux',
      config,
      rootfs: { type: 'layers', diff_ids: input.layers.map((l) => l.diffId) },
      history: input.layers.map((l) => ({ created: CREATED, created_by: `nixery-ts: ${l.description}` })),
    },
    // The config's own media type depends on the manifest that points at it;
    // callers take it from the descriptor. OCI is recorded here for storage.
    MediaType.ociConfig,
  );
}

/** A blob as a descriptor names it. */
export interface BlobDescriptor {
  readonly digest: string;
  readonly size: number;
}

/**
 * `annotations` go into the OCI manifest only: Docker's schema 2 has no
 * such field (its clients read the config's labels).
 */
export function buildManifest(
  mediaType: ManifestMediaType,
  config: BlobDescriptor,
  layers: readonly BlobDescriptor[],
  annotations?: Readonly<Record<string, string>>,
): Blob {
  const oci = mediaType === MediaType.ociManifest;
  return blob(
    {
      schemaVersion: 2,
      mediaType,
      config: { mediaType: oci ? MediaType.ociConfig : MediaType.dockerConfig, digest: config.digest, size: config.size },
      layers: layers.map((l) => ({
        mediaType: oci ? MediaType.ociLayer : MediaType.dockerLayer,
        digest: l.digest,
        size: l.size,
      })),
      ...(oci && annotations && Object.keys(annotations).length > 0 ? { annotations: sortedRecord(annotations) } : {}),
    },
    mediaType,
  );
}

/** Keys in a fixed order: the same labels give the same bytes however they were assembled. */
function sortedRecord(r: Readonly<Record<string, string>>): Record<string, string> {
  return Object.fromEntries(Object.entries(r).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

export const MANIFEST_TYPES: readonly ManifestMediaType[] = [MediaType.ociManifest, MediaType.dockerManifest];

/** Both manifest flavours of one platform's image: one build serves OCI and Docker clients. */
export function assembleManifests(
  config: BlobDescriptor,
  layers: readonly BlobDescriptor[],
  annotations?: Readonly<Record<string, string>>,
): Record<ManifestMediaType, Blob> {
  return {
    [MediaType.ociManifest]: buildManifest(MediaType.ociManifest, config, layers, annotations),
    [MediaType.dockerManifest]: buildManifest(MediaType.dockerManifest, config, layers),
  };
}

export const Label = {
  source: 'org.opencontainers.image.source',
  revision: 'org.opencontainers.image.revision',
  title: 'org.opencontainers.image.title',
  created: 'org.opencontainers.image.created',
  description: 'org.opencontainers.image.description',
} as const;

/** One platform's manifest as an index lists it. */
export interface IndexEntry extends BlobDescriptor {
  readonly architecture: string;
}

/**
 * An OCI image index or a Docker manifest list over the platforms' manifests
 * of the matching flavour, in the order given. Byte-stable: the same
 * manifests give the same index.
 */
export function buildIndex(mediaType: IndexMediaType, entries: readonly IndexEntry[]): Blob {
  return blob(
    {
      schemaVersion: 2,
      mediaType,
      manifests: entries.map((e) => ({
        mediaType: INDEX_ENTRY_TYPE[mediaType],
        digest: e.digest,
        size: e.size,
        platform: { architecture: e.architecture, os: 'linux' },
      })),
    },
    mediaType,
  );
}

/**
 * The OCI empty descriptor's blob (`{}`): the config of an artifact manifest
 * that has no config of its own (image-spec 1.1, "Guidance for an empty
 * descriptor"). Stored like any blob so that clients can fetch it.
 */
export const EMPTY_CONFIG: Blob = (() => {
  const bytes = Buffer.from('{}');
  return { bytes, digest: sha256Digest(bytes), size: bytes.length, mediaType: 'application/vnd.oci.empty.v1+json' };
})();

/**
 * An artifact manifest (image-spec 1.1): an OCI image manifest with an
 * `artifactType`, the empty config, the artifact as its one layer, and the
 * manifest it is about as `subject`, which is what the referrers API lists
 * it under.
 */
export function buildArtifactManifest(
  artifactType: string,
  artifact: BlobDescriptor & { readonly mediaType: string },
  subject: BlobDescriptor & { readonly mediaType: string },
): Blob {
  return blob(
    {
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      artifactType,
      config: { mediaType: EMPTY_CONFIG.mediaType, digest: EMPTY_CONFIG.digest, size: EMPTY_CONFIG.size, data: EMPTY_CONFIG.bytes.toString('base64') },
      layers: [{ mediaType: artifact.mediaType, digest: artifact.digest, size: artifact.size }],
      subject: { mediaType: subject.mediaType, digest: subject.digest, size: subject.size },
      annotations: { [Label.created]: CREATED },
    },
    MediaType.ociManifest,
  );
}

/** One artifact as the referrers API lists it. */
export interface ReferrerDescriptor extends BlobDescriptor {
  readonly artifactType: string;
  readonly annotations?: Readonly<Record<string, string>>;
}

/** The referrers API's answer: an OCI image index of the artifact manifests (distribution-spec 1.1). */
export function buildReferrersIndex(referrers: readonly ReferrerDescriptor[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: referrers.map((r) => ({
        mediaType: MediaType.ociManifest,
        digest: r.digest,
        size: r.size,
        artifactType: r.artifactType,
        ...(r.annotations ? { annotations: r.annotations } : {}),
      })),
    }),
  );
}
