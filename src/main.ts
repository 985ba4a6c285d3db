/**
 * The server's entry point and, with the future command line, the only
 * reader of process.env: configuration -> runtime -> HTTP server, and a
 * clean shutdown on SIGTERM/SIGINT or a crash. Importing it does nothing;
 * running it (`node dist/main.js`) serves.
 */
import { serve } from '@hono/node-server';
import type { Server } from 'node:http';
import { randomUUID } from 'node:crypto';
import { realpathSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig, type Config, type Env } from './config.js';
import { ConfigError } from './errors.js';
import { createApp } from './http/app.js';
import { clientErrorResponse } from './http/errcode.js';
import { createLogger } from './log.js';
import { createMetrics } from './metrics.js';
import { ROOT, createRuntime, type Runtime } from './runtime.js';
import { onBuildOutcome } from './service/observers.js';
import { probeStorageDirectory } from './storage/xattr-probe.js';

async function isDirectory(p: string): Promise<string | undefined> {
  try {
    return (await stat(p)).isDirectory() ? undefined : `${p} is not a directory`;
  } catch {
    return `${p} does not exist`;
  }
}

/** Exit code of a configuration mistake, as documented in the README. */
const CONFIG_EXIT = 2;

export async function main(env: Env): Promise<void> {
  let config: Config;
  let runtime: Runtime;
  const log = (level: string | undefined) => createLogger({ level });
  let logger = log('info');
  try {
    config = await loadConfig(env, { storageDirectory: probeStorageDirectory, packagePath: isDirectory, directory: isDirectory });
    logger = log(config.logLevel);
    runtime = await createRuntime(config, logger);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    for (const l of e.problems) process.stderr.write(`nixery-ts: configuration error: ${l}\n`);
    process.exit(CONFIG_EXIT);
  }

  const metrics = createMetrics({ service: () => runtime.stats, nixRunning: () => runtime.nix.stats.running });
  onBuildOutcome(runtime.service, (outcome, seconds) => metrics.observeBuild(outcome, seconds));
  const app = createApp({
    service: runtime.service,
    storage: runtime.storage,
    log: logger,
    tags: () => runtime.source.tags(),
    startPage: {
      webDir: config.webDir ?? path.join(ROOT, 'web'),
      source: runtime.source.description,
      recentErrors: () => runtime.recentErrors.list(),
    },
    stats: () => ({ ...runtime.stats, nix: { ...runtime.nix.stats } }),
    now: runtime.now,
    ops: { metrics, checks: { storage: () => runtime.storage.check(), nix: () => runtime.nix.check() } },
  });

  const server = serve({ fetch: app.fetch, hostname: config.host, port: config.port }, (info) => {
    logger.info({ host: info.address, port: info.port, source: runtime.source.description, storage: config.storage.kind }, 'listening');
  }) as Server;

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
    const graceMs = code === 0 ? config.shutdownGraceSeconds * 1000 : 0;
    logger.info({ reason: why, graceMs }, 'shutting down: no new connections, running builds get a grace period');
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
