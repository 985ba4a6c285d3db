/**
 * Nix processes run detached, each in its own process group, so that a
 * timeout or an abort stops Nix and every builder it started: SIGTERM to
 * the group, then SIGKILL after a grace period. Shared by the runner and
 * the Nix store collector.
 */

/** Seconds between SIGTERM and SIGKILL. */
export const KILL_GRACE_SECONDS = 3;

/** Signals a whole process group; a group already gone is fine. */
export function signalGroup(pid: number | undefined, sig: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, sig);
  } catch {
    // The group is already gone.
  }
}

export interface GroupWatch {
  /** Why the group was stopped, if it was. */
  readonly stoppedFor: 'timeout' | 'abort' | undefined;
  /** Stops the group now (an abort); idempotent. */
  stop(): void;
  /** The process exited: no more signals, timers and listeners released. */
  done(): void;
}

/** Stops the group of `pid` after `timeoutSeconds` or when `signal` aborts. */
export function watchGroup(pid: number | undefined, timeoutSeconds: number, signal?: AbortSignal): GroupWatch {
  let stoppedFor: 'timeout' | 'abort' | undefined;
  let exited = false;
  const stop = (why: 'timeout' | 'abort') => {
    if (exited || stoppedFor) return;
    stoppedFor = why;
    signalGroup(pid, 'SIGTERM');
    setTimeout(() => {
      if (!exited) signalGroup(pid, 'SIGKILL');
    }, KILL_GRACE_SECONDS * 1000).unref();
  };
  const timer = setTimeout(() => stop('timeout'), timeoutSeconds * 1000);
  const onAbort = () => stop('abort');
  signal?.addEventListener('abort', onAbort, { once: true });
  return {
    get stoppedFor() {
      return stoppedFor;
    },
    stop: onAbort,
    done() {
      exited = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    },
  };
}
