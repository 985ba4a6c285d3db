/**
 * Random HTTP requests against the registry surface, for the property tests
 * (test/inprocess/http-fuzz.test.ts, through app.request()) and for
 * bench/fuzz.ts (the same cases against the real server over a socket).
 *
 * Every path is valid on the wire (percent-encoded where needed) so that a
 * raw HTTP client can send it; what it means to the server is left to chance:
 * dot segments, `//`, empty and very long components, unicode, encoded
 * slashes, names that follow the grammar but name no package.
 */
import fc from 'fast-check';
import { isValidTag, validateName } from '../../src/image/name.js';

export interface FuzzCase {
  readonly method: string;
  /** Path and query as sent on the request line. */
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
}

export interface CaseOptions {
  /** Image names that build (the package source knows them). */
  readonly knownNames: readonly string[];
  /** Names that follow the grammar but name no package; a finite pool, so that a real server's negative cache is exercised. */
  readonly unknownNames?: readonly string[];
  /** Digests of blobs the server holds (layers, configs, manifests). */
  readonly knownDigests?: readonly string[];
}

const OCI = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER = 'application/vnd.docker.distribution.manifest.v2+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';

/** Characters that are safe unencoded in a path segment. */
const unreserved = /[A-Za-z0-9\-._~!$&'()*+,;=:@]/;

function encodeSegment(s: string): string {
  let out = '';
  for (const ch of s) out += unreserved.test(ch) ? ch : encodeURIComponent(ch);
  return out;
}

const lower = fc.constantFrom(...'abcdefghijklmnopqrstuvwxyz0123456789');
const validComponent = fc
  .array(fc.string({ unit: lower, minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 3 })
  .chain((parts) => fc.array(fc.constantFrom('.', '_', '__', '-', '--'), { minLength: parts.length - 1, maxLength: parts.length - 1 })
    .map((seps) => parts.map((p, i) => (i === 0 ? p : `${seps[i - 1]!}${p}`)).join('')));

/** A path component that is usually wrong: what a hostile or broken client sends. */
const oddComponent = fc.oneof(
  fc.constantFrom('', '.', '..', '%2e%2e', '%2F', '%00', 'A', 'Hello', 'a..b', '-a', 'a-', '_a', 'a___b', 'ü', '日本', '\u202e', ' ', 'a b', '%', '%zz', 'manifests', 'blobs', 'tags', 'v2'),
  fc.string({ maxLength: 12 }),
  fc.string({ unit: 'binary', maxLength: 6 }),
  fc.nat(400).map((n) => 'a'.repeat(n)),
);

export function nameArb(o: CaseOptions): fc.Arbitrary<string> {
  const unknown = o.unknownNames && o.unknownNames.length > 0 ? fc.constantFrom(...o.unknownNames) : validComponent;
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom(...o.knownNames) },
    { weight: 2, arbitrary: unknown },
    { weight: 1, arbitrary: fc.array(fc.constantFrom(...o.knownNames), { minLength: 2, maxLength: 3 }).map((n) => n.join('/')) },
    { weight: 1, arbitrary: o.unknownNames ? unknown : fc.array(validComponent, { minLength: 1, maxLength: 4 }).map((c) => c.join('/')) },
    { weight: 3, arbitrary: fc.array(fc.oneof(validComponent, oddComponent), { minLength: 1, maxLength: 5 }).map((c) => c.join('/')) },
    { weight: 1, arbitrary: fc.nat(300).map((n) => `${'a/'.repeat(n)}hello`) },
  );
}

const hex = fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: 64, maxLength: 64 });

export function digestArb(o: CaseOptions): fc.Arbitrary<string> {
  const known = o.knownDigests && o.knownDigests.length > 0 ? [fc.constantFrom(...o.knownDigests)] : [];
  return fc.oneof(
    ...known,
    hex.map((h) => `sha256:${h}`),
    fc.constantFrom('sha256:totallywrong', 'sha256:', 'sha512:' + 'a'.repeat(128), 'SHA256:' + 'a'.repeat(64), 'md5:abc', ':', 'sha256:' + 'A'.repeat(64), 'sha256+b64:abc='),
    fc.string({ maxLength: 80 }),
  );
}

export function referenceArb(o: CaseOptions): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 4, arbitrary: fc.constantFrom('latest', 'v1', 'main', '1.0', '_x', 'a'.repeat(128)) },
    { weight: 2, arbitrary: digestArb(o) },
    { weight: 2, arbitrary: fc.constantFrom('.INVALID_MANIFEST_NAME', '-x', 'a'.repeat(129), 'a'.repeat(200), '..', '.', '') },
    { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 20 }) },
  );
}

const mediaType = fc.constantFrom(OCI, DOCKER, OCI_INDEX, DOCKER_LIST, '*/*', 'application/json', 'text/html', 'application/*', 'garbage', '');
const acceptArb = fc.oneof(
  fc.array(fc.tuple(mediaType, fc.option(fc.oneof(fc.constantFrom('0', '1', '0.5', '1.0', '2', '-1', 'x', '0.001')), { nil: undefined })), { maxLength: 5 })
    .map((ts) => ts.map(([t, q]) => (q === undefined ? t : `${t};q=${q}`)).join(', ')),
  fc.string({ maxLength: 40 }).map((s) => s.replace(/[^\x20-\x7e]/g, '')),
);

