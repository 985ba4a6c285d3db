/**
 * The files every image gets besides its packages, so that it behaves like a
 * distro image: users and groups (`/etc/passwd`, `/etc/group`,
 * `/etc/nsswitch.conf` with `files`), as nixpkgs' `fakeNss` provides them:
 * root (0) and nobody (65534), and with the `nonroot` meta-package a
 * `nonroot` user and group (65532, the distroless convention) whose home
 * `/home/nonroot` it owns. `/root` exists for root's home (git, ssh and
 * shells write there). Pure: tar entries for the symlink layer, merged with
 * its plan; same inputs, same bytes.
 *
 * A package that brings its own file at one of these names wins (the image
 * then has the package's, as the symlink layer links it): the plan is asked
 * which names it already has.
 */
import type { TarEntry } from '../layers/pack.js';

export const NONROOT_UID = 65532;
export const NONROOT_HOME = '/home/nonroot';

export interface EssentialsOptions {
  readonly nonroot: boolean;
}

const PASSWD_ROOT = ['root:x:0:0:root:/root:/bin/sh', 'nobody:x:65534:65534:nobody:/var/empty:/bin/false'];
const GROUP_ROOT = ['root:x:0:', 'nobody:x:65534:'];
const NSSWITCH = ['passwd: files', 'group: files', 'shadow: files', 'hosts: files dns'];

function file(name: string, lines: readonly string[]): TarEntry {
  const bytes = Buffer.from(`${lines.join('\n')}\n`);
  return { name, type: 'file', mode: 0o644, size: bytes.length, read: () => bytes };
}

/** The image's own entries, each only where `taken` says the packages have nothing at that name. */
export function essentialEntries(opts: EssentialsOptions, taken: (name: string) => boolean): TarEntry[] {
  const passwd = [...PASSWD_ROOT];
  const group = [...GROUP_ROOT];
  if (opts.nonroot) {
    passwd.push(`nonroot:x:${NONROOT_UID}:${NONROOT_UID}:nonroot:${NONROOT_HOME}:/bin/sh`);
    group.push(`nonroot:x:${NONROOT_UID}:`);
  }
  const wanted: TarEntry[] = [
    { name: 'etc', type: 'directory', mode: 0o755 },
    file('etc/group', group),
    file('etc/nsswitch.conf', NSSWITCH),
    file('etc/passwd', passwd),
    { name: 'root', type: 'directory', mode: 0o700 },
  ];
  if (opts.nonroot) {
    wanted.push({ name: 'home', type: 'directory', mode: 0o755 });
    wanted.push({ name: 'home/nonroot', type: 'directory', mode: 0o755, uid: NONROOT_UID, gid: NONROOT_UID });
  }
  return wanted.filter((e) => !taken(e.name));
}
