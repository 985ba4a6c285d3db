import { describe, expect, it } from 'vitest';
import { chooseDrops, type ImageUse } from '../../../src/gc/policy.js';

const DAY = 86_400_000;
const NOW = 4_000_000_000_000;
const sizes: Record<string, number> = { shared: 100, a: 10, b: 20, c: 30 };
const size = (d: string) => sizes[d] ?? 0;
const img = (key: string, daysAgo: number, blobs: string[]): ImageUse => ({ key, lastPulledAt: NOW - daysAgo * DAY, blobs });

describe('chooseDrops', () => {
  const images = [img('A', 10, ['shared', 'a']), img('B', 3, ['shared', 'b']), img('C', 0.5, ['shared', 'c'])];

  it('keeps everything without a policy and projects the bytes the images reference once', () => {
    const r = chooseDrops(images, size, 0, NOW, { protectMs: 0 });
    expect(r.drop).toEqual([]);
    expect(r.projectedBytes).toBe(160);
  });

  it('drops images not pulled for keepMs, oldest first', () => {
    const r = chooseDrops(images, size, 0, NOW, { keepMs: 2 * DAY, protectMs: 0 });
    expect(r.drop.map((i) => i.key)).toEqual(['A', 'B']);
    expect(r.projectedBytes).toBe(130);
  });

  it('drops the least recently pulled until the bytes fit, counting shared blobs until their last holder goes', () => {
    expect(chooseDrops(images, size, 0, NOW, { maxBytes: 150, protectMs: 0 }).drop.map((i) => i.key)).toEqual(['A']);
    expect(chooseDrops(images, size, 0, NOW, { maxBytes: 130, protectMs: 0 }).drop.map((i) => i.key)).toEqual(['A', 'B']);
    // The shared 100 bytes go only with the last image.
    const all = chooseDrops(images, size, 0, NOW, { maxBytes: 50, protectMs: 0 });
    expect(all.drop.map((i) => i.key)).toEqual(['A', 'B', 'C']);
    expect(all.projectedBytes).toBe(0);
  });

  it('never drops an image pulled within protectMs, even over the limit, and projects the excess', () => {
    const r = chooseDrops(images, size, 0, NOW, { maxBytes: 50, keepMs: 0, protectMs: DAY });
    expect(r.drop.map((i) => i.key)).toEqual(['A', 'B']);
    expect(r.keep.map((i) => i.key)).toEqual(['C']);
    expect(r.imageBytes).toBe(130);
  });

  it('does not drop images for bytes that stay anyway (young unreferenced or leased blobs), but projects them', () => {
    // 160 bytes of images fit under 200; 1000 young bytes do not, and dropping cannot free them.
    const r = chooseDrops(images, size, 1000, NOW, { maxBytes: 200, protectMs: 0 });
    expect(r.drop).toEqual([]);
    expect(r.imageBytes).toBe(160);
    expect(r.projectedBytes).toBe(1160);
    expect(chooseDrops(images, size, 1000, NOW, { maxBytes: 150, protectMs: 0 }).drop.map((i) => i.key)).toEqual(['A']);
  });
});
