/**
 * What a build looks like from outside, for the API and the pages: its
 * state and progress, folded from its events (build.ts). Pure.
 *
 * `fraction` (0..1, for a progress bar) weighs the phases by what usually
 * takes the time: realising (Nix building; by derivations done of those it
 * has to build) up to 0.6, packing (by layers done of those planned) up to
 * 0.95. It only ever grows while a build runs.
 */
import type { BuildEvent, BuildPhase } from './build.js';

export type ProgressPhase = 'queued' | BuildPhase | 'done' | 'failed';

export interface Progress {
  readonly phase: ProgressPhase;
  readonly derivations?: { readonly done: number; readonly expected: number; readonly building?: string };
  readonly layers?: { readonly done: number; readonly total: number };
  /** Layer bytes written (or found) so far. */
  readonly bytes: number;
  /** The last few lines of Nix's build output. */
  readonly log: readonly string[];
  readonly fraction: number;
}

export interface BuildView {
  readonly id: string;
  readonly image: string;
  readonly packages: readonly string[];
  readonly state: 'queued' | 'running' | 'succeeded' | 'failed';
  readonly startedAt: string;
  readonly seconds: number;
  readonly progress: Progress;
  readonly error?: string;
  readonly revision?: string;
  readonly layers?: number;
  readonly bytes?: number;
}

export interface BuildFacts {
  readonly id: string;
  readonly image: string;
  readonly packages: readonly string[];
  readonly createdAt: number;
  readonly events: readonly BuildEvent[];
}

/** Log lines in a view. */
export const LOG_LINES = 5;

const PHASE_START: Record<BuildPhase, number> = { resolve: 0.02, realise: 0.05, closure: 0.6, group: 0.62, pack: 0.65, manifest: 0.95 };

export function viewBuild(b: BuildFacts, now: number): BuildView {
  let phase: ProgressPhase = 'resolve';
  let startedAt = b.createdAt;
  let derivations: { done: number; expected: number; building?: string } | undefined;
  let layers: { done: number; total: number } | undefined;
  let bytes = 0;
  let endedAt: number | undefined;
  let error: string | undefined;
  let revision: string | undefined;
  let builtLayers: number | undefined;
  let builtBytes: number | undefined;
  const log: string[] = [];
  for (const e of b.events) {
    switch (e.type) {
      case 'queued':
        phase = 'queued';
        break;
      case 'started':
        startedAt = e.at;
        phase = 'resolve';
        break;
      case 'phase':
        phase = e.phase;
        break;
      case 'realise':
        derivations = { done: e.done, expected: e.expected, ...(e.building ? { building: e.building } : {}) };
        break;
      case 'pack-plan':
        layers = { done: layers?.done ?? 0, total: (layers?.total ?? 0) + e.layers };
        break;
      case 'layer':
        layers = { done: (layers?.done ?? 0) + 1, total: Math.max(layers?.total ?? 0, (layers?.done ?? 0) + 1) };
        bytes += e.size;
        break;
      case 'log':
        log.push(e.line);
        if (log.length > LOG_LINES) log.shift();
        break;
      case 'finished': {
        phase = 'done';
        endedAt = e.at;
        revision = e.image.revision;
        builtLayers = e.image.platforms.reduce((n, p) => n + p.layers.length, 0);
        builtBytes = e.image.platforms.reduce((n, p) => n + p.layers.reduce((m, l) => m + l.size, 0), 0);
        break;
      }
      case 'failed':
        phase = 'failed';
        endedAt = e.at;
        error = e.error.message;
        break;
    }
  }
  const progress: Progress = {
    phase,
    ...(derivations ? { derivations } : {}),
    ...(layers ? { layers } : {}),
    bytes,
    log,
    fraction: fraction(phase, derivations, layers),
  };
  const state = phase === 'done' ? 'succeeded' : phase === 'failed' ? 'failed' : phase === 'queued' ? 'queued' : 'running';
  return {
    id: b.id,
    image: b.image,
    packages: b.packages,
    state,
    startedAt: new Date(startedAt).toISOString(),
    seconds: Math.max(0, ((endedAt ?? now) - startedAt) / 1000),
    progress,
    ...(error !== undefined ? { error } : {}),
    ...(revision !== undefined ? { revision } : {}),
    ...(builtLayers !== undefined ? { layers: builtLayers, bytes: builtBytes } : {}),
  };
}

function fraction(phase: ProgressPhase, d: { done: number; expected: number } | undefined, l: { done: number; total: number } | undefined): number {
  switch (phase) {
    case 'queued':
      return 0;
    case 'done':
      return 1;
    case 'failed':
      return 0;
    case 'realise':
      return PHASE_START.realise + (d && d.expected > 0 ? (Math.min(d.done, d.expected) / d.expected) * (PHASE_START.closure - PHASE_START.realise) : 0);
    case 'pack':
      return PHASE_START.pack + (l && l.total > 0 ? (Math.min(l.done, l.total) / l.total) * (PHASE_START.manifest - PHASE_START.pack) : 0);
    default:
      return PHASE_START[phase];
  }
}
