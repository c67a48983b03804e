#!/bin/sh
# SPDX-License-Identifier: MIT
# stoker-bench end to end: packs 4096 Fashion-MNIST records, then reads
# them with 0 and 2 workers, io_uring/pread/mmap, with augmentation: every
# run must print the same checksum of all delivered batches.
set -eu
src=/usr/share/datasets/fashion-mnist
if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
    echo "skip: no Fashion-MNIST in $src" >&2
    exit 77
fi
tools="$STK_BUILD_ROOT/tools"
dir=$(mktemp -d /tmp/stk-bench-e2e-XXXXXX)
trap 'rm -rf "$dir"' EXIT
"$tools/stoker-pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" \
    -o "$dir/fm" --limit 4096 -n 1000 -q
aug='crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'
ref=
for args in "--workers 0" "--workers 2 --prefetch 3" "--workers 2 --io pread" \
            "--workers 1 --io mmap" "--workers 0 --io pread"; do
    # shellcheck disable=SC2086
    out=$("$tools/stoker-bench" "$dir/fm" --batch 100 --epochs 2 --seed 7 --no-memcpy \
          --augment "$aug" --json $args)
    sum=$(echo "$out" | sed -n 's/.*"checksum":"\([0-9a-f]*\)".*/\1/p')
    samples=$(echo "$out" | sed -n 's/.*"samples":\([0-9]*\),.*/\1/p')
    echo "$args: checksum $sum, samples $samples"
    [ "$samples" = 8192 ] || { echo "FAIL: $samples samples, want 8192" >&2; exit 1; }
    [ -n "$sum" ] || { echo "FAIL: no checksum in: $out" >&2; exit 1; }
    if [ -z "$ref" ]; then ref=$sum; elif [ "$sum" != "$ref" ]; then
        echo "FAIL: checksum $sum differs from $ref" >&2
        exit 1
    fi
done
# A different seed gives different batches.
out=$("$tools/stoker-bench" "$dir/fm" --batch 100 --seed 8 --no-memcpy --augment "$aug" --json)
case "$out" in *"\"checksum\":\"$ref\""*) echo "FAIL: seed 8 gave seed 7's batches" >&2; exit 1 ;; esac
# Bad arguments: usage and exit status 2; a missing set: exit status 1.
if "$tools/stoker-bench" "$dir/fm" --io bogus >/dev/null 2>&1; then exit 1; else [ $? -eq 2 ]; fi
if "$tools/stoker-bench" "$dir/nope" --no-memcpy >/dev/null 2>&1; then exit 1; else [ $? -eq 1 ]; fi
echo ok
