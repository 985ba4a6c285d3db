/**
 * Composition root: the only reader of process.env. Builds the adapters,
 * starts the HTTP server and shuts down cleanly on SIGTERM/SIGINT.
 */
import { serve } from '@hono/node-server';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config } from './config.js';
import { ConfigError, StorageError } from './errors.js';
import { createApp } from './http/app.js';
import { packLayer } from './layers/pack.js';
import { parsePopularity, type Popularity } from './layers/popularity.js';
import { storePathEntries, symlinkLayerEntries } from './layers/walk.js';
import { createLogger, type Logger } from './log.js';
import { createMetrics, type Metrics } from './metrics.js';
import { ExecaNixRunner } from './nix/runner.js';
import { ChannelSource, GitSource, PathSource, type PackageSourceResolver } from './nix/sources.js';
import { ImageService } from './service/build-image.js';
import type { StorageBackend } from './storage/backend.js';
import { FilesystemStorage } from './storage/filesystem.js';
import { GcsStorage } from './storage/gcs.js';
import { probeStorageDirectory } from './storage/xattr-probe.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

async function isDirectory(p: string): Promise<string | undefined> {
  try {
    return (await stat(p)).isDirectory() ? undefined : `${p} is not a directory`;
  } catch {
    return `${p} does not exist`;
  }
}

function fail(lines: readonly string[]): never {
  for (const l of lines) process.stderr.write(`nixery-ts: configuration error: ${l}\n`);
  process.exit(2);
}

async function loadPopularity(url: string | undefined): Promise<Popularity> {
  if (url === undefined) return new Map();
  try {
    const text = url.startsWith('file:')
      ? await readFile(fileURLToPath(url), 'utf8')
      : await (async () => {
          const res = await fetch(url, { signal: AbortSignal.timeout(30_000) });
          if (!res.ok) throw new Error(`HTTP ${res.status}`);
          return res.text();
        })();
    return parsePopularity(JSON.parse(text));
  } catch (e) {
    fail([`NIX_POPULARITY_URL: cannot load ${url}: ${(e as Error).message}`]);
  }
}

function makeSource(config: Config): PackageSourceResolver {
  switch (config.pkgs.kind) {
    case 'path':
      return new PathSource(config.pkgs.path);
    case 'git':
      return new GitSource(config.pkgs.repository, config.revisionTtlSeconds);
    case 'channel':
      return new ChannelSource(config.pkgs.channel, config.pkgs.urlTemplate, config.pkgs.revisionUrlTemplate, config.revisionTtlSeconds);
  }
}

async function makeStorage(config: Config): Promise<StorageBackend> {
  if (config.storage.kind === 'filesystem') return FilesystemStorage.open(config.storage.path);
  try {
    return await GcsStorage.open(config.storage);
  } catch (e) {
    if (e instanceof StorageError) fail([`GCS_BUCKET: ${e.message}`]);
    throw e;
  }
}

async function main(): Promise<void> {
  const log: Logger = createLogger({ level: process.env['NIXERY_LOG_LEVEL'] });
  let config: Config;
  try {
    config = await loadConfig(process.env, {
      storageDirectory: probeStorageDirectory,
      packagePath: isDirectory,
      directory: isDirectory,
    });
  } catch (e) {
    if (e instanceof ConfigError) fail(e.problems);
    throw e;
  }

  const shutdown = new AbortController();
  const storage = await makeStorage(config);
  const source = makeSource(config);
  const nix = new ExecaNixRunner({
    prepareImageDir: config.prepareImageDir ?? path.join(ROOT, 'prepare-image'),
    timeoutSeconds: config.nixTimeoutSeconds,
    offline: config.offline,
    importArgs: config.importArgs,
  });
  // The service reports builds to the metrics, and the metrics read the service's counters.
  let metrics: Metrics | undefined;
  const service = new ImageService({
    nix,
    storage,
    source,
    log,
    reader: { storePathEntries: (p) => storePathEntries(p), symlinkLayerEntries: (r) => symlinkLayerEntries(r) },
    pack: (entries, out, opts) => packLayer(entries, out, opts),
    popularity: await loadPopularity(config.popularityUrl),
    layerBudget: config.layerBudget,
    shutdown: shutdown.signal,
    onBuildFinished: (outcome, seconds) => metrics?.observeBuild(outcome, seconds),
  });
  metrics = createMetrics({
    service: () => service.stats,
    singleFlightWaiters: () => service.flights.waiters,
    nixRunning: () => nix.stats.running,
  });
  const app = createApp({
    service,
    storage,
    log,
    tags: () => source.tags(),
    startPage: { webDir: config.webDir ?? path.join(ROOT, 'web'), source: source.description },
    stats: () => ({ ...service.stats, nix: { ...nix.stats }, singleFlightWaiters: service.flights.waiters }),
    ops: { metrics, checks: { storage: () => storage.check(), nix: () => nix.check() } },
  });

  const server = serve({ fetch: app.fetch, hostname: config.host, port: config.port }, (info) => {
    log.info({ host: info.address, port: info.port, source: source.description, storage: config.storage.kind }, 'listening');
  });

  let stopping = false;
  const stop = (sig: string) => {
    if (stopping) return;
    stopping = true;
    const graceMs = config.shutdownGraceSeconds * 1000;
    log.info({ signal: sig, graceMs }, 'shutting down: no new connections, running builds get a grace period');
    server.close(() => {
      log.info('stopped');
      process.exit(0);
    });
    // Builds still running after the grace period are aborted, which kills
    // their Nix process groups; half-written blobs stay in staging only.
    setTimeout(() => {
      shutdown.abort(new Error('server shutting down'));
      if ('closeAllConnections' in server) setTimeout(() => (server as import('node:http').Server).closeAllConnections(), 1000).unref();
    }, graceMs).unref();
    if ('closeIdleConnections' in server) (server as import('node:http').Server).closeIdleConnections();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

await main();
