/**
 * A build is a value: its key, the events it has emitted so far (a late
 * subscriber first gets those, then the rest as they happen) and its result.
 * Everything that watches builds (running builds, recent errors, counters,
 * metrics, later live progress pages) subscribes here instead of the
 * pipeline knowing about each of them.
 */
import type { BuiltImage } from './records.js';

export type BuildPhase = 'resolve' | 'realise' | 'closure' | 'group' | 'pack' | 'manifest';

export type BuildEvent =
  /**
   * The build waits for a build slot (NIXERY_MAX_BUILDS); `position` is its
   * place in the queue when it joined (1 = next). Followed by `started` when
   * it gets one. A build that gets a slot at once emits neither.
   */
  | { readonly type: 'queued'; readonly at: number; readonly position: number }
  /** A queued build got its slot and starts its work. */
  | { readonly type: 'started'; readonly at: number }
  | { readonly type: 'phase'; readonly at: number; readonly phase: BuildPhase; readonly platform: string }
  | {
      readonly type: 'layer';
      readonly at: number;
      readonly platform: string;
      readonly digest: string;
      readonly size: number;
      /** Found in storage by content key rather than packed by this build. */
      readonly reused: boolean;
      /** Of a packed layer's bytes, those copied from the piece cache rather than compressed now. */
      readonly cachedBytes: number;
      readonly description: string;
    }
  /** A line of Nix's build output. */
  | { readonly type: 'log'; readonly at: number; readonly line: string }
  /** Nix's progress realising: derivations built of those it has to build, and the one it builds now. */
  | { readonly type: 'realise'; readonly at: number; readonly platform: string; readonly done: number; readonly expected: number; readonly building?: string }
  /** How many layers the pack phase makes (each then reported by a `layer` event). */
  | { readonly type: 'pack-plan'; readonly at: number; readonly platform: string; readonly layers: number }
  | { readonly type: 'finished'; readonly at: number; readonly image: BuiltImage }
  | { readonly type: 'failed'; readonly at: number; readonly error: Error };

export type BuildListener = (event: BuildEvent) => void;

/** Log lines kept for late subscribers; phases and layers are always kept. */
const MAX_LOG_EVENTS = 500;

let builds = 0;

export class Build {
  /** Unique in this process (for the API and pages): the key repeats when an image is built again. */
  readonly id = `b${(++builds).toString(36)}`;
  readonly result: Promise<BuiltImage>;
  private readonly history: BuildEvent[] = [];
  private readonly listeners = new Set<BuildListener>();
  private logEvents = 0;
  private settled = false;
  private waitingForSlot = false;
  private workStartedAt: number;

  constructor(
    readonly key: string,
    /** `name:tag` as requested. */
    readonly image: string,
    readonly packages: readonly string[],
    /** When the build was asked for (a queued build starts its work later: `startedAt`). */
    readonly createdAt: number,
    run: (build: Build) => Promise<BuiltImage>,
    private readonly now: () => number,
  ) {
    this.workStartedAt = createdAt;
    // Started on the next tick, so that whoever created the build can
    // subscribe before the first event without missing anything live.
    this.result = Promise.resolve().then(() => run(this)).then(
      (image) => {
        this.finish({ type: 'finished', at: this.now(), image });
        return image;
      },
      (e: unknown) => {
        const error = e instanceof Error ? e : new Error(String(e));
        this.finish({ type: 'failed', at: this.now(), error });
        throw error;
      },
    );
    // Whoever awaits the result handles the failure; this only keeps an
    // unobserved failure from being reported as unhandled.
    this.result.catch(() => undefined);
  }

  get done(): boolean {
    return this.settled;
  }

  /** When the build started its work: its creation, or the end of its wait in the queue. */
  get startedAt(): number {
    return this.workStartedAt;
  }

  /** Whether the build is waiting in the queue for a build slot. */
  get queued(): boolean {
    return this.waitingForSlot && !this.settled;
  }

  /** Replays what happened so far, then follows; returns the unsubscribe function. */
  subscribe(listener: BuildListener): () => void {
    for (const e of this.history) listener(e);
    if (this.settled) return () => undefined;
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** For the pipeline: records and delivers one event. */
  emit(event: Exclude<BuildEvent, { type: 'finished' | 'failed' }>): void {
    if (this.settled) return;
    if (event.type === 'log') {
      this.logEvents++;
      if (this.logEvents > MAX_LOG_EVENTS) {
        const i = this.history.findIndex((e) => e.type === 'log');
        if (i >= 0) this.history.splice(i, 1);
      }
    } else if (event.type === 'realise') {
      // Only the latest counts matter to a late subscriber: one per platform is kept.
      const i = this.history.findIndex((e) => e.type === 'realise' && e.platform === event.platform);
      if (i >= 0) this.history.splice(i, 1);
    }
    this.deliver(event);
  }

  /** The events so far (a copy). */
  events(): BuildEvent[] {
    return [...this.history];
  }

  private finish(event: Extract<BuildEvent, { type: 'finished' | 'failed' }>): void {
    this.deliver(event);
    this.settled = true;
    this.listeners.clear();
  }

  private deliver(event: BuildEvent): void {
    if (event.type === 'queued') this.waitingForSlot = true;
    else if (event.type === 'started') {
      this.waitingForSlot = false;
      this.workStartedAt = event.at;
    }
    this.history.push(event);
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch {
        // A broken observer must not break the build or the other observers.
      }
    }
  }
}

/** What a build spent its time and bytes on, from its events. */
export interface BuildTimings {
  /** Milliseconds per phase, summed over platforms; a phase ends where the platform's next one (or the build) ends. */
  readonly phases: Partial<Record<BuildPhase, number>>;
  /** Compressed bytes of layers packed by this build, compressed now. */
  readonly packedBytes: number;
  /** Compressed bytes of packed layers copied from the piece cache instead. */
  readonly cachedBytes: number;
  /** Bytes of layers found in storage and reused whole. */
  readonly reusedBytes: number;
}

/**
 * Pure: timings from a build's events (`build.events()`). Phases still open
 * (a build not finished yet) end at `end` when given, else are left out.
 */
export function buildTimings(events: readonly BuildEvent[], end?: number): BuildTimings {
  const phases: Partial<Record<BuildPhase, number>> = {};
  const open = new Map<string, { phase: BuildPhase; at: number }>();
  const close = (platform: string, at: number) => {
    const o = open.get(platform);
    if (o) phases[o.phase] = (phases[o.phase] ?? 0) + (at - o.at);
    open.delete(platform);
  };
  let packedBytes = 0;
  let cachedBytes = 0;
  let reusedBytes = 0;
  for (const e of events) {
    if (e.type === 'phase') {
      close(e.platform, e.at);
      open.set(e.platform, { phase: e.phase, at: e.at });
    } else if (e.type === 'layer') {
      if (e.reused) reusedBytes += e.size;
      else {
        cachedBytes += e.cachedBytes;
        packedBytes += e.size - e.cachedBytes;
      }
    } else if (e.type === 'finished' || e.type === 'failed') {
      for (const platform of [...open.keys()]) close(platform, e.at);
    }
  }
  if (end !== undefined) for (const platform of [...open.keys()]) close(platform, end);
  return { phases, packedBytes, cachedBytes, reusedBytes };
}
