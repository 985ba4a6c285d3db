/**
 * What `nixery-ts build` shows while it works. A Tracker folds the command's
 * own steps (resolve, write) and the build's events into one Status, using
 * the service's `viewBuild` for the build's phase, derivations and layers;
 * the renderers are pure functions of a Status:
 *
 *   renderFrame  the live display on a terminal, one row per step:
 *                  ✔ resolve  shell/htop:latest for linux/amd64        0.2s
 *                  ✔ build    12/12 derivations                       4.1s
 *                  ✔ plan     closure and layers                      0.1s
 *                  ⠙ pack     layer 3 of 7 · 12.3 MB
 *                  · write    docker-archive htop.tar
 *   plainLine    one line per step for logs (CI), printed when it begins.
 *
 * The drivers write to stderr (stdout carries the summary and `--json`):
 * TtyDisplay redraws the frame in place with log-update, PlainDisplay
 * prints the lines, QuietDisplay prints nothing.
 */
import { createLogUpdate } from 'log-update';
import type { BuildEvent } from '../service/build.js';
import { viewBuild, type BuildFacts, type ProgressPhase } from '../service/progress.js';

export const ROWS = ['resolve', 'build', 'plan', 'pack', 'write'] as const;
export type Row = (typeof ROWS)[number];

export interface Status {
  /** `shell/htop:latest`. */
  readonly image: string;
  /** `linux/amd64`. */
  readonly platform: string;
  readonly format: string;
  /** The output as the user named it. */
  readonly output: string;
  /** The step running now; `done` and `failed` end. */
  readonly row: Row | 'done' | 'failed';
  /** The row that failed, when `row` is `failed`. */
  readonly failedRow?: Row;
  /** Waiting for a build slot. */
  readonly queued: boolean;
  /** The image was in the cache: no build ran. */
  readonly cached: boolean;
  readonly derivations?: { readonly done: number; readonly expected: number; readonly building?: string };
  readonly layers?: { readonly done: number; readonly total: number };
  /** Layers found in the cache rather than packed. */
  readonly reusedLayers: number;
  /** Layer bytes packed or found so far. */
  readonly layerBytes: number;
  readonly write?: { readonly done: number; readonly total: number };
  /** The last lines of Nix's build output. */
  readonly log: readonly string[];
  /** When each row began and ended (ms). */
  readonly began: Readonly<Partial<Record<Row, number>>>;
  readonly ended: Readonly<Partial<Record<Row, number>>>;
}

/** Which row a build phase belongs to. */
export function rowOfPhase(phase: ProgressPhase): Row | undefined {
  switch (phase) {
    case 'queued':
    case 'resolve':
      return 'resolve';
    case 'realise':
      return 'build';
    case 'closure':
    case 'group':
      return 'plan';
    case 'pack':
    case 'manifest':
      return 'pack';
    default:
      return undefined;
  }
}

/** Folds the command's steps and one build's events into a Status. */
export class Tracker {
  private s: Status;
  private readonly events: BuildEvent[] = [];
  private facts: Omit<BuildFacts, 'events'> | undefined;

  constructor(
    base: Pick<Status, 'image' | 'platform' | 'format' | 'output'>,
    private readonly now: () => number,
    private readonly changed: () => void = () => undefined,
  ) {
    this.s = { ...base, row: 'resolve', queued: false, cached: true, reusedLayers: 0, layerBytes: 0, log: [], began: { resolve: now() }, ended: {} };
  }

  get status(): Status {
    return this.s;
  }

  /** Moves to `row`, ending the rows before it. */
  enter(row: Row): void {
    if (this.s.row === row) return;
    const at = this.now();
    const ended = { ...this.s.ended };
    const i = ROWS.indexOf(row);
    for (const r of ROWS.slice(0, i)) if (this.s.began[r] !== undefined && ended[r] === undefined) ended[r] = at;
    this.s = { ...this.s, row, began: { ...this.s.began, [row]: this.s.began[row] ?? at }, ended };
    this.changed();
  }

  /** A build started: its events follow through `buildEvent`. */
  buildStarted(facts: Omit<BuildFacts, 'events'>): void {
    this.facts = facts;
    this.s = { ...this.s, cached: false };
  }

  buildEvent(e: BuildEvent): void {
    if (this.facts === undefined) return;
    this.events.push(e);
    const v = viewBuild({ ...this.facts, events: this.events }, this.now());
    const p = v.progress;
    const reused = e.type === 'layer' && e.reused ? 1 : 0;
    this.s = {
      ...this.s,
      queued: p.phase === 'queued',
      ...(p.derivations ? { derivations: p.derivations } : {}),
      ...(p.layers ? { layers: p.layers } : {}),
      reusedLayers: this.s.reusedLayers + reused,
      layerBytes: p.bytes,
      log: p.log,
    };
    const row = rowOfPhase(p.phase);
    if (row !== undefined && ROWS.indexOf(row) > ROWS.indexOf(this.s.row as Row)) this.enter(row);
    else this.changed();
  }

