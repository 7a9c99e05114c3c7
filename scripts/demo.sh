#!/usr/bin/env bash
# The main job: builds ilog_tgt and runs it on an embedded default, a 256 MiB
# malloc base with ilog0 on it, exported over NBD. Ctrl-C stops it cleanly.
#   ILOG_RPC_SOCK   RPC socket    (default /var/tmp/ilog.sock)
#   ILOG_NBD_SOCK   NBD socket    (default /var/tmp/ilog0.nbd)
#   ILOG_CPUMASK    reactor cores (default 0x3)
#   CARGO_TARGET_DIR where cargo builds (default target)
set -euo pipefail
cd "$(dirname "$0")/.."
rpc_sock="${ILOG_RPC_SOCK:-/var/tmp/ilog.sock}"
nbd_sock="${ILOG_NBD_SOCK:-/var/tmp/ilog0.nbd}"
cpumask="${ILOG_CPUMASK:-0x3}"

cargo build --release -p ilog-tgt
config="$(mktemp --suffix=.json)"
trap 'rm -f "$config"' EXIT
cat >"$config" <<JSON
{"subsystems": [
  {"subsystem": "bdev", "config": [
    {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": 65536, "block_size": 4096}},
    {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "Malloc0"}}
  ]},
  {"subsystem": "nbd", "config": [
    {"method": "nbd_start_disk", "params": {"bdev_name": "ilog0", "nbd_device": "$nbd_sock"}}
  ]}
]}
JSON

cat <<TXT
ilog_tgt: ilog0 on a 256 MiB malloc base, exported at nbd+unix:///?socket=$nbd_sock
Try, from another shell (scripts/install-deps.sh installs the clients):
  export PYTHONPATH=$PWD/scripts
  spdk-rpc -s $rpc_sock bdev_get_bdevs
  qemu-io -f raw -c 'write -P 0xab 0 1M' 'nbd+unix:///?socket=$nbd_sock'
  spdk-rpc -s $rpc_sock --plugin rpc_ilog bdev_ilog_snapshot ilog0 -n first
  qemu-io -f raw -c 'write -P 0xcd 0 1M' 'nbd+unix:///?socket=$nbd_sock'
  spdk-rpc -s $rpc_sock nbd_start_disk ilog0@first /var/tmp/first.nbd
  qemu-io -f raw -r -c 'read -P 0xab 0 1M' 'nbd+unix:///?socket=/var/tmp/first.nbd'
  spdk-rpc -s $rpc_sock --plugin rpc_ilog bdev_ilog_get_volumes ilog0
  spdk-rpc -s $rpc_sock --plugin rpc_ilog bdev_ilog_log_read ilog0 -n 4
  ${CARGO_TARGET_DIR:-target}/release/ilog -s $rpc_sock copy ilog0 first /var/tmp/first.stream
TXT
exec "${CARGO_TARGET_DIR:-target}/release/ilog_tgt" -m "$cpumask" -r "$rpc_sock" -c "$config"
