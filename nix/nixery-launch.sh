#!/usr/bin/env bash
# nixery-launch: entry point of the nixery-ts container image.
#
# A Nix-built image has no /etc/passwd, no /etc/nix/nix.conf and no /tmp, so
# before starting the server this script gives Nix what it needs (like
# Nixery's own launch script), then execs `nixery` (the server, found on
# PATH; the image's wrapper, nix/launch.nix, puts it there):
#
#   1. /etc/passwd and /etc/group: root, nobody, and, with build users, the
#      group nixbld with members nixbld1..N;
#   2. /etc/nix/nix.conf: `sandbox = false` (a container cannot set up Nix's
#      build sandbox without extra privileges) and `build-users-group`
#      matching step 1 (empty: single-user, builds run as root);
#   3. /tmp and /var/tmp with mode 1777, and HOME when it is unset or "/";
#   4. NIX_SSL_CERT_FILE, SSL_CERT_FILE and GIT_SSL_CAINFO from the CA bundle
#      (values already set are kept);
#   5. the pre-launch hook, if any; then `exec nixery "$@"`.
#
# Environment:
#   NIXERY_BUILD_USERS  number of Nix build users (0..64), or `auto` (the
#                       default): 8 when running as root with the
#                       capabilities Nix needs to switch to them (CHOWN,
#                       DAC_OVERRIDE, FOWNER, SETGID, SETUID: Docker's
#                       defaults), else 0, i.e. single-user Nix as root, which
#                       works with every capability dropped (see
#                       deploy/kubernetes).
#   NIXERY_PRE_LAUNCH   path of an executable run just before the server
#                       starts, after steps 1-4 (so it may edit nix.conf, add
#                       keys, ...). A failing hook stops the launch. Without
#                       it, /etc/nixery/pre-launch.sh runs if it is executable
#                       (the path Nixery's image uses).
#   NIXERY_CA_BUNDLE    CA bundle for step 4 (the image sets it to cacert's);
#                       default: the first of /etc/ssl/certs/ca-bundle.crt,
#                       /etc/ssl/certs/ca-certificates.crt that exists.
#   NIXERY_LAUNCH_ROOT  prefix for every path this script writes (empty in a
#                       container; tests point it at a scratch directory).
#                       NIX_CONF_DIR is exported as $NIXERY_LAUNCH_ROOT/etc/nix,
#                       so the server's Nix reads the configuration written here.
#
# A nix.conf that this script did not write (a ConfigMap mounted at /etc/nix,
# say) is left alone; it then needs `sandbox = false` itself. Settings can
# also be added with NIX_CONFIG. Running the script again (a restarted
# container) rewrites the entries it owns rather than adding duplicates.
#
# Only bash builtins and coreutils are used: the image has no grep or sed.
set -euo pipefail

