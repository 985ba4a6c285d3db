/**
 * Blob redirects with a service-account key: V4 signed URLs (GOOG4-RSA-SHA256),
 * made offline from a key generated here, checked by a verifier written from
 * Google's description of the V4 signing process (the emulator serves signed
 * URLs without checking them; see shared/research/clients-and-emulators.md,
 * section B.3 and appendix C), and fetched from the emulator.
 */
import { createHash, generateKeyPairSync, verify, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256Digest } from '../../src/digest.js';
import { GcsStorage } from '../../src/storage/gcs.js';
import { startGcsEmulator, type GcsEmulator } from '../helpers/gcs-emulator.js';

const CLIENT_EMAIL = 'nixery-test@demo-test.iam.gserviceaccount.com';
const TTL = 123;

interface Verdict {
  readonly signatureValid: boolean;
  /** Past X-Goog-Date + X-Goog-Expires at `nowMs`. */
  readonly expired: boolean;
  /** Before X-Goog-Date at `nowMs`. */
  readonly notYetValid: boolean;
}

/** RFC 3986 percent-encoding, as V4 canonical query strings want it. */
function rfc3986(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** `20261122T004758Z` -> milliseconds since the epoch. */
function parseGoogDate(d: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(d);
  if (!m) throw new Error(`bad X-Goog-Date ${d}`);
  return Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!, +m[6]!);
}

/** Milliseconds since the epoch -> `20261122T004758Z` (whole seconds, UTC). */
function googDate(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
}

/**
 * Checks a V4 signed GET URL as GCS does: rebuild the canonical request
 * (method, path, sorted query without the signature, the signed host header,
 * UNSIGNED-PAYLOAD), the string to sign (algorithm, date, scope, hash of the
 * canonical request), and verify the RSA-SHA256 signature with the public key.
 */
function verifyV4(urlString: string, publicKey: KeyObject, nowMs: number): Verdict {
  const u = new URL(urlString);
  const q = u.searchParams;
  const signature = q.get('X-Goog-Signature') ?? '';
  const date = q.get('X-Goog-Date') ?? '';
  const credential = q.get('X-Goog-Credential') ?? '';
  const signedHeaders = q.get('X-Goog-SignedHeaders') ?? '';
  const scope = credential.slice(credential.indexOf('/') + 1);
  const wellFormed =
    q.get('X-Goog-Algorithm') === 'GOOG4-RSA-SHA256' &&
    signedHeaders === 'host' &&
    scope === `${date.slice(0, 8)}/auto/storage/goog4_request` &&
    /^[0-9a-f]+$/.test(signature);
  const canonicalQuery = [...q.entries()]
    .filter(([k]) => k !== 'X-Goog-Signature')
    .map(([k, v]) => [rfc3986(k), rfc3986(v)] as const)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const canonicalRequest = ['GET', u.pathname, canonicalQuery, `host:${u.hostname}\n`, signedHeaders, 'UNSIGNED-PAYLOAD'].join('\n');
  const stringToSign = ['GOOG4-RSA-SHA256', date, scope, createHash('sha256').update(canonicalRequest).digest('hex')].join('\n');
  const signatureValid = wellFormed && verify('RSA-SHA256', Buffer.from(stringToSign), publicKey, Buffer.from(signature, 'hex'));
  const start = parseGoogDate(date);
  const expires = Number(q.get('X-Goog-Expires'));
  return { signatureValid, expired: nowMs > start + expires * 1000, notYetValid: nowMs < start };
}

let emu: GcsEmulator;
let dir: string;
let keyFile: string;
let publicKey: KeyObject;
let otherPublicKey: KeyObject;

