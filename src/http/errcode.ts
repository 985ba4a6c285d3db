/**
 * The one table from domain errors to registry error codes and HTTP
 * statuses, and the one writer of the error envelope
 * `{"errors":[{"code","message","detail"}]}` (OCI distribution spec).
 * Keyed on each domain error's `code`, so a new error is one row here.
 */
import { NixeryError } from '../errors.js';
import type {
  BlobNotFoundError,
  InvalidDigestError,
  InvalidImageNameError,
  InvalidTagError,
  ManifestNotFoundError,
  NixBuildError,
  PackagesNotFoundError,
  RangeNotSatisfiableError,
  RememberedBuildFailureError,
  SourceUnavailableError,
  StorageError,
  TooManyBuildsError,
  TooManyPackagesError,
} from '../errors.js';

export interface RegistryError {
  readonly status: number;
  readonly code: string;
  readonly message: string;
  readonly detail?: unknown;
  /** Response headers that belong to the error (WWW-Authenticate, Retry-After, Content-Range). */
  readonly headers?: Readonly<Record<string, string>>;
  /** Unexpected: log with stack and request id. */
  readonly fault: boolean;
  /** The domain error this answers. */
  readonly cause?: unknown;
}

/** The realm clients show when they ask for a login. */
export const AUTH_REALM = 'nixery-ts';

type Row = (err: never) => Omit<RegistryError, 'cause'>;

const expected = (status: number, code: string, message: string, detail?: unknown): Omit<RegistryError, 'cause'> => ({
  status, code, message, detail, fault: false,
});

const TABLE: Readonly<Record<string, Row>> = {
  NAME_INVALID: (e: InvalidImageNameError) => expected(400, 'NAME_INVALID', e.message, { name: e.imageName, reason: e.reason }),
  TAG_INVALID: (e: InvalidTagError) => expected(400, 'TAG_INVALID', e.message, { tag: e.tag, reason: e.reason }),
  DIGEST_INVALID: (e: InvalidDigestError) => expected(400, 'DIGEST_INVALID', e.message, { digest: e.digest }),
  PACKAGES_NOT_FOUND: (e: PackagesNotFoundError) => expected(404, 'MANIFEST_UNKNOWN', e.message, { packages: e.packages }),
  MANIFEST_UNKNOWN: (e: ManifestNotFoundError) => expected(404, 'MANIFEST_UNKNOWN', e.message, { reference: e.reference, reason: e.reason }),
  BLOB_UNKNOWN: (e: BlobNotFoundError) => expected(404, 'BLOB_UNKNOWN', e.message, { digest: e.digest }),
  NOT_FOUND: (e: NixeryError) => expected(404, 'NOT_FOUND', e.message),
  RANGE_INVALID: (e: RangeNotSatisfiableError) => ({
    ...expected(416, 'RANGE_INVALID', e.message, { size: e.size }),
    headers: { 'Content-Range': `bytes */${e.size}` },
  }),
  UNSUPPORTED: (e: NixeryError) => expected(405, 'UNSUPPORTED', e.message),
  UNAUTHORIZED: (e: NixeryError) => ({
    ...expected(401, 'UNAUTHORIZED', e.message),
    headers: { 'WWW-Authenticate': `Basic realm="${AUTH_REALM}", charset="UTF-8"` },
  }),
  // The package set failed to build this image: a failure of the image, not
  // of the server; its stderr is on the start page too.
  NIX_BUILD_FAILED: (e: NixBuildError) => ({
    status: 500,
    code: 'UNKNOWN',
    message: e.timedOut ? 'image build timed out' : `image build failed${buildFailureHint(e.stderr)}`,
    detail: { command: e.command, exitCode: e.exitCode, timedOut: e.timedOut, stderr: e.stderr },
    fault: false,
  }),
  // Storage under garbage collection faster than a build: a retry builds it.
  BLOBS_COLLECTED: (e: NixeryError) => ({ status: 503, code: 'UNAVAILABLE', message: e.message, fault: false, headers: { 'Retry-After': '5' } }),
  BUILD_ABORTED: (e: NixeryError) => ({ status: 503, code: 'UNAVAILABLE', message: e.message, fault: false, headers: { 'Retry-After': '10' } }),
  SOURCE_UNAVAILABLE: (e: SourceUnavailableError) => ({
    status: 503,
    code: 'UNAVAILABLE',
    message: e.message,
    detail: { source: e.source, reason: e.reason },
    fault: false,
    headers: { 'Retry-After': '30' },
  }),
  STORAGE_FAILED: (e: StorageError) => ({ status: 503, code: 'UNAVAILABLE', message: 'storage unavailable', detail: e.message, fault: true }),
  // Build admission (service/admission.ts): the queue is full, come back soon.
  TOO_MANY_BUILDS: (e: TooManyBuildsError) => ({
    ...expected(429, 'TOOMANYREQUESTS', e.message, {
      running: e.running, queued: e.queued, maxBuilds: e.maxBuilds, maxQueuedBuilds: e.maxQueuedBuilds, retryAfterSeconds: e.retryAfterSeconds,
    }),
    headers: { 'Retry-After': String(e.retryAfterSeconds) },
  }),
  TOO_MANY_PACKAGES: (e: TooManyPackagesError) => expected(403, 'DENIED', e.message, { packages: e.packages, maxPackages: e.maxPackages }),
  // The answer of the build that failed, marked as remembered; Retry-After says when a pull builds it again.
  NIX_BUILD_FAILED_REMEMBERED: (e: RememberedBuildFailureError) => {
    const first = TABLE['NIX_BUILD_FAILED']!(e.failure as never);
    return {
      ...first,
      message: `${first.message} (remembered: failed ${e.secondsAgo} s ago, not built again for another ${e.secondsLeft} s)`,
      detail: { ...(first.detail as object), remembered: true, failedSecondsAgo: e.secondsAgo, retryAfterSeconds: e.secondsLeft },
      headers: { ...first.headers, 'Retry-After': String(e.secondsLeft) },
    };
  },
};

