#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# stoker-launch with shell ranks: the variables each rank gets, prefixed
# output and per-rank logs, exit statuses, a rank that cannot start,
# SIGTERM passed on, SIGKILL after the grace period, a failed rank's
# workers stopped with it, GPU counting, and bad options.
set -u
launch=${STK_BUILD_ROOT:?}/tools/stoker-launch
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
# expect FILE REGEX: the file must hold a line matching REGEX
expect() { grep -Eq -- "$2" "$1" || { fail "$(basename "$1") lacks /$2/"; sed 's/^/    /' "$1"; }; }

# 1. Variables, prefixes, and the streams kept apart.
"$launch" --nproc-per-node 3 --master-port 0 -- sh -c \
    'echo "env $RANK $LOCAL_RANK $WORLD_SIZE $LOCAL_WORLD_SIZE $GROUP_RANK $MASTER_ADDR $MASTER_PORT $STK_CUDA_DEVICE"; echo "to stderr $RANK" >&2' \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 0 ] || fail "three good ranks: exit $rc"
for r in 0 1 2; do
    expect "$tmp/out" "^\[rank $r\] env $r $r 3 3 0 127\.0\.0\.1 [0-9]+ $r$"
    expect "$tmp/err" "^\[rank $r\] to stderr $r$"
done
port=$(sed -n 's/.* 127\.0\.0\.1 \([0-9]*\) .*/\1/p' "$tmp/out" | sort -u)
[ "$(echo "$port" | wc -l)" -eq 1 ] && [ "$port" -gt 0 ] || fail "ranks saw different ports: $port"

# 2. Several nodes: this launcher's ranks are 2 and 3 of 4; no prefix; logs.
"$launch" --nnodes 2 --node-rank 1 --nproc_per_node=2 --master-addr 10.9.8.7 --master-port 1234 \
    --no-prefix --log-dir "$tmp/logs" -- sh -c 'echo "r $RANK l $LOCAL_RANK w $WORLD_SIZE $MASTER_ADDR:$MASTER_PORT"; echo "e $RANK" >&2' \
    >"$tmp/out" 2>"$tmp/err"
[ $? -eq 0 ] || fail "two-node launcher: exit $?"
expect "$tmp/out" "^r 2 l 0 w 4 10\.9\.8\.7:1234$"
expect "$tmp/out" "^r 3 l 1 w 4 10\.9\.8\.7:1234$"
expect "$tmp/logs/rank3.log" "^r 3 l 1 w 4"
expect "$tmp/logs/rank3.log" "^e 3$"
[ -e "$tmp/logs/rank0.log" ] && fail "rank0.log written by the node that runs ranks 2 and 3"

# 3. A rank that exits 5: the launcher exits 5, names it, repeats its tail.
"$launch" --nproc-per-node 3 --master-port 0 --tail 2 -- sh -c \
    'if [ $RANK = 1 ]; then echo one; echo two; echo three; exit 5; fi; sleep 30' >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 5 ] || fail "rank exits 5: launcher exit $rc"
expect "$tmp/err" "rank 1 \(local 1\) exited with status 5; (stopping the other ranks|the other ranks were stopped)"
expect "$tmp/err" "last 2 lines of rank 1:"
expect "$tmp/err" "^  \| three$"
grep -q "^  | one$" "$tmp/err" && fail "tail has more than 2 lines"
expect "$tmp/err" "rank 0 was killed by signal 15 \(SIGTERM\)"
expect "$tmp/err" "failed: rank 1 exited with status 5"

# 4. A program that does not exist.
"$launch" --nproc-per-node 2 --master-port 0 -- /nonexistent/prog >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc -eq 127 ] || fail "missing program: exit $rc"
expect "$tmp/err" "cannot run '/nonexistent/prog': No such file or directory"

# 5. SIGTERM to the launcher reaches every rank, which may finish cleanly.
tag="stklaunch-$$-$RANDOM"
env STK_LAUNCH_TAG=$tag "$launch" --nproc-per-node 2 --master-port 0 -- sh -c \
    'trap "echo got TERM; exit 0" TERM; echo ready; while :; do sleep 0.05; done' >"$tmp/out" 2>"$tmp/err" &
lpid=$!
for i in $(seq 100); do [ "$(grep -c ready "$tmp/out")" -eq 2 ] && break; sleep 0.05; done
kill -TERM $lpid
wait $lpid
rc=$?
[ $rc -eq 143 ] || fail "SIGTERM to the launcher: exit $rc"
expect "$tmp/err" "got SIGTERM, passing it to the ranks"
[ "$(grep -c 'got TERM' "$tmp/out")" -eq 2 ] || fail "not every rank got SIGTERM: $(cat "$tmp/out")"

# 6. Ranks that ignore SIGTERM are killed after the grace period; a failed
#    rank's worker (its background child) does not outlive it.
t0=$(date +%s)
env STK_LAUNCH_TAG=$tag "$launch" --nproc-per-node 3 --master-port 0 --grace 1 -- sh -c \
    'trap "" TERM; if [ $RANK = 0 ]; then sleep 0.3; exit 1; fi; if [ $RANK = 2 ]; then sleep 1000 & fi; sleep 1000' \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
t1=$(date +%s)
[ $rc -eq 1 ] || fail "grace: exit $rc"
[ $((t1 - t0)) -lt 20 ] || fail "grace: took $((t1 - t0)) s"
expect "$tmp/err" "2 ranks still running after 1 s: SIGKILL"
expect "$tmp/err" "rank 2 was killed by signal 9 \(SIGKILL\)"
sleep 0.3
left=$(grep -lsa "STK_LAUNCH_TAG=$tag" /proc/[0-9]*/environ | cut -d/ -f3 | tr '\n' ' ')
[ -z "$left" ] || { fail "processes left behind: $left"; ps -o pid,stat,args -p "${left// /,}"; }

# 7. GPUs counted from CUDA_VISIBLE_DEVICES (no CUDA library involved).
CUDA_VISIBLE_DEVICES=0,1 "$launch" --nproc-per-node gpu --master-port 0 -- sh -c 'echo $STK_CUDA_DEVICE' >"$tmp/out" 2>&1
expect "$tmp/out" "^\[rank 1\] 1$"
CUDA_VISIBLE_DEVICES= "$launch" --nproc-per-node gpu -- true >"$tmp/out" 2>&1
[ $? -eq 2 ] || fail "no GPU: exit status"
expect "$tmp/out" "no GPU is visible"

# 8. Bad options: exit 2 with the option named.
check_bad() {
    local want=$1
    shift
    "$launch" "$@" >"$tmp/out" 2>&1
    local rc=$?
    [ $rc -eq 2 ] || fail "$*: exit $rc"
    expect "$tmp/out" "$want"
}
check_bad "--nproc-per-node: 0 is outside" --nproc-per-node 0 true
check_bad "--nproc-per-node: 'x' is not a whole number" --nproc-per-node x true
check_bad "--node-rank 2 is not below --nnodes 2" --nnodes 2 --node-rank 2 true
check_bad "works on one node only" --nnodes 2 --master-port 0 true
check_bad "no program to run" --nproc-per-node 2
check_bad "unknown option '--bogus'" --bogus true
check_bad "--master-port needs a value" --master-port

[ $failures -eq 0 ] && echo "test_launch: all passed"
exit $((failures > 0))
