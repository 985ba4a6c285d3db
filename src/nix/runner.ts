/**
 * The Nix boundary. The server never parses Nix's human output: names are
 * resolved by `prepare-image/resolve-names.nix`, which answers in JSON with
 * missing names as data; the package index comes from
 * `prepare-image/list-packages.nix`, also JSON; builds are realised with
 * Nix's own timeouts; the closure graph comes from `nix path-info --json`.
 *
 * Every Nix process runs in its own process group. On timeout or abort the
 * group gets SIGTERM (nix-store then stops its builders, which run as nixbld
 * users in sessions of their own and would survive a SIGKILL of nix-store),
 * and SIGKILL if it is still there after a grace period.
 */
import { execa } from 'execa';
import { LineSplitter, NixLogParser, type NixLogEvent } from './nix-log.js';
import { signalGroup, watchGroup } from './process-group.js';
import path from 'node:path';
import pLimit from 'p-limit';
import { BuildAbortedError, NixBuildError, PackagesNotFoundError, type MissingPackage } from '../errors.js';
import { makeClosureGraph, type ClosureGraph } from '../layers/graph.js';

/** Where the package set comes from, as passed to prepare-image/load-pkgs.nix. */
export type NixSource =
  | { readonly srcType: 'path'; readonly path: string }
  | { readonly srcType: 'git'; readonly url: string; readonly rev: string; readonly ref?: string; readonly allRefs?: boolean }
  | { readonly srcType: 'tarball'; readonly url: string; readonly sha256?: string };

export interface ResolvedPackage {
  /** The name as requested. */
  readonly name: string;
  /** The attribute path it was found under (case-corrected, `_` prefixed). */
  readonly attr: string;
  readonly drv: string;
  readonly out: string;
  /** What the package set says about it (strings only; absent when it says nothing). */
  readonly meta?: PackageMeta;
}

/** A package's `meta` as far as images use it (default command, SBOM). */
export interface PackageMeta {
  /** `meta.mainProgram`: the program `Cmd` runs when the image has only this package. */
  readonly mainProgram?: string;
  /** `meta.license`: its SPDX identifier (`spdxId`), else its short or full name; several joined with " AND ". */
  readonly license?: string;
  readonly homepage?: string;
  readonly description?: string;
}

/**
 * One package a user can name in an image (prepare-image/list-packages.nix):
 * its real attribute path (`tools.greet`, `caseFixture._7zip`), and what the
 * package set says of it, when it says it as a non-empty string.
 */
export interface PackageEntry {
  readonly attr: string;
  readonly version?: string;
  readonly description?: string;
}

/**
 * The entries of a list-packages.nix answer. Anything that is not an object
 * with a non-empty string `attr` is dropped, and so are fields that are not
 * non-empty strings.
 */
export function parsePackageList(json: unknown): PackageEntry[] {
  if (!Array.isArray(json)) throw new Error('list-packages: expected a JSON array');
  const entries: PackageEntry[] = [];
  for (const raw of json as unknown[]) {
    if (typeof raw !== 'object' || raw === null) continue;
    const { attr, version, description } = raw as Record<string, unknown>;
    if (typeof attr !== 'string' || attr === '') continue;
    entries.push({
      attr,
      ...(typeof version === 'string' && version !== '' ? { version } : {}),
      ...(typeof description === 'string' && description !== '' ? { description } : {}),
    });
  }
  return entries;
}

export interface NixCallOptions {
  readonly signal?: AbortSignal;
}

export interface RealiseOptions extends NixCallOptions {
  /**
   * Called while Nix works: a derivation built, a path substituted, a build
   * log line. A stopped build may have failed: check before using its outputs.
   */
  readonly onEvent?: (event: NixLogEvent) => void;
}

