/**
 * The random HTTP requests of test/fuzz/http-cases.ts (the same generators as
 * test/inprocess/http-fuzz.test.ts) against the real server over a real
 * socket: `node dist/main.js` on the demo package set with real Nix.
 *
 *   npm run bench:fuzz [-- --cases N] [--seed S] [--concurrency C] [--timeout SECONDS]
 *
 * Compiled by `tsc -p bench/tsconfig.json` into .bench-build/ (ignored), after
 * `npm run build` made dist/. Requests go out through node:http with a
 * keep-alive agent, paths exactly as generated (fetch would normalise dot
 * segments), about 16 in flight, each with a bounded time. Every response is
 * judged by checkResponse(); 5xx are excused only for images containing
 * broken-build (which fails to build on purpose).
 *
 * Counted:
 *   server_errors  responses >= 500 that the `faulty` callback does not excuse
 *   crashes        socket-level failures (reset, hang-up, refused, timeout),
 *                  plus 1 if the server process exited during the run
 *   violations     every invariant checkResponse() reports (5xx included);
 *                  the first few distinct ones are printed with an example
 *
 * The server's log (level warn: failed builds, request faults) is written to
 * .bench-build/fuzz-server.log. The last line of output is machine-readable:
 *
 *   fuzz_cases=<n> server_errors=<n> crashes=<n>
 *
 * and the exit code is non-zero when server_errors or crashes is.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, existsSync, type WriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import fc from 'fast-check';
import { caseArb, checkResponse, type CaseOptions, type FuzzCase } from '../test/fuzz/http-cases.js';

/** The repository root: this file runs as .bench-build/bench/fuzz.js. */
const ROOT = path.resolve(import.meta.dirname, '../..');
const MAIN = path.join(ROOT, 'dist/launch.cjs');
const DEMO_PKGS = path.join(ROOT, 'nix/demo-pkgs');
const SERVER_LOG = path.join(ROOT, '.bench-build/fuzz-server.log');

const OCI = 'application/vnd.oci.image.manifest.v1+json';
/** Cases generated at a time, so that 100,000 of them never sit in memory together. */
const CHUNK = 5_000;
const PROGRESS_EVERY = 10_000;
/** Distinct violations printed with an example. */
const SHOW_VIOLATIONS = 10;
const SHOW_CRASHES = 10;

const KNOWN_NAMES = ['hello', 'jq', 'htop', 'tools.greet', 'shell', 'hello/jq', 'broken-build'];
/**
 * Names that follow the grammar but name no package. A fixed pool: the server
 * caches a not-found answer per image, so this bounds the Nix evaluations that
 * the known/unknown name branches of the generator cause.
 */
const UNKNOWN_NAMES = [
  'nosuchpkg', 'foo', 'bar', 'baz', 'qux', 'no-such-package', 'not.a.pkg', 'zzz_top', 'hello2', 'jqq',
  'htopp', 'a', 'x9', 'library', 'library/ubuntu', 'tools.nope', 'tools.greet.more', 'xx__yy', 'a-b-c', 'very--long--name',
  'hello/nosuch', 'jq/unknown', 'shell/nothing', 'arm64/nosuch', 'nope/nope', 'ab.cd_ef', '123', 'pkgs.hello', 'k8s', 'zero-0',
];

// ------------------------------------------------------------------ options

const { values: argv } = parseArgs({
  options: {
    cases: { type: 'string', default: '100000' },
    seed: { type: 'string' },
    concurrency: { type: 'string', default: '16' },
    timeout: { type: 'string', default: '120' },
  },
  strict: true,
});

function positiveInt(name: string, raw: string | undefined, min = 1): number {
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < min) {
    process.stderr.write(`--${name}: ${JSON.stringify(raw)} is not a whole number >= ${min}\n`);
    process.exit(2);
  }
  return n;
}

