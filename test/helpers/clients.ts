/**
 * Real registry clients: skopeo to pull, umoci to unpack, chroot to run.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { chmod, copyFile, lstat, open, readdir, readlink, writeFile } from 'node:fs/promises';
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

export interface ChrootOptions {
  /**
   * The image's architecture. 'arm64': the program runs under Debian's
   * qemu-aarch64-static (user-mode emulation, no binfmt_misc needed), which is
   * copied to `/qemu-aarch64-static` in the rootfs on first use (so the rootfs
   * then holds one x86-64 file).
   */
  readonly arch?: 'amd64' | 'arm64';
}

const CHROOT_PATH = ['/bin', '/usr/bin'];
const QEMU_AARCH64 = '/usr/bin/qemu-aarch64-static';

/**
 * Runs a program inside the unpacked image with an empty environment
 * (PATH=/bin:/usr/bin). With `{ arch: 'arm64' }` qemu-user runs it, and since
 * qemu needs the program's path inside the chroot, a bare argv[0] is looked up
 * in the image's /bin and /usr/bin (following the image's symlinks inside the
 * rootfs, not on the host).
 */
export async function inChroot(rootfs: string, argv: readonly string[], opts: ChrootOptions = {}): Promise<string> {
  const chroot = async (args: readonly string[]): Promise<string> =>
    (await sh('env', ['-i', `PATH=${CHROOT_PATH.join(':')}`, '/usr/sbin/chroot', rootfs, ...args])).stdout;
  if (opts.arch !== 'arm64') return chroot(argv);
  const [argv0, ...rest] = argv;
  if (argv0 === undefined) throw new Error('inChroot: empty argv');
  let program = argv0;
  if (!argv0.includes('/')) {
    const dir = await findFirst(CHROOT_PATH, async (d) => (await resolveInRoot(rootfs, `${d}/${argv0}`)) !== undefined);
    if (dir === undefined) throw new Error(`inChroot: ${argv0} is not in ${CHROOT_PATH.join(':')} of ${rootfs}`);
    program = `${dir}/${argv0}`;
  }
  const qemu = path.join(rootfs, 'qemu-aarch64-static');
  if ((await lstat(qemu).catch(() => null)) === null) {
    await copyFile(QEMU_AARCH64, qemu, constants.COPYFILE_EXCL).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') throw new Error(`inChroot: ${QEMU_AARCH64} is missing (apt-get install -y qemu-user-static)`);
      if (e.code !== 'EEXIST') throw e;
    });
    await chmod(qemu, 0o755);
  }
  return chroot(['/qemu-aarch64-static', program, ...rest]);
}

async function findFirst<T>(items: readonly T[], pred: (t: T) => Promise<boolean>): Promise<T | undefined> {
  for (const t of items) if (await pred(t)) return t;
  return undefined;
}

/**
 * The host path that `p` (absolute inside `rootfs`) leads to, following
 * symlinks as the chroot would (absolute targets stay inside `rootfs`), or
 * undefined when it does not exist. At most 40 links, like the kernel.
 */
export async function resolveInRoot(rootfs: string, p: string): Promise<string | undefined> {
  const todo = p.split('/').filter((c) => c !== '' && c !== '.');
  const done: string[] = [];
  let links = 0;
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '..') {
      done.pop();
      continue;
    }
    const host = path.join(rootfs, ...done, c);
    const st = await lstat(host).catch(() => null);
    if (st === null) return undefined;
    if (st.isSymbolicLink()) {
      if (++links > 40) return undefined;
      const target = await readlink(host);
      if (target.startsWith('/')) done.length = 0;
      todo.unshift(...target.split('/').filter((x) => x !== '' && x !== '.'));
      continue;
    }
    done.push(c);
  }
  return path.join(rootfs, ...done);
}

export type ElfMachine = 'x86-64' | 'aarch64' | `e_machine 0x${string}`;

/**
 * Every regular ELF file under `dir` (symlinks and non-ELF files skipped),
 * by absolute path, with the architecture its header names (e_machine: 0x3e
 * x86-64, 0xb7 aarch64; other values as `e_machine 0x..`).
 */
export async function elfMachines(dir: string): Promise<Map<string, ElfMachine>> {
  const out = new Map<string, ElfMachine>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.isFile()) {
        const m = await elfMachine(p);
        if (m !== undefined) out.set(p, m);
      }
    }
  };
  await walk(dir);
  return out;
}

async function elfMachine(file: string): Promise<ElfMachine | undefined> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(20);
    const { bytesRead } = await fh.read(buf, 0, 20, 0);
    if (bytesRead < 20 || buf.readUInt32BE(0) !== 0x7f454c46) return undefined;
    // EI_DATA (byte 5): 1 little-endian, 2 big-endian.
    const machine = buf[5] === 2 ? buf.readUInt16BE(18) : buf.readUInt16LE(18);
    if (machine === 0x3e) return 'x86-64';
    if (machine === 0xb7) return 'aarch64';
    return `e_machine 0x${machine.toString(16)}`;
  } finally {
    await fh.close();
  }
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
