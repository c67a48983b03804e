#!/bin/sh
# SPDX-License-Identifier: MIT
# Packs all 70,000 Fashion-MNIST images (train + test, from the gzip files of
# Debian's dataset-fashion-mnist) at several settings and prints pack time,
# shard sizes, compression ratio and verify time for each.
# Usage: tools/bench-pack-fmnist.sh BUILDDIR [OUTDIR]
set -eu
build=${1:?usage: $0 BUILDDIR [OUTDIR]}
out=${2:-$(mktemp -d)}
pack="$build/tools/stoker-pack"
d=/usr/share/datasets/fashion-mnist
now() { date +%s.%N; }
printf '%-22s %9s %12s %12s %8s %9s %s\n' setting pack_s raw_bytes stored_bytes ratio verify_s shards
for setting in "auto" "0" "1 --no-dict" "1 --dict" "3 --no-dict" "3 --dict" "9 --no-dict" "9 --dict" "19 --dict"; do
    level=${setting%% *}
    extra=${setting#"$level"}
    name=$(echo "$setting" | tr -d ' -')
    rm -rf "$out/$name"
    t0=$(now)
    # shellcheck disable=SC2086
    "$pack" idx $d/train-images-idx3-ubyte.gz $d/train-labels-idx1-ubyte.gz -o "$out/$name/train" -q --level $level $extra
    # shellcheck disable=SC2086
    "$pack" idx $d/t10k-images-idx3-ubyte.gz $d/t10k-labels-idx1-ubyte.gz -o "$out/$name/test" -q --level $level $extra
    t1=$(now)
    raw=0; stored=0; vt=0; shards=""
    for split in train test; do
        t2=$(now)
        v=$("$pack" verify -q "$out/$name/$split")
        t3=$(now)
        echo "$v" | grep -q "0 bad: OK" || { echo "verify failed: $v"; exit 1; }
        raw=$((raw + $(echo "$v" | sed -n 's/^bytes: *raw \([0-9]*\),.*/\1/p')))
        stored=$((stored + $(echo "$v" | sed -n 's/.*stored \([0-9]*\) .*/\1/p')))
        vt=$(echo "$vt + $t3 - $t2" | bc)
        shards="$shards $split:$(ls "$out/$name/$split"/*.stk | wc -l)x$(stat -c %s "$out/$name/$split/shard-00000.stk")B"
    done
    printf '%-22s %9.2f %12d %12d %8.4f %9.2f %s\n' "$setting" "$(echo "$t1 - $t0" | bc)" "$raw" "$stored" \
        "$(echo "scale=4; $stored / $raw" | bc)" "$vt" "$shards"
done
