/**
 * Nix's machine-readable log (`--log-format internal-json`): one
 * `@nix {json}` line per event on stderr. We read three things from it and
 * never parse the human text:
 *
 * - a derivation finished building: the `stop` of an activity of type 105
 *   (build) whose `start` named the .drv in fields[0];
 * - a store path finished substituting: the `stop` of type 108
 *   (substitute), fields[0] being the path;
 * - build log lines: `result` type 101, fields[0];
 * - progress: a derivation started building (`start` of type 105, the .drv
 *   in fields[0]), and the counts of the builds activity (type 104) as its
 *   `result` type 105 (progress) gives them: fields [done, expected,
 *   running, failed] (checked against Nix 2.8's `nix-store --realise`).
 *
 * A stopped activity may have failed; whoever acts on it checks validity.
 * For error messages the same stream is turned back into the text Nix
 * would have printed (messages, "building ..." lines, log lines), with
 * colour codes removed, so a failed build's stderr reads as before.
 * Lines that are not `@nix` JSON (a builder writing to the terminal, an old
 * Nix ignoring the flag) are kept as text. Pure: no I/O.
 */

export type NixLogEvent =
  | { readonly kind: 'built'; readonly drv: string }
  | { readonly kind: 'substituted'; readonly path: string }
  | { readonly kind: 'log'; readonly line: string }
  | { readonly kind: 'building'; readonly drv: string }
  | { readonly kind: 'progress'; readonly done: number; readonly expected: number; readonly running: number; readonly failed: number };

const ACT_BUILDS = 104;
const ACT_BUILD = 105;
const RES_PROGRESS = 105;
const ACT_SUBSTITUTE = 108;
const RES_BUILD_LOG_LINE = 101;
/** Nix's verbosity levels: 0 error .. 3 info (shown by default), 4+ talkative and below. */
const LVL_INFO = 3;

interface NixJson {
  action?: string;
  id?: number;
  type?: number;
  level?: number;
  text?: string;
  msg?: string;
  fields?: unknown[];
}

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g;

export class NixLogParser {
  private readonly activities = new Map<number, { type: number; subject: string }>();
  private readonly text: string[] = [];
  private textBytes = 0;

  /** @param keepBytes how much human-readable text to keep for `transcript()` (the tail). */
  constructor(private readonly keepBytes = 16 * 1024) {}

  /** One stderr line (without its newline) -> the events it carries. */
  push(line: string): NixLogEvent[] {
    if (!line.startsWith('@nix ')) {
      if (line !== '') this.keep(line);
      return [];
    }
    let e: NixJson;
    try {
      e = JSON.parse(line.slice(5)) as NixJson;
    } catch {
      this.keep(line);
      return [];
    }
    switch (e.action) {
      case 'msg':
        if (typeof e.msg === 'string' && (e.level ?? 0) <= LVL_INFO) this.keep(e.msg.replace(ANSI, ''));
        return [];
      case 'start': {
        if (typeof e.text === 'string' && e.text !== '' && (e.level ?? 0) <= LVL_INFO) this.keep(`${e.text.replace(ANSI, '')}...`);
        const subject = e.fields?.[0];
        if (typeof e.id === 'number' && e.type === ACT_BUILDS) this.activities.set(e.id, { type: e.type, subject: '' });
        if (typeof e.id === 'number' && (e.type === ACT_BUILD || e.type === ACT_SUBSTITUTE) && typeof subject === 'string') {
          this.activities.set(e.id, { type: e.type, subject });
          if (e.type === ACT_BUILD) return [{ kind: 'building', drv: subject }];
        }
        return [];
      }
      case 'stop': {
        const a = typeof e.id === 'number' ? this.activities.get(e.id) : undefined;
        if (!a) return [];
        this.activities.delete(e.id as number);
        if (a.type === ACT_BUILDS) return [];
        return [a.type === ACT_BUILD ? { kind: 'built', drv: a.subject } : { kind: 'substituted', path: a.subject }];
      }
      case 'result': {
        const first = e.fields?.[0];
        if (e.type === RES_PROGRESS && typeof e.id === 'number' && this.activities.get(e.id)?.type === ACT_BUILDS) {
          const [done, expected, running, failed] = (e.fields ?? []).map((f) => (typeof f === 'number' ? f : 0));
          return [{ kind: 'progress', done: done ?? 0, expected: expected ?? 0, running: running ?? 0, failed: failed ?? 0 }];
        }
        if (e.type !== RES_BUILD_LOG_LINE || typeof first !== 'string') return [];
        const text = first.replace(ANSI, '');
        this.keep(text);
        return [{ kind: 'log', line: text }];
      }
      default:
        return [];
    }
  }

  /** The human-readable tail: what Nix would have printed without the flag. */
  transcript(): string {
    return this.text.join('\n');
  }

  private keep(line: string): void {
    this.text.push(line);
    this.textBytes += line.length + 1;
    while (this.textBytes > this.keepBytes && this.text.length > 1) {
      this.textBytes -= (this.text.shift() as string).length + 1;
    }
  }
}

/** Splits a byte stream into lines for the parser; the last partial line waits for its end. */
export class LineSplitter {
  private partial = '';

  push(chunk: string): string[] {
    const parts = (this.partial + chunk).split('\n');
    this.partial = parts.pop() as string;
    return parts;
  }

  end(): string[] {
    const rest = this.partial;
    this.partial = '';
    return rest === '' ? [] : [rest];
  }
}
