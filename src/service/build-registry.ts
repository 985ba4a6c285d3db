/**
 * The builds the API and pages show: those running (or queued) now and those
 * that ended recently, kept for `keepMs` after they end (at most `max`),
 * with their events, so that a page opened after a build ended still shows
 * how it went. An observer of the image service: the service keeps nothing
 * for it.
 */
import type { Build } from './build.js';
import type { ImageService } from './image-service.js';

export interface BuildRegistryOptions {
  readonly now: () => number;
  /** How long an ended build stays listed (default 30 minutes). */
  readonly keepMs?: number;
  /** Most ended builds kept (default 50). */
  readonly max?: number;
}

export class BuildRegistry {
  private readonly builds = new Map<string, { build: Build; endedAt?: number }>();
  private readonly keepMs: number;
  private readonly max: number;

  constructor(
    service: ImageService,
    private readonly opts: BuildRegistryOptions,
  ) {
    this.keepMs = opts.keepMs ?? 30 * 60 * 1000;
    this.max = opts.max ?? 50;
    service.subscribe((e) => {
      if (e.type !== 'build') return;
      const entry: { build: Build; endedAt?: number } = { build: e.build };
      this.builds.set(e.build.id, entry);
      const end = () => {
        entry.endedAt = this.opts.now();
        this.prune();
      };
      e.build.result.then(end, end);
    });
  }

  get(id: string): Build | undefined {
    this.prune();
    return this.builds.get(id)?.build;
  }

  /** Not ended yet, oldest first. */
  running(): Build[] {
    return [...this.builds.values()].filter((e) => e.endedAt === undefined).map((e) => e.build);
  }

  /** Ended within keepMs, newest first. */
  recent(): Build[] {
    this.prune();
    return [...this.builds.values()]
      .filter((e) => e.endedAt !== undefined)
      .sort((a, b) => (b.endedAt as number) - (a.endedAt as number))
      .map((e) => e.build);
  }

  private prune(): void {
    const now = this.opts.now();
    const ended = [...this.builds.entries()].filter(([, e]) => e.endedAt !== undefined).sort(([, a], [, b]) => (b.endedAt as number) - (a.endedAt as number));
    for (const [i, [id, e]] of ended.entries()) {
      if (i >= this.max || now - (e.endedAt as number) > this.keepMs) this.builds.delete(id);
    }
  }
}
