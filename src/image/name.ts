/**
 * From a registry name and tag to the image to build. Pure.
 *
 * The name's path components are package names (`shell/git/htop`).
 * Meta-packages are recognised at the front only, as in Nixery:
 *   arm64  build for aarch64-linux only (a plain manifest, never an index)
 *   amd64  build for x86_64-linux only (likewise)
 *   shell  bashInteractive, coreutils, moreutils and nano
 *   nonroot  run as the `nonroot` user (65532), home /home/nonroot
 * A name without arm64/amd64 is built for the server's default platform,
 * or for every configured platform when the client accepts an index.
 * `cacert` and `iana-etc` are added to every image (TLS and /etc/services),
 * and the package list is sorted and de-duplicated, so that `git/htop` and
 * `htop/git` are the same image and share every cache entry.
 */
import { InvalidImageNameError, InvalidTagError } from '../errors.js';

export interface Architecture {
  /** Nix system double. */
  readonly nixSystem: 'x86_64-linux' | 'aarch64-linux';
  /** GOARCH-style name used in image configs and indexes. */
  readonly ociArch: 'amd64' | 'arm64';
}

export const AMD64: Architecture = { nixSystem: 'x86_64-linux', ociArch: 'amd64' };
export const ARM64: Architecture = { nixSystem: 'aarch64-linux', ociArch: 'arm64' };
/** Every platform this registry builds for, in the order indexes list them. */
export const ARCHITECTURES: readonly Architecture[] = [AMD64, ARM64];

/** OCI platform notation: `linux/amd64`. */
export function platformName(arch: Architecture): string {
  return `linux/${arch.ociArch}`;
}

/** `linux/amd64`, `linux/arm64` (also `linux/arm64/v8`); undefined for anything else. */
export function parsePlatform(s: string): Architecture | undefined {
  const v = s.trim().toLowerCase();
  return ARCHITECTURES.find((a) => v === platformName(a) || (a === ARM64 && v === 'linux/arm64/v8'));
}

export interface ImageSpec {
  /** The repository name as requested, e.g. `shell/htop`. */
  readonly name: string;
  /** The tag as requested (for git sources: the ref to build). */
  readonly tag: string;
  /** Package attribute names to build: sorted, unique, meta-packages expanded. */
  readonly packages: readonly string[];
  readonly arch: Architecture;
  /** The name chose the platform (`arm64/`, `amd64/`): a plain manifest, never an index. */
  readonly pinned: boolean;
  /** `nonroot/` at the front: the image runs as user 65532. */
  readonly nonroot: boolean;
  /** `shell/` at the front. */
  readonly shell: boolean;
  /**
   * The image's name as every spelling of it shares it: meta-packages in a
   * fixed order (nonroot, shell), then the other packages sorted, without
   * the platform and the two every image gets (`shell/git/htop` for
   * `htop/git` after `shell`). The image's title label.
   */
  readonly canonicalName: string;
}

const SHELL_PACKAGES = ['bashInteractive', 'coreutils', 'moreutils', 'nano'] as const;
export const ALWAYS_INCLUDED = ['cacert', 'iana-etc'] as const;

/** Distribution spec: lowercase components separated by `.`, `_`, `__` or dashes. */
const COMPONENT = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** Docker's limit on a whole repository name. */
const MAX_NAME_LENGTH = 255;

export function validateName(name: string): void {
  if (name.length === 0) throw new InvalidImageNameError(name, 'the name is empty');
  if (name.length > MAX_NAME_LENGTH) {
    throw new InvalidImageNameError(
      name.length > 64 ? `${name.slice(0, 64)}…` : name,
      `the name is ${name.length} characters long; the limit is ${MAX_NAME_LENGTH}`,
    );
  }
  for (const c of name.split('/')) {
    if (!COMPONENT.test(c)) {
      throw new InvalidImageNameError(
        name,
        c === ''
          ? 'empty path component'
          : `path component ${JSON.stringify(c)} must be lowercase letters and digits, separated by '.', '_', '__' or '-'`,
      );
    }
  }
}

export function isValidTag(tag: string): boolean {
  return TAG.test(tag);
}

function validateTag(tag: string): void {
  if (!isValidTag(tag)) {
    throw new InvalidTagError(tag, 'a tag is up to 128 letters, digits, ".", "_" and "-", not starting with "." or "-"');
  }
}

/** `defaultArch`: the platform of a name that does not pin one (the server's default). */
export function parseImageName(name: string, tag: string, defaultArch: Architecture = AMD64): ImageSpec {
  validateName(name);
  validateTag(tag);
  const components = name.split('/');
  let pinned: Architecture | undefined;
  let shell = false;
  let nonroot = false;
  const packages = new Set<string>(ALWAYS_INCLUDED);
  let i = 0;
  for (; i < components.length; i++) {
    const c = components[i]!;
    if (c === 'arm64') pinned = ARM64;
    else if (c === 'amd64') pinned = AMD64;
    else if (c === 'shell') {
      shell = true;
      SHELL_PACKAGES.forEach((p) => packages.add(p));
    } else if (c === 'nonroot') nonroot = true;
    else break;
  }
  const named = new Set<string>();
  for (; i < components.length; i++) {
    packages.add(components[i]!);
    named.add(components[i]!);
  }
  const canonicalName = [...(nonroot ? ['nonroot'] : []), ...(shell ? ['shell'] : []), ...[...named].sort()].join('/');
  return { name, tag, packages: [...packages].sort(), arch: pinned ?? defaultArch, pinned: pinned !== undefined, nonroot, shell, canonicalName };
}
