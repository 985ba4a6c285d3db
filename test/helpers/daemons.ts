/**
 * containerd and dockerd started by the test itself, with their own roots
 * and sockets under a short scratch directory (Unix socket paths are limited
 * to 108 bytes), no bridge, no iptables, and stopped by PID.
 * See shared/research/clients-and-emulators.md section A.3.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { sh } from './clients.js';

export interface Daemon {
  readonly process: ChildProcess;
  readonly log: string[];
  stop(): Promise<void>;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, d: Daemon, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (d.process.exitCode !== null) throw new Error(`${what} exited with ${d.process.exitCode}:\n${d.log.join('')}`);
    if (Date.now() > deadline) throw new Error(`${what} did not become ready in ${timeoutMs} ms:\n${d.log.join('')}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function daemon(cmd: string, args: string[]): Daemon {
  const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const log: string[] = [];
  p.stdout!.on('data', (b: Buffer) => log.push(b.toString()));
  p.stderr!.on('data', (b: Buffer) => log.push(b.toString()));
  const exited = new Promise<void>((r) => p.once('exit', () => r()));
  return {
    process: p,
    log,
    async stop() {
      if (p.exitCode !== null || p.signalCode !== null) return;
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(t);
    },
  };
}

export interface Engines {
  readonly dir: string;
  readonly containerdSocket: string;
  readonly dockerSocket: string;
  ctr(args: readonly string[]): Promise<string>;
  docker(args: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

/** Starts containerd, then dockerd on top of it. */
export async function startEngines(): Promise<Engines> {
  const dir = await mkdtemp('/tmp/nxd-');
  const c = path.join(dir, 'c');
  await mkdir(c, { recursive: true });
  const containerdSocket = path.join(c, 'containerd.sock');
  await writeFile(
    path.join(c, 'config.toml'),
    [
      'version = 2',
      `root = "${c}/root"`,
      `state = "${c}/state"`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '[grpc]',
      `  address = "${containerdSocket}"`,
      '[ttrpc]',
      `  address = "${containerdSocket}.ttrpc"`,
      '[debug]',
      `  address = "${c}/debug.sock"`,
      '[metrics]',
      '  address = ""',
    ].join('\n'),
  );
  const containerd = daemon('containerd', ['--config', path.join(c, 'config.toml')]);
  const stops: (() => Promise<void>)[] = [() => containerd.stop()];
  const stopAll = async () => {
    for (const s of stops.reverse()) await s();
    await rm(dir, { recursive: true, force: true }).catch(async () => {
      // Overlay mounts left by a failed run: unmount what is below dir, then retry.
      await sh('sh', ['-c', `grep -o " ${dir}[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l`]).catch(() => undefined);
      await rm(dir, { recursive: true, force: true });
    });
  };
  try {
    await waitFor('containerd', () => existsSync(containerdSocket), containerd);
    const d = path.join(dir, 'd');
    const dockerSocket = path.join(d, 'docker.sock');
    await mkdir(path.join(d, 'cfg'), { recursive: true });
    const dockerd = daemon('dockerd', [
      '--data-root', path.join(d, 'data'),
      '--exec-root', path.join(d, 'exec'),
      '--pidfile', path.join(d, 'docker.pid'),
      '-H', `unix://${dockerSocket}`,
      '--iptables=false', '--ip6tables=false', '--bridge=none', '--ip-forward=false', '--ip-masq=false',
      '--containerd', containerdSocket,
      '--storage-driver', 'vfs',
    ]);
    stops.push(() => dockerd.stop());
    const docker = async (args: readonly string[]) =>
      (await sh('docker', ['-H', `unix://${dockerSocket}`, ...args], { env: { DOCKER_CONFIG: path.join(d, 'cfg') } })).stdout;
    await waitFor('dockerd', async () => existsSync(dockerSocket) && (await docker(['version']).then(() => true, () => false)), dockerd);
    return {
      dir,
      containerdSocket,
      dockerSocket,
      ctr: async (args) => (await sh('ctr', ['--address', containerdSocket, ...args])).stdout,
      docker,
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}
