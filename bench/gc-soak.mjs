// Garbage-collection soak with a byte limit: do storage bytes stay within
// NIXERY_GC_MAX_BYTES plus the grace window's new blobs over a long run?
// Run with `npm run bench:gc` (builds dist/ first).
//
// One server on fresh filesystem storage runs a pass every GC_INTERVAL with
// GC_MAX_BYTES and GC_GRACE (usage flush and generation poll 1 s), while
// CLIENTS clients pull the 16 overlapping images of the soak test
// (test/integration/gc-soak.test.ts) over the registry API for SOAK_SECONDS:
// the OCI manifest, then every blob, each checked against its sha256.
//
// Every second the bench reads the blob store from disk itself
// (STORAGE_PATH/blobs/sha256/<hex>, usedAt = mtime, as listBlobs reports it):
// total blob bytes, bytes of blobs used within the grace period ("young": a
// pass never deletes them), and bytes of blobs named by build leases
// (records/leases/*: builds in progress, which a pass never deletes either).
// A sample is beyond the bound when bytes > limit + young bytes. After the
// soak the clients stop, the bench waits for a pass that started once the
// grace period (and the two-flush pull protection) has passed since the last
// pull, and samples once more (final_bytes_after_quiesce, which should be
// within the limit).
//
// "Young" goes by usedAt, which every mark moves: a blob a build reuses is
// young again however old it is. So the bench also counts blobs *written*
// within the grace period (birth time, which a mark leaves alone: it sets
// the mtime; a write renames a new file into place) and reports the bound
// with those too (max_new_bytes, max_excess_beyond_new_bytes,
// samples_beyond_limit_plus_new).
//
// And what the design lets exceed the limit at all: young and leased blobs,
// images protected by a recent pull (a pass never drops an image pulled
// within two usage flushes), images built since the last pass. What remains
// should fit within the limit (max_unexplained_excess_bytes <= 0,
// samples_unexplained_beyond_limit = 0); a sample taken while a pass runs may
// also hold the blobs of images it has just dropped.
//
// PULL_GAP_MS (0) makes each client wait that long between pulls. Without
// it warm pulls take milliseconds, every image is pulled within two usage
// flushes all the time, and the whole set (about 50 MB) is protected: the
// bench then shows the limit as a target a hot set larger than it does not
// meet (every byte over it explained by protection) and storage falling
// under the limit once the clients stop. With a gap of a second or so most
// images go unpulled for longer than the protection, and the bench shows
// how closely passes hold the limit while builds keep adding blobs.
//
// Environment: SOAK_SECONDS (600), CLIENTS (3), PULL_GAP_MS (0), GC_MAX_BYTES (12M),
// GC_GRACE (20s), GC_INTERVAL (2s), GC_USAGE_FLUSH (1s), GC_POLL (1s);
// byte counts and durations are written as the server reads them (12M is
// 12 MiB; 20s, 300ms, 0).
//
// GC_SOAK_TRACE=1 prints each pass line and sample on stderr as they come.
//
// Output: key=value lines (limit_bytes, samples, max_bytes, p95_bytes,
// mean_bytes, max_over_limit_ratio, max_excess_beyond_grace_bytes,
// samples_beyond_limit_plus_grace, pass_storage_bytes_max,
// final_bytes_after_quiesce, pulls, failures, builds, passes,
// images_dropped, blobs_deleted, and a few more). Exits 1 if any pull failed.
import { createHash } from 'node:crypto';
import { mkdtemp, opendir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { listeningPort, ROOT, spawnDemoServer } from './lib.mjs';

const OCI = 'application/vnd.oci.image.manifest.v1+json';
// The soak test's list: enough images that each is pulled only every second or so.
const IMAGES = [
  'hello', 'jq', 'htop', 'nano', 'coreutils', 'moreutils', 'curl', 'git',
  'hello/jq', 'jq/htop', 'htop/hello', 'nano/jq', 'curl/jq', 'git/hello', 'moreutils/htop', 'shell',
];

const env = (name, def) => (process.env[name] === undefined || process.env[name].trim() === '' ? def : process.env[name].trim());
const SOAK_SECONDS = Number(env('SOAK_SECONDS', '600'));
const CLIENTS = Number(env('CLIENTS', '3'));
const PULL_GAP_MS = Number(env('PULL_GAP_MS', '0'));
const GC = {
  NIXERY_GC_INTERVAL: env('GC_INTERVAL', '2s'),
  NIXERY_GC_MAX_BYTES: env('GC_MAX_BYTES', '12M'),
  NIXERY_GC_GRACE: env('GC_GRACE', '20s'),
  NIXERY_GC_USAGE_FLUSH: env('GC_USAGE_FLUSH', '1s'),
  NIXERY_GC_POLL: env('GC_POLL', '1s'),
};
/** A request (manifest with a build behind it, or a blob) that takes longer than this failed. */
const REQUEST_TIMEOUT_MS = 300_000;
const STOP_GRACE_MS = 15_000;
/** GC_SOAK_TRACE=1: each pass line and each sample on stderr, as they come. */
const TRACE = env('GC_SOAK_TRACE', '') === '1';

// As src/config.ts reads them.
function parseBytes(name, raw) {
  const m = /^(\d+)\s*([kmgt]?)(?:i?b)?$/i.exec(raw);
  if (!m) throw new Error(`${name}=${JSON.stringify(raw)} is not a byte count (e.g. 12M)`);
  return Number(m[1]) * 1024 ** ' kmgt'.indexOf((m[2] || ' ').toLowerCase());
}
function parseSeconds(name, raw) {
  const m = /^(\d+)\s*(ms|[smhd]?)$/i.exec(raw);
  if (!m) throw new Error(`${name}=${JSON.stringify(raw)} is not a duration (e.g. 20s, 300ms)`);
  return Number(m[1]) * { '': 1, ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 }[(m[2] ?? '').toLowerCase()];
}
if (!(SOAK_SECONDS > 0) || !(Number.isInteger(CLIENTS) && CLIENTS > 0)) throw new Error('SOAK_SECONDS and CLIENTS must be positive numbers');
if (!(PULL_GAP_MS >= 0)) throw new Error('PULL_GAP_MS must be a number of milliseconds');
const LIMIT = parseBytes('GC_MAX_BYTES', GC.NIXERY_GC_MAX_BYTES);
const GRACE_MS = parseSeconds('GC_GRACE', GC.NIXERY_GC_GRACE) * 1000;
const INTERVAL_MS = parseSeconds('GC_INTERVAL', GC.NIXERY_GC_INTERVAL) * 1000;
// Images pulled within two usage flushes are never dropped (src/gc/collector.ts).
const PROTECT_MS = 2 * parseSeconds('GC_USAGE_FLUSH', GC.NIXERY_GC_USAGE_FLUSH) * 1000;
const POLL_MS = parseSeconds('GC_POLL', GC.NIXERY_GC_POLL) * 1000;
const FLUSH_MS = PROTECT_MS / 2;
// The server's own record format (dist/ is built before a run).
const records = await import(pathToFileURL(path.join(ROOT, 'dist/service/records.js')).href);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const sha = (b) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

// ---------------------------------------------------------------- clean-up
// Everything started or created here is undone in cleanup(), on success,
// failure and interrupt alike.
let server; // { child, exited }
let storageDir;
let stopping = false; // set by clean-up
let interrupted = false; // set by signals: what happens after is not measured
let cleaning;
function stopServer() {
  if (!server) return Promise.resolve();
  const { child, exited } = server;
  if (child.exitCode !== null || child.signalCode !== null) return exited;
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    console.error(`server (pid ${child.pid}) did not stop within ${STOP_GRACE_MS / 1000} s of SIGTERM; sending SIGKILL to its process group`);
    try {
      process.kill(-child.pid, 'SIGKILL'); // the group we started it in (detached), and only that
    } catch {
      child.kill('SIGKILL');
    }
  }, STOP_GRACE_MS);
  return exited.finally(() => clearTimeout(timer));
}
function cleanup() {
  stopping = true;
  cleaning ??= (async () => {
    await stopServer();
    if (storageDir) await rm(storageDir, { recursive: true, force: true });
  })();
  return cleaning;
}
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143], ['SIGHUP', 129]]) {
  process.once(sig, () => {
    interrupted = true;
    console.error(`${sig}: stopping the server and removing ${storageDir ?? 'nothing'}`);
    void cleanup().finally(() => process.exit(code));
  });
}