export interface NixRunner {
  /** Names -> derivations, without building. Throws PackagesNotFoundError naming every missing one. */
  resolve(source: NixSource, packages: readonly string[], system: string, opts?: NixCallOptions): Promise<ResolvedPackage[]>;
  /**
   * Every package of the set an image can name (see list-packages.nix),
   * without instantiating anything. Throws NixBuildError when the set cannot
   * be evaluated.
   */
  listPackages(source: NixSource, system: string, opts?: NixCallOptions): Promise<PackageEntry[]>;
  /** Builds (or substitutes) the derivations. Throws NixBuildError. */
  realise(drvs: readonly string[], opts?: RealiseOptions): Promise<void>;
  /** The output paths of a derivation (valid or not). */
  outputs(drv: string, opts?: NixCallOptions): Promise<string[]>;
  /** The runtime closure of the given store paths. */
  closure(paths: readonly string[], opts?: NixCallOptions): Promise<ClosureGraph>;
  /** Throws when Nix cannot be run or its store cannot be opened (readiness). */
  check(): Promise<void>;
}

export interface NixRunnerStats {
  evaluations: number;
  realisations: number;
  pathInfos: number;
  /** Nix processes running right now. */
  running: number;
}

export interface ExecaNixRunnerOptions {
  /** Directory with load-pkgs.nix, resolve-names.nix and list-packages.nix. */
  readonly prepareImageDir: string;
  /** NIX_TIMEOUT: seconds a build may run, and stay silent. */
  readonly timeoutSeconds: number;
  /** No substituters: for package sets that are entirely local (no 4.5 s wait on an unreachable cache per call). */
  readonly offline: boolean;
  /** Extra arguments for the package set's import, e.g. { salt } in tests. */
  readonly importArgs?: Readonly<Record<string, unknown>>;
  /** NIX_CONFIG lines for every Nix process (the server's own NIX_CONFIG, from the configuration). */
  readonly nixConfig?: string;
  /** Extra environment for Nix (XDG_CACHE_HOME in tests). */
  readonly env?: Readonly<Record<string, string>>;
}

/** Keep the end of stderr: that is where Nix puts the error. */
const STDERR_LIMIT = 16 * 1024;

function tailOf(text: string, limit = STDERR_LIMIT): string {
  const t = text.trim();
  return t.length <= limit ? t : `…${t.slice(t.length - limit)}`;
}

/**
 * Parses `nix path-info --json` output: Nix 2.8 prints an array of objects
 * with a `path` field, Nix >= 2.19 an object keyed by store path, and the
 * newest experimental format drops the /nix/store/ prefix.
 */
export function parsePathInfo(json: unknown, storeDir = '/nix/store'): { path: string; narSize: number; references: string[] }[] {
  const full = (p: string) => (p.startsWith('/') ? p : `${storeDir}/${p}`);
  const one = (p: unknown, v: unknown) => {
    if (typeof p !== 'string' || typeof v !== 'object' || v === null) throw new Error('path-info: unexpected entry');
    const o = v as { narSize?: unknown; references?: unknown };
    if (typeof o.narSize !== 'number' || !Array.isArray(o.references)) {
      throw new Error(`path-info: ${p} has no narSize/references (is it valid?)`);
    }
    return { path: full(p), narSize: o.narSize, references: o.references.map((r) => full(String(r))) };
  };
  if (Array.isArray(json)) return json.map((e) => one((e as { path?: unknown }).path, e));
  if (typeof json === 'object' && json !== null) {
    return Object.entries(json).map(([p, v]) => {
      if (v === null) throw new Error(`path-info: ${p} is not valid in the store`);
      return one(p, v);
    });
  }
  throw new Error('path-info: expected a JSON array or object');
}

const META_KEYS = ['mainProgram', 'license', 'homepage', 'description'] as const;

/**
 * The `meta` of one resolve-names.nix answer: only its known string fields
 * (resolve-names.nix already drops the rest; this keeps anything else out of
 * images and SBOMs). Undefined when nothing is known.
 */
export function parseMeta(raw: unknown): PackageMeta | undefined {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return undefined;
  const meta: { -readonly [K in keyof PackageMeta]?: string } = {};
  for (const k of META_KEYS) {
    const v = (raw as Record<string, unknown>)[k];
    if (typeof v === 'string' && v !== '') meta[k] = v;
  }
  return Object.keys(meta).length > 0 ? meta : undefined;
}

interface ResolveAnswer {
  ok: (Omit<ResolvedPackage, 'meta'> & { meta?: unknown })[];
  errors: { name: string; kind: MissingPackage['kind']; candidates?: string[] }[];
}

