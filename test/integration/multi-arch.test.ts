/**
 * One name, every platform, with real Nix builds and skopeo: a server with
 * NIXERY_PLATFORMS=linux/amd64,linux/arm64 serving the demo package set,
 * whose aarch64 packages are Debian's arm64 binaries (its builders only copy
 * files, so they run here with extra-platforms = aarch64-linux). The arm64
 * programs run under qemu-aarch64-static in a chroot. Docker, podman and
 * containerd are in multi-arch-engines.test.ts.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { elfMachines, inChroot, sh, unpack } from '../helpers/clients.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

const MULTI_ARCH_ENV = {
  NIXERY_PLATFORMS: 'linux/amd64,linux/arm64',
  NIX_CONFIG: 'substituters =\nextra-platforms = aarch64-linux',
};
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const OCI = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER = 'application/vnd.docker.distribution.manifest.v2+json';
const ALL = [OCI, DOCKER, DOCKER_LIST, OCI_INDEX].join(', ');
/** A demo package built for x86_64-linux only. */
const X86_ONLY = 'x86only';

interface IndexJson {
  mediaType: string;
  manifests: { mediaType: string; digest: string; size: number; platform: { architecture: string; os: string } }[];
}

let storage: Awaited<ReturnType<typeof scratchDir>>;
let work: Awaited<ReturnType<typeof scratchDir>>;
let server: RunningServer;
beforeAll(async () => {
  storage = await scratchDir('nixery-multiarch-store-');
  work = await scratchDir('nixery-multiarch-');
  server = await startServer({ env: MULTI_ARCH_ENV, storagePath: storage.path });
});
afterAll(async () => {
  await server?.stop();
  await storage?.remove();
  await work?.remove();
});

async function manifest(s: RunningServer, name: string, accept: string, method = 'GET') {
  const res = await fetch(`${s.url}/v2/${name}/manifests/latest`, { method, headers: { Accept: accept } });
  return { res, body: method === 'HEAD' ? '' : await res.text() };
}

/** skopeo copy with --override-arch, then umoci unpack: the rootfs. */
async function pullFor(arch: 'amd64' | 'arm64', name: string, label: string): Promise<{ layout: string; rootfs: string }> {
  const layout = path.join(work.path, `${label}-oci`);
  await sh('skopeo', ['--override-arch', arch, 'copy', '--src-tls-verify=false', `docker://${server.host}/${name}:latest`, `oci:${layout}:latest`]);
  return { layout, rootfs: await unpack(layout, path.join(work.path, `${label}-bundle`)) };
}

/** The architecture in the image config of an OCI layout's only image. */
async function layoutArchitecture(layout: string): Promise<string> {
  const index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const blob = (d: string) => readFile(path.join(layout, 'blobs', 'sha256', d.slice('sha256:'.length)), 'utf8');
  const m = JSON.parse(await blob(index.manifests[0]!.digest)) as { config: { digest: string } };
  return (JSON.parse(await blob(m.config.digest)) as { architecture: string }).architecture;
}