const CASES = positiveInt('cases', argv.cases, 0);
const SEED = argv.seed === undefined ? (Date.now() ^ (Math.random() * 0x7fffffff)) | 0 : positiveInt('seed', argv.seed, -(2 ** 31));
const CONCURRENCY = positiveInt('concurrency', argv.concurrency);
const TIMEOUT_MS = positiveInt('timeout', argv.timeout) * 1000;

// ------------------------------------------------------------------- server

interface Server {
  readonly child: ChildProcess;
  readonly host: string;
  readonly port: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Set once the process has exited. */
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** Server log lines of level error or fatal, by request id, for the report. */
  readonly errorsById: Map<string, string[]>;
  readonly tail: string[];
}

let server: Server | undefined;
let storageDir: string | undefined;
let logFile: WriteStream | undefined;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A port that was free a moment ago (the server logs "listening" at info level only, and we run it at warn). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/**
 * `node dist/main.js` with the environment of test/helpers/server.ts
 * startServer() (demo package set, offline, fresh storage directory), at log
 * level warn. With PORT=0 the port would only be in the info-level
 * "listening" line, so a free port is picked here and the server is polled
 * until /v2/ answers (or the "listening" line shows, should the level allow it).
 */
async function startServer(): Promise<Server> {
  storageDir = await mkdtemp(path.join(tmpdir(), 'nixery-fuzz-store-'));
  await mkdir(path.dirname(SERVER_LOG), { recursive: true });
  logFile = createWriteStream(SERVER_LOG);
  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    const child = spawn(process.execPath, [MAIN], {
      cwd: ROOT,
      env: {
        PATH: process.env['PATH'] ?? '/usr/bin:/bin',
        NIX_CONFIG: 'substituters =',
        PORT: String(port),
        NIXERY_HOST: '127.0.0.1',
        NIXERY_PKGS_PATH: DEMO_PKGS,
        STORAGE_PATH: storageDir,
        NIXERY_OFFLINE: 'true',
        NIXERY_SHUTDOWN_GRACE_SECONDS: '2',
        NIXERY_LOG_LEVEL: 'warn',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group, so that a server that ignores SIGTERM is
      // killed together with the Nix processes it started.
      detached: true,
    });
    const s: Server = {
      child,
      host: '127.0.0.1',
      port,
      exit: undefined,
      exited: new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal }))),
      errorsById: new Map(),
      tail: [],
    };
    void s.exited.then((e) => (s.exit = e));
    let listening = false;
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      logFile!.write(d);
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        s.tail.push(line);
        if (s.tail.length > 50) s.tail.shift();
        if (line.includes('"msg":"listening"')) listening = true;
        if (/"level":"(error|fatal)"/.test(line)) {
          const id = /"requestId":"([^"]*)"/.exec(line)?.[1] ?? '';
          const list = s.errorsById.get(id) ?? [];
          if (list.length < 3) list.push(line.slice(0, 2000));
          if (s.errorsById.size < 10_000) s.errorsById.set(id, list);
        }
      }
    });
    child.stderr!.on('data', (d: Buffer) => {
      logFile!.write(d);
      s.tail.push(d.toString().trimEnd());
      if (s.tail.length > 50) s.tail.shift();
    });
    server = s;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && s.exit === undefined && !listening) {
      try {
        const r = await request({ method: 'GET', path: '/v2/', headers: {} }, 2_000);
        if (r.status === 200) listening = true;
      } catch {
        await sleep(100);
      }
    }
    if (listening) return s;
    lastError = new Error(`server did not start (attempt ${attempt}, port ${port}, exit ${JSON.stringify(s.exit)}):\n${s.tail.join('\n')}`);
    await stopServer();
    server = undefined;
    // Only a port taken between freePort() and the server's listen() is worth another try.
    if (!s.tail.some((l) => l.includes('EADDRINUSE'))) break;
  }
  throw lastError;
}