export class ExecaNixRunner implements NixRunner {
  readonly stats: NixRunnerStats = { evaluations: 0, realisations: 0, pathInfos: 0, running: 0 };
  private readonly realiseQueue: ReturnType<typeof pLimit>;
  /** Nix processes running now: how to stop each, and its end. */
  private readonly live = new Map<number, { stop: () => void; ended: Promise<unknown> }>();

  constructor(private readonly opts: ExecaNixRunnerOptions) {
    // Nix 2.8 re-checks a busy store-path lock only every 5 s: queueing
    // realisations of overlapping closures beats racing them.
    this.realiseQueue = pLimit(1);
  }

  private nixEnv(): Record<string, string> {
    const extra = this.opts.offline ? 'substituters =' : '';
    const nixConfig = [this.opts.nixConfig, extra].filter(Boolean).join('\n');
    return { ...(nixConfig ? { NIX_CONFIG: nixConfig } : {}), ...this.opts.env };
  }

  /**
   * Runs one Nix command in its own process group. `limitSeconds` is a
   * backstop above Nix's own timeout: evaluation and lock waits are not
   * covered by --timeout.
   */
  private async run(
    command: string,
    args: string[],
    limitSeconds: number,
    signal?: AbortSignal,
    nixLog?: { parser: NixLogParser; onEvent?: (event: NixLogEvent) => void },
  ): Promise<string> {
    if (signal?.aborted) throw new BuildAbortedError(String(signal.reason ?? 'aborted'));
    const child = execa(command, args, {
      detached: true,
      reject: false,
      env: this.nixEnv(),
      stdin: 'ignore',
      maxBuffer: 256 * 1024 * 1024,
      // We stop the group ourselves (below): execa's own kill only reaches the leader.
      cleanup: true,
    });
    if (nixLog) {
      const lines = new LineSplitter();
      const take = (line: string) => {
        for (const event of nixLog.parser.push(line)) nixLog.onEvent?.(event);
      };
      child.stderr?.on('data', (d: Buffer) => lines.push(d.toString('utf8')).forEach(take));
      child.stderr?.on('end', () => lines.end().forEach(take));
    }
    this.stats.running++;
    const group = watchGroup(child.pid, limitSeconds, signal);
    if (child.pid !== undefined) this.live.set(child.pid, { stop: group.stop, ended: child.catch(() => undefined) });
    try {
      const r = await child;
      group.done();
      const stoppedFor = group.stoppedFor;
      if (stoppedFor === 'abort') throw new BuildAbortedError(String(signal?.reason ?? 'aborted'));
      const stderr = typeof r.stderr === 'string' ? r.stderr : '';
      if (r.exitCode !== 0 || stoppedFor === 'timeout') {
        const name = `${path.basename(command)} ${args[0] ?? ''}`.trim();
        // Nix: 100 = build failed, 101 = build failed and at least one timed out.
        const timedOut = stoppedFor === 'timeout' || r.exitCode === 101;
        throw new NixBuildError(name, r.exitCode, timedOut, tailOf(nixLog ? nixLog.parser.transcript() : stderr));
      }
      return typeof r.stdout === 'string' ? r.stdout : '';
    } finally {
      group.done();
      if (child.pid !== undefined) this.live.delete(child.pid);
      this.stats.running--;
    }
  }

  private sourceArgs(source: NixSource): string[] {
    const { srcType, ...srcArgs } = source;
    return [
      '--argstr', 'srcType', srcType,
      '--argstr', 'srcArgs', JSON.stringify(srcArgs),
      '--argstr', 'importArgs', JSON.stringify(this.opts.importArgs ?? {}),
    ];
  }

