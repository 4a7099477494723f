#!/usr/bin/env bash
# Installs what a fresh Debian machine with rustup lacks to build and boot vcrypt:
# the pinned toolchain with the x86_64-unknown-none target (read from rust-toolchain.toml) and
# QEMU. Does nothing for what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-none; then
    echo "ensure-tools: installing the toolchain of rust-toolchain.toml" >&2
    rustup toolchain install
fi

if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "ensure-tools: installing QEMU (qemu-system-x86)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-system-x86 >/dev/null
fi
