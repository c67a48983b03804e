#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# DDP's overlap on 2 CPU ranks with the reference model: per bucket size,
# alternating A/B runs of one process without a communicator, 2 ranks with
# overlap, 2 ranks reducing only after backward (MPI and TCP), REPS times.
# Prints rank 0's line of each; read "exposed" against the no-overlap run
# and ms/step against the single process (same per-rank batch).
#   tests/dist/bench-overlap.sh [BUILD [BATCH [STEPS [REPS [BUCKETS...]]]]]
set -u
build=${1:-build} batch=${2:-64} steps=${3:-20} reps=${4:-3}
shift $(($# < 4 ? $# : 4))
buckets=("$@")
[ ${#buckets[@]} -eq 0 ] && buckets=(0 131072)
model=$(dirname "$0")/../../models/fmnist-cnn.model
check=$build/tests/dist/dist_check
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
echo "# $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg); batch $batch per rank, $steps steps, 1 thread per rank"
for rep in $(seq "$reps"); do
    "$check" bench "$model" "$batch" "$steps" 1 none | sed 's/^/one: /'
    for bb in "${buckets[@]}"; do
        for ov in 1 0; do
            mpirun --oversubscribe -np 2 "$check" bench "$model" "$batch" "$steps" $ov "$bb" | grep "rank 0" | sed 's/^/mpi: /'
            "$build/tools/stoker-launch" --nproc-per-node 2 --master-port 0 --no-prefix \
                "$check" bench "$model" "$batch" "$steps" $ov "$bb" | grep "rank 0" | sed 's/^/tcp: /'
        done
    done
done