// ---------------------------------------------------------------- server
/** Pass log lines ({ at, startedAt, storageBytes, ... }), and the last warnings and errors. */
const passes = [];
const problems = [];

async function startServer() {
  storageDir = await mkdtemp(path.join(tmpdir(), 'nixery-bench-gc-'));
  const child = spawnDemoServer({ STORAGE_PATH: storageDir, NIXERY_SHUTDOWN_GRACE_SECONDS: '2', ...GC });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  child.once('error', () => undefined);
  server = { child, exited };
  const port = await listeningPort(child, {
    onLine: (line) => {
      if (line.includes('"msg":"garbage collection pass"')) {
        const p = JSON.parse(line);
        const at = Date.parse(p.time);
        passes.push({ ...p, at, startedAt: at - p.ms });
        if (TRACE) {
          const { imagesDropped, imagesKept, blobsDeleted, bytesDeleted, storageBytes, ms } = p;
          console.error(`pass ${p.time} ${JSON.stringify({ imagesDropped, imagesKept, blobsDeleted, bytesDeleted, storageBytes, ms })}`);
        }
      } else if (/"level":(40|50|60)/.test(line)) {
        problems.push(line);
        if (problems.length > 40) problems.shift();
      }
    },
  });
  return `http://127.0.0.1:${port}`;
}

