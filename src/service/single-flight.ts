/**
 * One in-flight promise per key: concurrent requests for the same image (or
 * layer) wait on the build that is already running instead of starting
 * their own. The entry is dropped when the promise settles, so a failed
 * build is retried by the next request.
 */
export class SingleFlight<K, V> {
  private readonly inflight = new Map<K, Promise<V>>();
  /** Requests that joined a running flight instead of starting one. */
  waiters = 0;

  run(key: K, fn: () => Promise<V>): Promise<V> {
    const running = this.inflight.get(key);
    if (running) {
      this.waiters++;
      return running;
    }
    const p = fn().finally(() => this.inflight.delete(key));
    this.inflight.set(key, p);
    return p;
  }

  get size(): number {
    return this.inflight.size;
  }
}