describe('one name, amd64 and arm64', () => {
  it('skopeo inspect --raw shows an OCI index with amd64 and arm64; each platform pulls complete, its ELF files are of its architecture, and its programs run (arm64 under qemu-aarch64-static)', async () => {
    const { stdout } = await sh('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${server.host}/shell/htop:latest`]);
    const index = JSON.parse(stdout) as IndexJson;
    expect(index.mediaType).toBe(OCI_INDEX);
    expect(index.manifests.map((m) => [m.mediaType, m.platform])).toEqual([
      [OCI, { architecture: 'amd64', os: 'linux' }],
      [OCI, { architecture: 'arm64', os: 'linux' }],
    ]);

    const arm = await pullFor('arm64', 'shell/htop', 'arm64');
    expect(await layoutArchitecture(arm.layout)).toBe('arm64');
    // Before qemu is copied in: every ELF file of the image is aarch64.
    const armElves = await elfMachines(arm.rootfs);
    expect(armElves.size).toBeGreaterThan(10);
    expect([...armElves].filter(([, m]) => m !== 'aarch64')).toEqual([]);
    expect(await inChroot(arm.rootfs, ['htop', '--version'], { arch: 'arm64' })).toMatch(/^htop \d/);
    expect((await inChroot(arm.rootfs, ['bash', '-c', 'echo ok'], { arch: 'arm64' })).trim()).toBe('ok');

    const amd = await pullFor('amd64', 'shell/htop', 'amd64');
    expect(await layoutArchitecture(amd.layout)).toBe('amd64');
    const amdElves = await elfMachines(amd.rootfs);
    expect(amdElves.size).toBeGreaterThan(10);
    expect([...amdElves].filter(([, m]) => m !== 'x86-64')).toEqual([]);
    expect(await inChroot(amd.rootfs, ['htop', '--version'])).toMatch(/^htop \d/);
    expect((await inChroot(amd.rootfs, ['bash', '-c', 'echo ok'])).trim()).toBe('ok');
  });

  it('the index digest is the same on every request and after a restart, HEAD needs no build, and a client naming only the Docker manifest type gets the amd64 manifest', async () => {
    const first = await manifest(server, 'shell/htop', ALL);
    const digest = first.res.headers.get('docker-content-digest');
    expect(first.res.headers.get('content-type')).toBe(OCI_INDEX);
    for (let i = 0; i < 3; i++) expect((await manifest(server, 'shell/htop', ALL)).res.headers.get('docker-content-digest')).toBe(digest);
    const builds = (await server.stats()).builds;
    const head = await manifest(server, 'shell/htop', ALL, 'HEAD');
    expect(head.res.status).toBe(200);
    expect(head.res.headers.get('docker-content-digest')).toBe(digest);
    expect((await server.stats()).builds).toBe(builds);

    const list = JSON.parse((await manifest(server, 'shell/htop', `${DOCKER}, ${DOCKER_LIST}`)).body) as IndexJson;
    expect(list.mediaType).toBe(DOCKER_LIST);
    const plain = await manifest(server, 'shell/htop', DOCKER);
    expect(plain.res.headers.get('content-type')).toBe(DOCKER);
    expect(plain.res.headers.get('docker-content-digest')).toBe(list.manifests.find((m) => m.platform.architecture === 'amd64')!.digest);

    // A new server on the same storage: the same index, HEAD and GET without a build.
    await server.stop();
    server = await startServer({ env: MULTI_ARCH_ENV, storagePath: storage.path });
    const after = await manifest(server, 'shell/htop', ALL, 'HEAD');
    expect(after.res.headers.get('docker-content-digest')).toBe(digest);
    expect((await manifest(server, 'shell/htop', ALL)).body).toBe(first.body);
    const stats = await server.stats();
    expect(stats.builds).toBe(0);
    expect(stats.nix.realisations).toBe(0);
  });

  it(`a package that exists only for x86_64 (${X86_ONLY}): the index lists amd64 only and the answer says arm64 is missing`, async () => {
    const { res, body } = await manifest(server, X86_ONLY, ALL);
    expect(res.status).toBe(200);
    expect(res.headers.get('nixery-missing-platforms')).toBe('linux/arm64');
    const index = JSON.parse(body) as IndexJson;
    expect(index.manifests.map((m) => m.platform.architecture)).toEqual(['amd64']);
    // skopeo pulls the amd64 image through it.
    const amd = await pullFor('amd64', X86_ONLY, 'x86only');
    expect(await layoutArchitecture(amd.layout)).toBe('amd64');
    // Asking for arm64 alone is an error that names the package.
    const arm = await fetch(`${server.url}/v2/arm64/${X86_ONLY}/manifests/latest`, { headers: { Accept: ALL } });
    expect(arm.status).toBe(404);
    expect(await arm.text()).toContain(X86_ONLY);
    // The start page says which image went without which platform.
    const page = await (await fetch(`${server.url}/`)).text();
    expect(page).toContain('index without linux/arm64');
  });
});