// ---------------------------------------------------------------- clients
const tally = { pulls: 0, blobs: 0, failures: 0, messages: [], lastPullEnd: 0 };
function fail(msg) {
  if (interrupted) return; // requests cut off by the stop
  tally.failures++;
  if (tally.messages.length < 20) tally.messages.push(`${new Date().toISOString()} ${msg}`);
}

async function get(url, headers) {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS) });
  return { res, body: Buffer.from(await res.arrayBuffer()) };
}

/** One pull: the manifest, then every blob, each checked; true if all of it worked. */
async function pull(base, name) {
  const m = await get(`${base}/v2/${name}/manifests/latest`, { Accept: OCI });
  if (m.res.status !== 200) return fail(`${name}: manifest ${m.res.status} ${m.body.toString().slice(0, 200)}`), false;
  if (sha(m.body) !== m.res.headers.get('docker-content-digest')) return fail(`${name}: manifest digest mismatch`), false;
  const manifest = JSON.parse(m.body.toString());
  let ok = true;
  for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) {
    const b = await get(`${base}/v2/${name}/blobs/${d}`);
    tally.blobs++;
    if (b.res.status !== 200) ok = fail(`${name}: blob ${d} ${b.res.status} ${b.body.toString().slice(0, 200)}`);
    else if (sha(b.body) !== d) ok = fail(`${name}: blob ${d} does not match its digest`);
  }
  return ok;
}

async function client(base, seed, end) {
  for (let i = 0; !stopping && Date.now() < end; i++) {
    const name = IMAGES[(i * 7 + seed * 5) % IMAGES.length];
    let ok = false;
    try {
      ok = await pull(base, name);
    } catch (e) {
      fail(`${name}: ${e?.cause?.message ?? e?.message ?? e}`);
    }
    tally.lastPullEnd = Date.now();
    if (ok) tally.pulls++;
    else await sleep(200); // no busy loop against a broken server
    if (PULL_GAP_MS > 0) await sleep(PULL_GAP_MS);
  }
}

// ---------------------------------------------------------------- disk
/** The files of a records/<kind>/ directory: [{ name, text, mtimeMs }], skipping any removed meanwhile. */
async function readRecords(kind) {
  const dir = path.join(storageDir, 'records', kind);
  const out = [];
  for await (const ent of await opendir(dir).catch(() => [])) {
    const p = path.join(dir, ent.name);
    try {
      const [text, s] = await Promise.all([readFile(p, 'utf8'), stat(p)]);
      out.push({ name: ent.name, text, mtimeMs: s.mtimeMs });
    } catch {
      // removed or replaced meanwhile
    }
  }
  return out;
}

