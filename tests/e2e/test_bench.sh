#!/bin/sh
# SPDX-License-Identifier: MIT
# stoker-bench end to end: packs 4096 Fashion-MNIST records raw and
# compressed, then reads them with 0, 1 and 2 workers, mmap (auto for raw)/
# io_uring (auto for compressed)/pread, with augmentation: every run must
# print the same checksum of all delivered batches.
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
# The same records zstd-compressed: STK_IO_AUTO reads those with io_uring
# (or pread where refused) instead of mapping them as the raw set above.
"$tools/stoker-pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" \
    -o "$dir/fmz" --limit 4096 -n 1000 -l 3 -q
aug='crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'
ref=
for args in "--workers 0" "--workers 2 --prefetch 3" "--workers 2 --io pread" \
            "--workers 1 --io mmap" "--workers 0 --io pread" "z --workers 0" \
            "z --workers 2" "z --workers 1 --io pread"; do
    set -- $args
    set_dir=$dir/fm
    if [ "$1" = z ]; then set_dir=$dir/fmz; shift; args="$*"; fi
    # shellcheck disable=SC2086
    out=$("$tools/stoker-bench" "$set_dir" --batch 100 --epochs 2 --seed 7 --no-memcpy --checksum \
          --augment "$aug" --json $args)
    sum=$(echo "$out" | sed -n 's/.*"checksum":"\([0-9a-f]*\)".*/\1/p')
    samples=$(echo "$out" | sed -n 's/.*"samples":\([0-9]*\),.*/\1/p')
    echo "$set_dir $args: checksum $sum, samples $samples, io $(echo "$out" | sed -n 's/.*"io":"\([a-z]*\)".*/\1/p')"
    [ "$samples" = 8192 ] || { echo "FAIL: $samples samples, want 8192" >&2; exit 1; }
    [ -n "$sum" ] || { echo "FAIL: no checksum in: $out" >&2; exit 1; }
    if [ -z "$ref" ]; then ref=$sum; elif [ "$sum" != "$ref" ]; then
        echo "FAIL: checksum $sum differs from $ref" >&2
        exit 1
    fi
done
# A different seed gives different batches.
out=$("$tools/stoker-bench" "$dir/fm" --batch 100 --seed 8 --no-memcpy --checksum --augment "$aug" --json)
case "$out" in *"\"checksum\":\"$ref\""*) echo "FAIL: seed 8 gave seed 7's batches" >&2; exit 1 ;; esac
# Bad arguments: usage and exit status 2; a missing set: exit status 1.
if "$tools/stoker-bench" "$dir/fm" --io bogus >/dev/null 2>&1; then exit 1; else [ $? -eq 2 ]; fi
if "$tools/stoker-bench" "$dir/nope" --no-memcpy >/dev/null 2>&1; then exit 1; else [ $? -eq 1 ]; fi
echo ok