const rangeArb = fc.oneof(
  fc.tuple(fc.nat(100_000), fc.nat(100_000)).map(([a, b]) => `bytes=${a}-${b}`),
  fc.nat(100_000).map((a) => `bytes=${a}-`),
  fc.nat(100_000).map((n) => `bytes=-${n}`),
  fc.constantFrom('bytes=0-0', 'bytes=-0', 'bytes=0-1,5-6', 'bytes=', 'bytes=a-b', 'items=0-1', 'bytes=99999999999999999999-', ''),
);

const methodArb = fc.oneof(
  { weight: 8, arbitrary: fc.constantFrom('GET', 'HEAD') },
  { weight: 2, arbitrary: fc.constantFrom('POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS') },
  { weight: 1, arbitrary: fc.constantFrom('PROPFIND', 'TRACE', 'FOO') },
);

export function caseArb(o: CaseOptions): fc.Arbitrary<FuzzCase> {
  const name = nameArb(o).map((n) => n.split('/').map(encodeSegment).join('/'));
  const pathArb = fc.oneof(
    { weight: 5, arbitrary: fc.tuple(name, referenceArb(o)).map(([n, r]) => `/v2/${n}/manifests/${encodeSegment(r)}`) },
    { weight: 3, arbitrary: fc.tuple(name, digestArb(o)).map(([n, d]) => `/v2/${n}/blobs/${encodeSegment(d)}`) },
    { weight: 1, arbitrary: fc.tuple(name, fc.constantFrom('', '?n=2', '?n=0', '?n=-1', '?n=abc', '?last=latest', '?n=1&last=zzz')).map(([n, q]) => `/v2/${n}/tags/list${q}`) },
    { weight: 1, arbitrary: name.map((n) => `/v2/${n}/blobs/uploads/`) },
    { weight: 1, arbitrary: fc.constantFrom('/v2/', '/v2', '/', '/v2//', '//v2/', '/v2/_catalog', '/debug/stats', '/favicon.ico', '/no/such/page', '/v2/../etc/passwd', '/v2/%2e%2e/x/manifests/latest', '/v3/') },
    { weight: 1, arbitrary: fc.array(oddComponent, { maxLength: 6 }).map((c) => `/${c.map(encodeSegment).join('/')}`) },
  );
  const headers = fc.record(
    { accept: acceptArb, range: rangeArb, 'x-request-id': fc.constantFrom('fuzz-1', 'abc') },
    { requiredKeys: [] },
  );
  return fc.record({ method: methodArb, path: pathArb, headers });
}

/**
 * Whether a request for this path could legitimately reach Nix: a manifest
 * by a valid tag of a valid name. Used to check that nothing else does.
 */
export function mayBuild(method: string, path: string): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  const m = /^\/v2\/(.+)\/manifests\/([^/?]+)$/.exec(path);
  if (!m) return false;
  let name: string;
  let ref: string;
  try {
    name = decodeURIComponent(m[1]!);
    ref = decodeURIComponent(m[2]!);
  } catch {
    return false;
  }
  try {
    validateName(name);
  } catch {
    return false;
  }
  return isValidTag(ref);
}

export interface Verdict {
  readonly ok: boolean;
  readonly problem?: string;
}

/**
 * The invariants of one response: no 5xx unless a package of the image is
 * one the stub makes fail; every 4xx is registry error JSON with a request id;
 * HEAD has no body.
 */
export function checkResponse(c: FuzzCase, status: number, headers: Headers, body: Buffer, faulty: (path: string) => boolean): Verdict {
  if (status >= 500 && !faulty(c.path)) return { ok: false, problem: `status ${status}: ${body.toString().slice(0, 300)}` };
  if (c.method === 'HEAD' && body.length > 0) return { ok: false, problem: `HEAD with a ${body.length}-byte body` };
  if (status >= 400 && status < 600) {
    if (headers.get('content-type') !== 'application/json') return { ok: false, problem: `${status} with Content-Type ${headers.get('content-type')}` };
    if (c.method === 'HEAD') {
      if (!headers.get('x-request-id')) return { ok: false, problem: `HEAD ${status} without X-Request-Id` };
      return { ok: true };
    }
    let json: { errors?: { code?: unknown; message?: unknown; detail?: { requestId?: unknown } }[] };
    try {
      json = JSON.parse(body.toString());
    } catch {
      return { ok: false, problem: `${status} body is not JSON: ${body.toString().slice(0, 200)}` };
    }
    const e = json.errors?.[0];
    if (json.errors?.length !== 1 || typeof e?.code !== 'string' || typeof e.message !== 'string') {
      return { ok: false, problem: `${status} body is not a registry error: ${body.toString().slice(0, 200)}` };
    }
    if (typeof e.detail?.requestId !== 'string') return { ok: false, problem: `${status} error without a request id` };
  }
  return { ok: true };
}
