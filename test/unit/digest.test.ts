import { createHash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { createHashingPassThrough, digestHex, HashingStream, isDigest, parseDigest, sha256Digest } from '../../src/digest.js';
import { InvalidDigestError } from '../../src/errors.js';

const HEX = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';

describe('parseDigest', () => {
  it('accepts sha256 with 64 lowercase hex digits', () => {
    expect(parseDigest(`sha256:${HEX}`)).toBe(`sha256:${HEX}`);
    expect(isDigest(`sha256:${HEX}`)).toBe(true);
  });

  it.each([
    ['empty', ''],
    ['no algorithm', HEX],
    ['uppercase hex', `sha256:${HEX.toUpperCase()}`],
    ['uppercase algorithm', `SHA256:${HEX}`],
    ['too short', `sha256:${HEX.slice(1)}`],
    ['too long', `sha256:${HEX}0`],
    ['other algorithm', `sha512:${HEX}`],
    ['not hex', `sha256:${HEX.slice(1)}g`],
    ['trailing newline', `sha256:${HEX}\n`],
    ['leading space', ` sha256:${HEX}`],
    ['nonsense', 'sha256:totallywrong'],
  ])('rejects %s', (_label, s) => {
    expect(isDigest(s)).toBe(false);
    expect(() => parseDigest(s)).toThrow(InvalidDigestError);
  });

  it('carries the offending string in the error', () => {
    try {
      parseDigest('sha256:nope');
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidDigestError);
      expect((err as InvalidDigestError).digest).toBe('sha256:nope');
      expect((err as InvalidDigestError).code).toBe('DIGEST_INVALID');
    }
  });

  it('digestHex strips the algorithm', () => {
    expect(digestHex(`sha256:${HEX}`)).toBe(HEX);
  });
});

describe('HashingStream', () => {
  it('passes bytes through unchanged and reports their sha256 and count', async () => {
    const chunks = [Buffer.from('hello '), Buffer.alloc(100_000, 7), Buffer.from('world')];
    const whole = Buffer.concat(chunks);
    const hashing = createHashingPassThrough();
    const seen: Buffer[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        seen.push(chunk);
        cb();
      },
    });
    const hashed = new Promise((resolve) => hashing.once('hashed', resolve));
    await pipeline(Readable.from(chunks), hashing, sink);
    expect(Buffer.concat(seen).equals(whole)).toBe(true);
    const want = { digest: `sha256:${createHash('sha256').update(whole).digest('hex')}`, size: whole.length };
    expect(hashing.result()).toEqual(want);
    expect(await hashed).toEqual(want);
    expect(hashing.bytes).toBe(whole.length);
  });

  it('hashes the empty stream', async () => {
    const hashing = new HashingStream();
    await pipeline(Readable.from([]), hashing, new Writable({ write: (_c, _e, cb) => cb() }));
    expect(hashing.result()).toEqual({ digest: `sha256:${HEX}`, size: 0 });
    expect(sha256Digest('')).toBe(`sha256:${HEX}`);
  });

  it('refuses to give a result before the end', () => {
    const hashing = new HashingStream();
    hashing.write(Buffer.from('partial'));
    expect(() => hashing.result()).toThrow(/before the stream ended/);
    hashing.destroy();
  });
});
