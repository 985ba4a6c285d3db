/**
 * The registry on Google Cloud Storage, against the firebase-tools storage
 * emulator: pulls through redirects, signed URLs, outages at start and
 * mid-run, and two replicas sharing one bucket.
 */
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inChroot, skopeoPull, unpack } from '../helpers/clients.js';
import { startEngines } from '../helpers/daemons.js';
import { startGcsEmulator, type GcsEmulator } from '../helpers/gcs-emulator.js';
import { DEMO_PKGS, freshSalt } from '../helpers/nix.js';
import { runUntilExit, scratchDir, startServer, type RunningServer } from '../helpers/server.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
let emu: GcsEmulator;
const cleanups: (() => Promise<unknown>)[] = [];
beforeAll(async () => {
  emu = await startGcsEmulator();
});
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await emu?.stop();
});

const bucket = () => `nixery-${randomUUID().slice(0, 8)}`;

async function gcsServer(env: Record<string, string>): Promise<RunningServer> {
  const s = await startServer({
    env: { NIXERY_STORAGE_BACKEND: 'gcs', STORAGE_EMULATOR_HOST: emu.url, GCS_BUCKET: bucket(), ...env },
  });
  cleanups.push(() => s.stop());
  return s;
}

async function scratch(prefix: string): Promise<string> {
  const d = await scratchDir(prefix);
  cleanups.push(d.remove);
  return d.path;
}

async function manifestOf(s: RunningServer, image: string) {
  const r = await fetch(`${s.url}/v2/${image}/manifests/latest`, { headers: { Accept: OCI } });
  return { status: r.status, digest: r.headers.get('docker-content-digest'), body: await r.text() };
}

