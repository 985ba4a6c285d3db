import { describe, expect, it } from 'vitest';
import { parseLsRemote } from '../../src/nix/sources.js';

const A = 'a'.repeat(40);
const B = 'b'.repeat(40);
const C = 'c'.repeat(40);

describe('parseLsRemote', () => {
  it('reads the default branch, branches and peeled annotated tags', () => {
    const out = [
      `ref: refs/heads/main\tHEAD`,
      `${A}\tHEAD`,
      `${A}\trefs/heads/main`,
      `${B}\trefs/heads/feature/x`,
      `${C}\trefs/tags/v1`, // the tag object...
      `${B}\trefs/tags/v1^{}`, // ...and the commit it points at
      `${A}\trefs/tags/light`,
      '',
    ].join('\n');
    const r = parseLsRemote(out);
    expect(r.head).toBe('refs/heads/main');
    expect(Object.fromEntries(r.refs)).toEqual({
      HEAD: A,
      'refs/heads/main': A,
      'refs/heads/feature/x': B,
      'refs/tags/v1': B,
      'refs/tags/light': A,
    });
  });

  it('copes with a repository without a symbolic HEAD', () => {
    expect(parseLsRemote(`${A}\trefs/heads/master\n`).head).toBeUndefined();
  });
});
