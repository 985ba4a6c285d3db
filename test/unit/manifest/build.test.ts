import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AMD64, ARM64 } from '../../../src/image/name.js';
import {
  CREATED,
  MediaType,
  buildImageConfig,
  buildManifest,
  type LayerInfo,
} from '../../../src/manifest/build.js';

const hex = (c: string) => `sha256:${c.repeat(64)}`;
const layers: LayerInfo[] = [
  { digest: hex('a'), size: 100, diffId: hex('1'), description: 'glibc-2.36' },
  { digest: hex('b'), size: 200, diffId: hex('2'), description: 'symlink layer' },
];

describe('buildImageConfig', () => {
  it('describes the rootfs, the environment and a fixed creation time', () => {
    const config = buildImageConfig({ arch: AMD64, layers, hasShell: true });
    const json = JSON.parse(config.bytes.toString());
    expect(json).toEqual({
      created: CREATED,
      architecture: 'amd64',
      os: 'linux',
      config: {
        Env: ['PATH=/bin:/usr/bin:/sbin:/usr/sbin', 'SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt'],
        Cmd: ['bash'],
      },
      rootfs: { type: 'layers', diff_ids: [hex('1'), hex('2')] },
      history: [
        { created: CREATED, created_by: 'nixery-ts: glibc-2.36' },
        { created: CREATED, created_by: 'nixery-ts: symlink layer' },
      ],
    });
    expect(config.digest).toBe(`sha256:${createHash('sha256').update(config.bytes).digest('hex')}`);
    expect(config.size).toBe(config.bytes.length);
  });

  it('has no Cmd without a shell and records the architecture', () => {
    const json = JSON.parse(buildImageConfig({ arch: ARM64, layers, hasShell: false }).bytes.toString());
    expect(json.config.Cmd).toBeUndefined();
    expect(json.architecture).toBe('arm64');
  });

  it('is reproducible: same input, same digest', () => {
    expect(buildImageConfig({ arch: AMD64, layers, hasShell: true }).digest).toBe(
      buildImageConfig({ arch: AMD64, layers: [...layers], hasShell: true }).digest,
    );
  });
});

describe('buildManifest', () => {
  const config = buildImageConfig({ arch: AMD64, layers, hasShell: false });

  it('builds an OCI manifest with OCI descriptor types', () => {
    const m = buildManifest(MediaType.ociManifest, config, layers);
    expect(m.mediaType).toBe(MediaType.ociManifest);
    expect(JSON.parse(m.bytes.toString())).toEqual({
      schemaVersion: 2,
      mediaType: MediaType.ociManifest,
      config: { mediaType: MediaType.ociConfig, digest: config.digest, size: config.size },
      layers: [
        { mediaType: MediaType.ociLayer, digest: hex('a'), size: 100 },
        { mediaType: MediaType.ociLayer, digest: hex('b'), size: 200 },
      ],
    });
  });

  it('builds a Docker schema 2 manifest with Docker descriptor types and the same config', () => {
    const m = JSON.parse(buildManifest(MediaType.dockerManifest, config, layers).bytes.toString());
    expect(m.mediaType).toBe(MediaType.dockerManifest);
    expect(m.config).toEqual({ mediaType: MediaType.dockerConfig, digest: config.digest, size: config.size });
    expect(m.layers.map((l: { mediaType: string }) => l.mediaType)).toEqual([MediaType.dockerLayer, MediaType.dockerLayer]);
  });

  it('gives the two flavours different digests', () => {
    expect(buildManifest(MediaType.ociManifest, config, layers).digest).not.toBe(
      buildManifest(MediaType.dockerManifest, config, layers).digest,
    );
  });
});
