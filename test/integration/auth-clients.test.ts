/**
 * Logging in with the clients people actually use. One server guards every
 * registry route with an htpasswd file over plain HTTP on loopback (docker
 * and ctr accept that for 127.0.0.0/8), another does the same over HTTPS
 * with a certificate from a test CA that only podman's and skopeo's cert
 * dirs trust. Each client pulls with the right password and fails cleanly
 * with a wrong one, and a refused client never makes the server build.
 * Users added to or removed from the htpasswd file, and a certificate
 * replaced on disk, take effect without a restart. Finally, no password or
 * Authorization value ever shows up in the server's logs or in a response.
 *
 * The daemons (containerd, dockerd) and servers are started and stopped by
 * this file; docker, podman and skopeo keep their credentials in temporary
 * files, never in ~/.docker or the user's containers auth file.
 */
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inChroot, podmanIn, unpack } from '../helpers/clients.js';
import { startEngines, type Engines } from '../helpers/daemons.js';
import { DEMO_PKGS } from '../helpers/nix.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';
import { httpsGet, makeCa, makeCertDir, makeServerCert, type Ca, type ServerCert } from '../helpers/tls.js';

const execFileP = promisify(execFile);

// Random passwords, so a hit in a log can only be a leak.
const secret = (who: string) => `${who}-${randomBytes(12).toString('base64url')}`;
const ALICE_PW = secret('alice');
const BOB_PW = secret('bob');
const WRONG_PW = secret('wrong');
const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

/** Everything a response sent back to this file (status line aside): searched for secrets at the end. */
const received: { what: string; text: string }[] = [];
const servers: RunningServer[] = [];

let work: { path: string; remove: () => Promise<void> };
let ca: Ca;
let serverCert: ServerCert;
let certDir: string;
let plain: RunningServer;
let secure: RunningServer;
let engines: Engines | undefined;

