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
)
case "$profile" in
  serve) PACKAGES=("${SERVE_PACKAGES[@]}") ;;
  test) PACKAGES=("${SERVE_PACKAGES[@]}" "${TEST_PACKAGES[@]}") ;;
  *) echo "usage: $0 serve|test" >&2; exit 2 ;;
esac

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
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
