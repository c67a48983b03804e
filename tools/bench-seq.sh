#!/bin/sh
# SPDX-License-Identifier: MIT
# Training speed of the two sequence reference tasks, Stoker (stoker-train)
# against PyTorch (tools/train_seq_torch.py) on the same config, data,
# thread count and OpenMP wait policy, in alternating short runs (one
# epoch over the first N training samples each): images/s for
# configs/fmnist-lstm.conf, characters/s for configs/charlm.conf, each
# run's training phase only. Prints every run, then the medians and their
# ratio. Needs the packed data (./run.sh; tools/prepare-charlm.sh).
#   tools/bench-seq.sh [ROUNDS] [BUILD]
set -eu
rounds=${1:-3}
build=${2:-build}
threads=${THREADS:-2}
fm_limit=${FM_LIMIT:-12800}
lm_limit=${LM_LIMIT:-20000}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
torch_env="LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

num() { # the number after "key": in a JSON line
    sed -n "s/.*\"$1\": *\([0-9.eE+-]*\).*/\1/p" | tail -1
}

median() {
    sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

run_pair() { # task config limit stoker_key torch_key
    task=$1 conf=$2 limit=$3
    for r in $(seq "$rounds"); do
        s=$("$build/tools/stoker-train" "$conf" --set epochs=1 --set train_limit="$limit" --set threads="$threads" \
            --set checkpoint_dir="$out/$task-$r/ck" --set metrics="$out/$task-$r/m.jsonl" --set progress=off \
            --json 2>/dev/null | num "$4")
        t=$(env $torch_env /usr/bin/python3 tools/train_seq_torch.py "$conf" --set epochs=1 \
            --set train_limit="$limit" --set threads="$threads" --json 2>/dev/null | num "$5")
        echo "$task round $r: stoker $s, pytorch $t"
        echo "$s" >> "$out/$task.s"
        echo "$t" >> "$out/$task.t"
    done
    ms=$(median < "$out/$task.s")
    mt=$(median < "$out/$task.t")
    echo "$task: median stoker $ms, pytorch $mt, ratio $(awk -v a="$ms" -v b="$mt" 'BEGIN { printf "%.2f", a / b }')"
}

echo "threads $threads, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, $rounds alternating rounds"
run_pair fmnist-lstm configs/fmnist-lstm.conf "$fm_limit" images_per_s samples_per_s
run_pair charlm configs/charlm.conf "$lm_limit" chars_per_s samples_per_s
