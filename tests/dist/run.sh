#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs tests/dist/dist_check as N real ranks and checks the outcome:
#   run.sh mpi|launch N MODE [--gpus G] [--fail] [--within S] [--expect REGEX]...
# mpi: under mpirun (MPI backend); launch: under stoker-launch (TCP, or
# STK_COMM_BACKEND). --fail: the job must fail (and every --expect regex
# appear in its output) within S seconds (default 60). --gpus G: skip when
# fewer than G GPUs are visible (no GPU at all fails under
# STK_REQUIRE_GPU=1, as every GPU test does). Either way no rank
# may be left running afterwards. Exit 77 passes a skip through.
set -u
kind=$1 n=$2 mode=$3
shift 3
fail=0 within=60 expects=() gpus=0
while [ $# -gt 0 ]; do
    case $1 in
        --fail) fail=1 ;;
        --within) within=$2; shift ;;
        --gpus) gpus=$2; shift ;;
        --expect) expects+=("$2"); shift ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
build=${STK_BUILD_ROOT:?}
if [ "$gpus" -gt 0 ]; then
    have=0
    [ -d /proc/driver/nvidia/gpus ] && have=$(ls /proc/driver/nvidia/gpus | wc -l)
    if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
        have=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
    fi
    if [ "$have" -lt "$gpus" ]; then
        echo "run.sh: SKIP: needs $gpus GPU(s), $have visible"
        if [ "$have" -eq 0 ] && [ "${STK_REQUIRE_GPU:-0}" = 1 ]; then
            echo "run.sh: FAIL: STK_REQUIRE_GPU=1 and no GPU"
            exit 1
        fi
        exit 77
    fi
fi
check=$build/tests/dist/dist_check
# Marks this run's processes, to find any left behind.
tag="stkdist-$$-$RANDOM"
# OpenMPI refuses to start as root (CI containers) unless both are set.
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# Containers often forbid process_vm_readv (CMA), which OpenMPI's shared
# memory transport uses for large messages by default.
export OMPI_MCA_btl_vader_single_copy_mechanism=${OMPI_MCA_btl_vader_single_copy_mechanism:-none}
case $kind in
    # OpenMPI unloads its plugins before LeakSanitizer looks, so their
    # allocations show as "<unknown module>", which no suppression can
    # name: under MPI, leaks are not checked (the TCP runs of the same
    # modes check ours).
    mpi) [ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"
         cmd=(mpirun --oversubscribe -np "$n" "$check" "$mode") ;;
    launch) cmd=("$build/tools/stoker-launch" --nproc-per-node "$n" --master-port 0 --grace 5 "$check" "$mode") ;;
    *) echo "run.sh: unknown kind $kind" >&2; exit 2 ;;
esac
out=$(mktemp)
trap 'rm -f "$out"' EXIT
t0=$(date +%s.%N)
timeout -k 5 $((within + 30)) env STK_DIST_TAG="$tag" "${cmd[@]}" >"$out" 2>&1
rc=$?
t1=$(date +%s.%N)
cat "$out"
elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
echo "run.sh: ${cmd[*]}: exit $rc after $elapsed s"

status=0
# No rank (nor anything it started) may outlive the job. Zombies have no
# environment left, so they do not count.
left=""
for i in $(seq 50); do
    left=$(grep -lsa "STK_DIST_TAG=$tag" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | tr '\n' ' ')
    [ -z "$left" ] && break
    sleep 0.1
done
if [ -n "$left" ]; then
    echo "run.sh: FAIL: processes left behind: $left"
    ps -o pid,stat,args -p ${left// /,} 2>/dev/null
    status=1
fi
if [ $rc -eq 77 ] && [ $fail -eq 0 ]; then
    [ $status -eq 0 ] && exit 77
fi
if [ $fail -eq 1 ]; then
    if [ $rc -eq 0 ]; then
        echo "run.sh: FAIL: the job succeeded, a failure was expected"
        status=1
    fi
    if awk -v e="$elapsed" -v w="$within" 'BEGIN { exit !(e > w) }'; then
        echo "run.sh: FAIL: took $elapsed s, more than $within s"
        status=1
    fi
    for re in "${expects[@]}"; do
        if ! grep -Eq -- "$re" "$out"; then
            echo "run.sh: FAIL: output lacks /$re/"
            status=1
        fi
    done
elif [ $rc -ne 0 ]; then
    echo "run.sh: FAIL: exit status $rc"
    status=1
fi
exit $status
