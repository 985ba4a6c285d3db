/**
 * The registry in one process without Nix: the real ImageService and HTTP
 * app, on in-memory storage, a fake Nix runner with real files in a
 * temporary store, and a stub package source. Tests talk to it with
 * `app.request()`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createApp } from '../../src/http/app.js';
import { packLayer } from '../../src/layers/pack.js';
import { storePathEntries, symlinkLayerEntries } from '../../src/layers/walk.js';
import { silentLogger, type Logger } from '../../src/log.js';
import type { PackageSourceResolver } from '../../src/nix/sources.js';
import { ImageService } from '../../src/service/build-image.js';
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

export function stubSource(tags: readonly string[] = ['latest']): PackageSourceResolver {
  return {
    description: 'stub package source',
    async resolve() {
      return { revision: FAKE_REVISION, nix: { srcType: 'path', path: '/nonexistent/stub-pkgs' } };
    },
    async tags() {
      return [...tags];
    },
  };
}

export interface InProcessRegistry {
  readonly app: ReturnType<typeof createApp>;
  readonly service: ImageService;
  readonly storage: MemoryStorage;
  readonly nix: FakeNixRunner;
  close(): Promise<void>;
}

export async function inProcessRegistry(opts: { packages?: Readonly<Record<string, FakePackage>>; log?: Logger } = {}): Promise<InProcessRegistry> {
  const root = await mkdtemp(path.join(tmpdir(), 'nixery-fake-store-'));
  const nix = new FakeNixRunner(root, opts.packages ?? FAKE_PACKAGES);
  await nix.layOut();
  const storage = new MemoryStorage();
  const log = opts.log ?? silentLogger();
  const source = stubSource();
  const service = new ImageService({
    nix,
    storage,
    source,
    log,
    reader: {
      storePathEntries: (p) => storePathEntries(p, { root }),
      symlinkLayerEntries: (r) => symlinkLayerEntries(r, { root }),
    },
    pack: (entries, out, o) => packLayer(entries, out, o),
    popularity: new Map(),
    layerBudget: 16,
  });
  const app = createApp({
    service,
    storage,
    log,
    tags: () => source.tags(),
    startPage: { webDir: path.resolve(import.meta.dirname, '../../web'), source: source.description },
    stats: () => ({ ...service.stats, nix: { ...nix.stats } }),
  });
  return { app, service, storage, nix, close: () => rm(root, { recursive: true, force: true }) };
}
