#!/usr/bin/env bash
# Installs what a fresh Debian machine with rustup lacks to build and boot vcrypt:
# the pinned toolchain with the x86_64-unknown-none target (read from rust-toolchain.toml) and
# QEMU, openssl (test-all checks kcapi's answers against it) and addr2line from binutils
# (scripts/profile.sh resolves the profiler's samples with it). Does nothing for what is
# already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
    echo "ensure-tools: installing the toolchain of rust-toolchain.toml" >&2
    rustup toolchain install
fi

missing=()
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing+=(qemu-system-x86)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v addr2line >/dev/null 2>&1 || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
    echo "ensure-tools: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
