import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { PlainDisplay, Tracker, derivationName, formatBytes, plainLine, renderFrame, rowOfPhase, type Status } from '../../../src/cli/progress-display.js';
import type { BuildEvent } from '../../../src/service/build.js';
import type { BuiltImage } from '../../../src/service/records.js';

const BASE = { image: 'shell/htop:latest', platform: 'linux/amd64', format: 'docker-archive', output: 'htop.tar' };

function sink(): { stream: Writable; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer, _e, cb) {
      text += chunk.toString();
      cb();
    },
  });
  return { stream, text: () => text };
}

const image = { revision: 'path:x', packages: [], system: 'x86_64-linux', platforms: [], manifests: {} } as unknown as BuiltImage;

/** A build as the service reports it: 2 derivations to build, 3 layers of which one is found in the cache. */
function buildEvents(at: (t: number) => number = (t) => t): BuildEvent[] {
  const p = 'amd64';
  return [
    { type: 'phase', at: at(100), phase: 'resolve', platform: p },
    { type: 'phase', at: at(300), phase: 'realise', platform: p },
    { type: 'realise', at: at(400), platform: p, done: 0, expected: 2, building: '/nix/store/0123456789abcdfghijklmnpqrsvwxyz-htop-3.2.2.drv' },
    { type: 'log', at: at(500), line: 'compiling...' },
    { type: 'realise', at: at(900), platform: p, done: 2, expected: 2 },
    { type: 'phase', at: at(1000), phase: 'closure', platform: p },
    { type: 'phase', at: at(1100), phase: 'group', platform: p },
    { type: 'phase', at: at(1200), phase: 'pack', platform: p },
    { type: 'pack-plan', at: at(1200), platform: p, layers: 3 },
    { type: 'layer', at: at(1300), platform: p, digest: 'sha256:a', size: 2_000_000, reused: true, cachedBytes: 0, description: 'a' },
    { type: 'layer', at: at(1500), platform: p, digest: 'sha256:b', size: 1_500_000, reused: false, cachedBytes: 0, description: 'b' },
    { type: 'layer', at: at(1600), platform: p, digest: 'sha256:c', size: 500, reused: false, cachedBytes: 0, description: 'c' },
    { type: 'phase', at: at(1700), phase: 'manifest', platform: p },
    { type: 'finished', at: at(1800), image },
  ];
}

/** Runs a build through a Tracker; returns the statuses seen and what a PlainDisplay printed. */
function run(): { statuses: Status[]; plain: string; frames: string[] } {
  let clock = 0;
  const now = () => clock;
  const out = sink();
  const plain = new PlainDisplay(out.stream, now, 0);
  const statuses: Status[] = [];
  const frames: string[] = [];
  const tracker = new Tracker(BASE, now, () => {
    statuses.push(tracker.status);
    plain.update(tracker.status);
    frames.push(renderFrame(tracker.status, clock, 0, 80));
  });
  plain.update(tracker.status);
  tracker.buildStarted({ id: 'b1', image: 'shell/htop:latest', packages: ['htop'], createdAt: 0 });
  for (const e of buildEvents()) {
    clock = e.at;
    tracker.buildEvent(e);
  }
  clock = 1900;
  tracker.writing(0, 3_500_000);
  clock = 2000;
  tracker.writing(1_000_000, 3_500_000);
  clock = 2400;
  tracker.writing(3_500_000, 3_500_000);
  tracker.finish();
  statuses.push(tracker.status);
  frames.push(renderFrame(tracker.status, clock, 0, 80));
  return { statuses, plain: out.text(), frames };
}

describe('plain lines (a log, CI)', () => {
  it('one line per step, in order, with the counts of the step before', () => {
    const lines = run().plain.trimEnd().split('\n');
    expect(lines).toEqual([
      '[  0.0s] resolving shell/htop:latest for linux/amd64',
      '[  0.3s] building with Nix',
      '[  1.0s] planning layers (built 2 of 2 derivations)',
      '[  1.2s] packing 3 layers',
      '[  1.9s] writing docker-archive htop.tar (3 layers, 1 reused, 3.5 MB)',
    ]);
  });

  it('an image found in the cache goes from resolving to writing', () => {
    let clock = 0;
    const out = sink();
    const plain = new PlainDisplay(out.stream, () => clock, 0);
    const t = new Tracker(BASE, () => clock, () => plain.update(t.status));
    plain.update(t.status);
    t.found(4, 2_600_000);
    clock = 150;
    t.writing(0, 2_600_000);
    t.finish();
    expect(out.text()).toBe(
      '[  0.0s] resolving shell/htop:latest for linux/amd64\n[  0.1s] writing docker-archive htop.tar (image found in the cache: 4 layers, 4 reused, 2.6 MB)\n',
    );
  });

  it('nothing to build when Nix has every output', () => {
    expect(plainLine({ ...run().statuses.at(-1)!, row: 'plan', derivations: { done: 0, expected: 0 } })).toBe('planning layers (nothing to build)');
  });
});

