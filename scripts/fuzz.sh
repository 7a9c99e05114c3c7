#!/usr/bin/env bash
# Fuzzes every decoder of bytes that may be untrusted or torn (the targets
# of fuzz/, see fuzz/fuzz_targets/), each for [seconds-per-target] (default
# 30), after building them all once. Prints each target's executions. A
# crash fails the script, naming the target and the reproducer libFuzzer
# kept in fuzz/artifacts/<target>/; replay one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <reproducer>
#
# cargo-fuzz builds with nightly flags (sanitizer, coverage):
# RUSTC_BOOTSTRAP lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

echo "== fuzz: build"
cargo fuzz build

# What libFuzzer finds goes to fuzz/target/corpus/<target> (kept between
# runs, ignored by git); the committed seeds in fuzz/corpus/ stay as they
# are. The nbd target's sockets go to a scratch TMPDIR.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
for target in $(cargo fuzz list); do
    work="fuzz/target/corpus/$target"
    mkdir -p "$work"
    args=(-max_total_time="$seconds" -timeout=10)
    leaks=1
    case "$target" in
        # The server's threads free their last bits (thread-locals) as they
        # exit, after the input that ran them: LeakSanitizer races them.
        nbd) args+=(-dict=fuzz/dict/nbd.dict) leaks=0 ;;
        rpc_*) args+=(-dict=fuzz/dict/rpc.dict) ;;
    esac
    log="fuzz/target/$target.log"
    if ASAN_OPTIONS="detect_leaks=$leaks" TMPDIR="$scratch" \
        cargo fuzz run "$target" "$work" "fuzz/corpus/$target" -- "${args[@]}" >"$log" 2>&1; then
        # libFuzzer's last words: "Done <n> runs in <s> second(s)".
        echo "$target: $(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -n 1 | cut -d' ' -f2-)s"
    else
        tail -n 60 "$log"
        reproducer="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        echo "FUZZ FAILURE: $target: reproducer ${reproducer:-none (see $log)}"
        failed+=("$target")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets failed: ${failed[*]}"
    exit 1
fi
