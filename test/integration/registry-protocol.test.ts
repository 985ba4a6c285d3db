/**
 * The pull side of the distribution protocol, over real sockets.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freshSalt } from '../helpers/nix.js';
import { startServer, type RunningServer } from '../helpers/server.js';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER = 'application/vnd.docker.distribution.manifest.v2+json';
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let server: RunningServer;
beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server?.stop();
});

/** A raw request: fetch would normalise paths like /v2/../etc away. */
function raw(method: string, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const [host, port] = server.host.split(':');
    const req = http.request({ host, port: Number(port), path, method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function expectRegistryError(res: { status: number; headers: http.IncomingHttpHeaders; body: Buffer }, status: number, code: string) {
  expect(res.status).toBe(status);
  expect(res.headers['content-type']).toBe('application/json');
  const json = JSON.parse(res.body.toString());
  expect(json.errors).toHaveLength(1);
  expect(json.errors[0].code).toBe(code);
  expect(typeof json.errors[0].message).toBe('string');
  return json.errors[0] as { code: string; message: string; detail: Record<string, unknown> };
}

describe('/v2/', () => {
  it('answers 200 with the API version header on GET and HEAD', async () => {
    for (const method of ['GET', 'HEAD']) {
      const r = await raw(method, '/v2/');
      expect(r.status).toBe(200);
      expect(r.headers['docker-distribution-api-version']).toBe('registry/2.0');
    }
  });
});

describe('manifests', () => {
  it('HEAD by tag gives the digest that GET by digest serves byte-identical, with all headers', async () => {
    const head = await raw('HEAD', '/v2/hello/manifests/latest', { Accept: OCI });
    expect(head.status).toBe(200);
    expect(head.body.length).toBe(0);
    const digest = head.headers['docker-content-digest'] as string;
    expect(head.headers['content-type']).toBe(OCI);
    const byTag = await raw('GET', '/v2/hello/manifests/latest', { Accept: OCI });
    const byDigest = await raw('GET', `/v2/hello/manifests/${digest}`, { Accept: `${OCI}, */*` });
    expect(byDigest.status).toBe(200);
    expect(byDigest.body.equals(byTag.body)).toBe(true);
    expect(sha256(byDigest.body)).toBe(digest);
    expect(byDigest.headers['content-length']).toBe(String(byDigest.body.length));
    expect(head.headers['content-length']).toBe(String(byDigest.body.length));
    expect(byDigest.headers['content-type']).toBe(OCI);
    expect(JSON.parse(byDigest.body.toString()).mediaType).toBe(OCI);
    const headByDigest = await raw('HEAD', `/v2/hello/manifests/${digest}`);
    expect(headByDigest.headers['docker-content-digest']).toBe(digest);
  });

  it('serves Docker schema 2 to a client that accepts only Docker types', async () => {
    const r = await raw('GET', '/v2/hello/manifests/latest', { Accept: DOCKER });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe(DOCKER);
    const m = JSON.parse(r.body.toString());
    expect(m.mediaType).toBe(DOCKER);
    expect(m.config.mediaType).toBe('application/vnd.docker.container.image.v1+json');
    expect(m.layers[0].mediaType).toBe('application/vnd.docker.image.rootfs.diff.tar.gzip');
    expect(r.headers['docker-content-digest']).toBe(sha256(r.body));
  });

  it('names every missing package in a 404 MANIFEST_UNKNOWN', async () => {
    const e = await expectRegistryError(await raw('GET', '/v2/htop/nosuchpkg/alsomissing/manifests/latest'), 404, 'MANIFEST_UNKNOWN');
    expect(e.message).toContain('nosuchpkg');
    expect(e.message).toContain('alsomissing');
    expect(e.detail['packages']).toEqual([
      { name: 'alsomissing', kind: 'not_found' },
      { name: 'nosuchpkg', kind: 'not_found' },
    ]);
  });

  it.each([
    ['/v2/Shell/HTOP/manifests/latest'],
    ['/v2/../etc/manifests/latest'],
    [`/v2/${'a'.repeat(300)}/manifests/latest`],
  ])('rejects %s with 400 NAME_INVALID', async (path) => {
    await expectRegistryError(await raw('GET', path), 400, 'NAME_INVALID');
  });

  it('rejects a malformed digest with 400 DIGEST_INVALID', async () => {
    await expectRegistryError(await raw('GET', '/v2/hello/manifests/sha256:totallywrong'), 400, 'DIGEST_INVALID');
    await expectRegistryError(await raw('GET', '/v2/hello/blobs/sha256:totallywrong'), 400, 'DIGEST_INVALID');
  });

  it('answers a reference that is neither tag nor digest with 404 MANIFEST_UNKNOWN (GET and HEAD) and runs no Nix', async () => {
    const before = (await server.stats()).nix;
    const e = await expectRegistryError(await raw('GET', '/v2/hello/manifests/.INVALID_MANIFEST_NAME'), 404, 'MANIFEST_UNKNOWN');
    expect(e.detail['reason']).toMatch(/neither a tag .* nor a digest/);
    const head = await raw('HEAD', '/v2/hello/manifests/.INVALID_MANIFEST_NAME');
    expect(head.status).toBe(404);
    expect(head.body.length).toBe(0);
    const after = (await server.stats()).nix;
    expect({ evaluations: after.evaluations, realisations: after.realisations }).toEqual({ evaluations: before.evaluations, realisations: before.realisations });
  });

  it('answers a method the HTTP parser does not know with a registry error too', async () => {
    const e = await expectRegistryError(await raw('FOO', '/v2/hello/manifests/latest'), 405, 'UNSUPPORTED');
    expect(e.detail['requestId']).toEqual(expect.any(String));
  });

  it('answers an unknown manifest digest with 404 MANIFEST_UNKNOWN', async () => {
    await expectRegistryError(await raw('GET', `/v2/hello/manifests/sha256:${'0'.repeat(64)}`), 404, 'MANIFEST_UNKNOWN');
  });

  it('reports a failing build as a registry error and on the start page', async () => {
    const e = await expectRegistryError(await raw('GET', '/v2/broken-build/manifests/latest'), 500, 'UNKNOWN');
    expect(e.message).toBe('image build failed');
    expect(String(e.detail['stderr'])).toContain('broken-build: this package fails on purpose');
    expect(e.detail['requestId']).toBeTruthy();
    const page = await (await fetch(`${server.url}/`)).text();
    expect(page).toContain('broken-build:latest');
    expect(page).toContain('this package fails on purpose');
  });
});

describe('architectures', () => {
  it('says plainly that arm64 images need an aarch64 builder this server lacks', async () => {
    // A fresh salt: other tests build the demo set's arm64 packages (with
    // extra-platforms), and a path already in the store needs no builder.
    const fresh = await startServer({ env: { NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }) } });
    try {
      const res = await fetch(`${fresh.url}/v2/arm64/hello/manifests/latest`);
      expect(res.status).toBe(500);
      const e = ((await res.json()) as { errors: { code: string; message: string }[] }).errors[0]!;
      expect(e.code).toBe('UNKNOWN');
      expect(e.message).toBe('image build failed: this server has no builder for aarch64-linux');
    } finally {
      await fresh.stop();
    }
  });
});

describe('blobs', () => {
  async function layerOf(image: string): Promise<{ digest: string; size: number }> {
    const m = JSON.parse((await raw('GET', `/v2/${image}/manifests/latest`, { Accept: OCI })).body.toString());
    return m.layers[0];
  }

  it('serves a layer whose bytes match its digest, and HEAD with its size', async () => {
    const layer = await layerOf('hello');
    const r = await raw('GET', `/v2/hello/blobs/${layer.digest}`);
    expect(r.status).toBe(200);
    expect(sha256(r.body)).toBe(layer.digest);
    expect(r.body.length).toBe(layer.size);
    expect(r.headers['docker-content-digest']).toBe(layer.digest);
    const head = await raw('HEAD', `/v2/hello/blobs/${layer.digest}`);
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(layer.size));
    expect(head.body.length).toBe(0);
  });

  it('serves byte ranges with 206 and Content-Range, and 416 past the end', async () => {
    const layer = await layerOf('hello');
    const whole = (await raw('GET', `/v2/hello/blobs/${layer.digest}`)).body;
    const part = await raw('GET', `/v2/hello/blobs/${layer.digest}`, { Range: 'bytes=100-199' });
    expect(part.status).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes 100-199/${layer.size}`);
    expect(part.body.equals(whole.subarray(100, 200))).toBe(true);
    const tail = await raw('GET', `/v2/hello/blobs/${layer.digest}`, { Range: 'bytes=1000-' });
    expect(tail.body.equals(whole.subarray(1000))).toBe(true);
    const suffix = await raw('GET', `/v2/hello/blobs/${layer.digest}`, { Range: 'bytes=-10' });
    expect(suffix.body.equals(whole.subarray(whole.length - 10))).toBe(true);
    const beyond = await raw('GET', `/v2/hello/blobs/${layer.digest}`, { Range: `bytes=${layer.size}-` });
    expect(beyond.status).toBe(416);
    expect(JSON.parse(beyond.body.toString()).errors[0].code).toBe('RANGE_INVALID');
  });

  it('answers a missing blob with 404 BLOB_UNKNOWN', async () => {
    await expectRegistryError(await raw('GET', `/v2/hello/blobs/sha256:${'1'.repeat(64)}`), 404, 'BLOB_UNKNOWN');
    const head = await raw('HEAD', `/v2/hello/blobs/sha256:${'1'.repeat(64)}`);
    expect(head.status).toBe(404);
  });
});

describe('pushing and deleting', () => {
  it.each([
    ['POST', '/v2/hello/blobs/uploads/'],
    ['PUT', '/v2/hello/manifests/latest'],
    ['DELETE', '/v2/hello/manifests/latest'],
    ['DELETE', `/v2/hello/blobs/sha256:${'1'.repeat(64)}`],
    ['PATCH', '/v2/hello/blobs/uploads/1234'],
  ])('%s %s is 405 UNSUPPORTED', async (method, path) => {
    await expectRegistryError(await raw(method, path), 405, 'UNSUPPORTED');
  });

  it('names the routes it does serve when asked for another one', async () => {
    const e = await expectRegistryError(await raw('GET', '/v2/_catalog'), 405, 'UNSUPPORTED');
    expect(e.message).toContain('/v2/<name>/manifests/<reference>');
  });
});

describe('tags/list', () => {
  it('lists latest for a path source, and paginates', async () => {
    const r = await raw('GET', '/v2/shell/htop/tags/list');
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body.toString())).toEqual({ name: 'shell/htop', tags: ['latest'] });
    const none = await raw('GET', '/v2/shell/htop/tags/list?n=0');
    expect(JSON.parse(none.body.toString()).tags).toEqual([]);
    expect(none.headers['link']).toBeUndefined();
  });
});

describe('start page', () => {
  it('shows the real host name in the pull examples and the package source', async () => {
    const page = await (await fetch(`${server.url}/`)).text();
    expect(page).toContain(`docker pull ${server.host}/shell/git/htop`);
    expect(page).toContain('nix/demo-pkgs');
  });
});
