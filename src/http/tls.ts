/**
 * The server's own TLS: a PEM certificate chain and key from files, checked
 * as a pair at start, and picked up again when they change (cert-manager and
 * Kubernetes Secrets rewrite them in place), so renewed certificates are
 * served to the next connection without a restart.
 */
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Server } from 'node:https';
import { createSecureContext } from 'node:tls';

export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
}

export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly fingerprint: string;
}

/** Reads and checks the pair; throws an Error with one line saying what is wrong. */
export async function loadTls(files: TlsFiles): Promise<TlsMaterial> {
  const read = async (file: string, what: string) => {
    try {
      return await readFile(file);
    } catch (e) {
      throw new Error(`cannot read the ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  const cert = await read(files.certFile, 'certificate');
  const key = await read(files.keyFile, 'key');
  try {
    createSecureContext({ cert, key });
  } catch (e) {
    // OpenSSL's words, e.g. "key values mismatch" or "no start line".
    throw new Error(`${files.certFile} and ${files.keyFile} are not a usable certificate and key: ${(e as Error).message.split('\n')[0]}`);
  }
  return { cert, key, fingerprint: createHash('sha256').update(cert).update(key).digest('hex') };
}

/**
 * Polls the files and gives the server the new pair when both changed into
 * a usable one; a half-written or bad pair is reported and the old one kept.
 */
export function watchTls(
  server: Server,
  files: TlsFiles,
  current: TlsMaterial,
  report: { reloaded(): void; failed(message: string): void },
  pollMs = 2000,
): () => void {
  let fingerprint = current.fingerprint;
  let lastError: string | undefined;
  let busy = false;
  const timer = setInterval(() => {
    if (busy) return;
    busy = true;
    loadTls(files)
      .then((next) => {
        lastError = undefined;
        if (next.fingerprint === fingerprint) return;
        server.setSecureContext({ cert: next.cert, key: next.key });
        fingerprint = next.fingerprint;
        report.reloaded();
      })
      .catch((e: Error) => {
        if (e.message !== lastError) report.failed(e.message);
        lastError = e.message;
      })
      .finally(() => (busy = false));
  }, pollMs);
  timer.unref();
  return () => clearInterval(timer);
}
