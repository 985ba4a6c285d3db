/**
 * The GC generation: a small record (records/gc/<GENERATION_KEY>) that a
 * pass rewrites after it dropped images and before it deletes any blob.
 * Every replica polls it and, when it changes, forgets the images and
 * manifests it holds in memory, so that no replica answers from memory with
 * a manifest whose blobs a pass (its own or another replica's) deletes. The
 * pass waits two poll intervals after the rewrite before deleting anything.
 * One read per poll interval per replica, not a stat per warm pull.
 */
import { randomBytes } from 'node:crypto';
import type { StorageBackend } from '../storage/backend.js';

export const GENERATION_KEY = '0000000000000000';

export async function readGeneration(storage: StorageBackend): Promise<string | undefined> {
  return (await storage.getRecord('gc', GENERATION_KEY))?.toString();
}

export async function bumpGeneration(storage: StorageBackend): Promise<void> {
  await storage.putRecord('gc', GENERATION_KEY, Buffer.from(randomBytes(16).toString('hex')));
}

export class GenerationWatcher {
  private known: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checking = false;

  constructor(
    private readonly storage: StorageBackend,
    private readonly onChange: () => void,
    private readonly onError: (e: unknown) => void = () => undefined,
  ) {}

  /** Reads the current generation (a start-up value that changes nothing), then polls. */
  async start(pollMs: number): Promise<void> {
    this.known = await readGeneration(this.storage);
    this.timer ??= setInterval(() => void this.check(), pollMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One poll: forgets the caches when the generation changed. */
  async check(): Promise<void> {
    if (this.checking) return;
    this.checking = true;
    try {
      const now = await readGeneration(this.storage);
      if (now !== this.known) {
        this.known = now;
        this.onChange();
      }
    } catch (e) {
      this.onError(e);
    } finally {
      this.checking = false;
    }
  }
}
