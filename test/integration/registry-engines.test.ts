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

describe('docker: images that behave like images', () => {
  it('runs a one-package image\'s main program by default, lets arguments replace it, starts bash for shell', async () => {
    const run = (...args: string[]) => engines!.docker(['run', '--rm', '--network', 'none', ...args]);
    expect(await run(`${server.host}/hello`)).toMatch(/Hello/);
    expect(await run(`${server.host}/jq`, 'jq', '--version')).toMatch(/^jq-/);
    // No "no command specified": bash starts, reads the closed stdin and exits 0.
    expect(await run(`${server.host}/shell`)).toBe('');
    expect((await engines!.docker(['image', 'inspect', '--format', '{{json .Config.Cmd}}', `${server.host}/shell`])).trim()).toBe('["bash"]');
  });

  it('runs nonroot images as 65532 with a writable home, and root images with a passwd entry and home for git', async () => {
    const run = (...args: string[]) => engines!.docker(['run', '--rm', '--network', 'none', ...args]);
    const out = await run(`${server.host}/nonroot/shell`, 'bash', '-c', 'id -u; id -un; echo x > "$HOME/f" && echo "$HOME" && pwd');
    expect(out.trim().split('\n')).toEqual(['65532', 'nonroot', '/home/nonroot', '/home/nonroot']);
    expect((await run(`${server.host}/shell/git`, 'bash', '-c', 'whoami && git config --global user.name x && git config --global user.name')).trim()).toBe('root\nx');
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