describe('the live frame (a terminal)', () => {
  it('shows the running step with its progress and the finished ones with their times', () => {
    const { frames, statuses } = run();
    const building = frames[statuses.findIndex((s) => s.row === 'build' && s.log.length > 0)]!;
    expect(building.split('\n')).toEqual([
      expect.stringMatching(/^✔ resolve shell\/htop:latest for linux\/amd64 +0\.3s$/),
      expect.stringMatching(/^⠋ build {3}0\/2 derivations · building htop-3\.2\.2 +0\.2s$/),
      '  compiling...',
      '· plan    closure and layers',
      '· pack    ',
      '· write   docker-archive htop.tar',
    ]);
    const packing = frames[statuses.findIndex((s) => s.row === 'pack' && s.layers?.done === 1)]!;
    expect(packing).toMatch(/⠋ pack {4}layer 2 of 3 · 2\.0 MB/);
    const writing = frames[statuses.findIndex((s) => s.write?.done === 1_000_000)]!;
    expect(writing).toMatch(/⠋ write {3}docker-archive htop\.tar · 1\.0 MB of 3\.5 MB +0\.1s/);
    const last = frames.at(-1)!.split('\n');
    expect(last).toEqual([
      expect.stringMatching(/^✔ resolve .* 0\.3s$/),
      expect.stringMatching(/^✔ build {3}2\/2 derivations +0\.7s$/),
      expect.stringMatching(/^✔ plan {4}closure and layers +0\.2s$/),
      expect.stringMatching(/^✔ pack {4}3 layers \(1 reused\) · 3\.5 MB +0\.7s$/),
      expect.stringMatching(/^✔ write {3}docker-archive htop\.tar +0\.5s$/),
    ]);
    // Nothing wider than the terminal.
    for (const f of frames) for (const l of f.split('\n')) expect(l.length).toBeLessThanOrEqual(80);
  });

  it('marks the failed step, and the steps a cached image skipped', () => {
    let clock = 0;
    const t = new Tracker(BASE, () => clock);
    t.buildStarted({ id: 'b', image: 'x', packages: [], createdAt: 0 });
    t.buildEvent({ type: 'phase', at: 0, phase: 'realise', platform: 'amd64' });
    clock = 2000;
    t.fail();
    expect(renderFrame(t.status, clock, 0, 80).split('\n')[1]).toMatch(/^✖ build {3}checking what Nix has to build +2\.0s$/);

    const c = new Tracker(BASE, () => clock);
    c.found(4, 2_600_000);
    c.writing(0, 1);
    const frame = renderFrame(c.status, clock, 0, 80).split('\n');
    expect(frame[1]).toBe('– build   image found in the cache');
    expect(frame[3]).toBe('– pack    4 layers (4 reused) · 2.6 MB');
  });

  it('cuts long details to the width', () => {
    const s: Status = { ...run().statuses.at(-1)!, row: 'write', output: `/very/long/${'x'.repeat(200)}.tar`, write: { done: 1, total: 2 } };
    for (const l of renderFrame(s, 0, 3, 60).split('\n')) expect(l.length).toBeLessThanOrEqual(60);
    expect(renderFrame(s, 0, 3, 60)).toContain('…');
  });
});

describe('helpers', () => {
  it('formats bytes, derivation names and maps phases to rows', () => {
    expect([formatBytes(17), formatBytes(2048), formatBytes(7_263_744), formatBytes(3_100_000_000)]).toEqual(['17 B', '2.0 kB', '7.3 MB', '3.10 GB']);
    expect(derivationName('/nix/store/0123456789abcdfghijklmnpqrsvwxyz-htop-3.2.2.drv')).toBe('htop-3.2.2');
    expect(derivationName('hello')).toBe('hello');
    expect([rowOfPhase('queued'), rowOfPhase('realise'), rowOfPhase('group'), rowOfPhase('manifest'), rowOfPhase('done')]).toEqual(['resolve', 'build', 'plan', 'pack', undefined]);
  });
});
