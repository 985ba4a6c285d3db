/**
 * The one table from domain errors to registry error codes and HTTP
 * statuses, and the one writer of the error envelope
 * `{"errors":[{"code","message","detail"}]}` (OCI distribution spec).
 */
import {
  BlobNotFoundError,
  BuildAbortedError,
  InvalidDigestError,
  InvalidImageNameError,
  InvalidTagError,
  ManifestNotFoundError,
  NixBuildError,
  PackagesNotFoundError,
  PageNotFoundError,
  RangeNotSatisfiableError,
  StorageError,
  UnsupportedError,
} from '../errors.js';

export interface RegistryError {
  readonly status: number;
  readonly code: string;
  readonly message: string;
  readonly detail?: unknown;
  /** Unexpected: log with stack and request id. */
  readonly fault: boolean;
}

export function toRegistryError(err: unknown): RegistryError {
  const expected = (status: number, code: string, message: string, detail?: unknown): RegistryError => ({
    status, code, message, detail, fault: false,
  });
  if (err instanceof InvalidImageNameError) return expected(400, 'NAME_INVALID', err.message, { name: err.imageName, reason: err.reason });
  if (err instanceof InvalidTagError) return expected(400, 'TAG_INVALID', err.message, { tag: err.tag, reason: err.reason });
  if (err instanceof InvalidDigestError) return expected(400, 'DIGEST_INVALID', err.message, { digest: err.digest });
  if (err instanceof PackagesNotFoundError) {
    return expected(404, 'MANIFEST_UNKNOWN', err.message, { packages: err.packages });
  }
  if (err instanceof ManifestNotFoundError) return expected(404, 'MANIFEST_UNKNOWN', err.message, { reference: err.reference, reason: err.reason });
  if (err instanceof BlobNotFoundError) return expected(404, 'BLOB_UNKNOWN', err.message, { digest: err.digest });
  if (err instanceof RangeNotSatisfiableError) return expected(416, 'RANGE_INVALID', err.message, { size: err.size });
  if (err instanceof PageNotFoundError) return expected(404, 'NOT_FOUND', err.message);
  if (err instanceof UnsupportedError) return expected(405, 'UNSUPPORTED', err.message);
  if (err instanceof NixBuildError) {
    // The package set failed to build this image: a real failure, but of
    // the image, not of the server; its stderr is on the start page.
    return {
      status: 500,
      code: 'UNKNOWN',
      message: err.timedOut ? 'image build timed out' : `image build failed${buildFailureHint(err.stderr)}`,
      detail: { command: err.command, exitCode: err.exitCode, timedOut: err.timedOut, stderr: err.stderr },
      fault: false,
    };
  }
  if (err instanceof BuildAbortedError) return { status: 503, code: 'UNAVAILABLE', message: err.message, fault: false };
  if (err instanceof StorageError) return { status: 503, code: 'UNAVAILABLE', message: 'storage unavailable', detail: err.message, fault: true };
  return { status: 500, code: 'UNKNOWN', message: 'internal error', fault: true };
}

/** A one-phrase explanation of common Nix failures, so the client's error message says it. */
function buildFailureHint(stderr: string): string {
  const arch = /a '([\w-]+)' with features \{[^}]*\} is required to build/.exec(stderr);
  if (arch) return `: this server has no builder for ${arch[1]}`;
  return '';
}

/** The JSON body and headers of an error response. */
export function errorBody(e: RegistryError, requestId: string): string {
  const detail = e.detail === undefined ? { requestId } : { ...(e.detail as object), requestId };
  return JSON.stringify({ errors: [{ code: e.code, message: e.message, detail }] });
}
