#!/usr/bin/env bash
# Installs the clients ilog is used and tested with: SPDK's JSON-RPC client
# (`spdk-rpc`, PyPI package `spdk`), fio (with its nbd engine), qemu-io and
# qemu-img, and libnbd's nbdinfo/nbdcopy. Idempotent; needs root for apt.
set -euo pipefail

missing=()
command -v fio >/dev/null || missing+=(fio)
command -v qemu-io >/dev/null || missing+=(qemu-utils)
command -v nbdinfo >/dev/null || missing+=(libnbd-bin)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v spdk-rpc >/dev/null || ! python3 -c 'import spdk.rpc' 2>/dev/null; then
    echo "installing spdk (PyPI) for spdk-rpc"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore spdk
fi
command -v spdk-rpc >/dev/null || { echo "spdk-rpc is not on PATH after installing spdk" >&2; exit 1; }
echo "clients: $(fio --version), $(qemu-io --version | head -1), $(nbdinfo --version | head -1), spdk-rpc $(python3 -c 'import importlib.metadata as m; print(m.version("spdk"))')"