/** SIGTERM, then SIGKILL of its process group after a bounded wait. */
async function stopServer(): Promise<void> {
  const s = server;
  if (!s || s.exit !== undefined) return;
  s.child.kill('SIGTERM');
  const killed = await Promise.race([s.exited.then(() => false), sleep(15_000).then(() => true)]);
  if (killed) {
    try {
      process.kill(-s.child.pid!, 'SIGKILL');
    } catch {
      s.child.kill('SIGKILL');
    }
    await s.exited;
  }
}

async function cleanup(): Promise<void> {
  await stopServer();
  agent.destroy();
  if (storageDir) await rm(storageDir, { recursive: true, force: true });
  storageDir = undefined;
  await new Promise<void>((r) => (logFile ? logFile.end(r) : r()));
  logFile = undefined;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`\n${sig}: stopping the server\n`);
    void cleanup().finally(() => process.exit(130));
  });
}

// ------------------------------------------------------------------ requests

const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENCY });

interface Reply {
  readonly status: number;
  readonly headers: Headers;
  readonly body: Buffer;
}

/** A request over a socket, the path as given; rejects on socket errors and after `timeoutMs`. */
function request(c: FuzzCase, timeoutMs: number): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const s = server!;
    const req = http.request({ host: s.host, port: s.port, agent, method: c.method, path: c.path, headers: c.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('error', fail);
      res.on('aborted', () => fail(Object.assign(new Error('response aborted'), { code: 'ECONNABORTED' })));
      res.on('end', () => {
        clearTimeout(timer);
        const headers = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          if (v === undefined) continue;
          for (const x of Array.isArray(v) ? v : [v]) headers.append(k, x);
        }
        resolve({ status: res.statusCode!, headers, body: Buffer.concat(chunks) });
      });
    });
    const timer = setTimeout(
      () => req.destroy(Object.assign(new Error(`no complete response within ${timeoutMs / 1000} s`), { code: 'TIMEOUT' })),
      timeoutMs,
    );
    function fail(e: Error) {
      clearTimeout(timer);
      reject(e);
    }
    req.on('error', fail);
    req.end();
  });
}

/** Why node would refuse to send this case, or undefined. Checked explicitly before sending. */
function unsendable(c: FuzzCase): { kind: 'header' | 'path' | 'method'; reason: string } | undefined {
  for (const [k, v] of Object.entries(c.headers)) {
    try {
      http.validateHeaderName(k);
      http.validateHeaderValue(k, v);
    } catch (e) {
      return { kind: 'header', reason: `${k}: ${(e as Error).message}` };
    }
  }
  // node's own check on the request target (ERR_UNESCAPED_CHARACTERS).
  if (/[^\u0021-\u00ff]/.test(c.path)) return { kind: 'path', reason: 'unescaped characters in the path' };
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(c.method)) return { kind: 'method', reason: 'not an HTTP token' };
  return undefined;
}

function decodeSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The only allowed 5xx: an image with broken-build in it, which fails to build on purpose. */
const faulty = (p: string) => decodeSafe(p).includes('broken-build');

// ------------------------------------------------------------------ figures

let sent = 0;
let responses = 0;
let serverErrors = 0;
let excused5xx = 0;
let crashes = 0;
let violations = 0;
const skipped = { header: 0, path: 0, method: 0 };
const statusHistogram = new Map<number, number>();
const crashCodes = new Map<string, number>();
const crashExamples: string[] = [];
const violationKinds = new Map<string, { count: number; example: string }>();

function describeCase(i: number, c: FuzzCase): string {
  const p = c.path.length > 600 ? `${c.path.slice(0, 600)}… (${c.path.length} chars)` : c.path;
  return `case #${i}: ${c.method} ${p}  headers=${JSON.stringify(c.headers)}`;
}

/** What makes two violations "the same": the method and the problem with ids, digests and byte counts masked. */
function violationKey(c: FuzzCase, problem: string): string {
  const p = problem
    .replace(/"requestId":"[^"]*"/g, '"requestId":"…"')
    .replace(/[0-9a-f]{16,}/g, '<hex>')
    .replace(/\d+-byte/g, 'N-byte');
  return `${c.method} | ${p.slice(0, 110)}`;
}

