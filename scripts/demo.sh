#!/usr/bin/env bash
# One command from a fresh Debian machine (as root, Node 20) to a running
# registry: installs what is missing, builds, and serves the bundled demo
# package set on 127.0.0.1 with filesystem storage under .demo/.
#
#   npm run demo                 # then, in another terminal:
#   skopeo copy --src-tls-verify=false docker://127.0.0.1:8080/shell/htop oci:/tmp/htop:latest
#   docker pull 127.0.0.1:8080/shell/htop     (127.0.0.0/8 is an insecure registry by default)
#
# PORT (default 8080) and NIXERY_HOST (default 127.0.0.1) may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-system.sh serve
[ -d node_modules ] || npm ci --no-audit --no-fund
npm run build --silent

mkdir -p .demo/storage
export NIXERY_HOST="${NIXERY_HOST:-127.0.0.1}"
export PORT="${PORT:-8080}"
export NIXERY_PKGS_PATH="$PWD/nix/demo-pkgs"
export NIXERY_STORAGE_BACKEND=filesystem
export STORAGE_PATH="$PWD/.demo/storage"
# The demo package set is entirely local: never wait on a binary cache.
export NIXERY_OFFLINE=true
echo "nixery-ts demo: http://$NIXERY_HOST:$PORT/ (Ctrl-C to stop)"
exec node dist/launch.cjs
