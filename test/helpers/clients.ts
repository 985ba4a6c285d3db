/**
 * Real registry clients: skopeo to pull, umoci to unpack, chroot to run.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export async function sh(
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number; env?: Record<string, string> } = {},
): Promise<{ stdout: string; stderr: string }> {
  return run(cmd, args as string[], {
    maxBuffer: 1 << 26,
    timeout: opts.timeoutMs ?? 120_000,
    ...(opts.env ? { env: { ...process.env, ...opts.env } } : {}),
  });
}

/** skopeo copy docker://host/name:tag oci:dir:tag */
export async function skopeoPull(ref: string, layoutDir: string): Promise<void> {
  await sh('skopeo', ['copy', '--src-tls-verify=false', `docker://${ref}`, `oci:${layoutDir}:latest`]);
}

/** umoci unpack; returns the rootfs directory. */
export async function unpack(layoutDir: string, bundle: string): Promise<string> {
  await sh('umoci', ['unpack', '--image', `${layoutDir}:latest`, bundle]);
  return `${bundle}/rootfs`;
}

/** Runs a program inside the unpacked image with an empty environment. */
export async function inChroot(rootfs: string, argv: readonly string[]): Promise<string> {
  const { stdout } = await sh('env', ['-i', 'PATH=/bin:/usr/bin', '/usr/sbin/chroot', rootfs, ...argv]);
  return stdout;
}

/**
 * Reads a gzip file with Python's own gzip module (a reader independent of
 * Node and Go): the sha256 of what it decompresses to, and how many gzip
 * members the file holds.
 */
export async function pythonGunzip(file: string): Promise<{ diffId: string; members: number }> {
  const { stdout } = await sh('python3', [
    '-c',
    [
      'import gzip, hashlib, sys, zlib',
      'data = open(sys.argv[1], "rb").read()',
      'members, rest = 0, data',
      'while rest:',
      '    d = zlib.decompressobj(31); d.decompress(rest); rest = d.unused_data; members += 1',
      'print("sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest(), members)',
    ].join('\n'),
    file,
  ]);
  const [diffId, members] = stdout.trim().split(' ');
  return { diffId: diffId as string, members: Number(members) };
}

/**
 * Podman confined to `dir`: vfs storage, runc, no network namespace, and
 * ulimits under this machine's hard limit on open files (podman's default
 * is above it; research A.3). Returns the global flags and the environment
 * every podman call of the test passes.
 */
export async function podmanIn(dir: string): Promise<{ flags: string[]; env: Record<string, string> }> {
  const conf = path.join(dir, 'containers.conf');
  await writeFile(
    conf,
    [
      '[containers]',
      'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]',
      'netns = "none"',
      '[engine]',
      'runtime = "runc"',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
    ].join('\n'),
  );
  return { flags: ['--storage-driver', 'vfs', '--root', `${dir}/root`, '--runroot', `${dir}/run`], env: { CONTAINERS_CONF: conf } };
}
