/**
 * A throwaway certificate authority and server certificates for tests, made
 * with the openssl command line (`openssl ca`, as an operator would), plus an
 * HTTPS request that verifies the server against a given CA.
 *
 * Validity runs from two years ago to 3650 days from now. The start is in
 * the past on purpose: under `faketime -f '+400d'` openssl and Node see the
 * shifted clock but the Go clients (podman, skopeo, docker, containerd) do
 * not (they read the time without libc), so a certificate that starts "now"
 * for openssl would not be valid yet for them. Keys are ECDSA P-256: fast to
 * make, and accepted by Node, Go and OpenSSL.
 */
import { execFile } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import https from 'node:https';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

async function openssl(args: readonly string[]): Promise<void> {
  await run('openssl', args as string[], { timeout: 30_000 });
}

export interface Ca {
  /** PEM certificate file. */
  readonly cert: string;
  /** PEM private key file. */
  readonly key: string;
  /** The certificate's PEM text (what `ca` options and cert dirs take). */
  readonly pem: string;
  /** The `openssl ca` configuration (its database lives beside it). */
  readonly config: string;
}

export interface ServerCert {
  readonly cert: string;
  readonly key: string;
  readonly pem: string;
  /** As Node's `getPeerCertificate().fingerprint256` reports it (AB:CD:…). */
  readonly fingerprint256: string;
}

const DAY_MS = 86_400_000;

/** `openssl ca` validity flags: UTCTime (YYMMDDHHMMSSZ), from two years ago to 3650 days ahead. */
function validity(): string[] {
  const utc = (ms: number) => new Date(ms).toISOString().replace(/[-:T]/g, '').slice(2, 14) + 'Z';
  const now = Date.now();
  return ['-startdate', utc(now - 730 * DAY_MS), '-enddate', utc(now + 3650 * DAY_MS)];
}

const newKey = (file: string) => openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file]);

/** A self-signed CA in `dir` (files `<name>.crt`, `<name>.key`, and its `openssl ca` state). */
export async function makeCa(dir: string, name = 'ca'): Promise<Ca> {
  const state = path.join(dir, `${name}.db`);
  await mkdir(path.join(state, 'issued'), { recursive: true });
  await writeFile(path.join(state, 'index.txt'), '');
  await writeFile(path.join(state, 'serial'), '1000\n');
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const config = path.join(dir, `${name}.cnf`);
  // An explicit configuration: the system openssl.cnf's defaults would add (or duplicate) extensions.
  await writeFile(config, [
    '[ca]',
    'default_ca = test_ca',
    '[test_ca]',
    `database = ${state}/index.txt`,
    `new_certs_dir = ${state}/issued`,
    `serial = ${state}/serial`,
    'default_md = sha256',
    'policy = policy_any',
    'unique_subject = no',
    'copy_extensions = none',
    '[policy_any]',
    'commonName = supplied',
    'organizationName = optional',
    '[req]',
    'distinguished_name = dn',
    'prompt = no',
    '[dn]',
    `CN = nixery-ts test CA ${name} ${randomBytes(4).toString('hex')}`,
    '[v3_ca]',
    'basicConstraints = critical, CA:TRUE',
    'keyUsage = critical, keyCertSign, cRLSign',
    'subjectKeyIdentifier = hash',
    '',
  ].join('\n'));
  await newKey(key);
  await openssl(['req', '-new', '-config', config, '-key', key, '-out', csr]);
  await openssl(['ca', '-batch', '-selfsign', '-config', config, '-keyfile', key, '-in', csr, '-out', cert, '-extensions', 'v3_ca', '-rand_serial', '-notext', '-preserveDN', ...validity()]);
  return { cert, key, pem: await readFile(cert, 'utf8'), config };
}

/**
 * A server certificate for 127.0.0.1 (subjectAltName IP:127.0.0.1 and
 * DNS:localhost) signed by `ca`: files `<name>.crt` and `<name>.key` in `dir`.
 */
export async function makeServerCert(dir: string, ca: Ca, name: string): Promise<ServerCert> {
  await mkdir(dir, { recursive: true });
  const cert = path.join(dir, `${name}.crt`);
  const key = path.join(dir, `${name}.key`);
  const csr = path.join(dir, `${name}.csr`);
  const ext = path.join(dir, `${name}.ext`);
  await writeFile(ext, [
    'basicConstraints = critical, CA:FALSE',
    'keyUsage = critical, digitalSignature, keyEncipherment',
    'extendedKeyUsage = serverAuth',
    'subjectAltName = IP:127.0.0.1, DNS:localhost',
    'subjectKeyIdentifier = hash',
    'authorityKeyIdentifier = keyid',
    '',
  ].join('\n'));
  await newKey(key);
  await openssl(['req', '-new', '-key', key, '-out', csr, '-subj', `/CN=127.0.0.1/O=nixery-ts test ${name}`]);
  await openssl(['ca', '-batch', '-config', ca.config, '-cert', ca.cert, '-keyfile', ca.key, '-in', csr, '-out', cert, '-extfile', ext, '-rand_serial', '-notext', '-preserveDN', ...validity()]);
  const pem = await readFile(cert, 'utf8');
  return { cert, key, pem, fingerprint256: new X509Certificate(pem).fingerprint256 };
}

/**
 * A directory in the containers-certs.d layout (podman `--cert-dir`, skopeo
 * `--src-cert-dir`): `ca.crt` is trusted as a CA.
 */
export async function makeCertDir(dir: string, ca: Ca): Promise<string> {
  await mkdir(dir, { recursive: true });
  await writeFile(path.join(dir, 'ca.crt'), ca.pem);
  return dir;
}

export interface HttpsResponse {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

/**
 * GET over HTTPS on a new connection, verifying the server against `ca`
 * only (not the system's trust store). Rejects on a TLS or socket error.
 */
export function httpsGet(url: string, ca: string, headers: Record<string, string> = {}): Promise<HttpsResponse> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, headers, agent: false, timeout: 30_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
  });
}
