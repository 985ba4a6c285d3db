import { describe, expect, it } from 'vitest';
import { parseMeta } from '../../../src/nix/runner.js';

describe('parseMeta', () => {
  it('keeps the four known string fields', () => {
    expect(parseMeta({ mainProgram: 'jq', license: 'MIT', homepage: 'https://jqlang.github.io/jq/', description: 'd' })).toEqual({
      mainProgram: 'jq',
      license: 'MIT',
      homepage: 'https://jqlang.github.io/jq/',
      description: 'd',
    });
  });

  it('drops other keys, other types and empty strings', () => {
    expect(parseMeta({ mainProgram: 3, license: ['MIT'], homepage: '', description: 'd', position: 'x.nix:1', broken: false })).toEqual({
      description: 'd',
    });
  });

  it('gives undefined when nothing is known', () => {
    for (const raw of [undefined, null, {}, [], 'MIT', { mainProgram: null }]) expect(parseMeta(raw)).toBeUndefined();
  });
});