/**
 * The blob store as it is on disk now: total bytes; young bytes (used within
 * the grace); new bytes (written within the grace); leased bytes (builds in
 * progress); and what the design lets exceed the limit besides, so that
 * `unexplained` is what a pass should have brought within it: bytes outside
 * the union of young and leased blobs, blobs of images the last pass known
 * to have finished protected or that were pulled since (pulled within two
 * usage flushes of its start; plus one more, because pull times reach
 * storage up to a flush late), and blobs of images recorded since that
 * pass started (no pass has judged them yet). `unexplainedOrphans` is the part of it no image
 * record references (a pass running now may be about to delete it).
 */
async function sample() {
  const at = Date.now();
  const dir = path.join(storageDir, 'blobs', 'sha256');
  const sizes = new Map();
  const explained = new Set();
  let bytes = 0;
  let young = 0;
  let fresh = 0;
  let birthtimes = true;
  for await (const ent of await opendir(dir, { bufferSize: 256 })) {
    if (!/^[0-9a-f]{64}$/.test(ent.name)) continue;
    const s = await stat(path.join(dir, ent.name)).catch(() => undefined); // deleted since the listing
    if (!s) continue;
    const d = `sha256:${ent.name}`;
    sizes.set(d, s.size);
    bytes += s.size;
    if (s.mtimeMs >= at - GRACE_MS) {
      young += s.size;
      explained.add(d);
    }
    // Written (not merely marked used) within the grace: a mark sets the
    // mtime only, a write renames a new file (new inode, new birth time) into place.
    if (s.birthtimeMs >= at - GRACE_MS) fresh += s.size;
    if (!(s.birthtimeMs > 0)) birthtimes = false;
  }
  const sum = (set) => [...set].reduce((n, d) => n + (sizes.get(d) ?? 0), 0);

  // Blobs named by leases of builds in progress.
  const leased = new Set();
  for (const r of await readRecords('leases')) {
    try {
      for (const d of JSON.parse(r.text).digests ?? []) leased.add(d);
    } catch {
      // being rewritten
    }
  }
  for (const d of leased) explained.add(d);

  // Images: protected by a recent pull, or recorded since the last pass started.
  const usage = new Map();
  for (const r of await readRecords('usage')) {
    try {
      usage.set(r.name, JSON.parse(r.text).lastPulledAt);
    } catch {
      // being rewritten
    }
  }
  const lastPassStart = passes.at(-1)?.startedAt ?? -Infinity;
  // Protected in the last pass (pulled within two flushes of its start), or
  // pulled since; one more flush because pull times reach storage that late.
  const protectedSince = Math.min(at, lastPassStart) - PROTECT_MS - FLUSH_MS;
  const referenced = new Set();
  const protectedBlobs = new Set();
  const recentBlobs = new Set();
  for (const r of await readRecords('manifests')) {
    const image = records.decodeRecord(Buffer.from(r.text));
    if (!image) continue;
    const blobs = records.imageBlobs(image);
    const ids = [r.name, ...Object.values(image.manifests).map((m) => m.digest.slice('sha256:'.length))];
    const pulls = ids.map((id) => usage.get(id)).filter((t) => typeof t === 'number');
    const lastPulledAt = pulls.length > 0 ? Math.max(...pulls) : r.mtimeMs;
    for (const d of blobs) {
      referenced.add(d);
      if (lastPulledAt >= protectedSince) protectedBlobs.add(d);
      if (r.mtimeMs >= lastPassStart) recentBlobs.add(d);
    }
  }
  for (const d of protectedBlobs) explained.add(d);
  for (const d of recentBlobs) explained.add(d);
  let unexplained = 0;
  let unexplainedOrphans = 0;
  for (const [d, size] of sizes) {
    if (explained.has(d)) continue;
    unexplained += size;
    if (!referenced.has(d)) unexplainedOrphans += size;
  }
  return {
    at,
    bytes,
    young,
    fresh,
    birthtimes,
    leasedBytes: sum(leased),
    protectedBytes: sum(protectedBlobs),
    recentBytes: sum(recentBlobs),
    unexplained,
    unexplainedOrphans,
    blobs: sizes.size,
    leases: leased.size,
  };
}

