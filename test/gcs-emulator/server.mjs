#!/usr/bin/env node
// A Cloud Storage emulator for the tests: the storage emulator inside npm
// firebase-tools (pinned in this folder's package.json), started in-process,
// offline, without Java. See shared/research/clients-and-emulators.md,
// section B and appendix B.
//
//   node test/gcs-emulator/server.mjs [--port N] [--host 127.0.0.1] [--data-dir DIR]
//   npm run gcs-emulator -- --port N
//
// --port 0 (the default) picks a free port. Prints exactly one line on stdout,
// `gcs-emulator ready http://HOST:PORT`, once it accepts connections; SIGTERM
// or SIGINT stops it (open connections are cut, the data directory emptied and,
// when it was a fresh temporary one, removed).
//
// What is changed in the emulator, and why:
// - The Firebase rules runtime (a Java >= 21 process whose JAR is downloaded
//   from Google at start) and the rules manager are stubs. The GCS JSON API
//   routes use the emulator's admin storage layer, which never consults rules.
// - Its HTTP server listens where we say (port 0 included) instead of the
//   default 9199, and its object files go to --data-dir instead of
//   os.tmpdir()/firebase/storage/blobs, so parallel instances do not share files.
// - Real GCS serves the JSON API under /storage/v1/...; the SDK uses that
//   prefix whenever it is given an apiEndpoint. The emulator routes GET, list
//   and DELETE with and without the prefix but PATCH (setMetadata) and
//   rewriteTo/copyTo (copy, move) only without it (501 otherwise), so requests
//   under /storage/v1/b/ are routed as /b/. The handlers are the emulator's own.
import { rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { once } from 'node:events';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

function die(message) {
  process.stderr.write(`gcs-emulator: ${message}\n`);
  process.exit(1);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      host: { type: 'string', default: '127.0.0.1' },
      'data-dir': { type: 'string' },
      project: { type: 'string', default: 'demo-test' },
    },
    strict: true,
  }));
} catch (e) {
  die(`${e.message} (usage: server.mjs [--port N] [--host H] [--data-dir DIR] [--project ID])`);
}
const port = Number(args.port);
if (!Number.isInteger(port) || port < 0 || port > 65535) die(`--port ${JSON.stringify(args.port)} is not a port number`);

const require = createRequire(import.meta.url);
const fb = (p) => require(`firebase-tools/lib/emulator/${p}`);
let runtime, manager, server, storage, registry, utils;
try {
  runtime = fb('storage/rules/runtime');
  manager = fb('storage/rules/manager');
  server = fb('storage/server');
  storage = fb('storage/index');
  registry = fb('registry');
  utils = require('firebase-tools/lib/utils');
} catch (e) {
  die(`cannot load firebase-tools (${e.code ?? e.message}): run: npm ci --prefix test/gcs-emulator --ignore-scripts`);
}

// 1. No Java rules runtime, no rules manager.
runtime.StorageRulesRuntime.prototype.start = async function () {};
runtime.StorageRulesRuntime.prototype.stop = async function () {};
manager.createStorageRulesManager = () => ({
  start: async () => ({ errors: [], warnings: [] }),
  stop: async () => {},
  getRuleset: () => undefined,
});

// 2. Object files in our own directory (read by the constructor).
const ownDataDir = args['data-dir'] === undefined;
const dataDir = ownDataDir ? await mkdtemp(path.join(tmpdir(), 'gcs-emulator-')) : path.resolve(args['data-dir']);
// However the process ends (short of SIGKILL), a temporary directory goes with it.
if (ownDataDir) process.on('exit', () => rmSync(dataDir, { recursive: true, force: true }));
const { StorageEmulator } = storage;
StorageEmulator.prototype.getPersistenceTmpDir = () => path.join(dataDir, 'blobs');

// 3. The JSON API under /storage/v1/b/ as well (see the header comment).
const gcloud = fb('storage/apis/gcloud');
const createCloudEndpoints = gcloud.createCloudEndpoints;
gcloud.createCloudEndpoints = (emulator) => {
  const router = createCloudEndpoints(emulator);
  return (req, res, next) => {
    if (req.url.startsWith('/storage/v1/b/')) req.url = req.url.slice('/storage/v1'.length);
    router(req, res, next);
  };
};

const emu = new StorageEmulator({ projectId: args.project, host: args.host, port, rules: undefined, auto_download: false });
// 4. Listen on the requested port, 0 included (the stock start() turns 0 into 9199).
emu.start = async function () {
  this._app = await server.createApp(this.args.projectId, this);
  const srv = this._app.listen(port, args.host);
  await Promise.race([
    once(srv, 'listening'),
    once(srv, 'error').then(([e]) => Promise.reject(e)),
  ]);
  this.args.port = srv.address().port;
  this.destroyServer = utils.createDestroyer(srv);
};

let stopping = false;
async function stop(signal) {
  if (stopping) return;
  stopping = true;
  const deadline = setTimeout(() => die(`did not stop within 10 s of ${signal}`), 10_000);
  deadline.unref();
  // Stop listening and cut open connections first, so that no request
  // arrives while the emulator deletes its files.
  await emu.destroyServer?.();
  await registry.EmulatorRegistry.stop(emu.getName());
  process.exit(0);
}
process.on('SIGTERM', () => void stop('SIGTERM'));
process.on('SIGINT', () => void stop('SIGINT'));

try {
  await registry.EmulatorRegistry.start(emu);
} catch (e) {
  die(`cannot listen on ${args.host}:${port}: ${e.message}`);
}
const { host: boundHost, port: boundPort } = emu.getInfo();
const shownHost = boundHost.includes(':') ? `[${boundHost}]` : boundHost;
process.stdout.write(`gcs-emulator ready http://${shownHost}:${boundPort}\n`);
