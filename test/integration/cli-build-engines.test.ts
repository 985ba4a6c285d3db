/**
 * The archive `nixery-ts build` writes, loaded by the engines users run:
 * `docker load` (dockerd on containerd, started by the test), containerd's
 * `ctr images import` and `podman load` (vfs storage, runc), then the image
 * run. Excluded from the faketime run like the other engine tests (the
 * daemons check certificates and leases against the real clock).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { podmanIn, sh } from '../helpers/clients.js';
import { startEngines, type Engines } from '../helpers/daemons.js';
import { DEMO_PKGS, ROOT } from '../helpers/nix.js';
import { scratchDir } from '../helpers/server.js';

interface Summary {
  references: string[];
  configDigest: string;
  output: string;
}

/** `nixery-ts build ARGS --json` with the demo package set; the summary. */
async function build(args: readonly string[]): Promise<Summary> {
  const child = spawn(process.execPath, [path.join(ROOT, 'dist/launch.cjs'), 'build', ...args, '--json', '-q', '--cache-dir', path.join(work.path, 'cache')], {
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', NIX_CONFIG: 'substituters =', NIXERY_PKGS_PATH: DEMO_PKGS, NIXERY_OFFLINE: 'true' },
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: work.path,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((r) => child.once('close', r));
  expect(code, stderr).toBe(0);
  return JSON.parse(stdout) as Summary;
}

let work: Awaited<ReturnType<typeof scratchDir>>;
let engines: Engines | undefined;
let htop: Summary;
beforeAll(async () => {
  work = await scratchDir('nixery-cli-engines-');
  [htop, engines] = await Promise.all([build(['shell/htop', '-o', 'htop.tar']), startEngines()]);
});
afterAll(async () => {
  await engines?.stop();
  await work?.remove();
});

describe('docker load', () => {
  it('loads the docker-archive under its default name (localhost/NAME:TAG) and runs htop; the image ID is the config digest', async () => {
    const out = await engines!.docker(['load', '-i', htop.output]);
    expect(out).toContain('Loaded image: localhost/shell/htop:latest');
    const run = await engines!.docker(['run', '--rm', '--network', 'none', 'localhost/shell/htop:latest', 'htop', '--version']);
    expect(run).toMatch(/^htop \d/);
    expect((await engines!.docker(['image', 'inspect', '--format', '{{.Id}}', 'localhost/shell/htop:latest'])).trim()).toBe(htop.configDigest);
  });

  it('loads an image under the names given with --tag', async () => {
    const jq = await build(['jq', '-o', 'jq.tar', '-t', 'example.com/tools/jq:1.6', '-t', 'jq']);
    expect(jq.references).toEqual(['example.com/tools/jq:1.6', 'jq:latest']);
    const out = await engines!.docker(['load', '-i', jq.output]);
    expect(out).toContain('Loaded image: example.com/tools/jq:1.6');
    expect(out).toContain('Loaded image: jq:latest');
    expect(await engines!.docker(['run', '--rm', '--network', 'none', 'jq:latest', 'jq', '--version'])).toMatch(/^jq-/);
  });
});

describe('containerd (ctr)', () => {
  it('imports the oci-archive under its io.containerd.image.name and runs it', async () => {
    const hello = await build(['hello', '--format', 'oci-archive', '-o', 'hello.oci.tar']);
    const out = await engines!.ctr(['images', 'import', hello.output]);
    expect(out).toContain('localhost/hello:latest');
    expect(await engines!.ctr(['run', '--rm', 'localhost/hello:latest', `cli${process.pid}`, 'hello'])).toMatch(/Hello/);
  });
});

describe('podman load', () => {
  it('loads the docker-archive (gzip layers as stored) and the oci-archive, and runs htop with runc', async () => {
    const dir = await mkdtemp('/tmp/nxp-');
    try {
      const { flags: P, env } = await podmanIn(dir);
      const { stdout } = await sh('podman', [...P, 'load', '-i', htop.output], { env });
      expect(stdout).toContain('Loaded image: localhost/shell/htop:latest');
      const run = await sh('podman', [...P, 'run', '--rm', 'localhost/shell/htop:latest', 'htop', '--version'], { env });
      expect(run.stdout).toMatch(/^htop \d/);
      const id = await sh('podman', [...P, 'image', 'inspect', '--format', '{{.Id}}', 'localhost/shell/htop:latest'], { env });
      expect(`sha256:${id.stdout.trim()}`).toBe(htop.configDigest);
      await sh('podman', [...P, 'rmi', '-a', '-f'], { env });
      // The OCI archive loads under the same name (podman reads index.json's annotations).
      const oci = await build(['shell/htop', '--format', 'oci-archive', '-o', 'htop.oci.tar']);
      expect((await sh('podman', [...P, 'load', '-i', oci.output], { env })).stdout).toContain('Loaded image: localhost/shell/htop:latest');
      expect((await sh('podman', [...P, 'run', '--rm', 'localhost/shell/htop:latest', 'htop', '--version'], { env })).stdout).toMatch(/^htop \d/);
      await sh('podman', [...P, 'rmi', '-a', '-f'], { env }).catch(() => undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
