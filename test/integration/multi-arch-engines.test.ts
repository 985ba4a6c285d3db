/**
 * Container engines choosing a platform from one name's index: docker
 * (dockerd on containerd, started here), podman and containerd's ctr pull
 * arm64 by flag and amd64 by default from a server with
 * NIXERY_PLATFORMS=linux/amd64,linux/arm64. The amd64 image runs; arm64 ones
 * are checked by their image configs and content (this machine has no
 * binfmt for aarch64; multi-arch.test.ts runs arm64 programs under qemu).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { podmanIn, sh } from '../helpers/clients.js';
import { startEngines, type Engines } from '../helpers/daemons.js';
import { startServer, type RunningServer } from '../helpers/server.js';

const MULTI_ARCH_ENV = {
  NIXERY_PLATFORMS: 'linux/amd64,linux/arm64',
  NIX_CONFIG: 'substituters =\nextra-platforms = aarch64-linux',
};
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

let server: RunningServer;
let engines: Engines | undefined;
beforeAll(async () => {
  server = await startServer({ env: MULTI_ARCH_ENV });
  engines = await startEngines();
});
afterAll(async () => {
  await engines?.stop();
  await server?.stop();
});

/** The index's manifest digest per architecture. */
async function indexDigests(name: string): Promise<Record<string, string>> {
  const res = await fetch(`${server.url}/v2/${name}/manifests/latest`, { headers: { Accept: OCI_INDEX } });
  const index = (await res.json()) as { manifests: { digest: string; platform: { architecture: string } }[] };
  return Object.fromEntries(index.manifests.map((m) => [m.platform.architecture, m.digest]));
}

describe('docker', () => {
  it('docker pull --platform linux/arm64 gets arm64, a plain docker pull gets amd64, which runs', async () => {
    const ref = `${server.host}/shell/htop`;
    await engines!.docker(['pull', '--platform', 'linux/arm64', ref]);
    expect((await engines!.docker(['image', 'inspect', '--format', '{{.Os}}/{{.Architecture}}', ref])).trim()).toBe('linux/arm64');
    await engines!.docker(['rmi', ref]);
    await engines!.docker(['pull', ref]);
    expect((await engines!.docker(['image', 'inspect', '--format', '{{.Os}}/{{.Architecture}}', ref])).trim()).toBe('linux/amd64');
    const out = await engines!.docker(['run', '--rm', '--network', 'none', ref, 'htop', '--version']);
    expect(out).toMatch(/^htop \d/);
  });
});

describe('containerd (ctr)', () => {
  it('ctr images pull --platform linux/arm64 fetches the arm64 manifest and not the amd64 one', async () => {
    const ref = `${server.host}/jq:latest`;
    const digests = await indexDigests('jq');
    expect(Object.keys(digests)).toEqual(['amd64', 'arm64']);
    await engines!.ctr(['images', 'pull', '--plain-http', '--platform', 'linux/arm64', ref]);
    const content = await engines!.ctr(['content', 'ls', '-q']);
    expect(content).toContain(digests['arm64']);
    expect(content).not.toContain(digests['amd64']);
    // What containerd fetched is the arm64 image: its config says so, and its layers are there.
    const m = JSON.parse(await engines!.ctr(['content', 'get', digests['arm64']!])) as { config: { digest: string }; layers: { digest: string }[] };
    const config = JSON.parse(await engines!.ctr(['content', 'get', m.config.digest])) as { architecture: string };
    expect(config.architecture).toBe('arm64');
    for (const l of m.layers) expect(content).toContain(l.digest);
  });
});

describe('podman', () => {
  it('podman pull --arch arm64 gets arm64; the default pull gets amd64, which runs', async () => {
    const dir = await mkdtemp('/tmp/nxp-');
    try {
      const { flags: P, env } = await podmanIn(dir);
      const ref = `${server.host}/shell/htop`;
      await sh('podman', [...P, 'pull', '--tls-verify=false', '--arch', 'arm64', ref], { env });
      expect((await sh('podman', [...P, 'image', 'inspect', '--format', '{{.Os}}/{{.Architecture}}', ref], { env })).stdout.trim()).toBe('linux/arm64');
      await sh('podman', [...P, 'rmi', '-f', ref], { env });
      await sh('podman', [...P, 'pull', '--tls-verify=false', ref], { env });
      expect((await sh('podman', [...P, 'image', 'inspect', '--format', '{{.Os}}/{{.Architecture}}', ref], { env })).stdout.trim()).toBe('linux/amd64');
      const { stdout } = await sh('podman', [...P, 'run', '--rm', ref, 'htop', '--version'], { env });
      expect(stdout).toMatch(/^htop \d/);
      await sh('podman', [...P, 'rmi', '-a', '-f'], { env }).catch(() => undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
