// Serving speed against Debian's `docker-registry` (distribution 2.8), measured
// in the same run on the same image bytes: warm manifest GETs per second, and
// `skopeo copy` blob throughput. Run with `npm run bench:serve` (builds dist/
// first).
//
// Both servers run on 127.0.0.1 on ports chosen at run time, with their logs
// going to files (so neither pays for a reader the other lacks). Our server
// builds `large-blob/hello` (large-blob made 48 MiB of incompressible bytes)
// once; skopeo then pushes that image into distribution, and the bench checks
// that both answer the same manifest digest before measuring anything.
//
// The load generator for manifests is the same for both: a minimal HTTP/1.1
// keep-alive client on raw sockets (16 connections, one request in flight on
// each), cheap enough that on 2 cores the server rather than the client is
// what is measured. Rounds alternate between the servers in the order
// A B B A A B ..., so neither always runs first (right after a warm-up or the
// other's 50 MB skopeo destination was deleted) and noise from other work on
// the machine falls on both; figures are medians.
//
// The last two lines are machine-readable:
// serve_auth_vs_open=<manifest ratio>,<blob ratio> (with htpasswd login / without), and
// serve_vs_distribution=<manifest req/s ratio>,<blob MB/s ratio> (ours/distribution).
import { execFile, spawn } from 'node:child_process';
import { mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(here, '..');
const IMAGE = 'large-blob/hello';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const REQUESTS = Number(process.env.BENCH_REQUESTS ?? 5000);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 1000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const COPIES = Number(process.env.BENCH_COPIES ?? 5);
const BLOB_MIB = Number(process.env.BENCH_BLOB_MIB ?? 48);

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
};
const fmt = (x, d = 1) => x.toFixed(d);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Everything started or created here is listed, and undone in `cleanup`.
const children = [];
const dirs = [];

async function tempDir(prefix) {
  const d = await mkdtemp(path.join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

/** Starts a process with stdout and stderr going to a file; returns it with a reader of that file. */
async function startLogged(name, cmd, args, env, logFile) {
  const fh = await open(logFile, 'w');
  const child = spawn(cmd, args, { env, stdio: ['ignore', fh.fd, fh.fd] });
  await fh.close();
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  children.push({ name, child, exited });
  child.once('error', () => undefined);
  return { child, exited, log: () => readFile(logFile, 'utf8') };
}

async function stop({ name, child, exited }) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    console.error(`${name} (pid ${child.pid}) did not stop on SIGTERM; sending SIGKILL`);
    child.kill('SIGKILL');
  }, 10_000);
  await exited;
  clearTimeout(timer);
}

let cleaning;
function cleanup() {
  cleaning ??= (async () => {
    for (const c of children) await stop(c);
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    void cleanup().then(() => process.exit(130));
  });
}

async function waitFor(what, proc, check, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await check();
    if (r !== undefined) return r;
    if (proc.child.exitCode !== null || proc.child.signalCode !== null || Date.now() > deadline) {
      throw new Error(`${what} did not start:\n${await proc.log()}`);
    }
    await sleep(50);
  }
}

async function startOurs(extraEnv = {}, sharedStorage) {
  const storage = sharedStorage ?? (await tempDir('bench-serve-ours-'));
  const logFile = path.join(await tempDir('bench-serve-ours-log-'), 'server.log');
  const proc = await startLogged(
    'nixery-ts',
    process.execPath,
    [path.join(ROOT, 'dist/launch.cjs')],
    {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? '/root',
      NIX_CONFIG: 'substituters =',
      PORT: '0',
      NIXERY_HOST: '127.0.0.1',
      NIXERY_PKGS_PATH: path.join(ROOT, 'nix/demo-pkgs'),
      STORAGE_PATH: storage,
      NIXERY_OFFLINE: 'true',
      NIXERY_SHUTDOWN_GRACE_SECONDS: '2',
      NIXERY_IMPORT_ARGS: JSON.stringify({ largeBlobMiB: BLOB_MIB }),
      ...extraEnv,
    },
    logFile,
  );
  const port = await waitFor('nixery-ts', proc, async () => {
    const line = (await proc.log()).split('\n').find((l) => l.includes('"msg":"listening"'));
    return line === undefined ? undefined : JSON.parse(line).port;
  });
  return { ...proc, host: `127.0.0.1:${port}`, storage };
}