describe('pulling from gcs storage', () => {
  it('builds shell/htop, skopeo pulls it through redirects to the bucket, and it runs', async () => {
    const s = await gcsServer({});
    const m = await manifestOf(s, 'shell/htop');
    expect(m.status).toBe(200);
    const layer = JSON.parse(m.body).layers[0];
    const blob = await fetch(`${s.url}/v2/shell/htop/blobs/${layer.digest}`, { redirect: 'manual' });
    expect(blob.status).toBe(307);
    expect(blob.headers.get('location')).toMatch(new RegExp(`^${emu.url}/`));
    expect(blob.headers.get('docker-content-digest')).toBe(layer.digest);
    // A missing blob is the registry's 404, never a redirect to a miss in the bucket.
    const missing = await fetch(`${s.url}/v2/shell/htop/blobs/sha256:${'5'.repeat(64)}`, { redirect: 'manual' });
    expect(missing.status).toBe(404);
    expect(((await missing.json()) as { errors: { code: string }[] }).errors[0]!.code).toBe('BLOB_UNKNOWN');
    // Manifests are served by the registry itself, with their headers.
    expect(m.digest).toMatch(/^sha256:/);

    const dir = await scratch('nixery-gcs-pull-');
    await skopeoPull(`${s.host}/shell/htop`, `${dir}/img`);
    const rootfs = await unpack(`${dir}/img`, `${dir}/bundle`);
    expect(await inChroot(rootfs, ['htop', '--version'])).toMatch(/^htop \d/);
    expect(await inChroot(rootfs, ['bash', '-c', 'echo ok'])).toBe('ok\n');
  });

  it('docker pulls and runs an image whose blobs come from the bucket', async () => {
    const s = await gcsServer({});
    const engines = await startEngines();
    try {
      await engines.docker(['pull', `${s.host}/shell/htop`]);
      expect(await engines.docker(['run', '--rm', '--network', 'none', `${s.host}/shell/htop`, 'htop', '--version'])).toMatch(/^htop \d/);
    } finally {
      await engines.stop();
    }
  });

  it('redirects to V4 signed URLs with the configured lifetime when a service-account key is configured', async () => {
    const dir = await scratch('nixery-gcs-key-');
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const keyFile = path.join(dir, 'sa.json');
    await writeFile(keyFile, JSON.stringify({
      type: 'service_account',
      project_id: 'demo-test',
      private_key_id: '0123456789abcdef',
      private_key: privateKey.export({ type: 'pkcs8', format: 'pem' }),
      client_email: 'registry@demo-test.iam.gserviceaccount.com',
      client_id: '1',
      token_uri: 'https://oauth2.googleapis.com/token',
    }));
    const s = await gcsServer({ GOOGLE_APPLICATION_CREDENTIALS: keyFile, NIXERY_SIGNED_URL_TTL: '120' });
    const layer = JSON.parse((await manifestOf(s, 'hello')).body).layers[0];
    const r = await fetch(`${s.url}/v2/hello/blobs/${layer.digest}`, { redirect: 'manual' });
    expect(r.status).toBe(307);
    const url = new URL(r.headers.get('location')!);
    expect(url.searchParams.get('X-Goog-Algorithm')).toBe('GOOG4-RSA-SHA256');
    expect(url.searchParams.get('X-Goog-Expires')).toBe('120');
    expect(url.searchParams.get('X-Goog-Credential')).toMatch(/^registry@demo-test\.iam\.gserviceaccount\.com\//);
    expect(url.searchParams.get('X-Goog-Signature')).toMatch(/^[0-9a-f]{512}$/);
    const dir2 = await scratch('nixery-gcs-signed-pull-');
    await skopeoPull(`${s.host}/hello`, `${dir2}/img`);
  });
});

describe('gcs outages', () => {
  it('refuses to start, in one line, when the storage endpoint is down', async () => {
    const down = await startGcsEmulator();
    const port = down.port;
    await down.stop();
    const { code, stderr } = await runUntilExit({
      PORT: '0', NIXERY_HOST: '127.0.0.1', NIXERY_PKGS_PATH: DEMO_PKGS,
      NIXERY_STORAGE_BACKEND: 'gcs', GCS_BUCKET: bucket(), STORAGE_EMULATOR_HOST: `http://127.0.0.1:${port}`,
    });
    expect(code).toBe(2);
    const lines = stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^nixery-ts: configuration error: GCS_BUCKET: .*cannot reach/);
  });

  it('fails a pull with a registry error while the bucket is down, stays up, and pulls again when it returns', async () => {
    const s = await gcsServer({ NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) });
    expect((await manifestOf(s, 'hello')).status).toBe(200);
    await emu.stop();
    try {
      const during = await manifestOf(s, 'jq');
      expect(during.status).toBe(503);
      expect(JSON.parse(during.body).errors[0]).toMatchObject({ code: 'UNAVAILABLE', detail: { requestId: expect.any(String) } });
      expect((await fetch(`${s.url}/livez`)).status).toBe(200);
      expect((await fetch(`${s.url}/readyz`)).status).toBe(503);
    } finally {
      await emu.restart();
    }
    expect((await fetch(`${s.url}/readyz`)).status).toBe(200);
    const after = await manifestOf(s, 'jq');
    expect(after.status).toBe(200);
    const dir = await scratch('nixery-gcs-after-');
    await skopeoPull(`${s.host}/jq`, `${dir}/img`);
  });
});

describe('two replicas, one bucket', () => {
  it('share layers (no second upload) and serve identical manifests', async () => {
    const shared = { GCS_BUCKET: bucket(), NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) };
    const a = await gcsServer(shared);
    const b = await gcsServer(shared);
    const fromA = await manifestOf(a, 'hello');
    expect(fromA.status).toBe(200);
    const packedByA = (await a.stats()).layersPacked;
    expect(packedByA).toBeGreaterThan(0);

    // The same image: B finds A's manifest record in the bucket and builds nothing.
    const fromB = await manifestOf(b, 'hello');
    expect(fromB.digest).toBe(fromA.digest);
    expect(fromB.body).toBe(fromA.body);
    expect((await b.stats()).builds).toBe(0);

    // Another image sharing hello's closure: B builds it but reuses A's layers (glibc and friends).
    expect((await manifestOf(b, 'hello/jq')).status).toBe(200);
    const statsB = await b.stats();
    expect(statsB.builds).toBe(1);
    expect(statsB.layersReused).toBeGreaterThan(0);
    const jqLayers = JSON.parse((await manifestOf(b, 'hello/jq')).body).layers.map((l: { digest: string }) => l.digest);
    const helloLayers = JSON.parse(fromA.body).layers.map((l: { digest: string }) => l.digest);
    expect(jqLayers.filter((d: string) => helloLayers.includes(d)).length).toBe(statsB.layersReused);
  });
});
