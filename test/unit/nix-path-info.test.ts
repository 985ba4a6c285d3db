import { describe, expect, it } from 'vitest';
import { parsePathInfo } from '../../src/nix/runner.js';

const A = '/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a-1';
const B = '/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b-1';

describe('parsePathInfo', () => {
  it('reads the Nix 2.8 array form', () => {
    expect(parsePathInfo([
      { path: A, narSize: 10, references: [A, B], narHash: 'sha256-x' },
      { path: B, narSize: 5, references: [] },
    ])).toEqual([
      { path: A, narSize: 10, references: [A, B] },
      { path: B, narSize: 5, references: [] },
    ]);
  });

  it('reads the Nix >= 2.19 object form keyed by path', () => {
    expect(parsePathInfo({ [A]: { narSize: 10, references: [B] }, [B]: { narSize: 5, references: [] } })).toEqual([
      { path: A, narSize: 10, references: [B] },
      { path: B, narSize: 5, references: [] },
    ]);
  });

  it('adds the store directory to the newest form without it', () => {
    expect(parsePathInfo({ [A.slice(11)]: { narSize: 1, references: [B.slice(11)] } })).toEqual([
      { path: A, narSize: 1, references: [B] },
    ]);
  });

  it('rejects invalid paths and garbage', () => {
    expect(() => parsePathInfo({ [A]: null })).toThrow(/not valid/);
    expect(() => parsePathInfo('x')).toThrow();
    expect(() => parsePathInfo([{ path: A }])).toThrow(/narSize/);
  });
});
