/**
 * Build admission: what the service lets in before any Nix process runs.
 *
 * - Slots. At most `maxBuilds` builds do their work at once; up to
 *   `maxQueuedBuilds` more wait for a slot, first come first served. A slot
 *   freed by a finishing build goes straight to the oldest waiter, so a
 *   newcomer never overtakes the queue. Beyond that, starting a build is
 *   refused (TooManyBuildsError: 429 with Retry-After). Only *starting* a
 *   build takes a slot: a request that joins a build already running or
 *   waiting for the same image, and a warm pull, never wait and never count
 *   (the image service decides that, this module only counts).
 * - Size. An image with more than `maxPackages` packages is refused before
 *   Nix is asked anything. The count is what the client asked for after
 *   meta-package expansion (`shell/htop` is 5 packages); `cacert` and
 *   `iana-etc`, which the server adds to every image, do not count, so the
 *   number in the message is the client's own and NIXERY_MAX_PACKAGES=1 still
 *   allows one-package images.
 * - Remembered failures. A build that failed in Nix (NixBuildError, timeouts
 *   included; not an abort, and not missing names, which the service
 *   remembers per revision for good) is remembered per image key for
 *   `failedBuildTtlSeconds`: pulls meanwhile get the same error at once,
 *   marked as remembered, instead of running Nix again. 0 remembers nothing.
 *
 * Pure bookkeeping: time comes in as a function, nothing here touches Nix,
 * storage or the network.
 */
import { LRUCache } from 'lru-cache';
import type { AdmissionConfig } from '../config.js';
import { ALWAYS_INCLUDED, type ImageSpec } from '../image/name.js';
import { BuildAbortedError, NixBuildError, RememberedBuildFailureError, TooManyBuildsError, TooManyPackagesError } from '../errors.js';

/** The configuration defaults (src/config.ts), for a service constructed without one. */
export const DEFAULT_ADMISSION: AdmissionConfig = { maxBuilds: 2, maxQueuedBuilds: 32, maxPackages: 64, failedBuildTtlSeconds: 60 };

/**
 * Retry-After of a refusal because the queue is full. A slot opens whenever
 * any of the running builds ends, which for the common build (most of the
 * closure already in the store) is a matter of seconds; a refused request
 * costs the server one source lookup, so a client coming back this soon is
 * cheap, and it then waits in the queue rather than polling.
 */
export const QUEUE_FULL_RETRY_AFTER_SECONDS = 5;

/** Failed images remembered at most (a few hundred bytes each, the stderr tail included). */
const REMEMBERED_FAILURES = 1000;

export interface AdmissionStats {
  /** Builds holding a slot (doing their work). */
  readonly running: number;
  /** Builds waiting for a slot. */
  readonly queued: number;
  readonly maxBuilds: number;
  readonly maxQueuedBuilds: number;
}

/** A place in the build slots, taken by `BuildSlots.reserve()`. */
export interface Slot {
  /** False when the build got a slot at once. */
  readonly queued: boolean;
  /** For a queued build: its place in the queue when it joined (1 = next). */
  readonly position: number;
  /** Resolves once the build holds a slot; rejects with BuildAbortedError if the signal aborts it while waiting. */
  readonly acquired: Promise<void>;
  /** Gives the slot (or the place in the queue) back; idempotent. */
  release(): void;
}

interface Waiter {
  grant(): void;
}

/** Counting semaphore with a bounded FIFO queue. */
export class BuildSlots {
  private busy = 0;
  private readonly waiting: Waiter[] = [];

  constructor(private readonly limits: Pick<AdmissionConfig, 'maxBuilds' | 'maxQueuedBuilds'>) {}

