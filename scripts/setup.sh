#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build Siren, and nothing else:
#   clang + libclang-dev  (librocksdb-sys runs bindgen)
#   librocksdb-dev        (Siren links the system RocksDB; see docs/ARCHITECTURE.md, "Building")
# Safe to run again: it only installs what is missing.
set -euo pipefail

need=()
command -v clang >/dev/null 2>&1 || need+=(clang)
compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/*/libclang*.so*" >/dev/null || need+=(libclang-dev)
[ -e /usr/include/rocksdb/c.h ] || need+=(librocksdb-dev)
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo is missing; install Rust from https://rustup.rs" >&2; exit 1; }

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
