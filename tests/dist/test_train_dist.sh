#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# stoker-train data-parallel on Fashion-MNIST (8192 training and 2000 test
# images, the reference CNN, 2 epochs): 2 CPU ranks under stoker-launch
# (per-rank batch 32) reach the test accuracy of 1 process with the same
# global batch (64) within 3 points; a 2-rank run whose rank 1 is killed
# (SIGKILL) in epoch 2 resumes from rank 0's last checkpoint and ends with
# exactly the evaluation of the uninterrupted run; resuming it as one process
# is refused, naming the world size; a 2-rank run with synchronized
# batchnorm reaches the 1-process accuracy too.
set -u
src=/usr/share/datasets/fashion-mnist
if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
    echo "skip: no Fashion-MNIST in $src (Debian's dataset-fashion-mnist)" >&2
    exit 77
fi
build=${STK_BUILD_ROOT:?}
root=${STK_SOURCE_ROOT:?}
tools=$build/tools
tmp=$(mktemp -d /tmp/stk-train-dist-XXXXXX)
lpid=
cleanup() {
    [ -n "$lpid" ] && kill -9 "$lpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

"$tools/stoker-pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" -o "$tmp/train" \
    --limit 8192 -q || exit 1
"$tools/stoker-pack" idx "$src/t10k-images-idx3-ubyte.gz" "$src/t10k-labels-idx1-ubyte.gz" -o "$tmp/test" \
    --limit 2000 -q || exit 1
common=(--set train_data="$tmp/train" --set test_data="$tmp/test" --set model="$root/models/fmnist-cnn.model" --set epochs=2 --set threads=1 --set workers=1
        --set progress=off)
train() { "$tools/stoker-train" "$root/configs/fmnist-cnn.conf" "${common[@]}" "$@"; }
launch2() { "$tools/stoker-launch" --nproc-per-node 2 --master-port 0 --grace 5 -- \
    "$tools/stoker-train" "$root/configs/fmnist-cnn.conf" "${common[@]}" "$@"; }
# "epoch N" line of a metrics file without the run id and the timings;
# "test": only the step and the evaluation (the training figures of an
# epoch that a failure cut may lack the step the failure interrupted).
figures() {
    local f
    f=$(grep "\"epoch\":$2," "$1" | sed 's/"run":"[0-9a-f]*",//; s/,"images_per_s".*//')
    [ "${3:-}" = test ] && f=$(echo "$f" | sed 's/"train_loss":[^,]*,"train_acc":[^,]*,//')
    echo "$f"
}
acc() { grep '"epoch":2,' "$1" | sed 's/.*"test_acc":\([0-9.e-]*\).*/\1/'; }

# 1. One process, batch 64; two ranks, batch 32 each.
train --set batch_size=64 --set run_dir="$tmp/one" >"$tmp/one.log" 2>&1 || { fail "1 rank"; cat "$tmp/one.log"; }
launch2 --set batch_size=32 --set run_dir="$tmp/two" >"$tmp/two.log" 2>&1 || { fail "2 ranks"; cat "$tmp/two.log"; }
grep -q "2 ranks (tcp, launched by torchrun)" "$tmp/two.log" || fail "2 ranks: no data-parallel banner"
[ -e "$tmp/two/checkpoints" ] && [ "$(ls "$tmp/two/checkpoints" | wc -l)" -eq 2 ] ||
    fail "2 ranks: checkpoints: $(ls "$tmp/two/checkpoints" 2>&1)"
a1=$(acc "$tmp/one/metrics.jsonl") a2=$(acc "$tmp/two/metrics.jsonl")
echo "test accuracy after 2 epochs: 1 rank (batch 64) $a1, 2 ranks (batch 32 each) $a2"
awk -v a="$a1" -v b="$a2" 'BEGIN { d = a - b; exit !(a > 0.5 && b > 0.5 && d < 0.03 && d > -0.03) }' ||
    fail "accuracies $a1 and $a2 differ by more than 3 points (or training failed)"

# 2. The same 2-rank run, checkpointing every 16 steps; rank 1 killed in
#    epoch 2 (steps 129-256); then resumed to the end.
kill_args=(--set batch_size=32 --set run_dir="$tmp/kill" --set checkpoint_steps=16 --set keep_last=0)
(exec "$tools/stoker-launch" --nproc-per-node 2 --master-port 0 --grace 5 -- \
    "$tools/stoker-train" "$root/configs/fmnist-cnn.conf" "${common[@]}" "${kill_args[@]}") >"$tmp/kill.log" 2>&1 &
lpid=$!
victim=
for _ in $(seq 1200); do
    if ls "$tmp/kill/checkpoints" 2>/dev/null | grep -q "ckpt-0*160-"; then
        # Rank 1: the launcher's child (its loader workers share its environment).
        for p in $(awk -v pp="$lpid" '$4 == pp { print $1 }' /proc/[0-9]*/stat 2>/dev/null); do
            tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx RANK=1 && victim=$p
        done
        break
    fi
    kill -0 "$lpid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$victim" ]; then
    fail "no checkpoint at step 160, or no rank 1 to kill"
    cat "$tmp/kill.log"
