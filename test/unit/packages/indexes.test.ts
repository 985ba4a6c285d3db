/**
 * PackageIndexes with the fake Nix runner and memory storage: states, the
 * record, failures remembered then retried, the in-memory LRU.
 */
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/log.js';
import { NixBuildError } from '../../../src/errors.js';
import type { NixSource, PackageEntry } from '../../../src/nix/runner.js';
import type { ResolvedSource } from '../../../src/nix/sources.js';
import { MemoryStorage } from '../../../src/storage/memory.js';
import { PackageIndexes, decodePackageIndex, encodePackageIndex, packageIndexKey } from '../../../src/packages/indexes.js';
import { PackageIndex } from '../../../src/packages/index.js';
import { FakeNixRunner } from '../../helpers/fake-nix.js';

const SYSTEM = 'x86_64-linux';
const nix: NixSource = { srcType: 'path', path: '/pkgs' };
const rev = (revision: string): ResolvedSource => ({ revision, nix });

function setup(opts: { maxIndexes?: number } = {}) {
  const runner = new FakeNixRunner('/nonexistent', { htop: {}, jq: {}, 'tools.greet': {} });
  const storage = new MemoryStorage();
  let clock = 1_000_000;
  const indexes = new PackageIndexes({ nix: runner, storage, log: silentLogger(), now: () => clock }, opts);
  return { runner, storage, indexes, advance: (ms: number) => (clock += ms) };
}

describe('PackageIndexes', () => {
  it('answers building at once, then ready, listing once per revision and system', async () => {
    const { runner, indexes, storage } = setup();
    expect(indexes.get(rev('r1'), SYSTEM)).toEqual({ state: 'building' });
    expect(indexes.get(rev('r1'), SYSTEM)).toEqual({ state: 'building' });
    const done = await indexes.wait(rev('r1'), SYSTEM);
    expect(done.state).toBe('ready');
    const now = indexes.get(rev('r1'), SYSTEM);
    expect(now.state === 'ready' && now.index.search('ht').map((e) => e.attr)).toEqual(['htop']);
    expect(runner.stats.evaluations).toBe(1);
    // the record is there, under the documented key
    const record = await storage.getRecord('packages', packageIndexKey('r1', SYSTEM));
    expect(record).toBeDefined();
    expect(decodePackageIndex(record!).size).toBe(3);
    // another system or revision is another index
    expect(indexes.get(rev('r1'), 'aarch64-linux').state).toBe('building');
    expect(indexes.get(rev('r2'), SYSTEM).state).toBe('building');
    await indexes.wait(rev('r2'), SYSTEM);
    expect(runner.stats.evaluations).toBe(3);
  });

  it('reads the index a previous instance stored, without Nix', async () => {
    const first = setup();
    await first.indexes.wait(rev('r1'), SYSTEM);
    const runner = new FakeNixRunner('/nonexistent', {});
    const second = new PackageIndexes({ nix: runner, storage: first.storage, log: silentLogger(), now: Date.now });
    expect(second.get(rev('r1'), SYSTEM)).toEqual({ state: 'building' });
    const s = await second.wait(rev('r1'), SYSTEM);
    expect(s.state === 'ready' && s.index.size).toBe(3);
    expect(runner.stats.evaluations).toBe(0);
  });

  it('lists again when the record is unreadable, and rewrites it', async () => {
    const { runner, storage, indexes } = setup();
    const key = packageIndexKey('r1', SYSTEM);
    await storage.putRecord('packages', key, Buffer.from('not an index'));
    expect((await indexes.wait(rev('r1'), SYSTEM)).state).toBe('ready');
    expect(runner.stats.evaluations).toBe(1);
    expect(decodePackageIndex((await storage.getRecord('packages', key))!).size).toBe(3);
  });

  it('remembers a failure for a minute, then tries again', async () => {
    const { runner, indexes, advance } = setup();
    runner.listError = new NixBuildError('nix-instantiate --eval', 1, false, "error: attribute 'x' missing");
    expect(indexes.get(rev('r1'), SYSTEM).state).toBe('building');
    const failed = await indexes.wait(rev('r1'), SYSTEM);
    expect(failed.state).toBe('failed');
    expect(failed.state === 'failed' && failed.error).toContain('nix-instantiate');
    runner.listError = undefined;
    advance(59_000);
    expect(indexes.get(rev('r1'), SYSTEM)).toEqual(failed);
    expect(runner.stats.evaluations).toBe(1);
    advance(1_000);
    expect(indexes.get(rev('r1'), SYSTEM).state).toBe('building');
    expect((await indexes.wait(rev('r1'), SYSTEM)).state).toBe('ready');
    expect(runner.stats.evaluations).toBe(2);
  });

  it('keeps the last few indexes in memory; an evicted one comes back from storage', async () => {
    const { runner, indexes } = setup({ maxIndexes: 2 });
    for (const r of ['r1', 'r2', 'r3']) await indexes.wait(rev(r), SYSTEM);
    expect(runner.stats.evaluations).toBe(3);
    expect(indexes.get(rev('r3'), SYSTEM).state).toBe('ready');
    expect(indexes.get(rev('r2'), SYSTEM).state).toBe('ready');
    expect(indexes.get(rev('r1'), SYSTEM).state).toBe('building'); // evicted
    expect((await indexes.wait(rev('r1'), SYSTEM)).state).toBe('ready');
    expect(runner.stats.evaluations).toBe(3); // from the record
  });

  it('runs one Nix listing at a time', async () => {
    let running = 0;
    let most = 0;
    const slow = {
      async listPackages(): Promise<PackageEntry[]> {
        running++;
        most = Math.max(most, running);
        await new Promise((r) => setTimeout(r, 20));
        running--;
        return [{ attr: 'htop' }];
      },
    };
    const indexes = new PackageIndexes({ nix: slow, storage: new MemoryStorage(), log: silentLogger(), now: Date.now });
    await Promise.all(['a', 'b', 'c'].map((r) => indexes.wait(rev(r), SYSTEM)));
    expect(most).toBe(1);
  });

  it('encodes records as gzipped JSON and reads plain JSON too', () => {
    const index = new PackageIndex([{ attr: 'htop', version: '3.2.2' }]);
    const bytes = encodePackageIndex(index);
    expect(bytes.subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
    expect([...decodePackageIndex(bytes).entries()]).toEqual([{ attr: 'htop', version: '3.2.2' }]);
    expect(decodePackageIndex(Buffer.from(JSON.stringify(index))).size).toBe(1);
    expect(packageIndexKey('r', 'x86_64-linux')).toMatch(/^[0-9a-f]{64}$/);
    expect(packageIndexKey('r', 'x86_64-linux')).not.toBe(packageIndexKey('r', 'aarch64-linux'));
  });
});
