#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One-call check for a lent GPU machine: finds or unpacks the build
# dependencies, builds with CUDA required, runs the whole suite with
# STK_REQUIRE_GPU=1 (so GPU tests fail instead of skipping), then the
# benchmarks that have a PyTorch counterpart. Results land in $OUT (or
# ./gpu-check-out). The device machine reaches no package registry: fetch
# the .debs here first with `tools/gpu-check.sh --download` and carry
# .debs/ (see README, "GPU check").
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
DEBS=(liburing-dev liburing2 libzstd-dev libcmocka-dev libcmocka0 libdnnl-dev libdnnl2 zlib1g-dev)

if [ "${1:-}" = --download ]; then
    mkdir -p .debs && (cd .debs && apt-get download "${DEBS[@]}")
    exit $?
fi

exec > >(tee "$OUT/gpu-check.log") 2>&1
nvidia-smi || echo "gpu-check: nvidia-smi not found"

# Unpack carried .debs into a private prefix when the system lacks a header.
need_prefix=0
for h in liburing.h zstd.h cmocka.h oneapi/dnnl/dnnl.h zlib.h; do
    [ -f "/usr/include/$h" ] || need_prefix=1
done
if [ $need_prefix = 1 ]; then
    [ -d .debs ] || { echo "gpu-check: missing headers and no .debs/ carried"; exit 1; }
    PREFIX=$PWD/.deps
    for d in .debs/*.deb; do dpkg -x "$d" "$PREFIX"; done
    export PKG_CONFIG_PATH=$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}
    export CPATH=$PREFIX/usr/include:${CPATH:-}
    export LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu:${LIBRARY_PATH:-}
    export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    # pkg-config files carry prefix=/usr: point them at the unpacked tree.
    sed -i "s|^prefix=/usr|prefix=$PREFIX/usr|" "$PREFIX"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc 2>/dev/null
fi

rc=0
meson setup build-gpu -Dwerror=true -Dcuda=enabled --buildtype=release || exit 1
ninja -C build-gpu || exit 1
STK_REQUIRE_GPU=1 meson test -C build-gpu --print-errorlogs --num-processes 8 || rc=1
cp build-gpu/meson-logs/testlog.txt "$OUT/" 2>/dev/null
# The loader's pinned arena on the device: H2D bandwidth from the slots.
build-gpu/tests/unit/test_loader_cuda 2>&1 | tee "$OUT/loader_cuda.txt" || rc=1

# Benchmarks, each beside its PyTorch reference in the same run. There is
# no CUDA engine backend yet, so these are the CPU numbers of the device
# machine (16 cores): threads 16 on both sides.
TORCH_LD="/usr/lib/x86_64-linux-gnu/openblas-pthread:${LD_LIBRARY_PATH:-}"
for t in 1 16; do
    build-gpu/tools/stoker-enginebench --threads $t --iters 20 >> "$OUT/enginebench.txt" 2>&1 || rc=1
    LD_LIBRARY_PATH=$TORCH_LD python3 tools/bench_engine_torch.py --threads $t --iters 20 \
        >> "$OUT/enginebench.txt" 2>&1 || rc=1
done
cat "$OUT/enginebench.txt"
exit $rc
