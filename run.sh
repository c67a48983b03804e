#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The Quick start in one script, for a fresh Debian 12 machine:
#   ./run.sh        install what is missing, build, pack Fashion-MNIST and
#                   train the reference model (extra args go to stoker-train)
#   ./run.sh test   install what is missing, build, run every test
# Set STK_BUILD (default: build) to use another build folder, and
# STK_NO_INSTALL=1 to skip the package step.
set -euo pipefail
cd "$(dirname "$0")"

BUILD=${STK_BUILD:-build}
PACKAGES=(build-essential pkg-config meson ninja-build liburing-dev libzstd-dev
          libcmocka-dev libdnnl-dev libopenmpi-dev openmpi-bin zlib1g-dev
          dataset-fashion-mnist wamerican python3 python3-dev python3-numpy python3-pytest)

install_packages() {
    [ "${STK_NO_INSTALL:-0}" = 1 ] && return 0
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    echo "run.sh: installing ${missing[*]}" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

build() {
    if [ ! -f "$BUILD/build.ninja" ]; then
        meson setup "$BUILD" -Dwerror=true --buildtype=release
    fi
    ninja -C "$BUILD"
}

main_job() {
    local data=${STK_DATA:-data}
    local src=/usr/share/datasets/fashion-mnist
    mkdir -p "$data"
    # A pack appears whole (manifest included) or not at all; --force
    # replaces what an older, interrupted version may have left.
    if [ ! -f "$data/fmnist-train/shard.manifest" ]; then
        "$BUILD/tools/stoker-pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" -o "$data/fmnist-train" --force
    fi
    if [ ! -f "$data/fmnist-test/shard.manifest" ]; then
        "$BUILD/tools/stoker-pack" idx "$src/t10k-images-idx3-ubyte.gz" "$src/t10k-labels-idx1-ubyte.gz" -o "$data/fmnist-test" --force
    fi
    "$BUILD/tools/stoker-pack" verify "$data/fmnist-train"
    "$BUILD/tools/stoker-pack" verify "$data/fmnist-test"
    # The reference recipe: fmnist-cnn on a GPU when the build and the
    # machine have one (device = auto), else on the CPU. Extra arguments go
    # to stoker-train, e.g. --set epochs=2 or --set device=cpu.
    "$BUILD/tools/stoker-train" configs/fmnist-cnn.conf \
        --set train_data="$data/fmnist-train" --set test_data="$data/fmnist-test" "$@"
}

case "${1:-run}" in
    run)  shift || true; install_packages; build; main_job "$@" ;;
    test) install_packages; build; meson test -C "$BUILD" --print-errorlogs --num-processes "${STK_TEST_JOBS:-2}" ;;
    *)    echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac
