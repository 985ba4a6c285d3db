/**
 * The container engines users actually run: docker (dockerd on containerd),
 * containerd's ctr and podman, each pulling from the registry and running
 * the image. The daemons are started and stopped by this test; one that
 * cannot start fails it loudly.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { podmanIn, sh } from '../helpers/clients.js';
import { startEngines, type Engines } from '../helpers/daemons.js';
import { startServer, type RunningServer } from '../helpers/server.js';

let server: RunningServer;
let engines: Engines | undefined;
beforeAll(async () => {
  server = await startServer();
  engines = await startEngines();
});
afterAll(async () => {
  await engines?.stop();
  await server?.stop();
});

describe('docker', () => {
  it('pulls shell/htop and runs htop --version', async () => {
    const ref = `${server.host}/shell/htop`;
    await engines!.docker(['pull', ref]);
    const out = await engines!.docker(['run', '--rm', '--network', 'none', ref, 'htop', '--version']);
    expect(out).toMatch(/^htop \d/);
    const shell = await engines!.docker(['run', '--rm', '--network', 'none', ref, 'bash', '-c', 'echo $SSL_CERT_FILE']);
    expect(shell.trim()).toBe('/etc/ssl/certs/ca-bundle.crt');
  });
});

describe('containerd (ctr)', () => {
  it('pulls over plain HTTP and runs the image', async () => {
    const ref = `${server.host}/jq/hello:latest`;
    await engines!.ctr(['images', 'pull', '--plain-http', ref]);
    const out = await engines!.ctr(['run', '--rm', ref, `t${process.pid}`, 'hello']);
    expect(out).toMatch(/Hello/);
  });
});

describe('podman', () => {
  it('pulls shell/htop and runs it with runc', async () => {
    const dir = await mkdtemp('/tmp/nxp-');
    try {
      const { flags: P, env } = await podmanIn(dir);
      const ref = `${server.host}/shell/htop`;
      await sh('podman', [...P, 'pull', '--tls-verify=false', ref], { env });
      const { stdout } = await sh('podman', [...P, 'run', '--rm', ref, 'htop', '--version'], { env });
      expect(stdout).toMatch(/^htop \d/);
      await sh('podman', [...P, 'rmi', '-a', '-f'], { env }).catch(() => undefined);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
