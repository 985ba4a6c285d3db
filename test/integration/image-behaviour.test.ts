/**
 * Images that behave like distro images, pulled with skopeo from a real
 * server and run in a chroot: users and groups (root, nobody), the
 * `nonroot` meta-package (uid 65532, its own home, /tmp still writable, the
 * store not), a default command for one-package images, OCI labels, and the
 * same digests from a second server on fresh storage. Docker runs them in
 * registry-engines.test.ts.
 */
import { execFile } from 'node:child_process';
import { mkdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inChroot, sh, skopeoPull, unpack } from '../helpers/clients.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

const run = promisify(execFile);

let server: RunningServer;
let work: Awaited<ReturnType<typeof scratchDir>>;
beforeAll(async () => {
  server = await startServer();
  work = await scratchDir('nixery-behaviour-');
});
afterAll(async () => {
  await server?.stop();
  await work?.remove();
});

interface ImageConfig {
  architecture: string;
  config: { User?: string; Env?: string[]; Cmd?: string[]; WorkingDir?: string; Labels?: Record<string, string> };
}

async function pull(name: string, label: string): Promise<{ layout: string; rootfs: string; config: ImageConfig; manifest: string }> {
  const layout = path.join(work.path, `${label}-oci`);
  await skopeoPull(`${server.host}/${name}:latest`, layout);
  const index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: { digest: string }[] };
  const blob = (d: string) => readFile(path.join(layout, 'blobs', 'sha256', d.slice('sha256:'.length)), 'utf8');
  const manifest = index.manifests[0]!.digest;
  const m = JSON.parse(await blob(manifest)) as { config: { digest: string } };
  const config = JSON.parse(await blob(m.config.digest)) as ImageConfig;
  return { layout, rootfs: await unpack(layout, path.join(work.path, `${label}-bundle`)), config, manifest };
}

describe('users and groups', () => {
  it('shell/git: whoami is root, id nobody works, and git config --global writes root\'s home', async () => {
    const { rootfs } = await pull('shell/git', 'git');
    expect((await inChroot(rootfs, ['whoami'])).trim()).toBe('root');
    expect((await inChroot(rootfs, ['id', 'nobody'])).trim()).toBe('uid=65534(nobody) gid=65534(nobody) groups=65534(nobody)');
    // A container runtime gives the image a /dev; git needs /dev/null.
    await mkdir(path.join(rootfs, 'dev'), { recursive: true });
    await run('mknod', ['-m', '666', path.join(rootfs, 'dev/null'), 'c', '1', '3']);
    // HOME as a runtime sets it from the user's passwd entry (docker, runc); git needs it to exist.
    const home = (await inChroot(rootfs, ['bash', '-c', 'while IFS=: read -r u _ _ _ _ h _; do [ "$u" = root ] && echo "$h"; done < /etc/passwd; true'])).trim();
    expect(home).toBe('/root');
    await run('env', ['-i', 'PATH=/bin:/usr/bin', `HOME=${home}`, '/usr/sbin/chroot', rootfs, 'git', 'config', '--global', 'user.name', 'x']);
    expect(await readFile(path.join(rootfs, 'root/.gitconfig'), 'utf8')).toContain('name = x');
    expect(await readFile(path.join(rootfs, 'etc/nsswitch.conf'), 'utf8')).toContain('passwd: files');
  });
});