beforeAll(async () => {
  emu = await startGcsEmulator();
  dir = await mkdtemp(path.join(tmpdir(), 'nixery-sa-'));
  const pair = generateKeyPairSync('rsa', { modulusLength: 2048 });
  publicKey = pair.publicKey;
  otherPublicKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey;
  keyFile = path.join(dir, 'service-account.json');
  await writeFile(
    keyFile,
    JSON.stringify({
      type: 'service_account',
      project_id: 'demo-test',
      private_key_id: '0123456789abcdef',
      private_key: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }),
      client_email: CLIENT_EMAIL,
      client_id: '1',
      token_uri: 'https://oauth2.googleapis.com/token',
    }),
  );
});
afterAll(async () => {
  await emu?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

let buckets = 0;
function freshBucket(): string {
  return `nixery-signed-${process.pid}-${++buckets}`;
}

describe('gcs blob redirects with a service-account key', () => {
  it('are V4 signed URLs for the object that verify, last exactly the configured TTL, and fetch the blob', async () => {
    const bucket = freshBucket();
    const s = await GcsStorage.open({ bucket, credentialsFile: keyFile, signedUrlTtlSeconds: TTL, apiEndpoint: emu.url });
    const bytes = Buffer.from('a layer, or something like it\n'.repeat(1000));
    const digest = await s.putBlob('application/vnd.oci.image.layer.v1.tar+gzip', bytes);
    const served = await s.serveBlob(digest);
    expect(served?.kind).toBe('redirect');
    const url = (served as { url: string }).url;
    expect(served?.info).toEqual({ size: bytes.length, mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip' });

    const u = new URL(url);
    expect(u.origin).toBe(emu.url);
    expect(u.pathname).toBe(`/${bucket}/blobs/sha256/${digest.slice(7)}`);
    expect(u.searchParams.get('X-Goog-Expires')).toBe(String(TTL));
    expect(u.searchParams.get('X-Goog-Credential')).toMatch(new RegExp(`^${CLIENT_EMAIL}/\\d{8}/auto/storage/goog4_request$`));
    expect(verifyV4(url, publicKey, Date.now())).toEqual({ signatureValid: true, expired: false, notYetValid: false });

    const res = await fetch(url);
    expect(res.status).toBe(200);
    expect(Buffer.from(await res.arrayBuffer()).equals(bytes)).toBe(true);
    const part = await fetch(url, { headers: { Range: 'bytes=2-6' } });
    expect(part.status).toBe(206);
    expect(await part.text()).toBe('layer');

    // No redirect, signed or not, for a blob that is not there.
    expect(await s.serveBlob(sha256Digest('not stored'))).toBeUndefined();
  });

  it('fail verification when tampered with or checked against another key', async () => {
    const s = await GcsStorage.open({ bucket: freshBucket(), credentialsFile: keyFile, signedUrlTtlSeconds: TTL, apiEndpoint: emu.url });
    const digest = await s.putBlob('application/octet-stream', Buffer.from('tamper me'));
    const url = ((await s.serveBlob(digest)) as { url: string }).url;
    const now = Date.now();
    expect(verifyV4(url, publicKey, now).signatureValid).toBe(true);

    const otherBlob = url.replace(digest.slice(7), sha256Digest('something else').slice(7));
    const longer = url.replace(`X-Goog-Expires=${TTL}`, 'X-Goog-Expires=604800');
    const u = new URL(url);
    u.searchParams.set('X-Goog-Date', u.searchParams.get('X-Goog-Date')!.replace(/T\d\d/, 'T23'));
    const sig = new URL(url).searchParams.get('X-Goog-Signature')!;
    const flipped = url.replace(sig, (sig[0] === 'a' ? 'b' : 'a') + sig.slice(1));
    for (const bad of [otherBlob, longer, u.toString(), flipped]) {
      expect(bad).not.toBe(url);
      expect(verifyV4(bad, publicKey, now).signatureValid).toBe(false);
    }
    expect(verifyV4(url, otherPublicKey, now).signatureValid).toBe(false);
  });

  it('expire TTL seconds after they were made, by the clock the storage was given', async () => {
    // An instant the storage is given that is not the real one: an hour
    // ahead (the signer refuses expiries in the real past, so the instant
    // cannot be a fixed date), on a whole second plus 400 ms to check that
    // signing rounds down.
    const made = (Math.floor(Date.now() / 1000) + 3600) * 1000 + 400;
    const s = await GcsStorage.open({
      bucket: freshBucket(),
      credentialsFile: keyFile,
      signedUrlTtlSeconds: TTL,
      apiEndpoint: emu.url,
      now: () => made,
    });
    const digest = await s.putBlob('application/octet-stream', Buffer.from('short-lived'));
    const url = ((await s.serveBlob(digest)) as { url: string }).url;
    expect(new URL(url).searchParams.get('X-Goog-Date')).toBe(googDate(made));
    expect(verifyV4(url, publicKey, made)).toEqual({ signatureValid: true, expired: false, notYetValid: false });
    expect(verifyV4(url, publicKey, made + (TTL - 1) * 1000).expired).toBe(false);
    expect(verifyV4(url, publicKey, made + TTL * 1000 + 1000)).toEqual({ signatureValid: true, expired: true, notYetValid: false });
    expect(verifyV4(url, publicKey, made - 60_000).notYetValid).toBe(true);
  });

  it('point at storage.googleapis.com in production, signed the same way (offline: signing is local)', async () => {
    const s = new GcsStorage({ bucket: 'nixery-layers', credentialsFile: keyFile, signedUrlTtlSeconds: 300 });
    const digest = sha256Digest('a production blob');
    const url = await s.blobUrl(digest);
    expect(url.startsWith(`https://storage.googleapis.com/nixery-layers/blobs/sha256/${digest.slice(7)}?`)).toBe(true);
    expect(new URL(url).searchParams.get('X-Goog-Expires')).toBe('300');
    expect(verifyV4(url, publicKey, Date.now())).toEqual({ signatureValid: true, expired: false, notYetValid: false });
  });
});