/** A port that was free a moment ago (distribution cannot be told to pick one itself). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startDistribution() {
  const dir = await tempDir('bench-serve-dist-');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const config = path.join(dir, `config-${attempt}.yml`);
    // A.1 of research/clients-and-emulators.md: no auth, no redirects, no
    // storage health check; the in-memory blob descriptor cache is its usual setup.
    await writeFile(
      config,
      [
        'version: 0.1',
        'log: { level: info, accesslog: { disabled: false }, fields: { service: registry } }',
        'storage:',
        '  cache: { blobdescriptor: inmemory }',
        `  filesystem: { rootdirectory: ${JSON.stringify(path.join(dir, 'data'))} }`,
        '  delete: { enabled: true }',
        '  redirect: { disable: true }',
        'http:',
        `  addr: 127.0.0.1:${port}`,
        '  headers: { X-Content-Type-Options: [nosniff] }',
        'health:',
        '  storagedriver: { enabled: false }',
        '',
      ].join('\n'),
    );
    const proc = await startLogged('docker-registry', 'docker-registry', ['serve', config], process.env, path.join(dir, `registry-${attempt}.log`));
    const host = `127.0.0.1:${port}`;
    try {
      await waitFor('docker-registry', proc, async () => {
        try {
          const res = await fetch(`http://${host}/v2/`);
          return res.headers.get('docker-distribution-api-version') === 'registry/2.0' ? true : undefined;
        } catch {
          return undefined;
        }
      });
      return { ...proc, host };
    } catch (e) {
      // The port may have been taken between freePort() and the bind: try another.
      await stop(children.find((c) => c.child === proc.child));
      if (attempt >= 3) throw e;
    }
  }
}

async function skopeo(args) {
  return run('skopeo', ['--insecure-policy', ...args], { maxBuffer: 1 << 24 });
}

async function manifestOf(host) {
  const res = await fetch(`http://${host}/v2/${IMAGE}/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
  if (res.status !== 200) throw new Error(`GET manifest from ${host}: ${res.status} ${await res.text()}`);
  const bytes = Buffer.from(await res.arrayBuffer());
  return { digest: res.headers.get('docker-content-digest'), type: res.headers.get('content-type'), bytes, json: JSON.parse(bytes) };
}

/**
 * `total` GET requests over `concurrency` keep-alive connections, each with
 * one request in flight. Responses are parsed just enough to find their end
 * (status line, Content-Length); anything but 200 with a body of `expectBytes`
 * counts as an error.
 */
function load(host, pathName, headers, { total, concurrency, expectBytes }) {
  const [hostname, port] = host.split(':');
  const request = Buffer.from(
    `GET ${pathName} HTTP/1.1\r\nHost: ${host}\r\n` +
      Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('') +
      '\r\n',
  );
  let started = 0;
  let done = 0;
  let errors = 0;
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    let open = 0;
    const finishOne = () => {
      if (--open === 0) resolve({ seconds: (performance.now() - t0) / 1000, done, errors });
    };
    for (let i = 0; i < Math.min(concurrency, total); i++) {
      open++;
      const sock = net.connect({ host: hostname, port: Number(port), noDelay: true });
      let buf = Buffer.alloc(0);
      let need = -1; // bytes of the current response (headers + body), once known
      const next = () => {
        if (started >= total) {
          sock.end();
          return;
        }
        started++;
        sock.write(request);
      };
      sock.on('connect', next);
      sock.on('data', (chunk) => {
        buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk]);
        for (;;) {
          if (need < 0) {
            const end = buf.indexOf('\r\n\r\n');
            if (end < 0) return;
            const head = buf.subarray(0, end).toString('latin1');
            const status = Number(head.slice(9, 12));
            const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
            if (!m) {
              sock.destroy(new Error(`response without Content-Length from ${host}:\n${head}`));
              return;
            }
            need = end + 4 + Number(m[1]);
            if (status !== 200 || Number(m[1]) !== expectBytes) errors++;
          }
          if (buf.length < need) return;
          buf = buf.subarray(need);
          need = -1;
          done++;
          next();
        }
      });
      sock.on('error', (e) => reject(e));
      sock.on('close', finishOne);
    }
  });
}

async function manifestRate(host, size, extraHeaders = {}) {
  const p = `/v2/${IMAGE}/manifests/latest`;
  const h = { Accept: OCI_MANIFEST, ...extraHeaders };
  await load(host, p, h, { total: WARMUP, concurrency: CONCURRENCY, expectBytes: size });
  const r = await load(host, p, h, { total: REQUESTS, concurrency: CONCURRENCY, expectBytes: size });
  if (r.errors > 0 || r.done !== REQUESTS) throw new Error(`${host}: ${r.errors} bad responses, ${r.done}/${REQUESTS} done`);
  return REQUESTS / r.seconds;
}

async function copyTime(host, creds) {
  const dest = await tempDir('bench-serve-copy-');
  const t0 = performance.now();
  await skopeo(['copy', '--quiet', '--src-tls-verify=false', ...(creds ? ['--src-creds', creds] : []), `docker://${host}/${IMAGE}:latest`, `oci:${dest}:latest`]);
  const seconds = (performance.now() - t0) / 1000;
  await rm(dest, { recursive: true, force: true });
  return seconds;
}

