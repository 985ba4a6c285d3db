import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  CorruptBlobError,
  MissingBlobError,
  archiveBlobBytes,
  normalizeReference,
  referenceTag,
  writeArchive,
  type ArchiveImage,
  type BlobSource,
} from '../../../src/cli/archive.js';
import type { Digest } from '../../../src/digest.js';

const digestOf = (b: Buffer): Digest => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const hex = (d: string) => d.slice('sha256:'.length);

function blob(text: string, repeat = 1): { digest: Digest; bytes: Buffer } {
  const bytes = Buffer.from(text.repeat(repeat));
  return { digest: digestOf(bytes), bytes };
}

const layerA = blob('layer a ', 10_000);
const layerB = blob('layer b');
const config = blob(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
const manifest = blob(JSON.stringify({ schemaVersion: 2, config: { digest: config.digest }, layers: [layerA.digest, layerB.digest] }));
const image: ArchiveImage = {
  manifest,
  config,
  layers: [
    { digest: layerA.digest, size: layerA.bytes.length },
    { digest: layerB.digest, size: layerB.bytes.length },
  ],
  platform: { os: 'linux', architecture: 'amd64' },
};
const names = { references: ['localhost/shell/htop:latest'] };

function source(blobs: Map<string, Buffer>): BlobSource {
  return {
    async open(d) {
      const b = blobs.get(d);
      // Small chunks: the copy goes through many writes.
      return b === undefined ? undefined : { stream: Readable.from(chunks(b, 1000)), size: b.length };
    },
  };
}

function* chunks(b: Buffer, n: number): Generator<Buffer> {
  for (let i = 0; i < b.length; i += n) yield b.subarray(i, i + n);
}

const stored = () => new Map<string, Buffer>([[layerA.digest, layerA.bytes], [layerB.digest, layerB.bytes]]);

async function entries(file: string): Promise<Map<string, { type: string; data: Buffer; mtime: number; uid: number; mode: number }>> {
  const out = new Map<string, { type: string; data: Buffer; mtime: number; uid: number; mode: number }>();
  const extract = tar.extract();
  const done = (async () => {
    for await (const e of extract) {
      const parts: Buffer[] = [];
      for await (const c of e) parts.push(c as Buffer);
      out.set(e.header.name, { type: e.header.type ?? '', data: Buffer.concat(parts), mtime: e.header.mtime?.getTime() ?? -1, uid: e.header.uid ?? -1, mode: e.header.mode ?? 0 });
    }
  })();
  extract.end(await readFile(file));
  await done;
  return out;
}

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'archive-test-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('docker-archive', () => {
  it('holds manifest.json naming the config and layers under blobs/sha256, with the RepoTags, and the blobs as stored', async () => {
    const file = path.join(dir, 'img.tar');
    const progress: number[] = [];
    const size = await writeArchive('docker-archive', file, image, names, source(stored()), { onBytes: (n) => progress.push(n) });
    const e = await entries(file);
    expect([...e.keys()]).toEqual(['blobs/', 'blobs/sha256/', 'manifest.json', `blobs/sha256/${hex(config.digest)}`, `blobs/sha256/${hex(layerA.digest)}`, `blobs/sha256/${hex(layerB.digest)}`]);
    expect(JSON.parse(e.get('manifest.json')!.data.toString())).toEqual([
      { Config: `blobs/sha256/${hex(config.digest)}`, RepoTags: ['localhost/shell/htop:latest'], Layers: [`blobs/sha256/${hex(layerA.digest)}`, `blobs/sha256/${hex(layerB.digest)}`] },
    ]);
    expect(e.get(`blobs/sha256/${hex(layerA.digest)}`)!.data.equals(layerA.bytes)).toBe(true);
    expect(e.get(`blobs/sha256/${hex(config.digest)}`)!.data.equals(config.bytes)).toBe(true);
    // Fixed times and owners.
    expect([...e.values()].every((x) => x.mtime === 0 && x.uid === 0)).toBe(true);
    expect(size).toBe((await readFile(file)).length);
    // Progress: growing, ending at the blobs' total.
    expect(progress.at(-1)).toBe(archiveBlobBytes('docker-archive', image));
    expect([...progress].sort((a, b) => a - b)).toEqual(progress);
    expect(progress.length).toBeGreaterThan(10);
  });

  it('is the same file every time (and a layer named twice is stored once)', async () => {
    const twice: ArchiveImage = { ...image, layers: [...image.layers, image.layers[0]!] };
    await writeArchive('docker-archive', path.join(dir, 'a.tar'), twice, names, source(stored()));
    await writeArchive('docker-archive', path.join(dir, 'b.tar'), twice, names, source(stored()));
    const a = await readFile(path.join(dir, 'a.tar'));
    expect(a.equals(await readFile(path.join(dir, 'b.tar')))).toBe(true);
    const e = await entries(path.join(dir, 'a.tar'));
    expect((JSON.parse(e.get('manifest.json')!.data.toString()) as { Layers: string[] }[])[0]!.Layers).toHaveLength(3);
    expect([...e.keys()].filter((k) => k.includes(hex(layerA.digest)))).toHaveLength(1);
  });
});

