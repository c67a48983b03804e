#!/bin/sh
# SPDX-License-Identifier: MIT
# The loader-fed benchmark of tools/gpu-check.sh at a tiny size on the CPU:
# stoker-pack synth writes random u8 image shards (the same seed, the same
# bytes); stoker-enginebench --data trains from them through the loader's
# workers with crop + flip + per-channel normalize, its JSON line giving
# the data-wait share and the feed's host-to-device bytes (none on the
# CPU; the CPU posing as a device, STK_ENGINE_STAGED=1, copies every
# batch); ResNet-18 from 3x224x224 shards; and the errors of both tools.
set -eu
b="$STK_BUILD_ROOT/tools"
models="$STK_SOURCE_ROOT/models"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
has() { case "$1" in *"$2"*) ;; *) fail "'$1' lacks '$2'" ;; esac; }
num() { echo "$1" | sed -n "s/.*\"$2\":\([0-9.e+-]*\)[,}].*/\1/p"; }

# Shards: record count, shape, classes, shards; a seed repeats its bytes.
"$b/stoker-pack" synth -o "$tmp/s1" --records 40 --shape 3,36,36 --classes 10 -n 16 -q
"$b/stoker-pack" synth -o "$tmp/s2" --records 40 --shape 3,36,36 --classes 10 -n 16 -q
info=$("$b/stoker-pack" info "$tmp/s1")
has "$info" "image:u8[3,36,36] label:i64[]"
has "$info" "records: 40"
has "$info" "shards:  3"
# All but the last 16 bytes: the footer's set id (random per pack) and magic.
same() { n=$(($(wc -c < "$1") - 16)); cmp -s -n "$n" "$1" "$2"; }
same "$tmp/s1/shard-00001.stk" "$tmp/s2/shard-00001.stk" || fail "the same seed wrote other records"
"$b/stoker-pack" synth -o "$tmp/s3" --records 40 --shape 3,36,36 --classes 10 --seed 1 -n 16 -q
if same "$tmp/s1/shard-00001.stk" "$tmp/s3/shard-00001.stk"; then fail "seeds 0 and 1 wrote the same records"; fi
"$b/stoker-pack" verify -q "$tmp/s1" > /dev/null || fail "verify of the synthetic set"

cat > "$tmp/tiny.model" <<'M'
input name=x shape=3,32,32
conv2d name=c1 out=8 kernel=3 pad=1
batchnorm2d name=bn1
relu name=r1
maxpool2d name=p1 kernel=4
flatten name=f
linear name=fc out=10
cross_entropy name=loss
M
aug='crop:32|hflip|normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225'
eb() { "$b/stoker-enginebench" --model "$tmp/tiny.model" --batch 8 --threads 1 --train --json "$@"; }
# 3 epochs of 5 batches in 12 steps: the loader goes on into new epochs.
out=$(eb --iters 10 --warmup 2 --data "$tmp/s1" --augment "$aug" --workers 2)
has "$out" '"iters":10,"images_per_s":'
has "$out" '"input":"loader","workers":2,"data_wait":'
has "$out" '"h2d_bytes":0,'
has "$out" "no host-to-device copies"
w=$(num "$out" data_wait)
awk -v w="$w" 'BEGIN { exit !(w >= 0 && w < 1) }' || fail "data_wait $w"
# In process, and the CPU posing as a device: each timed batch copied once.
out=$(STK_ENGINE_STAGED=1 eb --iters 6 --warmup 1 --data "$tmp/s1" --augment "$aug" --workers 0 --profile)
has "$out" '"workers":0'
has "$out" "per-layer host time"
has "$out" '"h2d_bytes":'"$((6 * 8 * 3 * 32 * 32 * 4))"','
bps=$(num "$out" h2d_bytes_per_s)
awk -v v="$bps" 'BEGIN { exit !(v > 0) }' || fail "h2d_bytes_per_s $bps"
# bf16 from the workers: the feed converts (on the host here: the staged
# backend has no device conversion, so f32 crosses), the same keys.
out=$(STK_ENGINE_STAGED=1 eb --iters 2 --warmup 1 --data "$tmp/s1" --augment "$aug,dtype=bf16" --workers 1)
has "$out" '"h2d_bytes":'"$((2 * 8 * 3 * 32 * 32 * 4))"','
out=$(eb --iters 2 --warmup 1 --data "$tmp/s1" --augment "$aug,dtype=f16" --workers 1)
has "$out" '"input":"loader","workers":1'
# The resident batch: the same keys, nothing waited for or copied.
out=$(eb --iters 2 --warmup 1)
has "$out" '"input":"resident","workers":0,"data_wait":0.000000,"h2d_bytes":0,'
# ResNet-18 from 3x224x224 shards, the crop padded, as gpu-check runs it.
"$b/stoker-pack" synth -o "$tmp/r" --records 4 -q
out=$("$b/stoker-enginebench" --model "$models/resnet18.model" --batch 2 --iters 1 --warmup 0 --threads 2 --train \
    --data "$tmp/r" --augment 'crop:224,pad=16|hflip|normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225' \
    --workers 2 --json)
has "$out" '"batch":2,"device":"cpu","precision":"fp32","train":true'
has "$out" '"input":"loader","workers":2'

bad() { # exit status, expected message, then the command
    want_rc=$1 want=$2
    shift 2
    if err=$("$@" 2>&1 >/dev/null); then
        fail "$* ran"
    else
        rc=$?
    fi
    [ "$rc" -eq "$want_rc" ] || fail "$* exited $rc, want $want_rc: $err"
    has "$err" "$want"
}
bad 2 "missing -o DIR" "$b/stoker-pack" synth --records 3
bad 2 "--shape 3,8: want C,H,W" "$b/stoker-pack" synth -o "$tmp/x" --shape 3,8
bad 2 "--shape 3,0,8: want C,H,W" "$b/stoker-pack" synth -o "$tmp/x" --shape 3,0,8
bad 2 "--records" "$b/stoker-pack" synth -o "$tmp/x" --records 0
bad 2 "no input files" "$b/stoker-pack" synth -o "$tmp/x" extra
bad 1 "not empty" "$b/stoker-pack" synth -o "$tmp/s1" --records 2
bad 2 "--data feeds training steps" "$b/stoker-enginebench" --model "$tmp/tiny.model" --data "$tmp/s1"
bad 2 "--augment and --prefetch are --data's" "$b/stoker-enginebench" --model "$tmp/tiny.model" --train \
    --augment hflip
bad 1 "--data $tmp/nope" "$b/stoker-enginebench" --model "$tmp/tiny.model" --train --data "$tmp/nope"
# Shapes that do not reach the model's input (36x36 uncropped), named.
bad 1 "--data $tmp/s1" "$b/stoker-enginebench" --model "$tmp/tiny.model" --train --data "$tmp/s1" \
    --augment 'normalize:mean=0.5,std=0.2'
bad 1 "make no batch of 64" "$b/stoker-enginebench" --model "$tmp/tiny.model" --train --batch 64 \
    --data "$tmp/s1" --augment "$aug"
echo "enginebench data: ok"
