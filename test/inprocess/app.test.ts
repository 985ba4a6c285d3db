/**
 * The HTTP app in-process with app.request(): the error table, manifest
 * negotiation with q-values, HEAD, byte ranges, headers set by middleware,
 * and an unreachable package source.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SourceUnavailableError } from '../../src/errors.js';
import { MediaType } from '../../src/manifest/build.js';
import { inProcessRegistry, stubSource, type InProcessRegistry } from '../helpers/in-process.js';

const OCI = MediaType.ociManifest;
const DOCKER = MediaType.dockerManifest;

let r: InProcessRegistry;
let sourceDown: Error | undefined;
let layer: { digest: string; size: number };

beforeAll(async () => {
  r = await inProcessRegistry({
    packages: { hello: { bin: ['hello'], dataBytes: 50_000 }, cacert: {}, 'iana-etc': {}, broken: { bin: ['b'] } },
    source: stubSource({ tags: ['latest', 'v1', 'v2', 'v3', 'feature/x'], fail: () => sourceDown }),
  });
  r.nix.failing.add('broken');
  const m = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: OCI } });
  const layers = ((await m.json()) as { layers: { digest: string; size: number }[] }).layers;
  layer = layers.reduce((a, b) => (a.size > b.size ? a : b));
});
afterAll(async () => {
  await r?.close();
});

async function error(res: Response) {
  expect(res.headers.get('content-type')).toBe('application/json');
  return ((await res.json()) as { errors: { code: string; message: string; detail: Record<string, unknown> }[] }).errors[0]!;
}

describe('manifest negotiation', () => {
  it.each([
    ['skopeo/podman (OCI listed first)', `${OCI}, ${DOCKER}`, OCI],
    ['containerd (Docker listed first, same q): a tie goes to OCI', `${DOCKER}, application/vnd.docker.distribution.manifest.list.v2+json, ${OCI}, */*`, OCI],
    ['Docker preferred by q-value', `${OCI};q=0.5, ${DOCKER}`, DOCKER],
    ['OCI refused with q=0', `${OCI};q=0, ${DOCKER};q=0.1`, DOCKER],
    ['only Docker', DOCKER, DOCKER],
    ['a bare wildcard (old clients)', '*/*', DOCKER],
    ['application/* with OCI preferred', `application/*;q=0.2, ${OCI};q=0.9`, OCI],
    ['no Accept header', undefined, DOCKER],
  ])('%s', async (_, accept, expected) => {
    const res = await r.app.request('/v2/hello/manifests/latest', { headers: accept ? { Accept: accept } : {} });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(expected);
    expect(((await res.json()) as { mediaType: string }).mediaType).toBe(expected);
  });
});

describe('HEAD and byte ranges', () => {
  it('HEAD of a manifest and a blob has the GET headers and no body', async () => {
    for (const path of ['/v2/hello/manifests/latest', `/v2/hello/blobs/${layer.digest}`]) {
      const get = await r.app.request(path, { headers: { Accept: OCI } });
      const head = await r.app.request(path, { method: 'HEAD', headers: { Accept: OCI } });
      const body = Buffer.from(await get.arrayBuffer());
      expect(head.status).toBe(200);
      expect((await head.arrayBuffer()).byteLength).toBe(0);
      for (const h of ['content-type', 'content-length', 'docker-content-digest']) expect(head.headers.get(h), h).toBe(get.headers.get(h));
      expect(Number(head.headers.get('content-length'))).toBe(body.length);
    }
  });

  it('serves a range as 206 with Content-Range, several ranges or a malformed header as the whole blob, and 416 beyond the end', async () => {
    const whole = Buffer.from(await (await r.app.request(`/v2/hello/blobs/${layer.digest}`)).arrayBuffer());
    expect(whole.length).toBe(layer.size);
    const part = await r.app.request(`/v2/hello/blobs/${layer.digest}`, { headers: { Range: 'bytes=10-19' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 10-19/${layer.size}`);
    expect(Buffer.from(await part.arrayBuffer()).equals(whole.subarray(10, 20))).toBe(true);
    const suffix = await r.app.request(`/v2/hello/blobs/${layer.digest}`, { headers: { Range: 'bytes=-5' } });
    expect(Buffer.from(await suffix.arrayBuffer()).equals(whole.subarray(-5))).toBe(true);
    for (const h of ['bytes=0-1,5-6', 'bytes=x-y', 'items=0-1']) {
      const res = await r.app.request(`/v2/hello/blobs/${layer.digest}`, { headers: { Range: h } });
      expect(res.status, h).toBe(200);
      expect(Number(res.headers.get('content-length'))).toBe(layer.size);
      await res.arrayBuffer();
    }
    const beyond = await r.app.request(`/v2/hello/blobs/${layer.digest}`, { headers: { Range: `bytes=${layer.size}-` } });
    expect(beyond.status).toBe(416);
    expect(beyond.headers.get('content-range')).toBe(`bytes */${layer.size}`);
    expect((await error(beyond)).code).toBe('RANGE_INVALID');
  });
});

describe('the error table', () => {
  it.each([
    ['GET', '/v2/Hello/manifests/latest', 400, 'NAME_INVALID'],
    ['GET', '/v2/hello/manifests/sha256:nothex', 400, 'DIGEST_INVALID'],
    ['GET', '/v2/hello/blobs/sha256:nothex', 400, 'DIGEST_INVALID'],
    ['GET', '/v2/nosuch/manifests/latest', 404, 'MANIFEST_UNKNOWN'],
    ['GET', '/v2/hello/manifests/-x', 404, 'MANIFEST_UNKNOWN'],
    ['GET', `/v2/hello/blobs/sha256:${'0'.repeat(64)}`, 404, 'BLOB_UNKNOWN'],
    ['GET', '/no/such/page', 404, 'NOT_FOUND'],
    ['PUT', '/v2/hello/manifests/latest', 405, 'UNSUPPORTED'],
    ['POST', '/v2/hello/blobs/uploads/', 405, 'UNSUPPORTED'],
    ['DELETE', '/', 405, 'UNSUPPORTED'],
    ['GET', '/v2/broken/manifests/latest', 500, 'UNKNOWN'],
  ])('%s %s is %i %s, with the request id', async (method, path, status, code) => {
    const res = await r.app.request(path, { method, headers: { 'X-Request-Id': 'test-id-1' } });
    expect(res.status).toBe(status);
    expect(res.headers.get('x-request-id')).toBe('test-id-1');
    expect(res.headers.get('docker-distribution-api-version')).toBe('registry/2.0');
    const e = await error(res);
    expect(e.code).toBe(code);
    expect(e.detail['requestId']).toBe('test-id-1');
  });

  it('makes up a request id when the client sends none or one that could forge a log line', async () => {
    const res = await r.app.request('/v2/nosuch/manifests/latest', { headers: { 'X-Request-Id': 'a"b\\nc' } });
    const id = res.headers.get('x-request-id')!;
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    expect((await error(res)).detail['requestId']).toBe(id);
  });

  it('an unreachable package source is 503 naming the source, with Retry-After', async () => {
    sourceDown = new SourceUnavailableError('https://git.example/pkgs.git', 'git ls-remote failed: could not resolve host');
    try {
      const res = await r.app.request('/v2/jq/manifests/v1');
      expect(res.status).toBe(503);
      expect(res.headers.get('retry-after')).toBe('30');
      const e = await error(res);
      expect(e.code).toBe('UNAVAILABLE');
      expect(e.message).toContain('https://git.example/pkgs.git');
      expect(e.message).not.toMatch(/storage/);
      expect(e.detail['source']).toBe('https://git.example/pkgs.git');
    } finally {
      sourceDown = undefined;
    }
  });

  it('an unexpected failure is 500 UNKNOWN without its message', async () => {
    sourceDown = new Error('secret internals at /root/x');
    try {
      const res = await r.app.request('/v2/jq/manifests/v2');
      expect(res.status).toBe(500);
      const e = await error(res);
      expect(e).toMatchObject({ code: 'UNKNOWN', message: 'internal error' });
      expect(JSON.stringify(e)).not.toContain('secret');
    } finally {
      sourceDown = undefined;
    }
  });
});

describe('headers set by middleware', () => {
  it('reach manifests, blobs and errors alike', async () => {
    const { Hono } = await import('hono');
    const outer = new Hono();
    outer.use('*', async (c, next) => {
      c.header('X-Middleware', 'seen');
      await next();
    });
    outer.route('/', r.app);
    for (const path of ['/v2/hello/manifests/latest', `/v2/hello/blobs/${layer.digest}`, '/v2/nosuch/manifests/latest', '/v2/']) {
      const res = await outer.request(path);
      expect(res.headers.get('x-middleware'), path).toBe('seen');
      await res.arrayBuffer();
    }
  });
});

describe('tags/list', () => {
  it('lists the tags that can be requested, paginated with n and last', async () => {
    const all = await r.app.request('/v2/hello/tags/list');
    expect(await all.json()).toEqual({ name: 'hello', tags: ['latest', 'v1', 'v2', 'v3'] });
    const page = await r.app.request('/v2/hello/tags/list?n=2');
    expect(await page.json()).toEqual({ name: 'hello', tags: ['latest', 'v1'] });
    expect(page.headers.get('link')).toBe('</v2/hello/tags/list?n=2&last=v1>; rel="next"');
    const next = await r.app.request('/v2/hello/tags/list?n=2&last=v1');
    expect(await next.json()).toEqual({ name: 'hello', tags: ['v2', 'v3'] });
  });
});
