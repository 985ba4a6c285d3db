/**
 * A fake NixRunner driven by a table of packages and their closures, with
 * real files under a temporary `<root>/nix/store` so that layers are packed
 * from disk by the real walker and packer. For in-process tests of the
 * service and the HTTP app on machines without Nix. Faults (a build that
 * fails, a build that waits for the test) are injected by name.
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { BuildAbortedError, NixBuildError, PackagesNotFoundError } from '../../src/errors.js';
import { makeClosureGraph, type ClosureGraph } from '../../src/layers/graph.js';
import type { NixCallOptions, NixRunner, PackageEntry, RealiseOptions, NixRunnerStats, NixSource, ResolvedPackage } from '../../src/nix/runner.js';

export interface FakePackage {
  /** Programs put in bin/, each a small shell script. */
  readonly bin?: readonly string[];
  /** Other attribute names of the table whose outputs this one references at run time. */
  readonly deps?: readonly string[];
  /** Extra bytes in share/<name>/data, to give the path some size. */
  readonly dataBytes?: number;
}

/** Nix base32 hash part of a fake store path: stable for a name. */
function hashPart(name: string): string {
  const alphabet = '0123456789abcdfghijklmnpqrsvwxyz';
  const h = createHash('sha256').update(`fake:${name}`).digest();
  let s = '';
  for (let i = 0; i < 32; i++) s += alphabet[h[i]! % 32];
  return s;
}

export function fakeStorePath(attr: string): string {
  return `/nix/store/${hashPart(attr)}-${attr.replace(/[^A-Za-z0-9+\-._?=]/g, '-')}-1.0`;
}

export class FakeNixRunner implements NixRunner {
  readonly stats: NixRunnerStats = { evaluations: 0, realisations: 0, pathInfos: 0, running: 0 };
  /** Every package list resolve() was asked for, in order. */
  readonly resolved: (readonly string[])[] = [];
  /** Names whose build fails with a NixBuildError. */
  readonly failing = new Set<string>();
  /** Names whose build waits until the test resolves the gate. */
  readonly gates = new Map<string, Promise<void>>();
  /** Names that exist for one Nix system only (as nixpkgs' meta.platforms): missing for every other. */
  readonly onlyOn = new Map<string, string>();
  /** Set: listPackages() fails with it (a package set that cannot be listed). */
  listError: Error | undefined;

  constructor(
    readonly root: string,
    private readonly table: Readonly<Record<string, FakePackage>>,
  ) {}

  /** Writes every package's files under `<root>/nix/store`. */
  async layOut(): Promise<void> {
    for (const [attr, p] of Object.entries(this.table)) {
      const dir = path.join(this.root, fakeStorePath(attr));
      await mkdir(path.join(dir, 'bin'), { recursive: true });
      for (const b of p.bin ?? []) {
        await writeFile(path.join(dir, 'bin', b), `#!/bin/sh\necho ${b} from ${attr}\n`, { mode: 0o555 });
      }
      if (p.dataBytes) {
        await mkdir(path.join(dir, 'share', attr), { recursive: true });
        await writeFile(path.join(dir, 'share', attr, 'data'), Buffer.alloc(p.dataBytes, attr));
      }
    }
  }

  private find(name: string): string | undefined {
    if (name in this.table) return name;
    return Object.keys(this.table).find((k) => k.toLowerCase() === name.toLowerCase());
  }

  async resolve(_source: NixSource, packages: readonly string[], system: string, opts: NixCallOptions = {}): Promise<ResolvedPackage[]> {
    this.stats.evaluations++;
    this.resolved.push([...packages]);
    if (opts.signal?.aborted) throw new BuildAbortedError('aborted');
    const exists = (p: string) => {
      const attr = this.find(p);
      return attr !== undefined && (this.onlyOn.get(attr) ?? system) === system;
    };
    const missing = packages.filter((p) => !exists(p));
    if (missing.length > 0) throw new PackagesNotFoundError(missing.map((name) => ({ name, kind: 'not_found' as const })));
    return packages.map((name) => {
      const attr = this.find(name)!;
      const out = fakeStorePath(attr);
      return { name, attr, drv: `${out}.drv`, out };
    });
  }

  /** The table's names (those of `system`), each version 1.0 like its store path. */
  async listPackages(_source: NixSource, system: string, opts: NixCallOptions = {}): Promise<PackageEntry[]> {
    this.stats.evaluations++;
    if (opts.signal?.aborted) throw new BuildAbortedError('aborted');
    if (this.listError) throw this.listError;
    return Object.keys(this.table)
      .filter((attr) => (this.onlyOn.get(attr) ?? system) === system)
      .map((attr) => ({ attr, version: '1.0' }));
  }

  async realise(drvs: readonly string[], opts: RealiseOptions = {}): Promise<void> {
    this.stats.realisations++;
    this.stats.running++;
    try {
      for (const drv of drvs) {
        const attr = Object.keys(this.table).find((a) => `${fakeStorePath(a)}.drv` === drv);
        if (attr === undefined) throw new Error(`fake nix: unknown derivation ${drv}`);
        const gate = this.gates.get(attr);
        if (gate) await gate;
        if (opts.signal?.aborted) throw new BuildAbortedError('aborted');
        if (this.failing.has(attr)) throw new NixBuildError('nix-store --realise', 100, false, `builder for '${drv}' failed with exit code 1`);
        opts.onEvent?.({ kind: 'log', line: `building ${attr}` });
        opts.onEvent?.({ kind: 'built', drv });
      }
    } finally {
      this.stats.running--;
    }
  }

  async outputs(drv: string): Promise<string[]> {
    return [drv.replace(/\.drv$/, '')];
  }

  async closure(paths: readonly string[]): Promise<ClosureGraph> {
    this.stats.pathInfos++;
    const byPath = new Map(Object.keys(this.table).map((a) => [fakeStorePath(a), a] as const));
    const seen = new Map<string, { path: string; narSize: number; references: string[] }>();
    const visit = (p: string) => {
      if (seen.has(p)) return;
      const attr = byPath.get(p);
      if (attr === undefined) throw new Error(`fake nix: ${p} is not in the table`);
      const pkg = this.table[attr]!;
      const references = (pkg.deps ?? []).map(fakeStorePath);
      seen.set(p, { path: p, narSize: 4096 + (pkg.dataBytes ?? 0), references });
      references.forEach(visit);
    };
    paths.forEach(visit);
    return makeClosureGraph(paths, seen.values());
  }

  async check(): Promise<void> {}

  async close(): Promise<void> {}

  killAll(): void {}
}
