import { describe, expect, it } from 'vitest';
import { parsePackageList } from '../../../src/nix/runner.js';

describe('parsePackageList', () => {
  it('keeps entries with an attr, and only their non-empty string fields', () => {
    expect(
      parsePackageList([
        { attr: 'htop', version: '3.2.2', description: 'Interactive process viewer' },
        { attr: 'motd' },
        { attr: 'odd', version: 5, description: '', extra: 'dropped' },
        { attr: '' },
        { version: '1' },
        'htop',
        null,
      ]),
    ).toEqual([
      { attr: 'htop', version: '3.2.2', description: 'Interactive process viewer' },
      { attr: 'motd' },
      { attr: 'odd' },
    ]);
  });

  it('refuses an answer that is not a list', () => {
    expect(() => parsePackageList({ ok: [] })).toThrow(/expected a JSON array/);
  });
});