  async resolve(source: NixSource, packages: readonly string[], system: string, opts: NixCallOptions = {}): Promise<ResolvedPackage[]> {
    this.stats.evaluations++;
    const stdout = await this.run(
      'nix-instantiate',
      [
        // --read-write-mode: without it --eval computes drvPath but does not write
        // the .drv, and realising a never-built package fails with "missing derivation".
        '--eval', '--strict', '--json', '--read-write-mode',
        path.join(this.opts.prepareImageDir, 'resolve-names.nix'),
        ...this.sourceArgs(source),
        // Names reach Nix only as a JSON string, never as Nix source.
        '--argstr', 'packages', JSON.stringify(packages),
        '--argstr', 'system', system,
      ],
      this.opts.timeoutSeconds + 1,
      opts.signal,
    );
    // Only parsed after a zero exit: on errors Nix leaves partial JSON on stdout.
    const answer = JSON.parse(stdout) as ResolveAnswer;
    if (answer.errors.length > 0) {
      throw new PackagesNotFoundError(
        answer.errors.map((e) => ({ name: e.name, kind: e.kind, ...(e.candidates ? { candidates: e.candidates } : {}) })),
      );
    }
    return answer.ok.map(({ name, attr, drv, out, meta }) => {
      const m = parseMeta(meta);
      return { name, attr, drv, out, ...(m ? { meta: m } : {}) };
    });
  }

  async listPackages(source: NixSource, system: string, opts: NixCallOptions = {}): Promise<PackageEntry[]> {
    this.stats.evaluations++;
    const stdout = await this.run(
      'nix-instantiate',
      [
        // Read-only (no --read-write-mode): nothing is instantiated, no .drv written.
        '--eval', '--strict', '--json',
        path.join(this.opts.prepareImageDir, 'list-packages.nix'),
        ...this.sourceArgs(source),
        '--argstr', 'system', system,
      ],
      // A whole package set (nixpkgs: ~100,000 names) takes far longer than
      // resolving a few names; this runs in the background, once per revision.
      Math.max(this.opts.timeoutSeconds, LIST_TIMEOUT_SECONDS) + 1,
      opts.signal,
    );
    return parsePackageList(JSON.parse(stdout));
  }

  async realise(drvs: readonly string[], opts: RealiseOptions = {}): Promise<void> {
    if (drvs.length === 0) return;
    const t = String(this.opts.timeoutSeconds);
    await this.realiseQueue(() => {
      this.stats.realisations++;
      return this.run(
        'nix-store',
        // internal-json: which derivation finished when, and the build log
        // lines, without parsing Nix's human output (nix-log.ts).
        ['--realise', '--log-format', 'internal-json', '--timeout', t, '--max-silent-time', t, ...drvs],
        this.opts.timeoutSeconds + 1,
        opts.signal,
        { parser: new NixLogParser(), ...(opts.onEvent ? { onEvent: opts.onEvent } : {}) },
      );
    });
  }

  async outputs(drv: string, opts: NixCallOptions = {}): Promise<string[]> {
    const stdout = await this.run('nix-store', ['--query', '--outputs', drv], this.opts.timeoutSeconds + 1, opts.signal);
    return stdout.split('\n').filter((l) => l.startsWith('/'));
  }

  async closure(paths: readonly string[], opts: NixCallOptions = {}): Promise<ClosureGraph> {
    this.stats.pathInfos++;
    const stdout = await this.run(
      'nix',
      ['--extra-experimental-features', 'nix-command', 'path-info', '--json', '--recursive', ...paths],
      this.opts.timeoutSeconds + 1,
      opts.signal,
    );
    return makeClosureGraph(paths, parsePathInfo(JSON.parse(stdout)));
  }

  /**
   * Stops every Nix process still running (SIGTERM to its group, SIGKILL
   * after the grace period) and waits until they are gone: on shutdown or a
   * crash, no build outlives the server.
   */
  async close(): Promise<void> {
    const all = [...this.live.values()];
    for (const p of all) p.stop();
    await Promise.all(all.map((p) => p.ended));
  }

  /** Last resort for a process 'exit' handler, which cannot wait: SIGKILL to every group. */
  killAll(): void {
    for (const pid of this.live.keys()) signalGroup(pid, 'SIGKILL');
  }

  async check(): Promise<void> {
    await this.run('nix-instantiate', ['--eval', '--expr', 'builtins.nixVersion'], CHECK_TIMEOUT_SECONDS);
  }
}

/** Seconds a readiness check of Nix may take. */
const CHECK_TIMEOUT_SECONDS = 10;
/** Seconds listing a package set may take at least (NIX_TIMEOUT when that is longer). */
const LIST_TIMEOUT_SECONDS = 600;

