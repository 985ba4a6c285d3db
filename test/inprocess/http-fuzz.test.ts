/**
 * Property tests of the whole HTTP surface through app.request(), with the
 * real image service on a stub package source and a fake Nix runner that
 * knows a few names (one of which fails to build: the only allowed 5xx).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { caseArb, checkResponse, mayBuild, type CaseOptions, type FuzzCase } from '../fuzz/http-cases.js';
import { FAKE_PACKAGES, inProcessRegistry, type InProcessRegistry } from '../helpers/in-process.js';

let r: InProcessRegistry;
let options: CaseOptions;

beforeAll(async () => {
  r = await inProcessRegistry({ packages: { ...FAKE_PACKAGES, broken: { bin: ['broken'] } } });
  r.nix.failing.add('broken');
  // Built once up front, so that blob requests can name digests that exist.
  const res = await r.app.request('/v2/hello/manifests/latest', { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
  expect(res.status).toBe(200);
  options = {
    knownNames: ['hello', 'htop', 'jq', 'shell', 'shell/htop', 'broken', 'hello/jq'],
    knownDigests: [...r.storage.blobs.keys()],
  };
});
afterAll(async () => {
  await r?.close();
});

/** The fetch API cannot make TRACE requests; bench/fuzz.ts sends them over a socket. */
const sendable = (c: FuzzCase) => c.method !== 'TRACE';

async function send(c: FuzzCase): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const res = await r.app.request(`http://registry.test${c.path}`, { method: c.method, headers: c.headers });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

const brokenImage = (path: string) => /(^|\/|%2F)broken(\/|%2F)/i.test(decodeURIComponentSafe(path));

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

describe('the HTTP surface under random requests', () => {
  it('never answers 5xx (but for a failing build), errors are registry JSON with a request id, HEAD has no body, nothing throws', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb(options).filter(sendable), async (c) => {
        const res = await send(c);
        const verdict = checkResponse(c, res.status, res.headers, res.body, brokenImage);
        expect(verdict.problem, `${c.method} ${c.path} ${JSON.stringify(c.headers)}`).toBeUndefined();
      }),
      { numRuns: 2500 },
    );
  });

  it('never lets an invalid name or reference reach the Nix runner', async () => {
    await fc.assert(
      fc.asyncProperty(caseArb(options).filter(sendable), async (c) => {
        const before = r.nix.stats.evaluations;
        await send(c);
        // In-process, the URL parser resolves dot segments before the app sees
        // the path (over a socket the app refuses them): judge what it received.
        const received = new URL(`http://registry.test${c.path}`).pathname;
        if (!mayBuild(c.method, received)) expect(r.nix.stats.evaluations, `${c.method} ${c.path}`).toBe(before);
      }),
      { numRuns: 1500 },
    );
    // Everything that did reach it was a list of grammatical names.
    for (const list of r.nix.resolved) {
      for (const name of list) expect(name).toMatch(/^[a-zA-Z0-9._-]+$/);
    }
  });
});
