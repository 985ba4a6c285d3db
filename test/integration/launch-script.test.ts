/**
 * nix/nixery-launch.sh, the container image's entry point, run on this
 * machine with NIXERY_LAUNCH_ROOT pointing at a scratch directory that
 * stands for the container's root. PATH is what the image gives it (the
 * server, the demo set's coreutils and bash, as nix/launch.nix arranges)
 * plus the host's Nix and git, which the server calls. `nixery` on that PATH
 * runs the compiled server (dist/, built by test/helpers/global-setup.ts), or,
 * where only the preparation matters, a stand-in that records its
 * environment and exits.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { access, chmod, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDemo, freshSalt, ROOT } from '../helpers/nix.js';
import { demoServerEnv, waitForListening } from '../helpers/server.js';

const run = promisify(execFile);
const SCRIPT = path.join(ROOT, 'nix/nixery-launch.sh');
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let scratch: string;
let bashPath: string;
let caBundle: string;
/** PATH as in the image, with the real server as `nixery`. */
let serverPath: string;
/** PATH as in the image, with a `nixery` that records its environment and arguments and exits 0. */
let fakePath: string;
const running = new Set<ChildProcess>();

/** Finds a program on this test's PATH. */
async function which(name: string): Promise<string> {
  for (const dir of (process.env['PATH'] ?? '/usr/bin:/bin').split(':')) {
    const p = path.join(dir, name);
    try {
      await access(p);
      return p;
    } catch {
      // next
    }
  }
  throw new Error(`${name} is not on PATH`);
}

async function writeExecutable(file: string, text: string): Promise<void> {
  await writeFile(file, text);
  await chmod(file, 0o755);
}

beforeAll(async () => {
  scratch = await mkdtemp(path.join(tmpdir(), 'nixery-launch-'));
  const [coreutils, bash, cacert] = await buildDemo(['coreutils', 'bash', 'cacert']);
  bashPath = `${bash}/bin/bash`;
  caBundle = `${cacert}/etc/ssl/certs/ca-bundle.crt`;

  // The host's Nix and git: the image's server wrapper puts nixpkgs' on PATH.
  const tools = path.join(scratch, 'tools');
  await mkdir(tools);
  for (const t of ['nix', 'nix-build', 'nix-instantiate', 'nix-store', 'git']) await symlink(await which(t), path.join(tools, t));

  const serverBin = path.join(scratch, 'server-bin');
  await mkdir(serverBin);
  await writeExecutable(
    path.join(serverBin, 'nixery'),
    `#!${bashPath}\n${coreutils}/bin/env > "$NIXERY_TEST_ENV_DUMP"\nexec ${process.execPath} ${path.join(ROOT, 'dist/launch.cjs')} "$@"\n`,
  );
  const fakeBin = path.join(scratch, 'fake-bin');
  await mkdir(fakeBin);
  await writeExecutable(
    path.join(fakeBin, 'nixery'),
    `#!${bashPath}\n${coreutils}/bin/env > "$NIXERY_TEST_ENV_DUMP"\nprintf '%s\\n' "$@" > "$NIXERY_TEST_ENV_DUMP.args"\n`,
  );
  const imagePath = `${coreutils}/bin:${bash}/bin:${tools}`;
  serverPath = `${serverBin}:${imagePath}`;
  fakePath = `${fakeBin}:${imagePath}`;
});