describe('oci-archive and oci', () => {
  it('holds an OCI image layout: oci-layout, index.json naming the manifest by tag and full name, the manifest, config and layers', async () => {
    const file = path.join(dir, 'img.tar');
    await writeArchive('oci-archive', file, image, { references: ['localhost/shell/htop:latest', 'jq:v1', 'other/name:latest'] }, source(stored()));
    const e = await entries(file);
    expect(JSON.parse(e.get('oci-layout')!.data.toString())).toEqual({ imageLayoutVersion: '1.0.0' });
    const index = JSON.parse(e.get('index.json')!.data.toString());
    expect(index).toEqual({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifest.digest,
          size: manifest.bytes.length,
          annotations: { 'io.containerd.image.name': 'localhost/shell/htop:latest', 'org.opencontainers.image.ref.name': 'latest' },
          platform: { os: 'linux', architecture: 'amd64' },
        },
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifest.digest,
          size: manifest.bytes.length,
          annotations: { 'io.containerd.image.name': 'docker.io/library/jq:v1', 'org.opencontainers.image.ref.name': 'v1' },
          platform: { os: 'linux', architecture: 'amd64' },
        },
      ],
    });
    for (const b of [manifest, config, layerA, layerB]) expect(e.get(`blobs/sha256/${hex(b.digest)}`)!.data.equals(b.bytes)).toBe(true);
    expect(e.has('manifest.json')).toBe(false);
  });

  it('writes the same layout as a directory', async () => {
    const target = path.join(dir, 'layout');
    const bytes = await writeArchive('oci', target, image, names, source(stored()));
    expect((await readdir(target)).sort()).toEqual(['blobs', 'index.json', 'oci-layout']);
    expect((await readdir(path.join(target, 'blobs/sha256'))).sort()).toEqual([manifest, config, layerA, layerB].map((b) => hex(b.digest)).sort());
    expect((await readFile(path.join(target, 'blobs/sha256', hex(layerA.digest)))).equals(layerA.bytes)).toBe(true);
    expect(bytes).toBe(archiveBlobBytes('oci', image));
  });
});

describe('a damaged cache', () => {
  it('a missing layer: MissingBlobError', async () => {
    const blobs = stored();
    blobs.delete(layerB.digest);
    await expect(writeArchive('docker-archive', path.join(dir, 'x.tar'), image, names, source(blobs))).rejects.toBeInstanceOf(MissingBlobError);
    await expect(writeArchive('oci', path.join(dir, 'x'), image, names, source(blobs))).rejects.toThrow(`blob ${layerB.digest} is missing from the cache`);
  });

  it('a layer whose bytes are not its digest: CorruptBlobError, also when only the content differs', async () => {
    const blobs = stored();
    const bad = Buffer.from(layerA.bytes);
    bad[5] = 0x21;
    blobs.set(layerA.digest, bad);
    const e = await writeArchive('docker-archive', path.join(dir, 'x.tar'), image, names, source(blobs)).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CorruptBlobError);
    expect((e as CorruptBlobError).digest).toBe(layerA.digest);
    blobs.set(layerA.digest, layerA.bytes.subarray(1));
    await expect(writeArchive('oci-archive', path.join(dir, 'y.tar'), image, names, source(blobs))).rejects.toThrow(/bytes instead of/);
    await expect(writeArchive('oci', path.join(dir, 'z'), { ...image, config: { ...config, bytes: Buffer.from('{}') } }, names, source(stored()))).rejects.toBeInstanceOf(CorruptBlobError);
  });

  it('a write that fails (the target is a directory) rejects rather than hanging', async () => {
    await writeFile(path.join(dir, 'f'), '');
    await expect(writeArchive('docker-archive', dir, image, names, source(stored()))).rejects.toThrow(/EISDIR/);
  });

  it('an abort stops the write', async () => {
    const ac = new AbortController();
    ac.abort(new Error('stop'));
    await expect(writeArchive('docker-archive', path.join(dir, 'x.tar'), image, names, source(stored()), { signal: ac.signal })).rejects.toThrow();
  });
});

describe('references', () => {
  it('tags and docker.io normalization for containerd', () => {
    expect(referenceTag('localhost:5000/a/b:v2')).toBe('v2');
    expect(referenceTag('localhost:5000/a/b')).toBe('latest');
    expect(normalizeReference('localhost/a:b')).toBe('localhost/a:b');
    expect(normalizeReference('example.com/a:b')).toBe('example.com/a:b');
    expect(normalizeReference('host:5000/a:b')).toBe('host:5000/a:b');
    expect(normalizeReference('team/tool:1')).toBe('docker.io/team/tool:1');
    expect(normalizeReference('jq:1')).toBe('docker.io/library/jq:1');
  });
});
