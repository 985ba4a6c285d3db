/**
 * Composition root: the only reader of process.env. Builds the adapters,
 * starts the HTTP server and shuts down cleanly on SIGTERM/SIGINT.
 */
import { serve } from '@hono/node-server';
import { stat } from 'node:fs/promises';
import { Hono } from 'hono';
import { loadConfig } from './config.js';
import { ConfigError } from './errors.js';
import { createLogger } from './log.js';
import { probeStorageDirectory } from './storage/xattr-probe.js';

async function isDirectory(p: string): Promise<string | undefined> {
  try {
    return (await stat(p)).isDirectory() ? undefined : `${p} is not a directory`;
  } catch {
    return `${p} does not exist`;
  }
}

async function main(): Promise<void> {
  const log = createLogger({ level: process.env['NIXERY_LOG_LEVEL'] });
  let config;
  try {
    config = await loadConfig(process.env, {
      storageDirectory: probeStorageDirectory,
      packagePath: isDirectory,
      directory: isDirectory,
    });
  } catch (e) {
    if (e instanceof ConfigError) {
      for (const p of e.problems) process.stderr.write(`nixery-ts: configuration error: ${p}\n`);
      process.exit(2);
    }
    throw e;
  }

  const app = new Hono();
  app.get('/v2/', (c) => c.json({}, 200, { 'Docker-Distribution-API-Version': 'registry/2.0' }));

  const server = serve({ fetch: app.fetch, hostname: config.host, port: config.port }, (info) => {
    log.info({ host: info.address, port: info.port, pkgs: config.pkgs, storage: config.storage.kind }, 'listening');
  });
  const shutdown = (sig: string) => {
    log.info({ signal: sig }, 'shutting down');
    server.close(() => process.exit(0));
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
}

await main();
