/**
 * The registry in one process without Nix: the real ImageService and HTTP
 * app, on in-memory storage, a fake Nix runner with real files in a
 * temporary store, and a stub package source. Tests talk to it with
 * `app.request()`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Htpasswd } from '../../src/auth/htpasswd.js';
import { parseConfig } from '../../src/config.js';
import { authenticator } from '../../src/http/auth.js';
import { createApp } from '../../src/http/app.js';
import { binPrograms, storePathSegments, symlinkLayerEntries } from '../../src/layers/walk.js';
import { silentLogger, type Logger } from '../../src/log.js';
import type { PackageSourceResolver } from '../../src/nix/sources.js';
import { ROOT, createRuntime, type Runtime } from '../../src/runtime.js';
import { MemoryStorage } from '../../src/storage/memory.js';
import { FakeNixRunner, type FakePackage } from './fake-nix.js';

/** A few packages, like the demo set's, with a shared dependency. */
export const FAKE_PACKAGES: Readonly<Record<string, FakePackage>> = {
  glibc: { dataBytes: 20_000 },
  hello: { bin: ['hello'], deps: ['glibc'] },
  htop: { bin: ['htop'], deps: ['glibc'], dataBytes: 5_000 },
  jq: { bin: ['jq'], deps: ['glibc'] },
  bashInteractive: { bin: ['bash', 'sh'], deps: ['glibc'] },
  coreutils: { bin: ['env', 'ls'], deps: ['glibc'] },
  moreutils: { bin: ['sponge'], deps: ['glibc'] },
  nano: { bin: ['nano'], deps: ['glibc'] },
  cacert: { dataBytes: 1_000 },
  'iana-etc': { dataBytes: 1_000 },
};

export const FAKE_REVISION = 'f'.repeat(40);

/** A package source that knows one revision; `fail` makes resolving throw (an unreachable remote). */
export function stubSource(opts: { tags?: readonly string[]; fail?: () => Error | undefined } = {}): PackageSourceResolver & { resolves: number } {
  return {
    description: 'stub package source',
    resolves: 0,
    async resolve() {
      this.resolves++;
      const e = opts.fail?.();
      if (e) throw e;
      return { revision: FAKE_REVISION, nix: { srcType: 'path', path: '/nonexistent/stub-pkgs' } };
    },
    async tags() {
      return [...(opts.tags ?? ['latest'])];
    },
    close() {},
  };
}

export interface InProcessRegistry {
  readonly app: ReturnType<typeof createApp>;
  readonly runtime: Runtime;
  readonly service: Runtime['service'];
  readonly storage: MemoryStorage;
  readonly nix: FakeNixRunner;
  readonly source: ReturnType<typeof stubSource>;
  readonly users: Htpasswd | undefined;
  close(): Promise<void>;
}

export async function inProcessRegistry(
  opts: {
    packages?: Readonly<Record<string, FakePackage>>;
    log?: Logger;
    env?: Record<string, string>;
    source?: ReturnType<typeof stubSource>;
    now?: () => number;
    webDir?: string;
    /** An htpasswd file: the app then authenticates with the policy of env.NIXERY_ANONYMOUS. */
    htpasswd?: string;
    /** Storage shared with another registry (two replicas on one bucket); a fresh one by default. */
    storage?: MemoryStorage;
    /** Ends the API's event streams when aborted (what the server does on shutdown). */
    closing?: AbortSignal;
  } = {},
): Promise<InProcessRegistry> {
  const root = await mkdtemp(path.join(tmpdir(), 'nixery-fake-store-'));
  const nix = new FakeNixRunner(root, opts.packages ?? FAKE_PACKAGES);
  await nix.layOut();
  const storage = opts.storage ?? new MemoryStorage(opts.now ? { now: opts.now } : {});
  const log = opts.log ?? silentLogger();
  const source = opts.source ?? stubSource();
  // The configuration a server would have; its package path and storage are replaced below.
  const config = parseConfig({
    NIXERY_PKGS_PATH: '/nonexistent/stub-pkgs',
    STORAGE_PATH: '/nonexistent/storage',
    NIXERY_LAYER_BUDGET: '16',
    ...(opts.htpasswd ? { NIXERY_AUTH_HTPASSWD: opts.htpasswd } : {}),
    ...opts.env,
  });
  const users = opts.htpasswd ? await Htpasswd.open(opts.htpasswd, { pollMs: 100 }) : undefined;
  const runtime = await createRuntime(config, log, {
    nix,
    storage,
    source,
    reader: {
      storePathSegments: (p) => storePathSegments(p, { root }),
      symlinkLayerEntries: (r) => symlinkLayerEntries(r, { root }),
      binPrograms: (p) => binPrograms(p, { root }),
    },
    ...(opts.now ? { now: opts.now } : {}),
  });
  const app = createApp({
    service: runtime.service,
    storage,
    log,
    tags: () => source.tags(),
    startPage: { webDir: opts.webDir ?? path.join(ROOT, 'web'), source: source.description, recentErrors: () => runtime.recentErrors.list() },
    stats: () => ({ ...runtime.stats, nix: { ...nix.stats } }),
    now: runtime.now,
    auth: authenticator(users, config.anonymous, runtime.now),
    platforms: { all: config.platforms, default: config.defaultPlatform },
    api: { registry: runtime.builds, source, packages: runtime.packages, ...(opts.closing ? { closing: opts.closing } : {}) },
  });
  return {
    app,
    runtime,
    service: runtime.service,
    storage,
    nix,
    source,
    users,
    async close() {
      users?.close();
      await runtime.close();
      await rm(root, { recursive: true, force: true });
    },
  };
}