try {
  const [ours, dist] = await Promise.all([startOurs(), startDistribution()]);
  console.log(`nixery-ts pid ${ours.child.pid} on ${ours.host}; docker-registry pid ${dist.child.pid} on ${dist.host}`);

  // Warm: the first pull builds the image.
  const t0 = performance.now();
  const warm = await tempDir('bench-serve-warm-');
  await skopeo(['copy', '--quiet', '--src-tls-verify=false', `docker://${ours.host}/${IMAGE}:latest`, `oci:${warm}:latest`]);
  console.log(`first pull from nixery-ts (build included): ${fmt((performance.now() - t0) / 1000, 2)} s`);
  await skopeo([
    'copy', '--quiet', '--src-tls-verify=false', '--dest-tls-verify=false',
    `docker://${ours.host}/${IMAGE}:latest`, `docker://${dist.host}/${IMAGE}:latest`,
  ]);

  const mo = await manifestOf(ours.host);
  const md = await manifestOf(dist.host);
  if (mo.digest !== md.digest || !mo.bytes.equals(md.bytes)) {
    throw new Error(`the servers answer different manifests: ${mo.digest} (${mo.type}) vs ${md.digest} (${md.type})`);
  }
  const blobBytes = mo.json.config.size + mo.json.layers.reduce((n, l) => n + l.size, 0);
  console.log(
    `image ${IMAGE}: manifest ${mo.digest} (${mo.bytes.length} bytes, ${mo.type}), ` +
      `${mo.json.layers.length} layers + config = ${fmt(blobBytes / 1e6)} MB of blobs, identical on both`,
  );

  // Manifests: alternate rounds, medians.
  const rates = { ours: [], dist: [] };
  for (let i = 0; i < ROUNDS; i++) {
    for (const who of i % 2 === 0 ? ['ours', 'dist'] : ['dist', 'ours']) {
      rates[who].push(await manifestRate(who === 'ours' ? ours.host : dist.host, mo.bytes.length));
    }
  }
  const rOurs = median(rates.ours);
  const rDist = median(rates.dist);
  console.log(
    `manifest GET (${CONCURRENCY} connections, ${REQUESTS} requests after ${WARMUP} warm-up, ${ROUNDS} rounds): ` +
      `nixery-ts ${fmt(rOurs, 0)} req/s [${rates.ours.map((x) => fmt(x, 0)).join(' ')}], ` +
      `distribution ${fmt(rDist, 0)} req/s [${rates.dist.map((x) => fmt(x, 0)).join(' ')}]`,
  );

  // Blobs: skopeo copy to a fresh OCI layout, alternating, medians.
  await copyTime(ours.host); // page cache and skopeo's own start-up, for both sides
  await copyTime(dist.host);
  const times = { ours: [], dist: [] };
  for (let i = 0; i < COPIES; i++) {
    for (const who of i % 2 === 0 ? ['ours', 'dist'] : ['dist', 'ours']) {
      times[who].push(await copyTime(who === 'ours' ? ours.host : dist.host));
    }
  }
  const bOurs = blobBytes / 1e6 / median(times.ours);
  const bDist = blobBytes / 1e6 / median(times.dist);
  console.log(
    `skopeo copy -> oci: (${COPIES} runs): nixery-ts ${fmt(bOurs)} MB/s [${times.ours.map((x) => fmt(x, 3)).join(' ')} s], ` +
      `distribution ${fmt(bDist)} MB/s [${times.dist.map((x) => fmt(x, 3)).join(' ')} s]`,
  );

  // The same image from a second server on the same storage with htpasswd
  // authentication: what a login costs a warm pull (bcrypt once, then the
  // verified-header cache), alternating rounds with the open server.
  const authDir = await tempDir('bench-serve-auth-');
  const htpasswd = path.join(authDir, 'htpasswd');
  await run('htpasswd', ['-B', '-b', '-c', htpasswd, 'bench', 'bench-password']);
  const authed = await startOurs({ NIXERY_AUTH_HTPASSWD: htpasswd }, ours.storage);
  const authHeader = { Authorization: `Basic ${Buffer.from('bench:bench-password').toString('base64')}` };
  const authRates = { open: [], auth: [] };
  for (let i = 0; i < ROUNDS; i++) {
    for (const who of i % 2 === 0 ? ['open', 'auth'] : ['auth', 'open']) {
      authRates[who].push(who === 'open' ? await manifestRate(ours.host, mo.bytes.length) : await manifestRate(authed.host, mo.bytes.length, authHeader));
    }
  }
  await copyTime(authed.host, 'bench:bench-password');
  const authTimes = { open: [], auth: [] };
  for (let i = 0; i < COPIES; i++) {
    for (const who of i % 2 === 0 ? ['open', 'auth'] : ['auth', 'open']) {
      authTimes[who].push(who === 'open' ? await copyTime(ours.host) : await copyTime(authed.host, 'bench:bench-password'));
    }
  }
  const mRatio = median(authRates.auth) / median(authRates.open);
  const bRatio = median(authTimes.open) / median(authTimes.auth);
  console.log(
    `authenticated: manifest GET ${fmt(median(authRates.auth), 0)} req/s vs open ${fmt(median(authRates.open), 0)}; ` +
      `skopeo copy ${fmt(blobBytes / 1e6 / median(authTimes.auth))} MB/s vs open ${fmt(blobBytes / 1e6 / median(authTimes.open))}`,
  );

  await cleanup();
  console.log(`serve_auth_vs_open=${mRatio.toFixed(2)},${bRatio.toFixed(2)}`);
  console.log(`serve_vs_distribution=${(rOurs / rDist).toFixed(2)},${(bOurs / bDist).toFixed(2)}`);
} catch (e) {
  await cleanup();
  console.error(e);
  process.exitCode = 1;
}
