#!/bin/sh
# SPDX-License-Identifier: MIT
# Runs examples/custom_loop as docs/custom-loop.md does, on 512 samples
# (packed with --limit):
# one epoch, then a second run that must resume from its checkpoint and
# train the second. Needs Fashion-MNIST (Debian's dataset-fashion-mnist).
# Usage: run_custom_loop.sh CUSTOM_LOOP_BINARY
set -eu
bin=$1
src=${STK_FMNIST:-/usr/share/datasets/fashion-mnist}
pack="${STK_BUILD_ROOT:?}/tools/stoker-pack"
if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
    echo "skip: no Fashion-MNIST in $src (apt-get install dataset-fashion-mnist)" >&2
    exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" -o "$tmp/train" --limit 512 -q
"$pack" idx "$src/t10k-images-idx3-ubyte.gz" "$src/t10k-labels-idx1-ubyte.gz" -o "$tmp/test" --limit 512 -q
"$bin" "$tmp/train" "$tmp/test" "$tmp/ckpt" 1 | tee "$tmp/first.txt"
grep -q "^epoch 1: " "$tmp/first.txt"
grep -q "resumed" "$tmp/first.txt" && { echo "the first run resumed" >&2; exit 1; }
"$bin" "$tmp/train" "$tmp/test" "$tmp/ckpt" 2 | tee "$tmp/second.txt"
grep -q "^resumed run [0-9a-f]* at epoch 1 from " "$tmp/second.txt"
grep -q "^epoch 2: " "$tmp/second.txt"
if grep -q "^epoch 1: " "$tmp/second.txt"; then echo "the resumed run trained epoch 1 again" >&2; exit 1; fi
echo "custom_loop: trained, checkpointed and resumed"
