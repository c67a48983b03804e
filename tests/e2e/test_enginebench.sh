#!/bin/sh
# SPDX-License-Identifier: MIT
# stoker-enginebench as tools/gpu-check.sh runs it, at a small size on the
# CPU: training steps of fmnist-cnn and ResNet-18 (models/resnet18.model)
# with one JSON line each, TF32 computed as FP32 and BF16/FP16 emulated on
# the CPU, eval forwards (--eval, fused), and the option errors (exit 2)
# and refusals (exit 1, the engine's message).
set -eu
eb="$STK_BUILD_ROOT/tools/stoker-enginebench"
models="$STK_SOURCE_ROOT/models"
fail() { echo "FAIL: $*" >&2; exit 1; }
has() { case "$1" in *"$2"*) ;; *) fail "'$1' lacks '$2'" ;; esac; }

out=$("$eb" --model "$models/fmnist-cnn.model" --batch 4 --iters 2 --warmup 1 --threads 1 --train --json)
has "$out" '"batch":4,"device":"cpu","precision":"fp32","train":true,"cuda_graph":false,"graph_replays":0,"iters":2,"images_per_s":'
# --cuda-graph on the CPU: no graphs there, the steps run as usual.
out=$("$eb" --model "$models/fmnist-cnn.model" --batch 4 --iters 1 --warmup 2 --threads 1 --train --cuda-graph --json)
has "$out" '"train":true,"cuda_graph":false,"graph_replays":0'
out=$("$eb" --model "$models/fmnist-cnn.model" --batch 4 --iters 1 --warmup 0 --threads 1 --precision tf32 --json)
has "$out" '"precision":"fp32","train":false'
# bf16 and fp16: emulated on the CPU (the GPU's roundings around fp32).
out=$("$eb" --model "$models/fmnist-cnn.model" --batch 4 --iters 1 --warmup 0 --threads 1 --precision bf16 --json)
has "$out" '"precision":"bf16","train":false'
out=$("$eb" --model "$models/fmnist-cnn.model" --batch 4 --iters 1 --warmup 1 --threads 1 --precision fp16 --train --json)
has "$out" '"precision":"fp16","train":true'
# --eval: eval-mode forwards, fmnist-cnn's four conv+batchnorm+relu chains
# fused (STK_NO_FUSION=1: none).
out=$("$eb" --model "$models/fmnist-cnn.model" --batch 3 --iters 2 --warmup 1 --threads 1 --eval --json)
has "$out" "eval forward on cpu"
has "$out" "eval fusion: 4 of 4 conv+batchnorm chains fused (0 fell back)"
has "$out" '"eval":true,"fused":4,"fusion_chains":4,"fusion_fallbacks":0}'
out=$(STK_NO_FUSION=1 "$eb" --model "$models/fmnist-cnn.model" --batch 3 --iters 1 --warmup 0 --threads 1 --eval --json)
has "$out" '"eval":true,"fused":0,"fusion_chains":4,"fusion_fallbacks":0}'
out=$("$eb" --model "$models/fmnist-cnn.model" --batch 3 --iters 1 --warmup 0 --threads 1 --eval --precision bf16 \
    --json)
has "$out" '"precision":"bf16","train":false'
has "$out" '"eval":true,"fused":4'
# ResNet-18: torchvision's parameter count, one training step.
out=$("$eb" --model "$models/resnet18.model" --batch 1 --iters 1 --warmup 0 --threads 2 --train --summary --json)
has "$out" "Total params: 11,689,512"
has "$out" '"model":"'"$models"'/resnet18.model","batch":1,"device":"cpu","precision":"fp32","train":true'
loss=$(echo "$out" | sed -n 's/.*"loss":\([0-9.]*\),.*/\1/p')
[ -n "$loss" ] || fail "no finite loss in: $out"

bad() { # exit status, expected message, then the arguments
    want_rc=$1 want=$2
    shift 2
    if err=$("$eb" --model "$models/fmnist-cnn.model" --batch 2 --iters 1 "$@" 2>&1 >/dev/null); then
        fail "$* ran"
    else
        rc=$?
    fi
    [ "$rc" -eq "$want_rc" ] || fail "$* exited $rc, want $want_rc: $err"
    has "$err" "$want"
}
bad 2 "--device gpu: not cpu, cuda or cuda:N" --device gpu
bad 2 "--device cuda:x: not cpu, cuda or cuda:N" --device cuda:x
bad 2 "--precision fp64: not fp32, tf32, bf16 or fp16" --precision fp64
bad 2 "usage:" --batch 0
bad 2 "usage:" --iters 2x
bad 2 "usage:" extra
bad 1 "optimizer" --train --optimizer "sgd:speed=3"
bad 2 "--eval times forwards" --eval --train
if [ "$(nvidia-smi -L 2>/dev/null | wc -l)" = 0 ]; then
    bad 1 "CUDA" --device cuda
fi
echo "enginebench: ok"
