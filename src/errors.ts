/**
 * Domain errors. Each carries facts (which packages, which digest, which exit
 * code), never an HTTP status: `http/errcode.ts` is the one place that maps
 * them to registry codes. This module imports nothing.
 */

export abstract class NixeryError extends Error {
  abstract readonly code: string;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The configuration has problems; one line each, all collected before failing. */
export class ConfigError extends NixeryError {
  readonly code = 'CONFIG_INVALID';
  constructor(readonly problems: readonly string[]) {
    super(problems.join('\n'));
  }
}

/** An image name or tag that does not follow the registry grammar. */
export class InvalidImageNameError extends NixeryError {
  readonly code = 'NAME_INVALID';
  constructor(readonly imageName: string, readonly reason: string) {
    super(`invalid image name ${JSON.stringify(imageName)}: ${reason}`);
  }
}

/** A tag (reference) that does not follow the registry grammar. */
export class InvalidTagError extends NixeryError {
  readonly code = 'TAG_INVALID';
  constructor(readonly tag: string, readonly reason: string) {
    super(`invalid tag ${JSON.stringify(tag)}: ${reason}`);
  }
}

export type MissingPackageKind = 'not_found' | 'not_a_derivation' | 'ambiguous';

export interface MissingPackage {
  readonly name: string;
  readonly kind: MissingPackageKind;
  /** For `ambiguous`: the attribute paths that differ only in case, e.g. `caseFixture.Greet`. */
  readonly candidates?: readonly string[];
}

function describeMissing(p: MissingPackage): string {
  switch (p.kind) {
    case 'not_found':
      return p.name;
    case 'not_a_derivation':
      return `${p.name} (not a derivation)`;
    case 'ambiguous':
      return `${p.name} (ambiguous: ${(p.candidates ?? []).join(' or ')})`;
  }
}

/** Some requested names are not packages of the configured package set. */
export class PackagesNotFoundError extends NixeryError {
  readonly code = 'PACKAGES_NOT_FOUND';
  constructor(readonly packages: readonly MissingPackage[]) {
    super(
      `packages not found: ${packages.map(describeMissing).join(', ')}`,
    );
  }
}

/** A Nix command failed (build failure, timeout, evaluation error). */
export class NixBuildError extends NixeryError {
  readonly code = 'NIX_BUILD_FAILED';
  constructor(
    readonly command: string,
    readonly exitCode: number | undefined,
    readonly timedOut: boolean,
    readonly stderr: string,
    options?: { cause?: unknown },
  ) {
    super(
      timedOut
        ? `${command} timed out`
        : `${command} failed${exitCode === undefined ? '' : ` with exit code ${exitCode}`}`,
      options,
    );
  }
}

/** The build was cancelled (client went away or the server is shutting down). */
export class BuildAbortedError extends NixeryError {
  readonly code = 'BUILD_ABORTED';
  constructor(readonly reason: string) {
    super(`build aborted: ${reason}`);
  }
}

/**
 * Garbage collection kept deleting blobs a build was about to reference
 * (only with a grace period far shorter than a build): try again shortly.
 * Not a failure of the image, so not remembered as one.
 */
export class BlobsCollectedError extends NixeryError {
  readonly code = 'BLOBS_COLLECTED';
  constructor(
    readonly image: string,
    readonly reason: string,
  ) {
    super(`${image}: ${reason}`);
  }
}

/** A malformed digest such as `sha256:totallywrong`. */
export class InvalidDigestError extends NixeryError {
  readonly code = 'DIGEST_INVALID';
  constructor(readonly digest: string) {
    super(`invalid digest ${JSON.stringify(digest)}`);
  }
}

/** No blob with this digest is stored. */
export class BlobNotFoundError extends NixeryError {
  readonly code = 'BLOB_UNKNOWN';
  constructor(readonly digest: string) {
    super(`blob unknown: ${digest}`);
  }
}

/** A manifest reference (tag or digest) that this registry cannot serve. */
export class ManifestNotFoundError extends NixeryError {
  readonly code = 'MANIFEST_UNKNOWN';
  constructor(readonly reference: string, readonly reason: string) {
    super(`manifest unknown: ${reference}: ${reason}`);
  }
}

/** A path outside the registry API that is not a page of the start page. */
export class PageNotFoundError extends NixeryError {
  readonly code = 'NOT_FOUND';
  constructor(readonly path: string) {
    super(`no page at ${path.length > 200 ? `${path.slice(0, 200)}…` : path}`);
  }
}

/** A method the registry does not implement (push, delete). */
export class UnsupportedError extends NixeryError {
  readonly code = 'UNSUPPORTED';
  constructor(
    readonly operation: string,
    reason = 'this registry builds images on pull and accepts no uploads',
  ) {
    super(`${operation} is not supported: ${reason}`);
  }
}

/** The storage backend failed (I/O error, unreachable bucket). */
export class StorageError extends NixeryError {
  readonly code = 'STORAGE_FAILED';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** A Range header outside the blob. */
export class RangeNotSatisfiableError extends NixeryError {
  readonly code = 'RANGE_INVALID';
  constructor(readonly range: string, readonly size: number) {
    super(`range ${JSON.stringify(range)} is not satisfiable for a blob of ${size} bytes`);
  }
}

/** The package source cannot be reached or answered nonsense (git remote, channel URL): not the client's fault. */
export class SourceUnavailableError extends NixeryError {
  readonly code = 'SOURCE_UNAVAILABLE';
  constructor(readonly source: string, readonly reason: string, options?: { cause?: unknown }) {
    super(`package source ${source} is unavailable: ${reason}`, options);
  }
}

/** The request needs (other) credentials. `why` is for the client; it never contains what was sent. */
export class UnauthorizedError extends NixeryError {
  readonly code = 'UNAUTHORIZED';
  constructor(readonly why: string) {
    super(why);
  }
}

/** Starting one more build would exceed the build slots and the queue (NIXERY_MAX_BUILDS, NIXERY_MAX_QUEUED_BUILDS). */
export class TooManyBuildsError extends NixeryError {
  readonly code = 'TOO_MANY_BUILDS';
  constructor(
    readonly running: number,
    readonly queued: number,
    readonly maxBuilds: number,
    readonly maxQueuedBuilds: number,
    readonly retryAfterSeconds: number,
  ) {
    super(
      `too many image builds: ${running} running and ${queued} waiting, the most this server allows ` +
        `(NIXERY_MAX_BUILDS=${maxBuilds}, NIXERY_MAX_QUEUED_BUILDS=${maxQueuedBuilds}); try again in ${retryAfterSeconds} seconds`,
    );
  }
}

/** An image with more packages than this server builds (NIXERY_MAX_PACKAGES). */
export class TooManyPackagesError extends NixeryError {
  readonly code = 'TOO_MANY_PACKAGES';
  constructor(readonly packages: number, readonly maxPackages: number) {
    super(`this image has ${packages} packages; this server builds at most ${maxPackages} per image (NIXERY_MAX_PACKAGES)`);
  }
}

/**
 * The image failed to build a moment ago and is not built again before its
 * failure is forgotten (NIXERY_FAILED_BUILD_TTL): the same failure, answered
 * without running Nix.
 */
export class RememberedBuildFailureError extends NixeryError {
  readonly code = 'NIX_BUILD_FAILED_REMEMBERED';
  constructor(
    readonly failure: NixBuildError,
    /** Whole seconds since the build failed. */
    readonly secondsAgo: number,
    /** Whole seconds (rounded up) until a pull builds the image again. */
    readonly secondsLeft: number,
  ) {
    super(
      `${failure.message} (remembered failure: this image failed to build ${secondsAgo} s ago and is not built again for another ${secondsLeft} s, NIXERY_FAILED_BUILD_TTL)`,
      { cause: failure },
    );
  }
}
