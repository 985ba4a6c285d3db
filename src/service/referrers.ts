/**
 * The referrers of image manifests (distribution-spec 1.1): which artifacts
 * (each image's SBOM) have a manifest as their subject, kept as
 * records/referrers/<subject hex> beside the image record that lists the
 * same blobs. Written after the image record; a garbage-collection pass
 * deletes them before the blobs (gc/pass.ts), and one lost to a pass racing
 * a rebuild is written again when the image is next loaded from storage.
 * Answers list only artifacts still in storage.
 */
import { LRUCache } from 'lru-cache';
import type { Digest } from '../digest.js';
import { MANIFEST_TYPES, buildReferrersIndex, type ManifestMediaType, type ReferrerDescriptor } from '../manifest/build.js';
import { SPDX_MEDIA_TYPE } from '../sbom/spdx.js';
import type { StorageBackend } from '../storage/backend.js';
import { decodeReferrers, encodeReferrers, type BuiltImage } from './records.js';

const hexOf = (d: Digest) => d.slice('sha256:'.length);

export class Referrers {
  /** By subject hex, as read from storage (only existing artifacts). */
  private readonly cache: LRUCache<string, ReferrerDescriptor[]>;

  constructor(
    private readonly storage: StorageBackend,
    max: number,
  ) {
    this.cache = new LRUCache({ max });
  }

  /** records/referrers/<manifest hex> for each manifest flavour that has an SBOM attached. */
  async write(image: BuiltImage): Promise<void> {
    for (const type of MANIFEST_TYPES) {
      const artifact = image.referrers?.[type];
      if (artifact === undefined) continue;
      const subject = hexOf(image.manifests[type].digest);
      await this.storage.putRecord('referrers', subject, encodeReferrers({ referrers: [{ ...artifact, artifactType: SPDX_MEDIA_TYPE }] }));
      this.cache.delete(subject);
    }
  }

  /** Writes the records again if one is missing (an image just loaded from storage). */
  async ensure(image: BuiltImage): Promise<void> {
    for (const [type, m] of Object.entries(image.manifests)) {
      if (image.referrers?.[type as ManifestMediaType] && (await this.storage.getRecord('referrers', hexOf(m.digest))) === undefined) {
        await this.write(image);
        return;
      }
    }
  }

  /**
   * The referrers API's answer: an OCI index of the artifacts whose subject
   * is `digest`, optionally only of one artifactType. An unknown digest has
   * none: an empty index.
   */
  async index(digest: Digest, artifactType?: string): Promise<Buffer> {
    const hex = hexOf(digest);
    let listed = this.cache.get(hex);
    if (listed === undefined) {
      const raw = await this.storage.getRecord('referrers', hex);
      const record = raw === undefined ? undefined : decodeReferrers(raw);
      listed = [];
      for (const r of record?.referrers ?? []) {
        if ((await this.storage.statBlob(r.digest as Digest)) !== undefined) listed.push(r);
      }
      if (record !== undefined) this.cache.set(hex, listed);
    }
    return buildReferrersIndex(artifactType === undefined ? listed : listed.filter((r) => r.artifactType === artifactType));
  }

  /** Forgets what is held in memory (a pass may have deleted it). */
  forget(): void {
    this.cache.clear();
  }
}
