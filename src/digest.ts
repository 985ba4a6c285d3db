/**
 * Content digests as the registry protocol spells them (`sha256:<64 hex>`),
 * and a pass-through stream that hashes and counts what flows through it so
 * that a layer is digested in the same pass that writes it.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback, type TransformOptions } from 'node:stream';
import { InvalidDigestError } from './errors.js';

export type Digest = `sha256:${string}`;

// Only sha256 and only lowercase hex: the OCI spec allows other algorithms
// and encodings, but we never produce them, and accepting two spellings of
// one digest would give one blob two cache keys.
const DIGEST = /^sha256:[0-9a-f]{64}$/;

export function isDigest(s: string): s is Digest {
  return DIGEST.test(s);
}

/** Returns `s` typed as a Digest, or throws InvalidDigestError. */
export function parseDigest(s: string): Digest {
  if (!isDigest(s)) throw new InvalidDigestError(s);
  return s;
}

/** The hex part of a digest, e.g. for `blobs/sha256/<hex>`. */
export function digestHex(d: Digest): string {
  return d.slice('sha256:'.length);
}

export function sha256Digest(data: string | Uint8Array): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

export interface HashResult {
  readonly digest: Digest;
  readonly size: number;
}

/**
 * Passes bytes through unchanged while hashing and counting them. The
 * result is available from `result()` once the stream has flushed, and from
 * the `hashed` event.
 */
export class HashingStream extends Transform {
  #hash: Hash = createHash('sha256');
  #size = 0;
  #result: HashResult | undefined;

  constructor(opts?: TransformOptions) {
    super(opts);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.#hash.update(chunk);
    this.#size += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    this.#result = { digest: `sha256:${this.#hash.digest('hex')}`, size: this.#size };
    this.emit('hashed', this.#result);
    cb();
  }

  /** Bytes seen so far; the final count once the stream has ended. */
  get bytes(): number {
    return this.#size;
  }

  /** Throws if called before the stream has flushed: a partial hash is never a digest. */
  result(): HashResult {
    if (this.#result === undefined) throw new Error('HashingStream: result() before the stream ended');
    return this.#result;
  }
}

export function createHashingPassThrough(opts?: TransformOptions): HashingStream {
  return new HashingStream(opts);
}
