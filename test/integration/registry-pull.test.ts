/**
 * Real pulls with skopeo, unpacked with umoci, run with chroot.
 */
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inChroot, skopeoPull, unpack } from '../helpers/clients.js';
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
});
