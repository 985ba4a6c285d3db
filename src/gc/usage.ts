/**
 * When each image was last pulled, without a storage write per request.
 *
 * Pulls are noted in memory (by image key for pulls by tag, by manifest
 * digest for pulls by digest) and written in batches to records/usage/<id>,
 * one small record per image or digest pulled since the last flush. A crash
 * loses at most one flush interval of pull times, never an image. Replicas
 * sharing a bucket write the same records, so a pass on any of them sees
 * every replica's pulls (up to one flush interval late; the policy never
 * drops an image pulled within two intervals for that reason).
 *
 * Two replicas flushing the same id at once may write the older of their
 * two times last: the record is read first and the later time kept, so the
 * loss is bounded by the flush interval too.
 */
import type { StorageBackend } from '../storage/backend.js';

interface UsageRecord {
  readonly lastPulledAt: number;
}

export class UsageTracker {
  private pending = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly storage: StorageBackend,
    private readonly now: () => number,
    private readonly onError: (e: unknown) => void = () => undefined,
  ) {}

  /** Notes a pull of an image key or a manifest digest's hex. */
  note(id: string): void {
    this.pending.set(id, this.now());
  }

  /** Flushes every `intervalMs` until `stop()`. */
  start(intervalMs: number): void {
    this.timer ??= setInterval(() => void this.flush().catch(this.onError), intervalMs);
    this.timer.unref();
  }

  /** Stops the timer and writes what is pending. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.flush();
  }

  /** Writes the pending pull times (one at a time: a flush is a trickle, never a burst). */
  flush(): Promise<void> {
    // One flush at a time; a second caller waits for it and then flushes what came meanwhile.
    const run = async (): Promise<void> => {
      const batch = this.pending;
      this.pending = new Map();
      for (const [id, at] of batch) {
        try {
          const known = await readUsage(this.storage, id);
          if (known === undefined || known < at) {
            await this.storage.putRecord('usage', id, Buffer.from(JSON.stringify({ lastPulledAt: at } satisfies UsageRecord)));
          }
        } catch (e) {
          // Kept for the next flush unless a newer pull replaced it.
          if ((this.pending.get(id) ?? 0) < at) this.pending.set(id, at);
          throw e;
        }
      }
    };
    const next = (this.flushing ?? Promise.resolve()).then(run);
    const tracked: Promise<void> = next
      .catch(() => undefined)
      .finally(() => {
        if (this.flushing === tracked) this.flushing = undefined;
      });
    this.flushing = tracked;
    return next;
  }
}

export async function readUsage(storage: StorageBackend, id: string): Promise<number | undefined> {
  const raw = await storage.getRecord('usage', id);
  if (raw === undefined) return undefined;
  try {
    const r = JSON.parse(raw.toString()) as Partial<UsageRecord>;
    return typeof r.lastPulledAt === 'number' ? r.lastPulledAt : undefined;
  } catch {
    return undefined;
  }
}
