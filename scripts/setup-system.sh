#!/usr/bin/env bash
# Installs what nixery-ts needs from Debian and configures Nix for a machine
# without a Nix daemon (root, single-user store). Idempotent: safe to run on
# every CI run and before every demo.
#
#   bash scripts/setup-system.sh serve   what serving the demo package set needs (npm run demo)
#   bash scripts/setup-system.sh test    that, plus every tool the tests use (.ci/run)
#
# serve:
#   nix-bin                  Nix itself (2.8 on Debian 12)
#   patchelf busybox-static htop jq git curl nano moreutils gcc
#   ca-certificates netbase perl openssl python3.11
#                            the Debian programs and files nix/demo-pkgs copies into the store
# test, in addition:
#   skopeo umoci             registry clients the tests pull with
#   podman containerd docker.io runc
#                            container engines the tests start themselves (pull + run)
#   docker-registry          CNCF distribution: the reference in bench/serve
#   attr procps              getfattr and ps, used by tests
#   chromium                 the real browser the start-page test drives (playwright-core)
#   faketime                 runs the clock-independent tests a year ahead (.ci/run)
#   apache2-utils            htpasswd, to write the bcrypt files the auth tests use
#   qemu-user-static         qemu-aarch64-static: runs arm64 programs without kernel binfmt
#                            (tests chroot into arm64 images; nix/demo-pkgs runs busybox,
#                            git and python3 under it when building them for aarch64-linux)
#   gcc-aarch64-linux-gnu    cross compiler for the demo set's C programs (hello, greet,
#                            7zip) on aarch64-linux (~41 MB download, ~170 MB installed)
# test, also: an arm64 sysroot for nix/demo-pkgs on aarch64-linux
#   (`import ./nix/demo-pkgs { system = "aarch64-linux"; }`, built here with
#   NIX_CONFIG="extra-platforms = aarch64-linux"). arm64 is added as a dpkg
#   foreign architecture, the .debs below are fetched with `apt-get download
#   PKG:arm64` into $ARM64_DEBS and unpacked with `dpkg-deb -x` into
#   $ARM64_SYSROOT (nothing is installed, no maintainer scripts run), with /bin,
#   /sbin and /lib merged into /usr like the host. $ARM64_SYSROOT/.nixery/lists/PKG.list
#   holds each package's file list (dpkg -L cannot see them) and
#   $ARM64_SYSROOT/.nixery/stamp the package versions; a sysroot whose stamp
#   names the same packages is kept as it is (no apt calls).
#   libc6                    glibc (ld-linux-aarch64.so.1, libc.so.6, ...)
#   libncursesw6 libtinfo6 zlib1g libpcre2-8-0 openssl libssl3 libnl-3-200
#   libnl-genl-3-200 libonig5 libselinux1 libacl1 libattr1 libgmp10
#                            the demo set's library packages
#   bash coreutils busybox-static htop jq libjq1 nano moreutils git curl libcurl4
#                            its programs (libjq1: bundled into jq)
#   libbrotli1 libcom-err2 libgnutls30 libgssapi-krb5-2 libhogweed6 libidn2-0
#   libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 libnettle8
#   libnghttp2-14 libp11-kit0 libffi8 libpsl5 librtmp1 libsasl2-2 libssh2-1
#   libtasn1-6 libunistring2 libzstd1
#                            what libcurl loads (bundled into curl)
#   python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libexpat1
#   libbz2-1.0 libcrypt1 libdb5.3 liblzma5 libnsl2 libreadline8 libsqlite3-0
#   libtirpc3 libuuid1       python3 with its stdlib and what its extensions load
set -euo pipefail