function codeOf(err: unknown): string | undefined {
  return err instanceof NixeryError && err.code in TABLE ? err.code : undefined;
}

export function toRegistryError(err: unknown): RegistryError {
  const code = codeOf(err);
  if (code !== undefined) return { ...TABLE[code]!(err as never), cause: err };
  return { status: 500, code: 'UNKNOWN', message: 'internal error', fault: true, cause: err };
}

/** A one-phrase explanation of common Nix failures, so the client's error message says it. */
function buildFailureHint(stderr: string): string {
  const arch = /a '([\w-]+)' with features \{[^}]*\} is required to build/.exec(stderr);
  if (arch) return `: this server has no builder for ${arch[1]}`;
  return '';
}

/** The JSON body of an error response. */
export function errorBody(e: RegistryError, requestId: string): string {
  const detail = e.detail === undefined ? { requestId } : typeof e.detail === 'object' && e.detail !== null ? { ...e.detail, requestId } : { reason: e.detail, requestId };
  return JSON.stringify({ errors: [{ code: e.code, message: e.message, detail }] });
}

/**
 * The raw HTTP answer to a request Node's parser refused before the app saw
 * it (an unknown method, a malformed request line, oversized headers): a
 * registry error too, instead of Node's bare "400 Bad Request".
 */
export function clientErrorResponse(err: { code?: string }, requestId: string): string {
  const [status, reason, e] =
    err.code === 'HPE_INVALID_METHOD'
      ? ([405, 'Method Not Allowed', { code: 'UNSUPPORTED', message: 'this method is not supported' }] as const)
      : err.code === 'HPE_HEADER_OVERFLOW'
        ? ([431, 'Request Header Fields Too Large', { code: 'UNKNOWN', message: 'request headers too large' }] as const)
        : ([400, 'Bad Request', { code: 'UNKNOWN', message: 'malformed HTTP request' }] as const);
  const body = JSON.stringify({ errors: [{ ...e, detail: { requestId } }] });
  return (
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n` +
    `Docker-Distribution-API-Version: registry/2.0\r\nX-Request-Id: ${requestId}\r\nConnection: close\r\n\r\n${body}`
  );
}
