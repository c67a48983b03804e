#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# stoker-enginebench beside competing CPU load, OpenMP spinning (libgomp's
# default, GOMP_SPINCOUNT=300000) against passive waiting (what the Stoker
# tools choose), at 1 and 2 threads, runs alternated so that drifting load
# hits both alike. Not a test. Usage:
#   tools/bench-contention.sh [BUILD] [BUSY_PROCESSES] [ROUNDS] [ITERS]
# defaults: build 2 3 6. Prints images/s per run, then the median per case.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build} busy=${2:-2} rounds=${3:-3} iters=${4:-6}
bench="$build/tools/stoker-enginebench"
[ -x "$bench" ] || { echo "no $bench: build first" >&2; exit 2; }

pids=()
stop() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq "$busy"); do
    yes >/dev/null &
    pids+=($!)
done

declare -A runs
for r in $(seq "$rounds"); do
    for t in 1 2; do
        for wait in spin passive; do
            if [ "$wait" = spin ]; then
                out=$(env -u OMP_WAIT_POLICY GOMP_SPINCOUNT=300000 "$bench" --threads "$t" --iters "$iters" --warmup 1)
            else
                out=$(env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$bench" --threads "$t" --iters "$iters" --warmup 1)
            fi
            ips=$(sed -n 's/.*: \([0-9.]*\) images\/s.*/\1/p' <<<"$out" | tail -1)
            echo "round $r threads $t wait $wait: $ips images/s"
            runs[$t.$wait]+="$ips "
        done
    done
done
echo "busy processes: $busy, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for t in 1 2; do
    for wait in spin passive; do
        # shellcheck disable=SC2086
        med=$(printf '%s\n' ${runs[$t.$wait]} | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
        echo "threads $t wait $wait: median $med images/s"
    done
done