async function runCase(i: number, c: FuzzCase): Promise<void> {
  const refused = unsendable(c);
  if (refused) {
    skipped[refused.kind]++;
    return;
  }
  sent++;
  let r: Reply;
  try {
    r = await request(c, TIMEOUT_MS);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const code = err.code ?? err.message;
    crashes++;
    crashCodes.set(code, (crashCodes.get(code) ?? 0) + 1);
    if (crashExamples.length < SHOW_CRASHES) crashExamples.push(`${code} (${err.message}) on ${describeCase(i, c)}`);
    return;
  }
  responses++;
  statusHistogram.set(r.status, (statusHistogram.get(r.status) ?? 0) + 1);
  if (r.status >= 500) {
    if (faulty(c.path)) excused5xx++;
    else serverErrors++;
  }
  const verdict = checkResponse(c, r.status, r.headers, r.body, faulty);
  if (verdict.problem !== undefined) {
    violations++;
    const key = violationKey(c, verdict.problem);
    const seen = violationKinds.get(key);
    if (seen) seen.count++;
    else {
      const id = r.headers.get('x-request-id') ?? '';
      const logLines = server?.errorsById.get(id) ?? [];
      const example = [
        describeCase(i, c),
        `    -> ${r.status} content-type=${r.headers.get('content-type')} x-request-id=${id} body(${r.body.length})=${JSON.stringify(r.body.toString('latin1').slice(0, 300))}`,
        `    problem: ${verdict.problem}`,
        ...logLines.map((l) => `    server log: ${l.slice(0, 1500)}`),
      ].join('\n');
      violationKinds.set(key, { count: 1, example });
    }
  }
}

/** The cases, CHUNK at a time: chunk k is fc.sample() with seed SEED + k, so a run is reproducible from its seed. */
function* cases(opts: CaseOptions): Generator<FuzzCase> {
  const arb = caseArb(opts);
  for (let k = 0, left = CASES; left > 0; k++, left -= CHUNK) {
    yield* fc.sample(arb, { numRuns: Math.min(CHUNK, left), seed: (SEED + k) | 0 });
  }
}

// -------------------------------------------------------------------- main

async function knownDigests(): Promise<string[]> {
  const get = { method: 'GET', path: '/v2/hello/manifests/latest', headers: { accept: OCI } };
  const r = await request(get, 600_000);
  if (r.status !== 200) throw new Error(`GET /v2/hello/manifests/latest answered ${r.status}: ${r.body.toString().slice(0, 500)}`);
  const manifest = JSON.parse(r.body.toString()) as { config: { digest: string }; layers: { digest: string }[] };
  const digest = r.headers.get('docker-content-digest') ?? `sha256:${createHash('sha256').update(r.body).digest('hex')}`;
  const digests = [digest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)];
  // The blobs really are there (otherwise "known" digests would only test 404s).
  for (const d of digests.slice(1)) {
    const h = await request({ method: 'HEAD', path: `/v2/hello/blobs/${d}`, headers: {} }, 60_000);
    if (h.status !== 200) throw new Error(`HEAD /v2/hello/blobs/${d} answered ${h.status}`);
  }
  return [...new Set(digests)];
}