else
    kill -9 "$victim"
fi
wait "$lpid"
rc=$?
lpid=
[ $rc -ne 0 ] || fail "the killed run exited 0"
grep -q "rank 1 (local 1) was killed by signal 9 (SIGKILL)" "$tmp/kill.log" || { fail "launcher did not name rank 1"; tail "$tmp/kill.log"; }
latest=$(ls "$tmp/kill/checkpoints" | sort | tail -1)
echo "killed at: $(grep -c . "$tmp/kill/metrics.jsonl") epoch(s) done, latest checkpoint $latest"

# 3. That run of 2 ranks cannot resume as 1 process (each rank's data
#    depends on the world size).
train "${kill_args[@]}" --resume "$tmp/kill" >"$tmp/world.log" 2>&1
rc=$?
[ $rc -ne 0 ] || fail "a 1-process resume of a 2-rank run ran"
grep -q "was trained by 2 ranks, this is 1: resume it with 2" "$tmp/world.log" || fail "world size: $(cat "$tmp/world.log")"

launch2 "${kill_args[@]}" --resume "$tmp/kill" >"$tmp/resume.log" 2>&1 || { fail "resume"; cat "$tmp/resume.log"; }
grep -q "resuming run" "$tmp/resume.log" || fail "resume: no 'resuming run' line"
for e in 1 2; do
    part=; [ $e = 2 ] && part=test
    want=$(figures "$tmp/two/metrics.jsonl" $e $part) got=$(figures "$tmp/kill/metrics.jsonl" $e $part)
    if [ -z "$want" ] || [ "$want" != "$got" ]; then
        fail "epoch $e after the kill and resume differs from the uninterrupted run:"
        echo "  uninterrupted: $want"
        echo "  resumed:       $got"
    fi
done

# 4. Synchronized batchnorm (sync_bn = on): the same 2-rank run reaches the
#    1-process accuracy too, and says it synchronizes.
launch2 --set batch_size=32 --set run_dir="$tmp/sync" --set sync_bn=on >"$tmp/sync.log" 2>&1 ||
    { fail "2 ranks, sync_bn"; cat "$tmp/sync.log"; }
grep -q "2 ranks (tcp, launched by torchrun), .*, synchronized batchnorm" "$tmp/sync.log" ||
    fail "sync_bn: no data-parallel banner naming it"
a3=$(acc "$tmp/sync/metrics.jsonl")
echo "test accuracy after 2 epochs: 2 ranks with sync_bn $a3"
awk -v a="$a1" -v b="$a3" 'BEGIN { d = a - b; exit !(a > 0.5 && b > 0.5 && d < 0.03 && d > -0.03) }' ||
    fail "sync_bn: accuracies $a1 and $a3 differ by more than 3 points (or training failed)"

[ $failures -eq 0 ] && echo "test_train_dist: all passed"
exit $((failures > 0))