/** Runs a client without throwing: its exit code and output, `input` on stdin. */
function attempt(
  cmd: string,
  args: readonly string[],
  opts: { input?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

/** GET on the plain server, remembering what came back. */
async function plainGet(server: RunningServer, urlPath: string, authorization?: string): Promise<{ status: number; body: string; headers: Headers }> {
  const res = await fetch(`${server.url}${urlPath}`, { headers: authorization ? { authorization } : {} });
  const body = await res.text();
  received.push({ what: `GET ${urlPath} on ${server.host}`, text: `${[...res.headers].map(([k, v]) => `${k}: ${v}`).join('\n')}\n\n${body}` });
  return { status: res.status, body, headers: res.headers };
}

/** GET on an HTTPS server, verified against `caPem` only, remembering what came back. */
async function secureGet(server: RunningServer, urlPath: string, caPem: string, authorization?: string) {
  const res = await httpsGet(`https://${server.host}${urlPath}`, caPem, authorization ? { authorization } : {});
  received.push({ what: `GET ${urlPath} on https://${server.host}`, text: `${JSON.stringify(res.headers)}\n\n${res.body}` });
  return res;
}

/** Build work the server has done so far: these must not move while a client is refused. */
async function buildCounters(server: RunningServer, caPem?: string) {
  const body = caPem ? (await secureGet(server, '/debug/stats', caPem)).body : (await plainGet(server, '/debug/stats')).body;
  const s = JSON.parse(body) as { builds: number; nix: { evaluations: number; realisations: number } };
  return { builds: s.builds, evaluations: s.nix.evaluations, realisations: s.nix.realisations };
}

async function expectNoBuild(server: RunningServer, caPem: string | undefined, refused: () => Promise<void>): Promise<void> {
  const before = await buildCounters(server, caPem);
  await refused();
  expect(await buildCounters(server, caPem)).toEqual(before);
}

/** Polls `check` every 200 ms until it holds; fails after `timeoutMs`. Returns how long it took. */
async function within(timeoutMs: number, what: string, check: () => Promise<boolean>): Promise<number> {
  const start = Date.now();
  for (;;) {
    if (await check()) return Date.now() - start;
    if (Date.now() - start > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function htpasswd(args: readonly string[]): Promise<void> {
  await execFileP('htpasswd', args as string[], { timeout: 30_000 });
}

/** Starts a server and keeps it for the leak check and for afterAll to stop. */
async function start(env: Record<string, string>): Promise<RunningServer> {
  const s = await startServer({ env });
  servers.push(s);
  return s;
}

beforeAll(async () => {
  work = await scratchDir('nixery-auth-');
  const pki = path.join(work.path, 'pki');
  ca = await makeCa(pki);
  serverCert = await makeServerCert(pki, ca, 'server');
  certDir = await makeCertDir(path.join(work.path, 'certs.d'), ca);
  const plainUsers = path.join(work.path, 'plain.htpasswd');
  const secureUsers = path.join(work.path, 'secure.htpasswd');
  await htpasswd(['-B', '-b', '-c', plainUsers, 'alice', ALICE_PW]);
  await htpasswd(['-B', '-b', '-c', secureUsers, 'alice', ALICE_PW]);
  // Started side by side; whatever did start is stopped by afterAll even if another part failed.
  const started = await Promise.allSettled([
    start({ NIXERY_AUTH_HTPASSWD: plainUsers }).then((s) => (plain = s)),
    start({ NIXERY_AUTH_HTPASSWD: secureUsers, NIXERY_TLS_CERT: serverCert.cert, NIXERY_TLS_KEY: serverCert.key }).then((s) => (secure = s)),
    startEngines().then((e) => (engines = e)),
  ]);
  for (const r of started) if (r.status === 'rejected') throw r.reason;
});

afterAll(async () => {
  await engines?.stop();
  for (const s of servers) await s.stop();
  await work?.remove();
});

describe('docker against the plain-HTTP server on loopback', () => {
  it('refuses docker login with a wrong password, then logs in, pulls hello and runs it', async () => {
    // The engines' own client config dir, so nothing touches ~/.docker.
    const config = path.join(engines!.dir, 'd', 'cfg');
    expect(existsSync(config)).toBe(true);
    const docker = (args: readonly string[], input?: string) =>
      attempt('docker', ['-H', `unix://${engines!.dockerSocket}`, ...args], { env: { DOCKER_CONFIG: config }, ...(input === undefined ? {} : { input }) });

    await expectNoBuild(plain, undefined, async () => {
      const anonymous = await docker(['pull', `${plain.host}/nano`]);
      expect(anonymous.code).not.toBe(0);
      expect(anonymous.stderr).toMatch(/no basic auth credentials|unauthorized|401/i);
      const wrong = await docker(['login', plain.host, '-u', 'alice', '--password-stdin'], WRONG_PW);
      expect(wrong.code, wrong.stderr).not.toBe(0);
      expect(wrong.stderr).toMatch(/unauthorized|401/i);
    });
    const configFile = path.join(config, 'config.json');
    expect(existsSync(configFile) ? await readFile(configFile, 'utf8') : '').not.toContain(plain.host);

    const login = await docker(['login', plain.host, '-u', 'alice', '--password-stdin'], ALICE_PW);
    expect(login.code, login.stderr).toBe(0);
    expect(login.stdout).toMatch(/Login Succeeded/);
    const stored = JSON.parse(await readFile(path.join(config, 'config.json'), 'utf8')) as { auths: Record<string, { auth?: string }> };
    expect(stored.auths[plain.host]?.auth).toBe(Buffer.from(`alice:${ALICE_PW}`).toString('base64'));

    const ref = `${plain.host}/hello`;
    const pull = await docker(['pull', ref]);
    expect(pull.code, pull.stderr).toBe(0);
    const run = await docker(['run', '--rm', '--network', 'none', ref, 'hello']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toBe(await readFile(path.join(DEMO_PKGS, 'greeting.txt'), 'utf8'));
  });
});

describe('containerd (ctr) against the plain-HTTP server', () => {
  it('refuses a pull with a wrong password and pulls hello with the right one', async () => {
    const ctr = (args: readonly string[]) => attempt('ctr', ['--address', engines!.containerdSocket, ...args]);
    await expectNoBuild(plain, undefined, async () => {
      const wrong = await ctr(['images', 'pull', '--plain-http', '--user', `alice:${WRONG_PW}`, `${plain.host}/curl:latest`]);
      expect(wrong.code).not.toBe(0);
      expect(wrong.stderr).toMatch(/401 Unauthorized/);
    });
    const ref = `${plain.host}/hello:latest`;
    const ok = await ctr(['images', 'pull', '--plain-http', '--user', `alice:${ALICE_PW}`, ref]);
    expect(ok.code, ok.stderr).toBe(0);
    const images = await ctr(['images', 'ls', '-q']);
    expect(images.stdout.split('\n')).toContain(ref);
  });
});

describe('podman against the HTTPS server', () => {
  let dir: string;
  let P: string[];
  let env: Record<string, string>;
  beforeAll(async () => {
    dir = path.join(work.path, 'podman');
    await mkdir(dir, { recursive: true });
    const podman = await podmanIn(dir);
    P = [...podman.flags, '--log-level', 'error'];
    // A private auth file: podman login never writes the user's real one.
    // (podman insists that the file exists.)
    const authfile = path.join(dir, 'auth.json');
    await writeFile(authfile, '{"auths":{}}\n');
    env = { ...podman.env, REGISTRY_AUTH_FILE: authfile };
  });
  afterAll(async () => {
    if (P) await attempt('podman', [...P, 'rmi', '-a', '-f'], { env });
  });
  const podman = (args: readonly string[], input?: string) => attempt('podman', [...P, ...args], { env, ...(input === undefined ? {} : { input }) });
  const verified = () => ['--tls-verify=true', '--cert-dir', certDir, '--authfile', env['REGISTRY_AUTH_FILE']!];

  it('refuses a wrong password, then logs in and pulls jq with the certificate verified', async () => {
    await expectNoBuild(secure, ca.pem, async () => {
      const wrong = await podman(['login', ...verified(), '-u', 'alice', '--password-stdin', secure.host], WRONG_PW);
      expect(wrong.code).not.toBe(0);
      // podman login words the registry's 401 as "invalid username/password".
      expect(wrong.stderr).toMatch(/invalid username\/password|unauthorized|401/i);
      const pull = await podman(['pull', ...verified(), '--creds', `alice:${WRONG_PW}`, `${secure.host}/nano`]);
      expect(pull.code).not.toBe(0);
      expect(pull.stderr).toMatch(/unauthorized|401/i);
    });
    const login = await podman(['login', ...verified(), '-u', 'alice', '--password-stdin', secure.host], ALICE_PW);
    expect(login.code, login.stderr).toBe(0);
    expect(login.stdout).toMatch(/Login Succeeded/);
    expect(await readFile(env['REGISTRY_AUTH_FILE']!, 'utf8')).toContain(secure.host);

    const ref = `${secure.host}/jq`;
    const pull = await podman(['pull', ...verified(), ref]);
    expect(pull.code, pull.stderr).toBe(0);
    const inspect = await podman(['image', 'inspect', '--format', '{{.Id}}', ref]);
    expect(inspect.code, inspect.stderr).toBe(0);
    expect(inspect.stdout.trim()).toMatch(/^[0-9a-f]{64}$/);
  });

  it('refuses to pull when it cannot verify the certificate (no cert dir for the test CA)', async () => {
    await expectNoBuild(secure, ca.pem, async () => {
      // The right password, but the certificate comes from a CA podman does not know.
      const pull = await podman(['pull', '--tls-verify=true', '--creds', `alice:${ALICE_PW}`, `${secure.host}/htop`]);
      expect(pull.code).not.toBe(0);
      expect(pull.stderr).toMatch(/x509: certificate signed by unknown authority/);
    });
  });
});

describe('skopeo against the HTTPS server', () => {
  it('refuses wrong credentials and copies jq with the right ones, verifying the certificate', async () => {
    const layouts = path.join(work.path, 'skopeo');
    await mkdir(layouts, { recursive: true });
    const env = { REGISTRY_AUTH_FILE: path.join(layouts, 'auth.json') };
    const copy = (password: string, image: string, dest: string) =>
      attempt('skopeo', [
        'copy', '--src-creds', `alice:${password}`, '--src-cert-dir', certDir, '--src-tls-verify=true',
        `docker://${secure.host}/${image}`, `oci:${path.join(layouts, dest)}:latest`,
      ], { env });
    await expectNoBuild(secure, ca.pem, async () => {
      const wrong = await copy(WRONG_PW, 'nano', 'refused');
      expect(wrong.code).not.toBe(0);
      expect(wrong.stderr).toMatch(/unauthorized|401/i);
    });
    const ok = await copy(ALICE_PW, 'jq', 'jq');
    expect(ok.code, ok.stderr).toBe(0);
    const rootfs = await unpack(path.join(layouts, 'jq'), path.join(layouts, 'bundle'));
    expect(await inChroot(rootfs, ['jq', '--version'])).toMatch(/^jq-\d/);
  });
});

describe('htpasswd file edited while the server runs', () => {
  it('lets a user added to the file in and shuts a removed one out, within seconds and without a restart', async () => {
    const users = path.join(work.path, 'live.htpasswd');
    await htpasswd(['-B', '-b', '-c', users, 'alice', ALICE_PW]);
    const server = await start({ NIXERY_AUTH_HTPASSWD: users });
    const { pid } = server;
    const status = async (authorization: string) => (await plainGet(server, '/v2/', authorization)).status;

    const refused = await plainGet(server, '/v2/', basic('bob', BOB_PW));
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toBe('Basic realm="nixery-ts", charset="UTF-8"');
    expect(JSON.parse(refused.body)).toMatchObject({ errors: [{ code: 'UNAUTHORIZED' }] });
    expect(await status(basic('alice', ALICE_PW))).toBe(200);

    await htpasswd(['-B', '-b', users, 'bob', BOB_PW]);
    await within(10_000, 'bob let in after being added', async () => (await status(basic('bob', BOB_PW))) === 200);
    // alice was verified a moment ago: that must not outlive her removal.
    expect(await status(basic('alice', ALICE_PW))).toBe(200);

    await htpasswd(['-D', users, 'alice']);
    await within(10_000, 'alice shut out after being removed', async () => (await status(basic('alice', ALICE_PW))) === 401);
    expect(await status(basic('bob', BOB_PW))).toBe(200);
    expect(await status(basic('bob', WRONG_PW))).toBe(401);

    expect(server.pid).toBe(pid);
    expect(server.process.exitCode).toBeNull();
    expect(server.logs.filter((l) => l.includes('htpasswd file reloaded')).length).toBeGreaterThanOrEqual(2);
  });
});

describe('TLS certificate replaced on disk while the server runs', () => {
  it('serves the new certificate to new connections, verified against the new CA', async () => {
    const live = path.join(work.path, 'live-tls');
    await mkdir(live, { recursive: true });
    const certFile = path.join(live, 'tls.crt');
    const keyFile = path.join(live, 'tls.key');
    await copyFile(serverCert.cert, certFile);
    await copyFile(serverCert.key, keyFile);
    const server = await start({ NIXERY_TLS_CERT: certFile, NIXERY_TLS_KEY: keyFile });
    const { pid } = server;
    const port = Number(server.host.split(':')[1]);

    /** The certificate a new connection is shown, whoever signed it. */
    const presented = () =>
      new Promise<string>((resolve, reject) => {
        const socket = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
          const fingerprint = socket.getPeerCertificate().fingerprint256;
          socket.end();
          resolve(fingerprint);
        });
        socket.on('error', reject);
      });

    expect(await presented()).toBe(serverCert.fingerprint256);
    expect((await secureGet(server, '/v2/', ca.pem)).status).toBe(200);

    const otherPki = path.join(work.path, 'pki-2');
    const ca2 = await makeCa(otherPki, 'ca2');
    const renewed = await makeServerCert(otherPki, ca2, 'server2');
    // As a secret update does it: new files beside the old ones, renamed over them.
    await copyFile(renewed.key, `${keyFile}.new`);
    await copyFile(renewed.cert, `${certFile}.new`);
    await rename(`${keyFile}.new`, keyFile);
    await rename(`${certFile}.new`, certFile);

    await within(10_000, 'new certificate served', async () => (await presented()) === renewed.fingerprint256);
    expect((await secureGet(server, '/v2/', ca2.pem)).status).toBe(200);
    await expect(secureGet(server, '/v2/', ca.pem)).rejects.toThrow(/certificate/i);

    expect(server.pid).toBe(pid);
    expect(server.process.exitCode).toBeNull();
    expect(server.logs.some((l) => l.includes('TLS certificate reloaded'))).toBe(true);
  });
});

describe('secrets', () => {
  it('never appear in the server logs or in any response', async () => {
    // Requests of its own too, so the check means something when run alone.
    for (const authorization of [basic('alice', ALICE_PW), basic('alice', WRONG_PW), basic('bob', WRONG_PW)]) {
      for (const route of ['/v2/', '/v2/hello/manifests/latest', '/v2/nano/manifests/latest']) {
        await plainGet(plain, route, authorization);
        await secureGet(secure, route, ca.pem, authorization);
      }
    }
    const secrets: Record<string, string> = {
      "alice's password": ALICE_PW,
      "bob's password": BOB_PW,
      'the wrong password': WRONG_PW,
    };
    for (const [user, pw] of [['alice', ALICE_PW], ['alice', WRONG_PW], ['bob', BOB_PW], ['bob', WRONG_PW]] as const) {
      secrets[`Authorization for ${user}:${pw === WRONG_PW ? 'wrong' : 'right'} password`] = basic(user, pw).slice('Basic '.length);
    }
    // Every server this file started (stopped ones included) and every response it received.
    const haystacks = [
      ...servers.map((s) => ({ what: `logs of the server on ${s.host}`, text: s.logs.join('\n') })),
      ...received,
    ];
    expect(servers.length).toBeGreaterThanOrEqual(2);
    expect(received.length).toBeGreaterThan(0);
    const leaks = Object.entries(secrets).flatMap(([name, value]) =>
      haystacks.filter((h) => h.text.includes(value)).map((h) => `${name} in ${h.what}`),
    );
    expect(leaks).toEqual([]);
  });
});
