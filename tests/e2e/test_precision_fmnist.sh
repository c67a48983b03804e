#!/bin/sh
# SPDX-License-Identifier: MIT
# fmnist-cnn (models/fmnist-cnn.model, the reference recipe's augmentation,
# optimizer family and batchnorm/dropout) trained on the real Fashion-MNIST
# in fp32, bf16 and fp16 (bf16/fp16 emulated on the CPU: the GPU's
# roundings around fp32 kernels; fp16 with dynamic loss scaling).
#
# What is compared, and why it is not the issue's 0.3 point: the issue's
# bound is for the full recipe (configs/fmnist-cnn.conf, 15 epochs on
# 60000 images, ~93.5%), which takes hours on this CI's two cores and was
# not run. The CI run (SETTINGS below) is the recipe's model, augmentation
# and SGD with Nesterov momentum at lr 0.01, cosine to 0, batch 64, one
# epoch over the first 6144 training images, evaluated on the first 5000
# test images, seed 1, 2 threads; fp32 ends near 77%. Such a short run
# stops where accuracy still moves fast, and any change in the arithmetic
# (bf16, fp16, or fp32 summed in another order) puts SGD on another
# trajectory. Measured on this machine (fp32 minus half precision, points):
#   seed 1: bf16 -0.18  fp16 -0.44   (this test: fp32 76.88, bf16 77.06,
#                                     fp16 77.32)
#   seed 2: bf16 -0.14  fp16  0.00
#   seed 3: bf16 -0.22  fp16 -0.26
# so here half precision ended at or above fp32, inside the issue's 0.3.
# The same run over 8192 images and the whole test set, seeds 1-3 with 1
# and 2 threads, gave differences from -0.50 to +0.44 (fp16, seed 2),
# averaging about zero with a spread of about 0.25, and fp32 against
# itself with 1 and 2 threads differed by 0.23 (seed 1): one short run can
# land 0.4 below fp32 by chance, so a 0.3 bound would fail on noise on
# another CPU (whose kernels sum in another order). The check is
# one-sided, MAX_DROP = 1.0 point below fp32 (four times that spread;
# being better passes): training in half precision as a whole loses no
# accuracy beyond a short run's noise. The roundings themselves are
# checked exactly, op by op, in tests/unit/test_amp.c.
#
# With "quick" (the sanitizer build) a smaller run checks only that each
# precision trains (accuracy well above chance) and that fp16 trained
# through loss scaling, not the comparison.
set -eu
src=${STK_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
train="$STK_BUILD_ROOT/tools/stoker-train"
pack="$STK_BUILD_ROOT/tools/stoker-pack"
fail() { echo "FAIL: $*" >&2; exit 1; }
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    if [ ! -f "$src/$f" ]; then
        echo "SKIP: $src/$f not found (apt install dataset-fashion-mnist)" >&2
        exit 77
    fi
done
tmp=$(mktemp -d /tmp/stk-precision-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
"$pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" -o "$tmp/train" >/dev/null 2>&1 ||
    fail "stoker-pack of the training set"
"$pack" idx "$src/t10k-images-idx3-ubyte.gz" "$src/t10k-labels-idx1-ubyte.gz" -o "$tmp/test" >/dev/null 2>&1 ||
    fail "stoker-pack of the test set"

# SETTINGS
if [ "${1:-}" = quick ]; then
    limits="--set train_limit=1024 --set test_limit=1000"
else
    limits="--set train_limit=6144 --set test_limit=5000"
fi

acc() { # precision -> final test accuracy in percent
    # shellcheck disable=SC2086
    out=$("$train" "$STK_SOURCE_ROOT/configs/fmnist-cnn.conf" --set train_data="$tmp/train" --set test_data="$tmp/test" \
        --set model="$STK_SOURCE_ROOT/models/fmnist-cnn.model" --set run_dir= --set progress=off --set workers=0 \
        --set threads=2 --set epochs=1 --set batch_size=64 --set scheduler=cosine:eta_min=0 \
        --set optimizer=sgd:lr=0.01,momentum=0.9,nesterov=1,weight_decay=5e-4 --set seed=1 --set precision="$1" \
        $limits --json 2>"$tmp/err") || fail "precision $1: $(cat "$tmp/err")"
    case "$out" in *"\"precision\":\"$1\""*) ;; *) fail "precision $1: the summary says otherwise: $out" ;; esac
    if [ "$1" = fp16 ]; then
        case "$out" in *'"loss_scaling":true'*) ;; *) fail "fp16 without loss scaling: $out" ;; esac
    fi
    a=$(echo "$out" | sed -n 's/.*"final_test_acc":\([0-9.]*\).*/\1/p' | tail -1)
    [ -n "$a" ] || fail "precision $1: no accuracy in: $out"
    awk -v a="$a" 'BEGIN { printf "%.2f\n", 100 * a }'
}

fp32=$(acc fp32)
bf16=$(acc bf16)
fp16=$(acc fp16)
echo "test accuracy: fp32 $fp32%, bf16 $bf16%, fp16 $fp16%"
if [ "${1:-}" = quick ]; then
    for a in "$fp32" "$bf16" "$fp16"; do
        awk -v a="$a" 'BEGIN { exit !(a >= 40) }' || fail "an accuracy of $a% after the quick run (chance is 10%)"
    done
    echo "precision_fmnist (quick): ok"
    exit 0
fi
MAX_DROP=1.0 # points; see the top of this file
for p in bf16 fp16; do
    eval "a=\$$p"
    awk -v a="$a" -v b="$fp32" -v d="$MAX_DROP" 'BEGIN { exit !(a >= b - d) }' ||
        fail "$p reached $a%, more than $MAX_DROP point below fp32's $fp32%"
done
echo "precision_fmnist: ok"
