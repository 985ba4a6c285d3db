import { describe, expect, it } from 'vitest';
import { LineSplitter, NixLogParser } from '../../../src/nix/nix-log.js';

// Captured from Debian's Nix 2.8: `nix-store --realise --log-format internal-json` of broken-build.
const DRV = '/nix/store/051ynfxh6y1q68dbljz6lr8ylk4f7fvf-broken-build-1.0.drv';
const BROKEN = [
  '@nix {"action":"start","id":90013924589568,"level":6,"text":"querying info about missing paths","type":0}',
  '@nix {"action":"stop","id":90013924589568}',
  '@nix {"action":"msg","level":3,"msg":"this derivation will be built:"}',
  `@nix {"action":"msg","level":3,"msg":"  ${DRV}"}`,
  '@nix {"action":"start","id":90013924589570,"level":0,"text":"","type":104}',
  '@nix {"action":"result","fields":[0,1,0,0],"id":90013924589570,"type":105}',
  `@nix {"action":"start","fields":["${DRV}","",1,1],"id":90013924589573,"level":3,"text":"building '${DRV}'","type":105}`,
  '@nix {"action":"result","fields":["broken-build: this package fails on purpose"],"id":90013924589573,"type":101}',
  '@nix {"action":"stop","id":90013924589573}',
  '@nix {"action":"stop","id":90013924589570}',
  `@nix {"action":"msg","column":null,"file":null,"level":0,"line":null,"msg":"\\u001b[31;1merror:\\u001b[0m builder for '\\u001b[35;1m${DRV}\\u001b[0m' failed with exit code 1","raw_msg":"x"}`,
];

describe('NixLogParser', () => {
  it('reports progress, the derivation being built, build log lines, a finished build and a substituted path, and nothing for other activities', () => {
    const p = new NixLogParser();
    const events = BROKEN.flatMap((l) => p.push(l));
    expect(events).toEqual([
      { kind: 'progress', done: 0, expected: 1, running: 0, failed: 0 },
      { kind: 'building', drv: DRV },
      { kind: 'log', line: 'broken-build: this package fails on purpose' },
      { kind: 'built', drv: DRV },
    ]);
    // Progress results of other activities (type 103, copying) are not builds' progress.
    const other = new NixLogParser();
    other.push('@nix {"action":"start","id":3,"level":0,"text":"","type":103}');
    expect(other.push('@nix {"action":"result","fields":[0,2,0,0],"id":3,"type":105}')).toEqual([]);
    const sub = new NixLogParser();
    expect(sub.push('@nix {"action":"start","id":7,"level":4,"text":"copying x","type":108,"fields":["/nix/store/abc-x","https://cache"]}')).toEqual([]);
    expect(sub.push('@nix {"action":"stop","id":7}')).toEqual([{ kind: 'substituted', path: '/nix/store/abc-x' }]);
    expect(sub.push('@nix {"action":"stop","id":7}')).toEqual([]);
  });

  it('turns the stream back into the text Nix would print, without colour codes, for error messages', () => {
    const p = new NixLogParser();
    BROKEN.forEach((l) => p.push(l));
    expect(p.transcript()).toBe(
      [
        'this derivation will be built:',
        `  ${DRV}`,
        `building '${DRV}'...`,
        'broken-build: this package fails on purpose',
        `error: builder for '${DRV}' failed with exit code 1`,
      ].join('\n'),
    );
  });

  it('keeps plain lines and broken JSON as text, and only the tail when the text grows', () => {
    const p = new NixLogParser(40);
    expect(p.push('warning: something plain')).toEqual([]);
    expect(p.push('@nix {not json')).toEqual([]);
    p.push('@nix {"action":"msg","level":0,"msg":"error: the last words"}');
    expect(p.transcript()).toBe('@nix {not json\nerror: the last words');
  });
});

describe('LineSplitter', () => {
  it('holds a partial line until its end arrives', () => {
    const s = new LineSplitter();
    expect(s.push('a\nb')).toEqual(['a']);
    expect(s.push('c\nd\n')).toEqual(['bc', 'd']);
    expect(s.push('tail')).toEqual([]);
    expect(s.end()).toEqual(['tail']);
  });
});