afterAll(async () => {
  for (const child of running) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

interface Case {
  root: string;
  envDump: string;
  env: Record<string, string>;
}

/** A fresh container root and the environment the launch script gets (nothing else is inherited). */
async function newCase(name: string, env: Record<string, string> = {}): Promise<Case> {
  const dir = path.join(scratch, name);
  const root = path.join(dir, 'root');
  await mkdir(root, { recursive: true });
  const envDump = path.join(dir, 'env');
  return {
    root,
    envDump,
    env: {
      PATH: fakePath,
      NIXERY_LAUNCH_ROOT: root,
      NIXERY_CA_BUNDLE: caBundle,
      NIXERY_TEST_ENV_DUMP: envDump,
      NIX_CONFIG: 'substituters =',
      ...env,
    },
  };
}

function launch(c: Case, opts: { prefix?: string[]; args?: string[] } = {}): ChildProcess {
  const [cmd, ...argv] = [...(opts.prefix ?? []), bashPath, SCRIPT, ...(opts.args ?? [])];
  const child = spawn(cmd!, argv, { env: c.env, stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

async function launchToEnd(c: Case, opts: { prefix?: string[]; args?: string[] } = {}): Promise<{ code: number | null; stderr: string }> {
  const child = launch(c, opts);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout!.resume();
  const code = await new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { code, stderr };
}

/** Waits for the server's "listening" log line; returns its port. */
const listeningPort = (child: ChildProcess): Promise<number> => waitForListening(child);

/** SIGTERM to the server (the launch script exec'd into it: same PID); resolves with its exit code. */
async function stop(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  process.kill(child.pid!, 'SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const code = await exited;
  clearTimeout(timer);
  return code;
}

/** `nix show-config` with the configuration the launch script wrote, as key -> value. */
async function nixConfig(root: string): Promise<Map<string, string>> {
  const { stdout } = await run('nix', ['--extra-experimental-features', 'nix-command', 'show-config'], {
    env: { ...process.env, NIX_CONF_DIR: path.join(root, 'etc/nix'), NIX_CONFIG: '' },
    maxBuffer: 16 << 20,
  });
  return new Map(
    stdout
      .split('\n')
      .map((l) => /^(\S+) = ?(.*)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[1]!, m[2]!]),
  );
}

async function readEnv(file: string): Promise<Map<string, string>> {
  const text = await readFile(file, 'utf8');
  return new Map(text.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

const lines = async (file: string) => (await readFile(file, 'utf8')).split('\n').filter(Boolean);
const names = (ls: readonly string[]) => ls.map((l) => l.split(':')[0]);
const mode = async (p: string) => (await stat(p)).mode & 0o7777;

describe('nixery-launch.sh', () => {
  it('prepares the container root (users, nix.conf, /tmp, certificates), runs the hook and starts the server', async () => {
    const c = await newCase('with-build-users', { NIXERY_BUILD_USERS: '4' });
    const storage = path.join(path.dirname(c.root), 'storage');
    await mkdir(storage);
    const hook = path.join(path.dirname(c.root), 'hook.sh');
    const marker = path.join(path.dirname(c.root), 'hook-ran');
    await writeExecutable(hook, `#!${bashPath}\nprintf '%s\\n' "$NIX_CONF_DIR" "$SSL_CERT_FILE" > ${marker}\n`);
    Object.assign(c.env, { ...demoServerEnv(storage), PATH: serverPath, NIXERY_PRE_LAUNCH: hook });

    const child = launch(c);
    try {
      const port = await listeningPort(child);
      const res = await fetch(`http://127.0.0.1:${port}/v2/`);
      expect(res.status).toBe(200);

      // Users and groups: root, and the nixbld group with its four build users.
      const passwd = await lines(path.join(c.root, 'etc/passwd'));
      expect(passwd).toContain('root:x:0:0:root:/root:/bin/bash');
      expect(names(passwd)).toEqual(['root', 'nobody', 'nixbld1', 'nixbld2', 'nixbld3', 'nixbld4']);
      for (const l of passwd.filter((l) => l.startsWith('nixbld'))) expect(l.split(':')[3]).toBe('30000');
      const group = await lines(path.join(c.root, 'etc/group'));
      expect(group).toContain('root:x:0:');
      expect(group).toContain('nixbld:x:30000:nixbld1,nixbld2,nixbld3,nixbld4');

      // A Nix configuration that Nix itself reads back.
      const conf = await nixConfig(c.root);
      expect(conf.get('sandbox')).toBe('false');
      expect(conf.get('build-users-group')).toBe('nixbld');

      expect(await mode(path.join(c.root, 'tmp'))).toBe(0o1777);
      expect(await mode(path.join(c.root, 'var/tmp'))).toBe(0o1777);

      // The hook ran before the server, with the prepared environment.
      expect(await lines(marker)).toEqual([path.join(c.root, 'etc/nix'), caBundle]);

      // What the server was started with.
      const env = await readEnv(c.envDump);
      expect(env.get('NIX_CONF_DIR')).toBe(path.join(c.root, 'etc/nix'));
      expect(env.get('NIX_SSL_CERT_FILE')).toBe(caBundle);
      expect(env.get('SSL_CERT_FILE')).toBe(caBundle);
      expect(env.get('GIT_SSL_CAINFO')).toBe(caBundle);
      expect(env.get('HOME')).toBe(path.join(c.root, 'root'));
      expect(env.get('USER')).toBe('root');
    } finally {
      expect(await stop(child)).toBe(0);
    }
  });

  it('runs single-user Nix as root with every capability dropped (the Kubernetes setup) and serves a freshly built image', async () => {
    const c = await newCase('no-capabilities');
    const storage = path.join(path.dirname(c.root), 'storage');
    await mkdir(storage);
    Object.assign(c.env, {
      ...demoServerEnv(storage),
      PATH: serverPath,
      // New store paths: Nix really builds, under the configuration written here.
      NIXERY_IMPORT_ARGS: JSON.stringify({ salt: freshSalt() }),
    });
    const setpriv = await which('setpriv');
    const child = launch(c, { prefix: [setpriv, '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--'] });
    try {
      const port = await listeningPort(child);
      const status = await readFile(`/proc/${child.pid}/status`, 'utf8');
      expect(/^CapEff:\s*(\S+)$/m.exec(status)?.[1]).toMatch(/^0+$/);

      // NIXERY_BUILD_USERS=auto found no capabilities: single-user.
      expect(await readFile(path.join(c.root, 'etc/nix/nix.conf'), 'utf8')).toMatch(/^build-users-group = $/m);
      expect((await nixConfig(c.root)).get('build-users-group')).toBe('');
      expect(names(await lines(path.join(c.root, 'etc/group')))).not.toContain('nixbld');

      const res = await fetch(`http://127.0.0.1:${port}/v2/hello/manifests/latest`, { headers: { Accept: OCI_MANIFEST } });
      const body = await res.text();
      expect(res.status, body).toBe(200);
      const manifest = JSON.parse(body) as { layers: { digest: string }[] };
      expect(manifest.layers.length).toBeGreaterThan(1);
      const blob = await fetch(`http://127.0.0.1:${port}/v2/hello/blobs/${manifest.layers[0]!.digest}`);
      expect(blob.status).toBe(200);
      await blob.arrayBuffer();
    } finally {
      expect(await stop(child)).toBe(0);
    }
  });

  it('passes its arguments to the server, and rewrites its own entries on a restart', async () => {
    const c = await newCase('restart', { NIXERY_BUILD_USERS: '3' });
    await mkdir(path.join(c.root, 'etc'), { recursive: true });
    // Someone else's user survives; only root, nobody and nixbld* are ours.
    await writeFile(path.join(c.root, 'etc/passwd'), 'alice:x:1000:1000::/home/alice:/bin/sh\n');

    expect((await launchToEnd(c, { args: ['--flag', 'two words'] })).code).toBe(0);
    expect(await lines(`${c.envDump}.args`)).toEqual(['--flag', 'two words']);
    expect(names(await lines(path.join(c.root, 'etc/passwd')))).toEqual(['alice', 'root', 'nobody', 'nixbld1', 'nixbld2', 'nixbld3']);

    c.env['NIXERY_BUILD_USERS'] = '2';
    expect((await launchToEnd(c)).code).toBe(0);
    expect(names(await lines(path.join(c.root, 'etc/passwd')))).toEqual(['alice', 'root', 'nobody', 'nixbld1', 'nixbld2']);
    expect(await lines(path.join(c.root, 'etc/group'))).toEqual(['root:x:0:', 'nogroup:x:65534:', 'nixbld:x:30000:nixbld1,nixbld2']);
    expect((await nixConfig(c.root)).get('build-users-group')).toBe('nixbld');
  });

  it('leaves a nix.conf it did not write alone', async () => {
    const c = await newCase('foreign-conf', { NIXERY_BUILD_USERS: '0' });
    const conf = path.join(c.root, 'etc/nix/nix.conf');
    await mkdir(path.dirname(conf), { recursive: true });
    await writeFile(conf, 'sandbox = false\nmax-jobs = 3\n');
    const r = await launchToEnd(c);
    expect(r.code).toBe(0);
    expect(r.stderr).toContain('keeping');
    expect(await readFile(conf, 'utf8')).toBe('sandbox = false\nmax-jobs = 3\n');
    expect((await readEnv(c.envDump)).get('NIX_CONF_DIR')).toBe(path.dirname(conf));
  });

  it('runs /etc/nixery/pre-launch.sh by default, as Nixery does, and stops when a hook fails', async () => {
    const c = await newCase('default-hook');
    const marker = path.join(path.dirname(c.root), 'default-hook-ran');
    await mkdir(path.join(c.root, 'etc/nixery'), { recursive: true });
    await writeExecutable(path.join(c.root, 'etc/nixery/pre-launch.sh'), `#!${bashPath}\necho ran > ${marker}\n`);
    expect((await launchToEnd(c)).code).toBe(0);
    expect(await readFile(marker, 'utf8')).toBe('ran\n');

    const failing = await newCase('failing-hook');
    const hook = path.join(path.dirname(failing.root), 'hook.sh');
    await writeExecutable(hook, `#!${bashPath}\nexit 3\n`);
    failing.env['NIXERY_PRE_LAUNCH'] = hook;
    const r = await launchToEnd(failing);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/pre-launch hook .* failed \(exit code 3\)/);
    await expect(access(failing.envDump)).rejects.toThrow(); // the server never started

    failing.env['NIXERY_PRE_LAUNCH'] = path.join(scratch, 'no-such-hook');
    expect((await launchToEnd(failing)).stderr).toContain('is not an executable file');
  });

  it('is started by the Nix-built entry point (nix/launch.nix) with the image\'s tools and CA bundle', async () => {
    // nix/launch.nix built from the demo set, with a `nixery` that records its environment.
    const expr = [
      'let pkgs = import ./nix/demo-pkgs/deploy-stubs.nix { }; in',
      'import ./nix/launch.nix {',
      '  inherit pkgs;',
      '  nixery = pkgs.writeShellScriptBin "nixery" "env > \\"$NIXERY_TEST_ENV_DUMP\\"";',
      '}',
    ].join('\n');
    const { stdout } = await run('nix-build', ['--no-out-link', '-E', expr], { cwd: ROOT, maxBuffer: 16 << 20 });
    const launcher = `${stdout.trim()}/bin/nixery-launch`;

    const c = await newCase('nix-built', { NIXERY_BUILD_USERS: '1', PATH: '/nonexistent' });
    delete c.env['NIXERY_CA_BUNDLE'];
    const child = spawn(launcher, [], { env: c.env, stdio: ['ignore', 'ignore', 'pipe'] });
    running.add(child);
    child.once('exit', () => running.delete(child));
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    expect(code, stderr).toBe(0);

    const env = await readEnv(c.envDump);
    expect(env.get('NIX_SSL_CERT_FILE')).toBe(caBundle); // the demo set's cacert, as in the image
    expect(env.get('PATH')!.split(':')).toEqual(expect.arrayContaining([`${path.dirname(path.dirname(bashPath))}/bin`]));
    expect(names(await lines(path.join(c.root, 'etc/passwd')))).toEqual(['root', 'nobody', 'nixbld1']);
    expect((await nixConfig(c.root)).get('sandbox')).toBe('false');
  });

  it('rejects a bad NIXERY_BUILD_USERS', async () => {
    const c = await newCase('bad-users', { NIXERY_BUILD_USERS: 'many' });
    const r = await launchToEnd(c);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('NIXERY_BUILD_USERS');
    await expect(access(c.envDump)).rejects.toThrow();
  });
});
