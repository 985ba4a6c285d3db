/**
 * Shared setup for tests that run the real Nix against the demo package set.
 */
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { cp, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { ExecaNixRunner, type ExecaNixRunnerOptions, type NixSource } from '../../src/nix/runner.js';

export const ROOT = path.resolve(import.meta.dirname, '../..');
export const DEMO_PKGS = path.join(ROOT, 'nix/demo-pkgs');
export const PREPARE_IMAGE = path.join(ROOT, 'prepare-image');
export const demoSource: NixSource = { srcType: 'path', path: DEMO_PKGS };

const run = promisify(execFile);

export function makeRunner(opts: Partial<ExecaNixRunnerOptions> = {}): ExecaNixRunner {
  return new ExecaNixRunner({ prepareImageDir: PREPARE_IMAGE, timeoutSeconds: 60, offline: true, ...opts });
}

/** A fresh salt: every demo package gets new store paths, so the test builds for real. */
export function freshSalt(): string {
  return `test-${randomUUID()}`;
}

/** `nix-build nix/demo-pkgs -A a -A b`, returning the output paths in order. */
export async function buildDemo(attrs: readonly string[], args: Readonly<Record<string, string>> = {}): Promise<string[]> {
  const argv = [DEMO_PKGS, '--no-out-link', ...Object.entries(args).flatMap(([k, v]) => ['--argstr', k, v]), ...attrs.flatMap((a) => ['-A', a])];
  const { stdout } = await run('nix-build', argv, { maxBuffer: 1 << 24 });
  return stdout.trim().split('\n');
}

/** Processes (pid and command line) whose command line contains `needle`, other than ourselves. */
export async function processesMatching(needle: string): Promise<string[]> {
  const { stdout } = await run('ps', ['-eo', 'pid=,args=']);
  return stdout
    .split('\n')
    .filter((l) => l.includes(needle) && !l.includes('ps -eo'))
    .map((l) => l.trim());
}

async function git(dir: string, ...args: string[]): Promise<string> {
  const { stdout } = await run('git', ['-c', 'user.email=t@example.com', '-c', 'user.name=t', ...args], { cwd: dir });
  return stdout.trim();
}

/** A git repository at `dir` holding a copy of the demo package set with content of its own (a fresh `-source` path). */
export async function demoRepo(dir: string): Promise<NixSource & { srcType: 'git' }> {
  await cp(DEMO_PKGS, dir, { recursive: true });
  await writeFile(path.join(dir, 'marker'), freshSalt());
  await git(dir, 'init', '-q', '-b', 'main');
  await git(dir, 'add', '-A');
  await git(dir, 'commit', '-qm', 'demo');
  return { srcType: 'git', url: `file://${dir}`, rev: await git(dir, 'rev-parse', 'HEAD'), ref: 'refs/heads/main' };
}
