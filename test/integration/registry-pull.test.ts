/**
 * Real pulls with skopeo, unpacked with umoci, run with chroot.
 */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inChroot, pythonGunzip, sh, skopeoPull, unpack } from '../helpers/clients.js';
import { scratchDir, startServer, type RunningServer } from '../helpers/server.js';

let server: RunningServer;
let scratch: { path: string; remove: () => Promise<void> };

beforeAll(async () => {
  server = await startServer();
  scratch = await scratchDir('nixery-pull-');
});
afterAll(async () => {
  await server?.stop();
  await scratch?.remove();
});

describe('pulling with skopeo and running with chroot', () => {
  it('shell/htop runs htop, bash and /usr/bin/env', async () => {
    const layout = `${scratch.path}/shell-htop`;
    await skopeoPull(`${server.host}/shell/htop`, layout);
    const rootfs = await unpack(layout, `${scratch.path}/shell-htop-bundle`);
    expect(await inChroot(rootfs, ['htop', '--version'])).toMatch(/^htop \d/);
    expect(await inChroot(rootfs, ['bash', '-c', 'echo ok'])).toBe('ok\n');
    await inChroot(rootfs, ['/usr/bin/env', 'true']);
    // The config makes bash the default command and points at the CA bundle.
    const config = JSON.parse(await readFile(`${scratch.path}/shell-htop-bundle/config.json`, 'utf8'));
    expect(config.process.args).toEqual(['bash']);
    expect(config.process.env).toContain('SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt');
    expect((await readFile(`${rootfs}/etc/ssl/certs/ca-bundle.crt`, 'utf8')).length).toBeGreaterThan(1000);
  });

  it('jq/hello runs both programs, and hello/jq is the same image', async () => {
    const layout = `${scratch.path}/jq-hello`;
    await skopeoPull(`${server.host}/jq/hello`, layout);
    const rootfs = await unpack(layout, `${scratch.path}/jq-hello-bundle`);
    expect(await inChroot(rootfs, ['jq', '--version'])).toMatch(/^jq-/);
    expect(await inChroot(rootfs, ['hello'])).toMatch(/Hello/);
    const accept = { Accept: 'application/vnd.oci.image.manifest.v1+json' };
    const a = await fetch(`${server.url}/v2/jq/hello/manifests/latest`, { method: 'HEAD', headers: accept });
    const b = await fetch(`${server.url}/v2/hello/jq/manifests/latest`, { method: 'HEAD', headers: accept });
    expect(a.headers.get('docker-content-digest')).toMatch(/^sha256:/);
    expect(b.headers.get('docker-content-digest')).toBe(a.headers.get('docker-content-digest'));
  });

  it('python3: its multi-member gzip layers pass gzip -t and Python\'s gzip, match their diff_ids, and the interpreter runs', async () => {
    const layout = `${scratch.path}/python3`;
    await skopeoPull(`${server.host}/python3`, layout);
    const index = JSON.parse(await readFile(`${layout}/index.json`, 'utf8'));
    const blob = (digest: string) => `${layout}/blobs/sha256/${digest.slice('sha256:'.length)}`;
    const manifest = JSON.parse(await readFile(blob(index.manifests[0].digest), 'utf8'));
    const config = JSON.parse(await readFile(blob(manifest.config.digest), 'utf8'));
    let mostMembers = 0;
    for (const [i, layer] of (manifest.layers as Array<{ digest: string }>).entries()) {
      await sh('gzip', ['-t', blob(layer.digest)]);
      const { diffId, members } = await pythonGunzip(blob(layer.digest));
      expect(diffId).toBe(config.rootfs.diff_ids[i]);
      mostMembers = Math.max(mostMembers, members);
    }
    // The 25 MB interpreter's layer is cut into 1 MiB pieces.
    expect(mostMembers).toBeGreaterThan(10);
    const rootfs = await unpack(layout, `${scratch.path}/python3-bundle`);
    expect(await inChroot(rootfs, ['python3', '-B', '-c', 'import json, zlib, sys; print(json.dumps([sys.prefix.startswith("/nix/store/"), len(zlib.compress(b"x"))]))'])).toBe(
      '[true, 9]\n',
    );
  });
});