log() { printf 'nixery-launch: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

root=${NIXERY_LAUNCH_ROOT:-}
root=${root%/}

# ------------------------------------------------------------ build users
# Capability bits (linux/capability.h) that Nix, running as root, needs to
# hand builds to build users: CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, SETGID 6,
# SETUID 7. Without them a build fails with "setting uid: Operation not
# permitted"; single-user Nix needs none of them.
readonly BUILD_USER_CAPS=$(((1 << 0) | (1 << 1) | (1 << 3) | (1 << 6) | (1 << 7)))

effective_caps() {
  local key value caps=0
  if [[ -r /proc/self/status ]]; then
    while read -r key value; do
      if [[ $key == CapEff: ]]; then caps=$((16#$value)); fi
    done </proc/self/status
  fi
  echo "$caps"
}

build_users=${NIXERY_BUILD_USERS:-auto}
if [[ $build_users == auto ]]; then
  if ((EUID == 0 && ($(effective_caps) & BUILD_USER_CAPS) == BUILD_USER_CAPS)); then
    build_users=8
  else
    build_users=0
  fi
fi
if ! [[ $build_users =~ ^[0-9]+$ ]] || ((10#$build_users > 64)); then
  die "NIXERY_BUILD_USERS must be 'auto' or a number from 0 to 64, not '$build_users'"
fi
build_users=$((10#$build_users))
if ((EUID != 0 && build_users > 0)); then
  log "not running as root: build users are ignored, Nix runs single-user as uid $EUID"
  build_users=0
fi
readonly NIXBLD_GID=30000

# Replaces a file that is a symlink (into the store, say) by a copy, so that
# writing it never writes through the link.
unlink_copy() {
  local file=$1
  if [[ -L $file ]]; then
    local target
    target=$(readlink -f -- "$file") || target=
    rm -f -- "$file"
    if [[ -n $target && -f $target ]]; then cp -- "$target" "$file"; fi
  fi
}

# set_entries FILE IS_MANAGED LINE...: keeps the lines of FILE whose first
# field IS_MANAGED rejects, then appends LINE...; written to a temporary file
# and renamed, so a reader never sees half a file.
set_entries() {
  local file=$1 is_managed=$2 line
  shift 2
  unlink_copy "$file"
  local tmp="$file.nixery-launch.$$"
  {
    if [[ -f $file ]]; then
      while IFS= read -r line || [[ -n $line ]]; do
        "$is_managed" "${line%%:*}" || printf '%s\n' "$line"
      done <"$file"
    fi
    printf '%s\n' "$@"
  } >"$tmp"
  chmod 0644 "$tmp"
  mv -f -- "$tmp" "$file"
}

managed_user() { [[ $1 == root || $1 == nobody || $1 =~ ^nixbld[0-9]+$ ]]; }
managed_group() { [[ $1 == root || $1 == nogroup || $1 == nixbld ]]; }

mkdir -p "$root/etc"
users=("root:x:0:0:root:/root:/bin/bash" "nobody:x:65534:65534:Unprivileged account:/var/empty:/bin/false")
groups=("root:x:0:" "nogroup:x:65534:")
members=()
for ((i = 1; i <= build_users; i++)); do
  users+=("nixbld$i:x:$((NIXBLD_GID + i)):$NIXBLD_GID:Nix build user $i:/var/empty:/bin/false")
  members+=("nixbld$i")
done
if ((build_users > 0)); then
  groups+=("nixbld:x:$NIXBLD_GID:$(
    IFS=,
    echo "${members[*]}"
  )")
fi
set_entries "$root/etc/passwd" managed_user "${users[@]}"
set_entries "$root/etc/group" managed_group "${groups[@]}"

# --------------------------------------------------------------- nix.conf
readonly MARKER="# Written by nixery-launch at every start: add settings with NIX_CONFIG or NIXERY_PRE_LAUNCH."
conf_dir=$root/etc/nix
conf=$conf_dir/nix.conf
if ((build_users > 0)); then users_group=nixbld; else users_group=; fi

written_by_us() {
  local first=
  [[ -f $1 && ! -L $1 ]] || return 1
  IFS= read -r first <"$1" || true
  [[ $first == "$MARKER" ]]
}

if [[ -e $conf || -L $conf ]] && ! written_by_us "$conf"; then
  log "keeping $conf: not written by nixery-launch (it needs 'sandbox = false' for builds in a container)"
else
  mkdir -p "$conf_dir"
  tmp="$conf.nixery-launch.$$"
  {
    echo "$MARKER"
    echo "sandbox = false"
    echo "build-users-group = $users_group"
  } >"$tmp"
  chmod 0644 "$tmp"
  mv -f -- "$tmp" "$conf"
fi
export NIX_CONF_DIR=$conf_dir

# ------------------------------------------------ directories and identity
mkdir -p "$root/tmp" "$root/var/tmp" "$root/var/empty"
chmod 1777 "$root/tmp" "$root/var/tmp"
if [[ -z ${HOME:-} || $HOME == / ]]; then
  export HOME=$root/root
fi
mkdir -p "$HOME" 2>/dev/null || log "warning: cannot create HOME=$HOME"
if [[ -z ${USER:-} ]] && ((EUID == 0)); then export USER=root; fi

# ------------------------------------------------------------ certificates
bundle=${NIXERY_CA_BUNDLE:-}
if [[ -z $bundle ]]; then
  for candidate in /etc/ssl/certs/ca-bundle.crt /etc/ssl/certs/ca-certificates.crt; do
    if [[ -r $candidate ]]; then
      bundle=$candidate
      break
    fi
  done
fi
if [[ -n $bundle && -r $bundle ]]; then
  export NIX_SSL_CERT_FILE=${NIX_SSL_CERT_FILE:-$bundle}
  export SSL_CERT_FILE=${SSL_CERT_FILE:-$bundle}
  export GIT_SSL_CAINFO=${GIT_SSL_CAINFO:-$bundle}
else
  log "warning: no CA bundle (${bundle:-none found}): HTTPS downloads by Nix and git will fail"
fi

log "nix.conf $conf; build users: $build_users${users_group:+ (group $users_group)}; HOME=$HOME"

# ------------------------------------------------------------ the hook
hook=${NIXERY_PRE_LAUNCH:-}
if [[ -z $hook && -x $root/etc/nixery/pre-launch.sh ]]; then
  hook=$root/etc/nixery/pre-launch.sh
fi
if [[ -n $hook ]]; then
  [[ -f $hook && -x $hook ]] || die "NIXERY_PRE_LAUNCH: '$hook' is not an executable file"
  log "running the pre-launch hook $hook"
  "$hook" || die "the pre-launch hook $hook failed (exit code $?)"
fi

command -v nixery >/dev/null || die "the server 'nixery' is not on PATH ($PATH)"
exec nixery "$@"