  /**
   * Takes a slot, or a place in the queue, at once (synchronously, so that
   * checking and taking cannot interleave); throws TooManyBuildsError when
   * both are full.
   */
  reserve(signal?: AbortSignal): Slot {
    if (this.busy < this.limits.maxBuilds && this.waiting.length === 0) {
      this.busy++;
      return { queued: false, position: 0, acquired: Promise.resolve(), release: this.once(() => this.free()) };
    }
    if (this.waiting.length >= this.limits.maxQueuedBuilds) {
      throw new TooManyBuildsError(this.busy, this.waiting.length, this.limits.maxBuilds, this.limits.maxQueuedBuilds, QUEUE_FULL_RETRY_AFTER_SECONDS);
    }
    let state: 'waiting' | 'holding' | 'done' = 'waiting';
    let resolve!: () => void;
    let reject!: (e: Error) => void;
    const acquired = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Nobody may be listening yet when an abort rejects it.
    acquired.catch(() => undefined);
    const waiter: Waiter = {
      grant: () => {
        signal?.removeEventListener('abort', onAbort);
        state = 'holding';
        resolve();
      },
    };
    const leaveQueue = () => {
      const i = this.waiting.indexOf(waiter);
      if (i >= 0) this.waiting.splice(i, 1);
    };
    const onAbort = () => {
      if (state !== 'waiting') return;
      state = 'done';
      leaveQueue();
      reject(new BuildAbortedError(String(signal?.reason instanceof Error ? signal.reason.message : (signal?.reason ?? 'aborted'))));
    };
    this.waiting.push(waiter);
    const position = this.waiting.length;
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    return {
      queued: true,
      position,
      acquired,
      release: () => {
        if (state === 'holding') this.free();
        else if (state === 'waiting') {
          signal?.removeEventListener('abort', onAbort);
          leaveQueue();
        }
        state = 'done';
      },
    };
  }

  stats(): AdmissionStats {
    return { running: this.busy, queued: this.waiting.length, maxBuilds: this.limits.maxBuilds, maxQueuedBuilds: this.limits.maxQueuedBuilds };
  }

  /** A slot is given back: straight to the oldest waiter, else it is free. */
  private free(): void {
    const next = this.waiting.shift();
    if (next) next.grant();
    else this.busy--;
  }

  private once(fn: () => void): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      fn();
    };
  }
}

/** Packages of a spec that count against NIXERY_MAX_PACKAGES: all but the ones the server adds. */
export function countedPackages(spec: Pick<ImageSpec, 'packages'>): number {
  const added: readonly string[] = ALWAYS_INCLUDED;
  return spec.packages.filter((p) => !added.includes(p)).length;
}

/** Failed builds by image key, each until its time is up. */
export class FailureMemory {
  private readonly failures = new LRUCache<string, { error: NixBuildError; failedAt: number }>({ max: REMEMBERED_FAILURES });

  constructor(
    private readonly ttlSeconds: number,
    private readonly now: () => number,
  ) {}

  /** Remembers a failure if it is one worth remembering (a failure of Nix, not an abort). */
  remember(key: string, error: unknown): void {
    if (this.ttlSeconds <= 0 || !(error instanceof NixBuildError)) return;
    this.failures.set(key, { error, failedAt: this.now() });
  }

  /** The remembered failure of this image as the error to answer with, while its time lasts. */
  recall(key: string): RememberedBuildFailureError | undefined {
    const hit = this.failures.get(key);
    if (hit === undefined) return undefined;
    const ago = this.now() - hit.failedAt;
    const left = this.ttlSeconds * 1000 - ago;
    // The clock may also go backwards (an injected one, NTP): never remember longer than the TTL.
    if (left <= 0 || ago < 0) {
      this.failures.delete(key);
      return undefined;
    }
    return new RememberedBuildFailureError(hit.error, Math.floor(ago / 1000), Math.ceil(left / 1000));
  }

  get size(): number {
    return this.failures.size;
  }
}

/** The admission of one image service: slots, the package limit and remembered failures. */
export class Admission {
  readonly slots: BuildSlots;
  readonly failures: FailureMemory;

  constructor(
    readonly config: AdmissionConfig,
    now: () => number,
  ) {
    this.slots = new BuildSlots(config);
    this.failures = new FailureMemory(config.failedBuildTtlSeconds, now);
  }

  /** Throws TooManyPackagesError when the image is larger than this server builds. */
  checkSize(spec: Pick<ImageSpec, 'packages'>): void {
    const n = countedPackages(spec);
    if (n > this.config.maxPackages) throw new TooManyPackagesError(n, this.config.maxPackages);
  }

  /** Builds running and waiting now, with their limits (read-only). */
  stats(): AdmissionStats {
    return this.slots.stats();
  }
}
