/**
 * The SBOM of a real image, from a real server over the referrers API: it
 * validates against the SPDX 2.3 JSON schema shipped with the tests
 * (test/fixtures), lists exactly the store paths the image's layers hold
 * (read from the unpacked image), with DEPENDS_ON edges that agree with
 * `nix-store -q --references`, and the requested package's meta. Both
 * manifest flavours list it; everything verifies against its digest.
 * Debian's skopeo copies the artifact manifest into an OCI layout.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readdir as readdirAsync } from 'node:fs/promises';
import path from 'node:path';
import { Ajv } from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sh, skopeoPull, unpack } from '../helpers/clients.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

const schema = JSON.parse(readFileSync(path.join(import.meta.dirname, '../fixtures/spdx-schema-2.3.json'), 'utf8')) as object;
const validate = new Ajv({ allErrors: true }).compile(schema);

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER = 'application/vnd.docker.distribution.manifest.v2+json';
const SPDX = 'application/spdx+json';

let server: RunningServer;
let work: Awaited<ReturnType<typeof scratchDir>>;
beforeAll(async () => {
  server = await startServer();
  work = await scratchDir('nixery-sbom-');
});
afterAll(async () => {
  await server?.stop();
  await work?.remove();
});

const sha = (b: Uint8Array) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

async function getVerified(url: string, digest: string, accept?: string): Promise<Buffer> {
  const res = await fetch(url, accept ? { headers: { Accept: accept } } : {});
  expect(res.status, url).toBe(200);
  const bytes = Buffer.from(await res.arrayBuffer());
  expect(sha(bytes), url).toBe(digest);
  return bytes;
}

interface SpdxDoc {
  spdxVersion: string;
  packages: {
    SPDXID: string;
    name: string;
    versionInfo?: string;
    licenseDeclared?: string;
    homepage?: string;
    primaryPackagePurpose?: string;
    externalRefs?: { referenceType: string; referenceLocator: string }[];
  }[];
  relationships: { spdxElementId: string; relationshipType: string; relatedSpdxElement: string }[];
}

describe('the SBOM of shell/htop', () => {
  it('is listed for both manifest flavours, verifies, validates against SPDX 2.3, and lists exactly the image\'s store paths and their references', async () => {
    const name = 'shell/htop';
    const artifacts: string[] = [];
    for (const type of [OCI, DOCKER]) {
      const m = await fetch(`${server.url}/v2/${name}/manifests/latest`, { headers: { Accept: type } });
      const digest = m.headers.get('docker-content-digest')!;
      const r = await fetch(`${server.url}/v2/${name}/referrers/${digest}`);
      expect(r.headers.get('content-type')).toBe('application/vnd.oci.image.index.v1+json');
      const index = (await r.json()) as { manifests: { digest: string; artifactType: string }[] };
      expect(index.manifests.map((e) => e.artifactType)).toEqual([SPDX]);
      artifacts.push(index.manifests[0]!.digest);
    }
    const manifest = JSON.parse(
      (await getVerified(`${server.url}/v2/${name}/manifests/${artifacts[0]}`, artifacts[0]!, OCI)).toString(),
    ) as { layers: { digest: string; mediaType: string }[]; subject: { digest: string } };
    const layer = manifest.layers[0]!;
    expect(layer.mediaType).toBe(SPDX);
    const doc = JSON.parse((await getVerified(`${server.url}/v2/${name}/blobs/${layer.digest}`, layer.digest)).toString()) as SpdxDoc;
    // The Docker flavour's artifact carries the same SBOM.
    const dockerArtifact = JSON.parse((await getVerified(`${server.url}/v2/${name}/manifests/${artifacts[1]}`, artifacts[1]!, OCI)).toString()) as {
      layers: { digest: string }[];
    };
    expect(dockerArtifact.layers[0]!.digest).toBe(layer.digest);

    const valid = validate(doc);
    expect(validate.errors ?? [], 'SPDX 2.3 schema').toEqual([]);
    expect(valid).toBe(true);
    expect(doc.spdxVersion).toBe('SPDX-2.3');

    // Exactly the store paths in the image.
    const layout = path.join(work.path, 'oci');
    await skopeoPull(`${server.host}/${name}:latest`, layout);
    const rootfs = await unpack(layout, path.join(work.path, 'bundle'));
    const inImage = (await readdirAsync(path.join(rootfs, 'nix/store'))).map((n) => `/nix/store/${n}`).sort();
    const pathOf = new Map<string, string>();
    for (const p of doc.packages) {
      const ref = p.externalRefs?.find((e) => e.referenceType === 'nix-store-path');
      if (ref) pathOf.set(p.SPDXID, ref.referenceLocator);
    }
    expect([...pathOf.values()].sort()).toEqual(inImage);
    // Names and versions as Nix splits them.
    const htop = doc.packages.find((p) => pathOf.get(p.SPDXID)?.match(/-htop-\d/));
    expect(htop).toMatchObject({ name: 'htop', versionInfo: expect.stringMatching(/^\d/) });
    // DEPENDS_ON: exactly what Nix says each path references (without itself).
    const edges = doc.relationships
      .filter((r) => r.relationshipType === 'DEPENDS_ON')
      .map((r) => `${pathOf.get(r.spdxElementId)} -> ${pathOf.get(r.relatedSpdxElement)}`)
      .sort();
    const expected: string[] = [];
    for (const p of inImage) {
      const { stdout } = await sh('nix-store', ['-q', '--references', p]);
      for (const ref of stdout.split('\n').filter((l) => l !== '' && l !== p)) expected.push(`${p} -> ${ref}`);
    }
    expect(edges).toEqual(expected.sort());
    // The image package describes the image.
    expect(doc.packages.find((p) => p.primaryPackagePurpose === 'CONTAINER')).toMatchObject({ name: 'shell/htop' });
  });

  it('carries the requested package\'s license and homepage from the package set\'s meta; a second build is byte-identical', async () => {
    const m = await fetch(`${server.url}/v2/hello/manifests/latest`, { headers: { Accept: OCI } });
    const digest = m.headers.get('docker-content-digest')!;
    const index = (await (await fetch(`${server.url}/v2/hello/referrers/${digest}?artifactType=${encodeURIComponent(SPDX)}`)).json()) as {
      manifests: { digest: string }[];
    };
    const artifact = JSON.parse((await getVerified(`${server.url}/v2/hello/manifests/${index.manifests[0]!.digest}`, index.manifests[0]!.digest, OCI)).toString()) as {
      layers: { digest: string }[];
    };
    const sbomDigest = artifact.layers[0]!.digest;
    const doc = JSON.parse((await getVerified(`${server.url}/v2/hello/blobs/${sbomDigest}`, sbomDigest)).toString()) as SpdxDoc;
    expect(validate(doc)).toBe(true);
    const hello = doc.packages.find((p) => p.name === 'hello' && p.primaryPackagePurpose !== 'CONTAINER');
    expect(hello).toMatchObject({ licenseDeclared: 'GPL-3.0-or-later', homepage: 'https://www.gnu.org/software/hello/' });

    // Another server on fresh storage: the same SBOM and artifact digests.
    const other = await startServer();
    try {
      const m2 = await fetch(`${other.url}/v2/hello/manifests/latest`, { headers: { Accept: OCI } });
      expect(m2.headers.get('docker-content-digest')).toBe(digest);
      const i2 = (await (await fetch(`${other.url}/v2/hello/referrers/${digest}`)).json()) as { manifests: { digest: string }[] };
      expect(i2.manifests[0]!.digest).toBe(index.manifests[0]!.digest);
    } finally {
      await other.stop();
    }
  });

  it('Debian\'s skopeo (1.9.3) copies the artifact manifest by digest into an OCI layout, SBOM blob included', async () => {
    const m = await fetch(`${server.url}/v2/hello/manifests/latest`, { headers: { Accept: OCI } });
    const digest = m.headers.get('docker-content-digest')!;
    const index = (await (await fetch(`${server.url}/v2/hello/referrers/${digest}`)).json()) as { manifests: { digest: string }[] };
    const artifact = index.manifests[0]!.digest;
    const layout = path.join(work.path, 'artifact-oci');
    await sh('skopeo', ['copy', '--src-tls-verify=false', `docker://${server.host}/hello@${artifact}`, `oci:${layout}:sbom`]);
    const blobs = await readdirAsync(path.join(layout, 'blobs/sha256'));
    const copied = JSON.parse(readFileSync(path.join(layout, 'blobs/sha256', artifact.slice('sha256:'.length)), 'utf8')) as { layers: { digest: string }[] };
    expect(blobs).toContain(copied.layers[0]!.digest.slice('sha256:'.length));
  });
});