async function sampleLoop(samples, until) {
  for (let next = Date.now(); !stopping && Date.now() < until(); ) {
    const s = await sample();
    samples.push(s);
    if (TRACE) console.error(`sample ${new Date(s.at).toISOString()} ${JSON.stringify({ bytes: s.bytes, young: s.young, new: s.fresh, leased: s.leasedBytes, protected: s.protectedBytes, recent: s.recentBytes, unexplained: s.unexplained, orphans: s.unexplainedOrphans, blobs: s.blobs })}`);
    next += 1000;
    await sleep(Math.max(0, next - Date.now()));
  }
}

async function metrics(base) {
  const text = await (await fetch(`${base}/metrics`, { signal: AbortSignal.timeout(30_000) })).text();
  const out = {};
  for (const line of text.split('\n')) {
    const m = /^(nixery_[a-z_]+)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m) out[m[1] + (m[2] ?? '')] = Number(m[3]);
  }
  return out;
}

// ---------------------------------------------------------------- main
const fmtMB = (n) => `${(n / 2 ** 20).toFixed(2)} MiB`;
let exitCode = 1;
try {
  const base = await startServer();
  console.log(
    `server ${base}, storage ${storageDir}; ${CLIENTS} clients for ${SOAK_SECONDS} s, ${PULL_GAP_MS} ms between pulls; ` +
      Object.entries(GC).map(([k, v]) => `${k}=${v}`).join(' '),
  );

  const t0 = Date.now();
  const end = t0 + SOAK_SECONDS * 1000;
  const samples = [];
  let clientsDone = false;
  const sampling = sampleLoop(samples, () => (clientsDone ? 0 : Infinity));
  await Promise.all(Array.from({ length: CLIENTS }, (_, seed) => client(base, seed, end)));
  clientsDone = true;
  await sampling;
  if (interrupted) await new Promise(() => undefined); // the signal handler cleans up and exits
  const quietFrom = Math.max(tally.lastPullEnd, Date.now());
  console.log(`soak done after ${((Date.now() - t0) / 1000).toFixed(0)} s: ${tally.pulls} pulls, ${tally.failures} failures; waiting for a pass after the grace period`);

  // Quiesce: a pass that started once every blob is older than the grace
  // period and no image is protected by a recent pull, has finished.
  const after = quietFrom + GRACE_MS + PROTECT_MS + 500;
  const deadline = after + 10 * INTERVAL_MS + 2 * POLL_MS + 120_000;
  let quiescePass;
  while (!stopping && Date.now() < deadline) {
    quiescePass = passes.find((p) => p.startedAt >= after);
    if (quiescePass) break;
    await sleep(250);
  }
  if (!quiescePass) throw new Error(`no garbage-collection pass started after the grace period within ${((deadline - quietFrom) / 1000).toFixed(0)} s`);
  const final = await sample();
  const m = await metrics(base);
  const soakPasses = passes.filter((p) => p.startedAt < quietFrom);

  // Figures over the soak's samples (clients running).
  const byBytes = samples.map((s) => s.bytes).sort((a, b) => a - b);
  const p95 = byBytes[Math.max(0, Math.ceil(0.95 * byBytes.length) - 1)];
  const mean = byBytes.reduce((a, b) => a + b, 0) / byBytes.length;
  const excess = samples.map((s) => s.bytes - LIMIT - s.young);
  const youngOrLeased = (s) => s.young + s.leasedBytes; // an upper bound of their union
  const excessLeased = samples.map((s) => s.bytes - LIMIT - youngOrLeased(s));
  const excessNew = samples.map((s) => s.bytes - LIMIT - s.fresh);
  // What no exception of the design covers, beyond the limit. A sample
  // taken while a pass ran may see dropped images' blobs not deleted yet.
  const inPass = (s) => passes.some((p) => p.startedAt <= s.at && s.at <= p.at);
  const excessUnexplained = samples.map((s) => s.unexplained - (inPass(s) ? s.unexplainedOrphans : 0) - LIMIT);
  if (!samples.every((s) => s.birthtimes)) console.log('note: this filesystem reports no birth times: the *_new_* figures are meaningless');
  const worst = samples[excess.indexOf(Math.max(...excess))];

  console.log(
    `largest sample ${fmtMB(byBytes.at(-1))}; worst excess at +${((worst.at - t0) / 1000).toFixed(0)} s: ` +
      `${fmtMB(worst.bytes)} in ${worst.blobs} blobs, young ${fmtMB(worst.young)}, written within the grace ${fmtMB(worst.fresh)}, leased ${fmtMB(worst.leasedBytes)} (${worst.leases} digests)`,
  );
  console.log(`quiesce pass: ${JSON.stringify({ time: quiescePass.time, imagesDropped: quiescePass.imagesDropped, imagesKept: quiescePass.imagesKept, blobsDeleted: quiescePass.blobsDeleted, storageBytes: quiescePass.storageBytes })}`);
  if (tally.messages.length > 0) console.log(`failures (first ${tally.messages.length}):\n  ${tally.messages.join('\n  ')}`);
  if (problems.length > 0) console.log(`last server warnings/errors (${problems.length}):\n  ${problems.slice(-10).join('\n  ')}`);

  const figures = {
    limit_bytes: LIMIT,
    grace_ms: GRACE_MS,
    soak_seconds: SOAK_SECONDS,
    pull_gap_ms: PULL_GAP_MS,
    clients: CLIENTS,
    samples: samples.length,
    max_bytes: byBytes.at(-1),
    p95_bytes: p95,
    mean_bytes: Math.round(mean),
    max_over_limit_ratio: (byBytes.at(-1) / LIMIT).toFixed(3),
    max_young_bytes: Math.max(...samples.map((s) => s.young)),
    max_leased_bytes: Math.max(...samples.map((s) => s.leasedBytes)),
    max_excess_beyond_grace_bytes: Math.max(...excess),
    samples_beyond_limit_plus_grace: excess.filter((x) => x > 0).length,
    max_excess_beyond_grace_and_leases_bytes: Math.max(...excessLeased),
    samples_beyond_limit_plus_grace_and_leases: excessLeased.filter((x) => x > 0).length,
    max_protected_bytes: Math.max(...samples.map((s) => s.protectedBytes)),
    max_unexplained_excess_bytes: Math.max(...excessUnexplained),
    samples_unexplained_beyond_limit: excessUnexplained.filter((x) => x > 0).length,
    max_new_bytes: Math.max(...samples.map((s) => s.fresh)),
    max_excess_beyond_new_bytes: Math.max(...excessNew),
    samples_beyond_limit_plus_new: excessNew.filter((x) => x > 0).length,
    pass_storage_bytes_max: Math.max(...soakPasses.map((p) => p.storageBytes)),
    passes_over_limit: soakPasses.filter((p) => p.storageBytes > LIMIT).length,
    final_bytes_after_quiesce: final.bytes,
    pulls: tally.pulls,
    blobs_verified: tally.blobs,
    failures: tally.failures,
    builds: m.nixery_builds_started_total,
    passes: m.nixery_gc_passes_total,
    gc_failures: m.nixery_gc_failures_total,
    images_dropped: m.nixery_gc_images_dropped_total,
    blobs_deleted: m.nixery_gc_blobs_deleted_total,
  };
  for (const [k, v] of Object.entries(figures)) console.log(`${k}=${v}`);
  exitCode = tally.failures > 0 ? 1 : 0;
} catch (e) {
  if (interrupted) await new Promise(() => undefined); // the signal handler cleans up and exits
  console.error(e);
  if (problems.length > 0) console.error(`last server warnings/errors:\n${problems.join('\n')}`);
  exitCode = 1;
} finally {
  await cleanup();
}
if (!interrupted) process.exit(exitCode);