async function main(): Promise<number> {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
  const started = performance.now();
  process.stderr.write(`fuzz: seed=${SEED} cases=${CASES} concurrency=${CONCURRENCY} timeout=${TIMEOUT_MS / 1000}s\n`);
  const s = await startServer();
  process.stderr.write(`fuzz: server pid ${s.child.pid} on ${s.host}:${s.port}, storage ${storageDir}, log ${path.relative(ROOT, SERVER_LOG)}\n`);
  const digests = await knownDigests();
  process.stderr.write(`fuzz: hello built; ${digests.length} known digests\n`);
  const opts: CaseOptions = { knownNames: KNOWN_NAMES, unknownNames: UNKNOWN_NAMES, knownDigests: digests };

  const fuzzStarted = performance.now();
  const it = cases(opts);
  let index = 0;
  let serverDied = false;
  const worker = async () => {
    for (;;) {
      if (server!.exit !== undefined) {
        serverDied = true;
        return;
      }
      const next = it.next();
      if (next.done) return;
      const i = index++;
      await runCase(i, next.value);
      const done = i + 1;
      if (done % PROGRESS_EVERY === 0) {
        const secs = (performance.now() - fuzzStarted) / 1000;
        process.stderr.write(
          `fuzz: ${done}/${CASES} cases, ${secs.toFixed(0)} s (${(done / secs).toFixed(0)}/s), server_errors=${serverErrors} crashes=${crashes} violations=${violations}\n`,
        );
      }
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const fuzzSeconds = (performance.now() - fuzzStarted) / 1000;

  let stats = '';
  if (server!.exit === undefined) {
    try {
      const r = await request({ method: 'GET', path: '/debug/stats', headers: {} }, 10_000);
      stats = r.body.toString();
    } catch (e) {
      stats = `(unavailable: ${(e as Error).message})`;
    }
  }
  const exitedDuringRun = server!.exit !== undefined || serverDied;
  if (exitedDuringRun) crashes++;
  const exitInfo = server!.exit;
  const tail = server!.tail.slice(-20);
  await cleanup();

  // ---------------------------------------------------------------- report
  const out: string[] = [];
  out.push('', `status histogram (${responses} responses):`);
  for (const [status, n] of [...statusHistogram].sort((a, b) => a[0] - b[0])) out.push(`  ${status}  ${n}`);
  if (crashCodes.size > 0) {
    out.push('socket-level failures:');
    for (const [code, n] of [...crashCodes].sort((a, b) => b[1] - a[1])) out.push(`  ${code}  ${n}`);
    out.push(...crashExamples.map((e) => `  ${e}`));
  }
  if (exitedDuringRun) out.push(`the server exited during the run: ${JSON.stringify(exitInfo)}; its last lines:`, ...tail.map((l) => `  ${l}`));
  if (violationKinds.size > 0) {
    out.push(`invariant violations: ${violations} in ${violationKinds.size} distinct kinds; the first ${Math.min(SHOW_VIOLATIONS, violationKinds.size)}:`);
    for (const [key, v] of [...violationKinds].slice(0, SHOW_VIOLATIONS)) out.push(`- [${v.count}x] ${key}`, `  ${v.example.replace(/\n/g, '\n  ')}`);
  }
  if (stats) out.push(`server /debug/stats at the end: ${stats.slice(0, 1000)}`);
  out.push(
    `seed=${SEED} generated=${index} sent=${sent} responses=${responses} skipped_headers=${skipped.header} skipped_paths=${skipped.path} skipped_methods=${skipped.method}`,
    `excused_5xx=${excused5xx} (broken-build) violations=${violations} distinct_violations=${violationKinds.size}`,
    `time: total ${((performance.now() - started) / 1000).toFixed(1)} s, fuzzing ${fuzzSeconds.toFixed(1)} s (${(index / fuzzSeconds).toFixed(0)} cases/s)`,
    `fuzz_cases=${sent} server_errors=${serverErrors} crashes=${crashes}`,
  );
  process.stdout.write(`${out.join('\n')}\n`);
  return serverErrors > 0 || crashes > 0 ? 1 : 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  async (e: unknown) => {
    process.stderr.write(`fuzz: ${(e as Error).stack ?? String(e)}\n`);
    await cleanup().catch(() => undefined);
    // The run did not happen (no server, no hello image): still one final line, counted as a crash.
    process.stdout.write(`fuzz_cases=${sent} server_errors=${serverErrors} crashes=${crashes + 1}\n`);
    process.exitCode = 2;
  },
);