describe('nonroot', () => {
  it('nonroot/shell/htop runs as 65532: its home and /tmp are writable, the store is not', async () => {
    const { rootfs, config } = await pull('nonroot/shell/htop', 'nonroot');
    expect(config.config.User).toBe('65532:65532');
    expect(config.config.WorkingDir).toBe('/home/nonroot');
    expect(config.config.Env).toContain('HOME=/home/nonroot');
    expect(config.config.Cmd).toEqual(['bash']);
    // Kubernetes' runAsNonRoot accepts an image whose User is numeric and not 0 (see the README).
    expect(config.config.User).toMatch(/^[1-9]\d*(:\d+)?$/);
    const home = await stat(path.join(rootfs, 'home/nonroot'));
    expect([home.uid, home.gid]).toEqual([65532, 65532]);
    // As the config says: user 65532, HOME from the config's Env.
    const script = [
      'id -u; id -un; id -g',
      'echo a > "$HOME/f" && echo home-ok',
      'echo b > /tmp/f && echo tmp-ok',
      'if echo c > /nix/store/f 2>/dev/null; then echo store-writable; else echo store-refused; fi',
      'htop --version | head -1',
    ].join('\n');
    const { stdout } = await run('env', ['-i', 'PATH=/bin:/usr/bin', 'HOME=/home/nonroot', '/usr/sbin/chroot', '--userspec=65532:65532', rootfs, '/bin/bash', '-c', script]);
    const lines = stdout.trim().split('\n');
    expect(lines.slice(0, 3)).toEqual(['65532', 'nonroot', '65532']);
    expect(lines).toContain('home-ok');
    expect(lines).toContain('tmp-ok');
    expect(lines).toContain('store-refused');
    expect(lines.at(-1)).toMatch(/^htop \d/);
  });
});

describe('default command and labels', () => {
  it('one package runs its main program by default; shell runs bash; two packages have none', async () => {
    const hello = await pull('hello', 'hello');
    expect(hello.config.config.Cmd).toEqual(['/bin/hello']);
    expect(await inChroot(hello.rootfs, hello.config.config.Cmd!)).toMatch(/Hello/);
    expect((await pull('jq', 'jq')).config.config.Cmd).toEqual(['/bin/jq']);
    expect((await pull('shell', 'shell')).config.config.Cmd).toEqual(['bash']);
    expect((await pull('jq/hello', 'two')).config.config.Cmd).toBeUndefined();
  });

  it('skopeo inspect shows the OCI labels; a second server on fresh storage builds the same digests', async () => {
    const { stdout } = await sh('skopeo', ['inspect', '--tls-verify=false', `docker://${server.host}/shell/htop:latest`]);
    const inspected = JSON.parse(stdout) as { Labels: Record<string, string>; Digest: string };
    const labels = inspected.Labels;
    expect(labels['org.opencontainers.image.title']).toBe('shell/htop');
    expect(labels['org.opencontainers.image.created']).toBe('1970-01-01T00:00:01Z');
    expect(labels['org.opencontainers.image.revision']).toMatch(/^path:/);
    // A local package set: its path is the server's business.
    expect(labels['org.opencontainers.image.source']).toBeUndefined();
    expect(JSON.stringify(labels)).not.toContain(server.storagePath);
    // Each requested package with the version its store path names (cacert and iana-etc of the demo set have none).
    expect(labels['org.opencontainers.image.description']).toMatch(
      /^Nix packages: bashInteractive \d\S*, cacert(?: \S+)?, coreutils \d\S*, htop \d\S*, iana-etc(?: \S+)?, moreutils \d\S*, nano \d\S*$/,
    );
    // The OCI manifest carries them as annotations.
    const raw = JSON.parse((await sh('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${server.host}/shell/htop:latest`])).stdout) as {
      annotations?: Record<string, string>;
    };
    expect(raw.annotations).toEqual(labels);

    const other = await startServer();
    try {
      for (const name of ['shell/htop', 'hello', 'nonroot/shell/htop']) {
        const a = await fetch(`${server.url}/v2/${name}/manifests/latest`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
        const b = await fetch(`${other.url}/v2/${name}/manifests/latest`, { headers: { Accept: 'application/vnd.oci.image.manifest.v1+json' } });
        expect(b.headers.get('docker-content-digest'), name).toBe(a.headers.get('docker-content-digest'));
      }
    } finally {
      await other.stop();
    }
  });
});