profile="${1:-}"
SERVE_PACKAGES=(
  nix-bin
  patchelf busybox-static htop jq git curl nano moreutils gcc ca-certificates netbase perl openssl python3.11
)
TEST_PACKAGES=(
  skopeo umoci
  podman containerd docker.io runc
  docker-registry
  attr procps
  chromium
  faketime
  apache2-utils
  qemu-user-static gcc-aarch64-linux-gnu
)
ARM64_DEBS_DIR=/var/cache/nixery-ts/debs-arm64
ARM64_SYSROOT=/opt/nixery-ts/sysroot-arm64
ARM64_PACKAGES=(
  libc6
  libncursesw6 libtinfo6 zlib1g libpcre2-8-0 openssl libssl3 libnl-3-200 libnl-genl-3-200
  libonig5 libselinux1 libacl1 libattr1 libgmp10
  bash coreutils busybox-static htop jq libjq1 nano moreutils git curl libcurl4
  libbrotli1 libcom-err2 libgnutls30 libgssapi-krb5-2 libhogweed6 libidn2-0
  libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 libnettle8
  libnghttp2-14 libp11-kit0 libffi8 libpsl5 librtmp1 libsasl2-2 libssh2-1
  libtasn1-6 libunistring2 libzstd1
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libexpat1
  libbz2-1.0 libcrypt1 libdb5.3 liblzma5 libnsl2 libreadline8 libsqlite3-0
  libtirpc3 libuuid1
)
case "$profile" in
  serve) PACKAGES=("${SERVE_PACKAGES[@]}") ;;
  test) PACKAGES=("${SERVE_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac

export DEBIAN_FRONTEND=noninteractive
need_update=0
if [ "$profile" = test ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  echo "setup: adding dpkg architecture arm64"
  dpkg --add-architecture arm64
  need_update=1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "$need_update" = 1 ]; then
  apt-get update -q
  need_update=0
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get install -y -q "${missing[@]}"
fi

# The arm64 sysroot (see the header). Kept when its stamp lists exactly
# ARM64_PACKAGES; otherwise fetched (only the .debs not in the cache yet) and
# unpacked afresh next to it, then moved into place.
arm64_sysroot() {
  local stamp="$ARM64_SYSROOT/.nixery/stamp" want
  want=$(printf '%s\n' "${ARM64_PACKAGES[@]}" | LC_ALL=C sort -u)
  if [ -f "$stamp" ] && [ "$(cut -d' ' -f1 "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "setup: arm64 sysroot for nix/demo-pkgs -> $ARM64_SYSROOT"
  mkdir -p "$ARM64_DEBS_DIR"
  # apt fetches as _apt where it can write (else it warns and fetches as root).
  if id -u _apt >/dev/null 2>&1; then chown _apt "$ARM64_DEBS_DIR"; fi
  # Candidate versions -> the file names apt-get download writes (':' as %3a).
  local versions
  versions=$(apt-cache show --no-all-versions "${ARM64_PACKAGES[@]/%/:arm64}" |
    awk '/^Package:/ { p = $2 } /^Version:/ { print p, $2 }' | LC_ALL=C sort -u)
  if [ "$(cut -d' ' -f1 <<<"$versions")" != "$want" ]; then
    apt-get update -q
    versions=$(apt-cache show --no-all-versions "${ARM64_PACKAGES[@]/%/:arm64}" |
      awk '/^Package:/ { p = $2 } /^Version:/ { print p, $2 }' | LC_ALL=C sort -u)
  fi
  [ "$(cut -d' ' -f1 <<<"$versions")" = "$want" ] || {
    echo "setup: arm64 packages not found in the apt indexes:" >&2
    comm -13 <(cut -d' ' -f1 <<<"$versions") <(printf '%s\n' "$want") >&2
    exit 1
  }
  local p v debs=() fetch=()
  while read -r p v; do
    local f="$ARM64_DEBS_DIR/${p}_${v//:/%3a}_arm64.deb"
    debs+=("$f")
    [ -s "$f" ] || fetch+=("$p:arm64=$v")
  done <<<"$versions"
  if [ "${#fetch[@]}" -gt 0 ]; then
    (cd "$ARM64_DEBS_DIR" && apt-get download -q "${fetch[@]}")
  fi
  local tmp="$ARM64_SYSROOT.tmp" d
  rm -rf "$tmp"
  mkdir -p "$tmp/.nixery/lists"
  for f in "${debs[@]}"; do
    dpkg-deb -x "$f" "$tmp"
    dpkg-deb --fsys-tarfile "$f" | tar -t | sed -e 's|^\./|/|' -e 's|/$||' | grep -v '^/\?$' \
      > "$tmp/.nixery/lists/$(dpkg-deb -f "$f" Package).list"
  done
  # Merged /usr, like the host: /bin, /sbin and /lib become links into usr/.
  for d in bin sbin lib; do
    if [ -d "$tmp/$d" ] && [ ! -L "$tmp/$d" ]; then
      mkdir -p "$tmp/usr/$d"
      cp -a "$tmp/$d/." "$tmp/usr/$d/"
      rm -rf "${tmp:?}/$d"
    fi
    ln -sfn "usr/$d" "$tmp/$d"
  done
  # Absolute links would lead out of the sysroot into the host: make them relative.
  find "$tmp" -type l -lname '/*' | while read -r l; do
    ln -sfn "$(realpath -m --relative-to="$(dirname "$l")" "$tmp$(readlink "$l")")" "$l"
  done
  printf '%s\n' "$versions" > "$tmp/.nixery/stamp"
  rm -rf "$ARM64_SYSROOT"
  mv "$tmp" "$ARM64_SYSROOT"
}
if [ "$profile" = test ]; then
  arm64_sysroot
fi

# Nix without a daemon, as root: builds must not use the sandbox (the demo
# package set copies programs from the host) and the nix command is needed
# for `nix path-info --json`.
conf=/etc/nix/nix.conf
mkdir -p /etc/nix
touch "$conf"
ensure() { # key value
  if grep -qE "^[[:space:]]*$1[[:space:]]*=" "$conf"; then
    sed -i -E "s|^[[:space:]]*$1[[:space:]]*=.*|$1 = $2|" "$conf"
  else
    echo "$1 = $2" >> "$conf"
  fi
}
ensure sandbox false
ensure experimental-features nix-command
# Debian's nix-bin creates the nixbld group and users; make sure the store exists.
mkdir -p /nix/store
echo "setup: system ready ($(nix --version))"