  /** The image and its layers, when it came whole from the cache. */
  found(layers: number, bytes: number): void {
    this.s = { ...this.s, layers: { done: layers, total: layers }, reusedLayers: layers, layerBytes: bytes };
  }

  writing(done: number, total: number): void {
    this.s = { ...this.s, write: { done, total } };
    if (this.s.row !== 'write') this.enter('write');
    else this.changed();
  }

  finish(): void {
    const at = this.now();
    const ended = { ...this.s.ended };
    for (const r of ROWS) if (this.s.began[r] !== undefined && ended[r] === undefined) ended[r] = at;
    this.s = { ...this.s, row: 'done', ended };
    this.changed();
  }

  fail(): void {
    if (this.s.row === 'done' || this.s.row === 'failed') return;
    const failedRow = this.s.row;
    this.s = { ...this.s, row: 'failed', failedRow, ended: { ...this.s.ended, [failedRow]: this.now() } };
    this.changed();
  }
}

/** 23.4 MB, 512 kB, 17 B (decimal, as `docker images` counts). */
export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  if (n < 1e6) return `${(n / 1e3).toFixed(1)} kB`;
  if (n < 1e9) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e9).toFixed(2)} GB`;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(1)}s`;
}

/** A derivation's name without its store directory and hash: `htop-3.2.1`. */
export function derivationName(drv: string): string {
  const base = drv.slice(drv.lastIndexOf('/') + 1).replace(/\.drv$/, '');
  return /^[0-9a-z]{32}-/.test(base) ? base.slice(33) : base;
}

const LABELS: Record<Row, string> = { resolve: 'resolve', build: 'build', plan: 'plan', pack: 'pack', write: 'write' };

/** What a row says about itself in `s` (without status mark or time). */
export function rowDetail(row: Row, s: Status): string {
  // The step that failed reads as it was when it failed.
  const current = s.row === 'failed' ? s.failedRow : s.row;
  switch (row) {
    case 'resolve':
      return `${s.image} for ${s.platform}${s.queued ? ' · waiting for a build slot' : ''}`;
    case 'build': {
      if (s.cached && s.began.build === undefined) return current === 'resolve' ? '' : 'image found in the cache';
      const d = s.derivations;
      if (d === undefined) return current === 'build' ? 'checking what Nix has to build' : 'nothing to build';
      if (d.expected === 0) return 'nothing to build';
      return `${d.done}/${d.expected} derivations${d.building && current === 'build' ? ` · building ${derivationName(d.building)}` : ''}`;
    }
    case 'plan':
      return s.cached && s.began.plan === undefined ? '' : 'closure and layers';
    case 'pack': {
      const l = s.layers;
      if (l === undefined) return '';
      if (current === 'pack' && l.done < l.total) return `layer ${l.done + 1} of ${l.total} · ${formatBytes(s.layerBytes)}`;
      return `${l.total} layers${s.reusedLayers > 0 ? ` (${s.reusedLayers} reused)` : ''} · ${formatBytes(s.layerBytes)}`;
    }
    case 'write': {
      const w = s.write;
      const what = `${s.format} ${s.output}`;
      return w === undefined || w.done >= w.total || current !== 'write' ? what : `${what} · ${formatBytes(w.done)} of ${formatBytes(w.total)}`;
    }
  }
}

export interface Paint {
  green(s: string): string;
  red(s: string): string;
  dim(s: string): string;
  cyan(s: string): string;
}

const ESC = '\u001B[';
export const COLORS: Paint = {
  green: (s) => `${ESC}32m${s}${ESC}39m`,
  red: (s) => `${ESC}31m${s}${ESC}39m`,
  dim: (s) => `${ESC}2m${s}${ESC}22m`,
  cyan: (s) => `${ESC}36m${s}${ESC}39m`,
};
export const NO_COLORS: Paint = { green: (s) => s, red: (s) => s, dim: (s) => s, cyan: (s) => s };

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

function fit(line: string, width: number): string {
  // Frames hold no colour codes in the text we cut (details are plain), so length is width.
  return line.length > width ? `${line.slice(0, Math.max(0, width - 1))}…` : line;
}

