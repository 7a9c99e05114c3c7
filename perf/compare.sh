#!/usr/bin/env bash
# The same fio jobs (perf/fio/, fio's nbd engine) in one invocation against
# three NBD servers of the same size: ilog_tgt (ilog0 on a malloc base, the
# default layout, 1 reactor core), qemu-storage-daemon on a raw file in
# /dev/shm, and qemu-storage-daemon on the top of a 10-deep qcow2 chain in
# /dev/shm. Each export is written whole first (fill.fio), then randwrite
# and randread run over all of it. Prints a Markdown table and the ratios.
#   BASE_MIB          ilog0's malloc base (default 2048); the others get
#                     ilog0's volume size
#   RUNTIME           seconds per run (default 20)
#   CARGO_TARGET_DIR  where cargo builds (default target)
set -euo pipefail
cd "$(dirname "$0")/.."
base_mib="${BASE_MIB:-2048}"
runtime="${RUNTIME:-20}"
tgt="${CARGO_TARGET_DIR:-target}/release/ilog_tgt"
work="$(mktemp -d /dev/shm/ilog-compare.XXXXXX)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -p ilog-tgt >&2

# JSON-RPC call on socket $1: method $2, params $3 (JSON); prints the result.
rpc() {
  python3 - "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2], "params": json.loads(sys.argv[3])}).encode())
buf = b""
while True:
    buf += s.recv(65536)
    try:
        reply = json.loads(buf)
        break
    except ValueError:
        continue
if "error" in reply:
    sys.exit(f"{sys.argv[2]}: {reply['error']}")
print(json.dumps(reply["result"]))
PY
}

wait_for() {
  for _ in $(seq 1 200); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "no socket $1" >&2
  return 1
}

# Runs job $2 against export $1; prints its IOPS.
fio_iops() {
  # The nbd engine says "connected" on stdout: the report goes to a file.
  NBD_URI="$1" RUNTIME="$runtime" fio --output-format=json --output="$work/fio.json" "perf/fio/$2.fio" >&2
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1]))["jobs"][0]; print(round(j["read"]["iops"] + j["write"]["iops"]))' \
    "$work/fio.json"
}

# Fills export $1, then runs randwrite and randread; prints "randwrite randread".
measure() {
  fio_iops "$1" fill >/dev/null
  echo "$(fio_iops "$1" randwrite) $(fio_iops "$1" randread)"
}

stop_last() {
  kill "${pids[-1]}"
  wait "${pids[-1]}" 2>/dev/null || true
  unset 'pids[-1]'
}

# ilog_tgt
cat >"$work/ilog.json" <<JSON
{"subsystems": [
  {"subsystem": "bdev", "config": [
    {"method": "bdev_malloc_create", "params": {"name": "Malloc0", "num_blocks": $((base_mib * 256)), "block_size": 4096}},
    {"method": "bdev_ilog_create", "params": {"name": "ilog0", "base_bdev_name": "Malloc0"}}
  ]},
  {"subsystem": "nbd", "config": [
    {"method": "nbd_start_disk", "params": {"bdev_name": "ilog0", "nbd_device": "$work/ilog0.nbd"}}
  ]}
]}
JSON
"$tgt" -m 0x1 -r "$work/ilog.sock" -c "$work/ilog.json" 2>"$work/ilog.log" &
pids+=($!)
wait_for "$work/ilog0.nbd"
bytes=$(rpc "$work/ilog.sock" bdev_get_bdevs '{"name": "ilog0"}' |
  python3 -c 'import json,sys; b=json.load(sys.stdin)[0]; print(b["num_blocks"] * b["block_size"])')
read -r ilog_w ilog_r <<<"$(measure "nbd+unix:///?socket=$work/ilog0.nbd")"
stop_last

# qemu-storage-daemon serving node $1 of the blockdev options $2; prints the export's URI.
qsd() {
  qemu-storage-daemon $2 --nbd-server "addr.type=unix,addr.path=$work/qsd.sock" \
    --export "type=nbd,id=exp0,node-name=$1,name=disk,writable=on" 2>"$work/qsd.log" &
  pids+=($!)
  wait_for "$work/qsd.sock"
}

qemu-img create -q -f raw "$work/disk.raw" "$bytes"
qsd raw0 "--blockdev driver=file,node-name=file0,filename=$work/disk.raw --blockdev driver=raw,node-name=raw0,file=file0"
read -r raw_w raw_r <<<"$(measure "nbd+unix:///disk?socket=$work/qsd.sock")"
stop_last
rm -f "$work/disk.raw" "$work/qsd.sock"

qemu-img create -q -f qcow2 "$work/chain0.qcow2" "$bytes"
for i in $(seq 1 9); do
  qemu-img create -q -f qcow2 -b "$work/chain$((i - 1)).qcow2" -F qcow2 "$work/chain$i.qcow2"
done
qsd top "--blockdev driver=qcow2,node-name=top,file.driver=file,file.filename=$work/chain9.qcow2"
read -r qcow_w qcow_r <<<"$(measure "nbd+unix:///disk?socket=$work/qsd.sock")"
stop_last

echo "ilog0 on a ${base_mib} MiB malloc base: $((bytes >> 20)) MiB exported by each; fill, then ${runtime} s per run"
echo
echo "| system | randwrite IOPS | randread IOPS |"
echo "| --- | --- | --- |"
echo "| ilog_tgt (1 reactor core) | $ilog_w | $ilog_r |"
echo "| qemu-storage-daemon, raw file in /dev/shm | $raw_w | $raw_r |"
echo "| qemu-storage-daemon, 10-deep qcow2 chain in /dev/shm | $qcow_w | $qcow_r |"
echo
python3 - "$ilog_w" "$ilog_r" "$raw_w" "$raw_r" "$qcow_w" "$qcow_r" <<'PY'
import sys
iw, ir, rw, rr, qw, qr = map(float, sys.argv[1:])
print(f"ilog / raw: randwrite {iw / rw:.2f}x, randread {ir / rr:.2f}x")
print(f"ilog / qcow2 chain: randwrite {iw / qw:.2f}x, randread {ir / qr:.2f}x")
PY
