/**
 * `nixery-ts gc [--dry-run] [--json]`: one garbage-collection pass with the
 * server's configuration (the same environment variables), beside a live
 * server or instead of a scheduled one. Safe next to running servers: it
 * follows the same protocol as their own passes (src/gc/pass.ts). The
 * retention policy is NIXERY_GC_KEEP_DAYS / NIXERY_GC_MAX_BYTES; without
 * either, only unreferenced blobs older than NIXERY_GC_GRACE go.
 *
 * Exit codes: 0 done, 1 the pass failed, 2 usage or configuration error.
 */
import { parseArgs } from 'node:util';
import { loadConfig, type Env } from '../config.js';
import { ConfigError } from '../errors.js';
import { createLogger } from '../log.js';
import { createRuntime } from '../runtime.js';
import type { GcReport } from '../gc/collector.js';

const USAGE = `usage: nixery-ts gc [--dry-run] [--json]

One garbage-collection pass over the configured storage, using the same
environment variables as the server (NIXERY_GC_KEEP_DAYS, NIXERY_GC_MAX_BYTES,
NIXERY_GC_GRACE, storage settings). Safe beside running servers.

  --dry-run   print what a pass would delete; delete nothing
  --json      print the report as JSON
`;

const mb = (n: number) => `${(n / 1e6).toFixed(1)} MB`;

export function formatReport(r: GcReport): string {
  const verb = r.dryRun ? 'would drop' : 'dropped';
  const lines = [`${r.dryRun ? 'dry run: ' : ''}${verb} ${r.images.length} image(s), kept ${r.imagesKept}`];
  for (const i of r.images) {
    const name = i.packages.filter((p) => p !== 'cacert' && p !== 'iana-etc').join('/') || '(unreadable record)';
    lines.push(`  ${name}  last pulled ${i.lastPulledAt > 0 ? new Date(i.lastPulledAt).toISOString() : 'never'}  revision ${i.revision.slice(0, 12)}`);
  }
  lines.push(`${r.dryRun ? 'would delete' : 'deleted'} ${r.blobs.count} blob(s), ${mb(r.blobs.bytes)}; ${r.layerRecords} layer record(s)`);
  lines.push(`blob storage: ${mb(r.bytesBefore)} before, ${mb(r.bytesAfter)} after`);
  if (r.overLimitBytes > 0) lines.push(`  ${mb(r.overLimitBytes)} over NIXERY_GC_MAX_BYTES: the images holding it were pulled too recently to drop`);
  const n = r.nixStore;
  if (n) {
    const todo = n.shortfallBytes > 0 ? `${r.dryRun ? 'a collection would free' : 'still short by'} ${mb(n.shortfallBytes)}` : 'no collection needed';
    lines.push(`Nix store: ${r.dryRun ? '' : `${mb(r.nixBytesFreed)} freed; `}${mb(n.freeBytes)} free of ${mb(n.totalBytes)}, NIXERY_NIX_GC_MIN_FREE ${mb(n.thresholdBytes)}: ${todo}`);
  }
  return `${lines.join('\n')}\n`;
}

export async function gcCommand(argv: readonly string[], env: Env): Promise<number> {
  let flags: { 'dry-run'?: boolean; json?: boolean; help?: boolean };
  try {
    flags = parseArgs({ args: [...argv], options: { 'dry-run': { type: 'boolean' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } }, strict: true }).values;
  } catch (e) {
    process.stderr.write(`nixery-ts gc: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (flags.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  let runtime;
  try {
    const config = await loadConfig(env, {});
    // Warnings and errors only: the report is the output.
    runtime = await createRuntime(config, createLogger({ level: 'warn' }));
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    for (const l of e.problems) process.stderr.write(`nixery-ts: configuration error: ${l}\n`);
    return 2;
  }
  try {
    const report = await runtime.gc.run({ dryRun: flags['dry-run'] === true });
    process.stdout.write(flags.json ? `${JSON.stringify(report, null, 2)}\n` : formatReport(report));
    return 0;
  } catch (e) {
    process.stderr.write(`nixery-ts gc: ${(e as Error).message}\n`);
    return 1;
  } finally {
    await runtime.close();
  }
}