/** The live display: one row per step, the running one with a spinner, Nix's last line under the build row. */
export function renderFrame(s: Status, now: number, tick: number, width = 80, paint: Paint = NO_COLORS): string {
  const lines: string[] = [];
  const current = s.row === 'failed' ? s.failedRow : s.row === 'done' ? undefined : s.row;
  for (const row of ROWS) {
    const began = s.began[row];
    const ended = s.ended[row];
    const skipped = began === undefined && (s.row === 'done' || (current !== undefined && ROWS.indexOf(row) < ROWS.indexOf(current)));
    let mark: string;
    let time = '';
    if (s.row === 'failed' && row === s.failedRow) {
      mark = paint.red('✖');
      time = began !== undefined ? seconds((ended ?? now) - began) : '';
    } else if (row === current) {
      mark = paint.cyan(SPINNER[tick % SPINNER.length]!);
      time = began !== undefined ? seconds(now - began) : '';
    } else if (skipped) {
      mark = paint.dim('–');
    } else if (began !== undefined && ended !== undefined) {
      mark = paint.green('✔');
      time = seconds(ended - began);
    } else {
      mark = paint.dim('·');
    }
    // mark, label (8), detail, time: the times line up in a column.
    const detailWidth = Math.min(56, Math.max(10, width - 20));
    const detail = fit(rowDetail(row, s), detailWidth);
    const text = `${LABELS[row].padEnd(8)}${time ? detail.padEnd(detailWidth) : detail}`;
    const quiet = skipped || (began === undefined && row !== current);
    lines.push(`${mark} ${quiet ? paint.dim(text) : text}${time ? ` ${paint.dim(time)}` : ''}`);
    if (row === 'build' && row === current && s.log.length > 0) lines.push(paint.dim(fit(`  ${s.log[s.log.length - 1]}`, width - 1)));
  }
  return lines.join('\n');
}

/**
 * The line a log shows when step `s.row` begins, or undefined when there is
 * nothing to say yet (pack waits for its layer count). Counts of the step
 * that just ended ride on the next line.
 */
export function plainLine(s: Status): string | undefined {
  switch (s.row) {
    case 'resolve':
      return `resolving ${s.image} for ${s.platform}`;
    case 'build':
      return 'building with Nix';
    case 'plan': {
      const d = s.derivations;
      return `planning layers (${d === undefined || d.expected === 0 ? 'nothing to build' : `built ${d.done} of ${d.expected} derivations`})`;
    }
    case 'pack':
      return s.layers === undefined ? undefined : `packing ${s.layers.total} layers`;
    case 'write': {
      const l = s.layers;
      const layers = l === undefined ? '' : `${l.total} layers, ${s.reusedLayers} reused, ${formatBytes(s.layerBytes)}`;
      return `writing ${s.format} ${s.output} (${s.cached ? `image found in the cache: ${layers}` : layers})`;
    }
    default:
      return undefined;
  }
}

/** Where the command's progress goes. */
export interface Display {
  /** The status changed. */
  update(s: Status): void;
  /** A line that stays (a warning): printed above a live frame. */
  log(line: string): void;
  /** The last frame stays on screen; nothing is drawn after. */
  stop(s: Status): void;
}

export class QuietDisplay implements Display {
  constructor(private readonly err: NodeJS.WritableStream) {}
  update(): void {}
  log(line: string): void {
    this.err.write(`${line}\n`);
  }
  stop(): void {}
}

/** One line per step, with the seconds since the command started. */
export class PlainDisplay implements Display {
  private printed = new Set<string>();

  constructor(
    private readonly err: NodeJS.WritableStream,
    private readonly now: () => number,
    private readonly startedAt: number,
  ) {}

  update(s: Status): void {
    if (this.printed.has(s.row)) return;
    const line = plainLine(s);
    if (line === undefined) return;
    this.printed.add(s.row);
    this.err.write(`[${seconds(this.now() - this.startedAt).padStart(6)}] ${line}\n`);
  }

  log(line: string): void {
    this.err.write(`${line}\n`);
  }

  stop(): void {}
}

/** The live frame, redrawn in place on events and ten times a second (the spinner and times). */
export class TtyDisplay implements Display {
  private readonly draw: ReturnType<typeof createLogUpdate>;
  private readonly timer: NodeJS.Timeout;
  private tick = 0;
  private last: Status | undefined;
  private stopped = false;

  constructor(
    private readonly err: NodeJS.WriteStream,
    private readonly now: () => number,
    private readonly paint: Paint,
  ) {
    // A pseudo-terminal without a size (script(1) in CI, some IDEs) says 0 x 0,
    // which log-update takes literally and draws nothing: assume 80 x 24 then.
    const sized = {
      write: (chunk: string) => err.write(chunk),
      get columns() {
        return err.columns || 80;
      },
      get rows() {
        return err.rows || 24;
      },
      isTTY: true,
    };
    this.draw = createLogUpdate(sized as unknown as NodeJS.WritableStream);
    this.timer = setInterval(() => {
      this.tick++;
      if (this.last) this.render(this.last);
    }, 100);
    this.timer.unref();
  }

  private render(s: Status): void {
    if (this.stopped) return;
    this.draw(renderFrame(s, this.now(), this.tick, this.err.columns || 80, this.paint));
  }

  update(s: Status): void {
    this.last = s;
    this.render(s);
  }

  log(line: string): void {
    if (this.stopped) this.err.write(`${line}\n`);
    else this.draw.persist(line);
  }

  stop(s: Status): void {
    if (this.stopped) return;
    clearInterval(this.timer);
    this.render(s);
    this.stopped = true;
    this.draw.done();
  }
}
