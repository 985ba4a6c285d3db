#!/usr/bin/env node
/**
 * The program to start (`node dist/launch.cjs`, `npm start`, the Nix
 * wrapper): sizes libuv's thread pool, then runs the server.
 *
 * The packer compresses on the pool (NIXERY_PACK_THREADS at once, one per
 * core by default) and file reads need threads of it too, so the pool gets
 * threads + 4. Node creates the pool, with the size then in
 * UV_THREADPOOL_SIZE, the first time anything uses it, and its ES module
 * loader does so to read the entry module: set from dist/main.js the
 * variable would come too late. This file is CommonJS, whose loader reads
 * synchronously, so nothing has touched the pool when it runs.
 *
 * An operator's own UV_THREADPOOL_SIZE is kept. A NIXERY_PACK_THREADS that
 * is not a whole number leaves the pool alone; the configuration check in
 * main() then stops start-up naming it.
 */
import os = require('node:os');

const MAX_THREADS = 256;

if (process.env.UV_THREADPOOL_SIZE === undefined) {
  const raw = (process.env.NIXERY_PACK_THREADS ?? '').trim();
  const threads = raw === '' ? os.availableParallelism() : /^\d+$/.test(raw) ? Math.min(Math.max(Number(raw), 1), MAX_THREADS) : undefined;
  if (threads !== undefined) process.env.UV_THREADPOOL_SIZE = String(threads + 4);
}

const fail = (e: unknown) => {
  process.stderr.write(`nixery-ts: ${String(e)}\n`);
  process.exit(1);
};

const USAGE = `usage: nixery-ts [serve]                      run the registry (the default)
       nixery-ts build NAME[:TAG] -o FILE   build one image into a file, without a server
       nixery-ts gc [--dry-run] [--json]    one garbage-collection pass over the storage

Configuration comes from environment variables (see the README).
'nixery-ts COMMAND --help' describes a command.
`;

const SERVE_USAGE = `usage: nixery-ts [serve]

Runs the registry: images are built from Nix when they are pulled. Every
setting is an environment variable (PORT, NIXERY_PKGS_PATH, STORAGE_PATH, ...;
see the README). Stops cleanly on SIGTERM or SIGINT.

Exit codes: 0 stopped cleanly; 1 a failure; 2 configuration error.
`;

// Subcommands: `serve` (also no argument, as Nixery deployments start it), `build` and `gc`.
// A dynamic import stays an import in CommonJS output under NodeNext, so
// the ES modules load after the variable is set.
const [command = 'serve', ...rest] = process.argv.slice(2);
const isHelp = (a: string | undefined) => a === '--help' || a === '-h';
if (isHelp(command) || command === 'help') {
  process.stdout.write(USAGE);
  process.exit(0);
} else if (command === 'serve') {
  if (rest.length > 0) {
    if (rest.length === 1 && isHelp(rest[0])) {
      process.stdout.write(SERVE_USAGE);
      process.exit(0);
    }
    process.stderr.write(`nixery-ts serve: unexpected argument ${JSON.stringify(rest[0])}: the server is configured by environment variables\n${SERVE_USAGE}`);
    process.exit(2);
  }
  import('./main.js').then((m: typeof import('./main.js')) => m.main(process.env), fail);
} else if (command === 'build') {
  import('./cli/build.js').then(async (m: typeof import('./cli/build.js')) => process.exit(await m.buildCommand(rest, process.env)), fail);
} else if (command === 'gc') {
  import('./cli/gc.js').then(async (m: typeof import('./cli/gc.js')) => process.exit(await m.gcCommand(rest, process.env)), fail);
} else {
  process.stderr.write(`nixery-ts: unknown command ${JSON.stringify(command)}\n${USAGE}`);
  process.exit(2);
}
