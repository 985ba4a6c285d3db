/**
 * The server's entry point and, with the future command line, the only
 * reader of process.env: configuration -> runtime -> HTTP server, and a
 * clean shutdown on SIGTERM/SIGINT or a crash. Importing it does nothing;
 * running it (`node dist/main.js`) serves. `dist/launch.cjs` (what
 * `npm start` runs) sizes libuv's thread pool first and then calls main().
 */
import { serve } from '@hono/node-server';
import type { Server } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config, type Env } from './config.js';
import { ConfigError } from './errors.js';
import { Htpasswd } from './auth/htpasswd.js';
import { createApp } from './http/app.js';
import { authenticator } from './http/auth.js';
import { loadTls, watchTls, type TlsMaterial } from './http/tls.js';
import { clientErrorResponse } from './http/errcode.js';
import { createLogger } from './log.js';
import { createMetrics } from './metrics.js';
import { ROOT, createRuntime, type Runtime } from './runtime.js';
import { onBuildOutcome, onBuildTimings } from './service/observers.js';
import { probeStorageDirectory } from './storage/xattr-probe.js';

async function isDirectory(p: string): Promise<string | undefined> {
  try {
    return (await stat(p)).isDirectory() ? undefined : `${p} is not a directory`;
  } catch {
    return `${p} does not exist`;
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/** Exit code of a configuration mistake, as documented in the README. */
const CONFIG_EXIT = 2;

export async function main(env: Env): Promise<void> {
  let config: Config;
  let runtime: Runtime;
  let users: Htpasswd | undefined;
  let tls: TlsMaterial | undefined;
  const log = (level: string | undefined) => createLogger({ level });
  let logger = log('info');
  try {
    config = await loadConfig(env, { storageDirectory: probeStorageDirectory, packagePath: isDirectory, directory: isDirectory });
    logger = log(config.logLevel);
    const problems: string[] = [];
    const htpasswdFile = config.htpasswdFile;
    if (htpasswdFile !== undefined) {
      users = await Htpasswd.open(htpasswdFile, {
        onReload: (n) => logger.info({ file: htpasswdFile, users: n }, 'htpasswd file reloaded'),
        onReloadError: (message) => logger.error({ file: htpasswdFile, problem: message }, 'htpasswd file not reloaded; the previous users stay in force'),
      }).catch((e: Error) => void problems.push(`NIXERY_AUTH_HTPASSWD: ${e.message}`));
    }
    if (config.tls !== undefined) tls = await loadTls(config.tls).catch((e: Error) => void problems.push(`NIXERY_TLS_CERT: ${e.message}`));
    if (problems.length > 0) throw new ConfigError(problems);
    runtime = await createRuntime(config, logger);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    for (const l of e.problems) process.stderr.write(`nixery-ts: configuration error: ${l}\n`);
    process.exit(CONFIG_EXIT);
  }

  await runtime.gc.start().catch((e: Error) => logger.warn({ err: e.message }, 'garbage collection not started: the GC generation could not be read'));
  const metrics = createMetrics({
    service: () => runtime.stats,
    nixRunning: () => runtime.nix.stats.running,
    pieceCache: () => runtime.packer.stats(),
    gc: () => runtime.gc.stats,
  });
  onBuildOutcome(runtime.service, (outcome, seconds) => metrics.observeBuild(outcome, seconds));
  onBuildTimings(runtime.service, (timings) => metrics.observeBuildTimings(timings));
  // Aborted when shutdown begins: the pages' event streams end at once instead of holding the server up.
  const closing = new AbortController();
  const app = createApp({
    service: runtime.service,
    storage: runtime.storage,
    log: logger,
    tags: () => runtime.source.tags(),
    startPage: {
      webDir: config.webDir ?? path.join(ROOT, 'web'),
      source: runtime.source.description,
      recentErrors: () => runtime.recentErrors.list(),
      storage: () => {
        const { storageBytes, lastPass } = runtime.gc.stats;
        return {
          bytes: storageBytes,
          intervalSeconds: config.gc.intervalSeconds,
          lastPass: lastPass && {
            at: new Date(lastPass.finishedAt).toISOString(),
            imagesDropped: lastPass.images.length,
            blobsDeleted: lastPass.blobs.count,
            bytesDeleted: lastPass.blobs.bytes,
          },
        };
      },
    },
    stats: () => ({ ...runtime.stats, nix: { ...runtime.nix.stats }, gc: { ...runtime.gc.stats, lastPass: undefined } }),
    now: runtime.now,
    ops: { metrics, checks: { storage: () => runtime.storage.check(), nix: () => runtime.nix.check() } },
    auth: authenticator(users, config.anonymous, runtime.now),
    platforms: { all: config.platforms, default: config.defaultPlatform },
    api: { registry: runtime.builds, source: runtime.source, packages: runtime.packages, closing: closing.signal },
  });

  const packThreads = runtime.packer.threads;
  // What libuv read when it created the pool (dist/launch.cjs sets it first); 4 is its default.
  const threadPool = Number(env.UV_THREADPOOL_SIZE ?? 4);
  const server = serve(
    {
      fetch: app.fetch,
      hostname: config.host,
      port: config.port,
      ...(tls ? { createServer: createHttpsServer, serverOptions: { cert: tls.cert, key: tls.key } } : {}),
    },
    (info) => {
      logger.info(
        {
          host: info.address,
          port: info.port,
          tls: tls !== undefined,
          auth: users !== undefined,
          anonymous: config.anonymous,
          source: runtime.source.description,
          storage: config.storage.kind,
          packThreads,
          threadPool,
        },
        'listening',
      );
    },
  ) as Server;
  if (threadPool < packThreads + 1) {
    logger.warn(
      { packThreads, threadPool },
      'libuv thread pool too small for NIXERY_PACK_THREADS: file reads wait behind compressions (start dist/launch.cjs, which sizes it, or set UV_THREADPOOL_SIZE)',
    );
  }
  if (users !== undefined && tls === undefined && !isLoopback(config.host)) {
    logger.warn({ host: config.host }, 'htpasswd authentication without TLS: passwords cross the network in clear text (set NIXERY_TLS_CERT and NIXERY_TLS_KEY, or terminate TLS in front)');
  }
  const stopTlsWatch = tls && config.tls
    ? watchTls(server as unknown as HttpsServer, config.tls, tls, {
        reloaded: () => logger.info({ cert: config.tls?.certFile }, 'TLS certificate reloaded'),
        failed: (message) => logger.error({ problem: message }, 'TLS certificate not reloaded; the previous one stays in use'),
      })
    : undefined;

  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (err.code === 'ECONNRESET' || !socket.writable) socket.destroy();
    else socket.end(clientErrorResponse(err, randomUUID()));
  });

  // However the process ends, no Nix process group it started is left behind
  // (SIGKILL cannot be caught: see the README).
  process.on('exit', () => runtime.nix.killAll());

  let stopping = false;
  const stop = (why: string, code: number) => {
    if (stopping) return;
    stopping = true;
    closing.abort();
    const graceMs = code === 0 ? config.shutdownGraceSeconds * 1000 : 0;
    logger.info({ reason: why, graceMs }, 'shutting down: no new connections, running builds get a grace period');
    stopTlsWatch?.();
    users?.close();
    server.close(() => {
      void runtime.close().finally(() => {
        logger.info('stopped');
        process.exit(code);
      });
    });
    // Builds still running after the grace period are aborted, which stops
    // their Nix process groups; half-written blobs stay in staging only.
    setTimeout(() => {
      runtime.abortBuilds('server shutting down');
      setTimeout(() => server.closeAllConnections(), 1000).unref();
    }, graceMs).unref();
    server.closeIdleConnections();
  };
  process.once('SIGTERM', () => stop('SIGTERM', 0));
  process.once('SIGINT', () => stop('SIGINT', 0));
  process.on('uncaughtException', (err) => {
    logger.fatal({ err }, 'uncaught exception');
    stop('uncaught exception', 1);
  });
}

/** Whether this module is the program node was asked to run (through any symlink). */
function isEntryPoint(): boolean {
  const argv1 = process.argv[1];
  if (argv1 === undefined) return false;
  try {
    return realpathSync(argv1) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  await main(process.env);
}
