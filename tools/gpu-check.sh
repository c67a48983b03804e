#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# One-call check for a lent GPU machine (issue 11), in under 6 minutes:
#   1. the GPU, driver and toolkit (nvidia-smi, nvcc);
#   2. build with -Dcuda=enabled and warnings as errors;
#   3. the whole suite with STK_REQUIRE_GPU=1 (GPU tests fail, not skip);
#   4. compute-sanitizer memcheck over the GPU conformance test;
#   5. one epoch of fmnist-cnn on the GPU (stoker-train, device = cuda),
#      beside PyTorch's same recipe on the same GPU (tools/train_torch.py);
#   6. the dist helper's NCCL checks (one rank; two ranks on one GPU, an
#      experiment; all-reduce bandwidth);
#   7. training-step benchmarks with the batch on the GPU (issue 12),
#      and eval forwards with conv + batchnorm fused and not:
#      fmnist-cnn at batch 256 and ResNet-18 (models/resnet18.model) at
#      batch 256, stoker-enginebench --train against PyTorch eager
#      (cudnn.benchmark) and torch.compile(mode="reduce-overhead")
#      (tools/bench_train_torch.py), in the time the run has left;
#      ResNet-18 fed by the loader (synthetic 3x224x224 u8 shards from
#      stoker-pack synth, crop + flip + normalize in one worker per CPU,
#      the feed's copies) against the same steps from a resident batch:
#      the images/s ratio, the data-wait share and the H2D bandwidth;
# every result into $OUT/gpu-check.json (OUT defaults to gpu-check-out) and
# a short table at the end. Each step runs under its own time limit, so a
# hang costs that step, not the run. --cpu-benches adds the loader and
# engine CPU benchmarks of the earlier issues (minutes more). --recipe
# adds the shipped fmnist-cnn recipe (configs/fmnist-cnn.conf, all 15
# epochs) on the GPU in fp32, bf16 and fp16: issue 12's check that both
# half precisions end within 0.3 point of fp32's test accuracy (minutes
# more; recipe_precision in the JSON).
#
# The device machine reaches no package registry: fetch the .debs here
# first with `tools/gpu-check.sh --download` and carry .debs/ (the dev
# packages it may lack, Meson and Ninja, and Fashion-MNIST).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
DEBS=(liburing-dev liburing2 libzstd-dev libcmocka-dev libcmocka0 libdnnl-dev libdnnl2 zlib1g-dev
      meson ninja-build dataset-fashion-mnist)

if [ "${1:-}" = --download ]; then
    mkdir -p .debs && (cd .debs && apt-get download "${DEBS[@]}")
    exit $?
fi
CPU_BENCHES=0
RECIPE=0
for a in "$@"; do
    case $a in
    --cpu-benches) CPU_BENCHES=1 ;;
    --recipe) RECIPE=1 ;;
    *) echo "gpu-check: unknown option $a (--download, --cpu-benches, --recipe)" >&2; exit 2 ;;
    esac
done

exec > >(tee "$OUT/gpu-check.log") 2>&1
T0=$(date +%s)
export PATH=/usr/local/cuda/bin:$PATH
JOBS=$(nproc)
RESULTS=$OUT/steps.tsv
: > "$RESULTS"

# step NAME LIMIT_S CMD...: runs CMD with its output in $OUT/NAME.txt,
# records name, exit status and seconds (124: over its limit).
step() {
    local name=$1 limit=$2
    shift 2
    local t0 rc ms
    t0=$(date +%s%N)
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    printf '%s\t%d\t%d.%03d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$RESULTS"
    tail -n 15 "$OUT/$name.txt"
    echo "== $name: exit $rc, $((ms / 1000)) s"
    return $rc
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1 ||
    echo "nvidia-smi failed" >> "$OUT/gpu.txt"
nvcc --version | tail -n 2 > "$OUT/nvcc.txt" 2>&1 || echo "nvcc not found" > "$OUT/nvcc.txt"
cat "$OUT/gpu.txt" "$OUT/nvcc.txt"

# Unpack carried .debs into a private prefix for what the system lacks.
PREFIX=$PWD/.deps
need_prefix=0
for h in liburing.h zstd.h cmocka.h oneapi/dnnl/dnnl.h zlib.h; do
    [ -f "/usr/include/$h" ] || need_prefix=1
done
command -v meson > /dev/null && command -v ninja > /dev/null || need_prefix=1
FMNIST=/usr/share/datasets/fashion-mnist
[ -f "$FMNIST/train-images-idx3-ubyte.gz" ] || need_prefix=1
if [ $need_prefix = 1 ]; then
    [ -d .debs ] || { echo "gpu-check: missing packages and no .debs/ carried"; exit 1; }
    for d in .debs/*.deb; do dpkg -x "$d" "$PREFIX"; done
    export PKG_CONFIG_PATH=$PREFIX/usr/lib/x86_64-linux-gnu/pkgconfig:${PKG_CONFIG_PATH:-}
    export CPATH=$PREFIX/usr/include:${CPATH:-}
    export LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu:${LIBRARY_PATH:-}
    export LD_LIBRARY_PATH=$PREFIX/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
    export PATH=$PATH:$PREFIX/usr/bin
    export PYTHONPATH=${PYTHONPATH:-}:$PREFIX/usr/lib/python3/dist-packages
    # pkg-config files carry prefix=/usr: point them at the unpacked tree.
    sed -i "s|^prefix=/usr|prefix=$PREFIX/usr|" "$PREFIX"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc 2>/dev/null
    [ -f "$FMNIST/train-images-idx3-ubyte.gz" ] || FMNIST=$PREFIX/usr/share/datasets/fashion-mnist
fi

# Time limits: 90 + 90 + 60 + 35 + 10 + 60 + 30 + 40 (NCCL) s, about six
# minutes at worst; far less when nothing hangs. The benchmarks at the end
# take only what is left of 350 s.
# The GPU tests run first, on their own: a slow rest of the suite cannot
# cost their results.
rc=0
B=build-gpu
[ -f $B/build.ninja ] || SETUP="meson setup $B -Dwerror=true -Dcuda=enabled --buildtype=release &&"
step build 90 sh -c "${SETUP:-} ninja -C $B" || rc=1
if [ -x $B/tools/stoker-train ]; then
    GPU_TESTS="cuda_bodies backend_ops_gpu cuda_train feed_cuda loader_cuda rnn_cuda cuda_graph cuda_profile cudnn_deterministic cudnn_benchmark cuda_amp"
    step gpu_tests 90 env STK_REQUIRE_GPU=1 meson test -C $B $GPU_TESTS --print-errorlogs --num-processes 4 || rc=1
    cp $B/meson-logs/testlog.json "$OUT/testlog-gpu.json" 2>/dev/null
    # The rest, the communicators' GPU tests among them.
    step suite 60 env STK_REQUIRE_GPU=1 meson test -C $B --print-errorlogs --num-processes "$JOBS" ||
        rc=1
    cp $B/meson-logs/testlog.json "$OUT/testlog.json" 2>/dev/null
    # Invalid accesses only: cuDNN keeps some allocations until exit.
    CS=$(command -v compute-sanitizer || ls /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null)
    step memcheck 35 env STK_TEST_DATA="$PWD/tests/data" "${CS:-compute-sanitizer}" --tool memcheck \
        --error-exitcode 9 --leak-check none $B/tests/conformance/test_backend_ops --gpu || rc=1

    # One epoch of the reference recipe on the GPU, then PyTorch's.
    DATA=$B/fmnist
    mkdir -p $DATA
    # A finished pack writes its manifest last (kept from an earlier call).
    step pack 10 sh -c "{ [ -f $DATA/train/shard.manifest ] || $B/tools/stoker-pack idx \
        $FMNIST/train-images-idx3-ubyte.gz $FMNIST/train-labels-idx1-ubyte.gz -o $DATA/train -q; } &&
        { [ -f $DATA/test/shard.manifest ] || $B/tools/stoker-pack idx $FMNIST/t10k-images-idx3-ubyte.gz \
        $FMNIST/t10k-labels-idx1-ubyte.gz -o $DATA/test -q; }" || rc=1
    step train_gpu 60 $B/tools/stoker-train configs/fmnist-cnn.conf --set device=cuda --set epochs=1 \
        --set workers=4 --set threads=4 --set train_data=$DATA/train --set test_data=$DATA/test \
        --set checkpoint_dir=$B/gpu-check-run-$$/checkpoints --set metrics=$B/gpu-check-run-$$/metrics.jsonl \
        --json || rc=1
    # The Python that has torch (Debian's python3-torch is /usr/bin's).
    PY=$(for p in /usr/bin/python3 python3; do "$p" -c 'import torch' 2>/dev/null && echo "$p" && break; done)
    step torch_gpu 30 "${PY:-python3}" tools/train_torch.py configs/fmnist-cnn.conf --set epochs=1 --set workers=4 \
        --set threads=4 --idx "$FMNIST" --device cuda --json || rc=1
    # The whole recipe in each precision (--recipe): the loss scaling of
    # fp16 is the recipe's default (loss_scale = auto).
    if [ $RECIPE = 1 ]; then
        for p in fp32 bf16 fp16; do
            step recipe_$p 240 $B/tools/stoker-train configs/fmnist-cnn.conf --set device=cuda --set precision=$p \
                --set workers=4 --set threads=4 --set train_data=$DATA/train --set test_data=$DATA/test \
                --set run_dir= --set progress=off --json || rc=1
        done
    fi
fi

# ---- dist (the dist helper's checks): NCCL --------------------------------
# The dist checks over NCCL (collectives, DDP against one process, buckets
# and overlap) with one rank on the GPU; the multi-GPU variants ran (or
# skipped, saying why) in the suite above. Then two ranks on the one GPU:
# NCCL refuses that ("Duplicate GPU detected") unless each rank claims
# another host (NCCL_HOSTID) and they talk over sockets: whatever happens
# is recorded, not counted. Then NCCL's all-reduce bandwidth on device
# buffers.
if [ -x $B/tests/dist/dist_check ]; then
    step dist_nccl_1rank 20 sh -c "for mode in collectives ddp order; do echo \"--- 1 rank over NCCL: \$mode\";
        STK_COMM_BACKEND=nccl $B/tools/stoker-launch --nproc-per-node 1 --master-port 0 \
            $B/tests/dist/dist_check \$mode || exit 1; done" || rc=1
    step dist_nccl_2ranks 10 env STK_COMM_BACKEND=nccl STK_DIST_TIMEOUT=8 NCCL_SOCKET_IFNAME=lo NCCL_DEBUG=WARN \
        $B/tools/stoker-launch --nproc-per-node 2 --master-port 0 -- sh -c \
        "STK_CUDA_DEVICE=0 NCCL_HOSTID=stoker-host-\$RANK exec $B/tests/dist/dist_check collectives"
    step dist_nccl_bench 10 $B/tools/stoker-launch --nproc-per-node 1 --master-port 0 $B/tests/dist/dist_bench_cuda ||
        rc=1
fi

if [ $CPU_BENCHES = 1 ] && [ -x $B/tools/stoker-enginebench ]; then
    TORCH_LD="/usr/lib/x86_64-linux-gnu/openblas-pthread:${LD_LIBRARY_PATH:-}"
    step enginebench 300 sh -c "for t in 1 $JOBS; do $B/tools/stoker-enginebench --threads \$t --iters 20;
        LD_LIBRARY_PATH=$TORCH_LD ${PY:-python3} tools/bench_engine_torch.py --threads \$t --iters 20; done"
fi

# ---- training-step benchmarks (issue 12) ----------------------------------
# Whatever time is left of the six minutes: each bench step gets at most
# its own limit and never more than what remains before DEADLINE (a step
# with under 15 s left is not started: recorded as skipped, exit 125).
DEADLINE=$((T0 + 350))
bench() {
    local name=$1 want=$2 left
    shift 2
    left=$((DEADLINE - $(date +%s)))
    [ $left -lt $want ] && want=$left
    if [ $want -lt 15 ]; then
        printf '%s\t125\t0.000\n' "$name" >> "$RESULTS"
        echo "== $name: skipped, ${left}s left of the run's time"
        return 0
    fi
    step "$name" "$want" "$@"
}
if [ -x $B/tools/stoker-enginebench ]; then
    EB="$B/tools/stoker-enginebench --train --device cuda --json"
    TB="${PY:-python3} tools/bench_train_torch.py --device cuda --json"
    # fmnist-cnn at batch 256: same precision on both sides (fp32 with TF32
    # off, then TF32), PyTorch eager and compiled.
    bench bench_stoker_fmnist 40 sh -c "for p in 'fp32' 'fp32 --cuda-graph' 'tf32 --cuda-graph' 'tf32'; do
        $EB --model models/fmnist-cnn.model --batch 256 --iters 100 --warmup 10 --precision \$p || exit 1; done"
    bench bench_torch_fmnist 40 sh -c "for p in fp32 tf32; do $TB --model fmnist-cnn --batch 256 --iters 100 \
        --warmup 10 --precision \$p || exit 1; done"
    bench bench_torch_fmnist_compile 70 $TB --model fmnist-cnn --batch 256 --iters 100 --warmup 10 --mode compile
    # ResNet-18 at batch 256: Stoker in fp32 and TF32, then BF16 (a step
    # of its own: new, it must not cost the others' rows), PyTorch eager
    # AMP BF16 channels-last (the issue's reference), eager TF32, and
    # compiled BF16.
    bench bench_stoker_resnet18 50 sh -c "for p in 'tf32 --cuda-graph' 'fp32 --cuda-graph'; do
        $EB --model models/resnet18.model --batch 256 --iters 10 --warmup 3 --precision \$p || exit 1; done"
    bench bench_stoker_bf16 30 sh -c "$EB --model models/resnet18.model --batch 256 --iters 10 --warmup 3 \
        --precision bf16 --cuda-graph && $EB --model models/fmnist-cnn.model --batch 256 --iters 100 --warmup 10 \
        --precision bf16 --cuda-graph"
    # Eval-mode forwards of fmnist-cnn, conv + batchnorm + relu fused
    # (cuDNN's fused graph) and not (STK_NO_FUSION=1), fp32 and bf16: the
    # images/s ratio, the chains fused and those that fell back.
    bench bench_stoker_eval 30 sh -c "for p in fp32 bf16; do for f in 0 1; do STK_NO_FUSION=\$f \
        $B/tools/stoker-enginebench --eval --device cuda --json --model models/fmnist-cnn.model --batch 256 \
        --iters 100 --warmup 10 --precision \$p || exit 1; done; done"
    bench bench_torch_resnet18 40 sh -c "$TB --model resnet18 --batch 256 --iters 10 --warmup 3 --precision bf16 \
        --channels-last && $TB --model resnet18 --batch 256 --iters 10 --warmup 3 --precision tf32"
    # ResNet-18 fed by the real loader (issue 12's target: within 5% of
    # the resident batch's images/s, data wait under 2%): 2560 synthetic
    # records (10 batches, page cache; the loader goes round epochs), then
    # the same steps (TF32, CUDA graphs, 5 warm-up steps so that both of
    # the feed's buffers have their graph) from the loader and resident.
    SYN=$B/synth-224
    bench bench_data_pack 30 sh -c "[ -f $SYN/shard.manifest ] || $B/tools/stoker-pack synth -o $SYN \
        --records 2560 --shape 3,224,224 --classes 1000 -n 512"
    AUG='crop:224,pad=16|hflip|normalize:mean=0.485/0.456/0.406,std=0.229/0.224/0.225'
    bench bench_stoker_resnet18_loader 70 sh -c "for input in '--data $SYN --augment $AUG --workers $JOBS' ''; do
        $EB --model models/resnet18.model --batch 256 --iters 20 --warmup 5 --precision tf32 --cuda-graph \$input \
        || exit 1; done"
    bench bench_torch_resnet18_compile 90 $TB --model resnet18 --batch 256 --iters 10 --warmup 3 --precision bf16 \
        --channels-last --mode compile
fi

# The results as one JSON file, and a table.
python3 - "$OUT" "$(( $(date +%s) - T0 ))" <<'PY'
import json, os, sys
out, wall = sys.argv[1], int(sys.argv[2])
def text(name):
    try:
        return open(os.path.join(out, name)).read()
    except OSError:
        return ""
def last_json(name):
    for line in reversed(text(name + ".txt").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None
steps = {}
for line in text("steps.tsv").splitlines():
    name, rc, sec = line.split("\t")
    steps[name] = {"exit": int(rc), "seconds": float(sec), "timed_out": rc in ("124", "137")}
res = {"gpu": text("gpu.txt").strip(), "nvcc": text("nvcc.txt").strip(), "wall_s": wall, "steps": steps}
res["tests"] = {}
for name in ("testlog-gpu.json", "testlog.json"):
    try:
        res["tests"].update({t["name"]: t["result"] for t in map(json.loads, open(os.path.join(out, name)))})
    except (OSError, ValueError):
        pass
res["memcheck_errors"] = next((l for l in text("memcheck.txt").splitlines() if "ERROR SUMMARY" in l), None)
res["train_gpu"] = last_json("train_gpu")
res["torch_gpu"] = last_json("torch_gpu")
def all_json(name):
    rows = []
    for line in text(name + ".txt").splitlines():
        if line.strip().startswith("{"):
            try:
                rows.append(json.loads(line))
            except ValueError:
                pass
    return rows
bench = []
for name in ("bench_stoker_fmnist", "bench_torch_fmnist", "bench_torch_fmnist_compile", "bench_stoker_resnet18",
             "bench_stoker_bf16", "bench_torch_resnet18", "bench_stoker_resnet18_loader",
             "bench_torch_resnet18_compile"):
    bench += all_json(name)
res["bench"] = bench
def find(tool, model, precision, mode=None, channels_last=None):
    # Stoker's best of with and without CUDA graphs, from a resident batch.
    best = None
    for r in bench:
        if (r.get("tool") == tool and model in r.get("model", "") and r.get("precision") == precision and
                r.get("input", "resident") == "resident" and
                (mode is None or r.get("mode") == mode) and
                (channels_last is None or r.get("channels_last") == channels_last)):
            v = r.get("images_per_s")
            if v and (best is None or v > best):
                best = v
    return best
ratios = {}
for key, a, b in (
        ("fmnist_fp32_vs_torch_eager", find("stoker", "fmnist-cnn", "fp32"),
         find("torch", "fmnist-cnn", "fp32", "eager")),
        ("fmnist_fp32_vs_torch_compile", find("stoker", "fmnist-cnn", "fp32"),
         find("torch", "fmnist-cnn", "fp32", "compile")),
        ("fmnist_tf32_vs_torch_eager", find("stoker", "fmnist-cnn", "tf32"),
         find("torch", "fmnist-cnn", "tf32", "eager")),
        ("resnet18_tf32_vs_torch_eager_tf32", find("stoker", "resnet18", "tf32"),
         find("torch", "resnet18", "tf32", "eager")),
        ("resnet18_tf32_vs_torch_eager_bf16_cl", find("stoker", "resnet18", "tf32"),
         find("torch", "resnet18", "bf16", "eager", True)),
        # Issue 12's ResNet-18 target (>= 1.1x): BF16 against PyTorch's
        # eager AMP BF16 channels-last, and against torch.compile.
        ("resnet18_bf16_vs_torch_eager_bf16_cl", find("stoker", "resnet18", "bf16"),
         find("torch", "resnet18", "bf16", "eager", True)),
        ("resnet18_bf16_vs_torch_compile_bf16_cl", find("stoker", "resnet18", "bf16"),
         find("torch", "resnet18", "bf16", "compile", True))):
    ratios[key] = round(a / b, 3) if a and b else None
res["bench_ratios"] = ratios
# ResNet-18 fed by the loader against the same run's resident batch.
rows = all_json("bench_stoker_resnet18_loader")
fed = next((r for r in rows if r.get("input") == "loader"), None)
resident = next((r for r in rows if r.get("input") == "resident"), None)
if fed:
    ips, rips = fed.get("images_per_s"), resident.get("images_per_s") if resident else None
    bps = fed.get("h2d_bytes_per_s") or 0
    res["resnet18_loader"] = {
        "images_per_s": ips, "resident_images_per_s": rips,
        "ratio": round(ips / rips, 4) if ips and rips else None,
        "data_wait": fed.get("data_wait"), "workers": fed.get("workers"),
        "h2d_gb_per_s": round(bps / 1e9, 3),
        "h2d_mb_per_batch": round(fed.get("h2d_bytes", 0) / max(fed.get("iters", 1), 1) / 1e6, 3),
        "target": "ratio >= 0.95 and data_wait < 0.02"}
    ratios["resnet18_loader_vs_resident"] = res["resnet18_loader"]["ratio"]
else:
    res["resnet18_loader"] = None
# --recipe: each precision's final test accuracy, and the half ones'
# distance from fp32 (issue 12: within 0.3 point).
recipe = {p: last_json("recipe_" + p) for p in ("fp32", "bf16", "fp16")}
if any(recipe.values()):
    acc = {p: (r or {}).get("final_test_acc") for p, r in recipe.items()}
    res["recipe_precision"] = {
        "test_acc": acc,
        "points_below_fp32": {p: round(100 * (acc["fp32"] - acc[p]), 2) if acc["fp32"] and acc[p] else None
                              for p in ("bf16", "fp16")},
        "images_per_s": {p: (r or {}).get("images_per_s") for p, r in recipe.items()},
        "target": "bf16 and fp16 at most 0.3 point below fp32"}
# Eval-mode conv + batchnorm fusion: fused against unfused eval forwards
# per precision, the chains fused and fallen back (enginebench --eval), and
# what the GPU fusion test printed (which runs fused, which fell back).
ev = all_json("bench_stoker_eval")
fusion = {}
for r in ev:
    key = r.get("precision")
    e = fusion.setdefault(key, {})
    e["fused" if r.get("fused") else "unfused"] = {k: r.get(k) for k in (
        "images_per_s", "fused", "fusion_chains", "fusion_fallbacks")}
for key, e in fusion.items():
    a, b = (e.get("fused") or {}).get("images_per_s"), (e.get("unfused") or {}).get("images_per_s")
    e["fused_vs_unfused"] = round(a / b, 3) if a and b else None
lines = []
for name in ("testlog-gpu.json", "testlog.json"):
    try:
        for t in map(json.loads, open(os.path.join(out, name))):
            if t.get("name") == "cuda_fusion":
                lines = [l for l in (t.get("stdout") or "").splitlines()
                         if l.startswith(("chain:", "fusion on:", "fmnist:", "FAIL"))]
    except (OSError, ValueError):
        pass
res["eval_fusion"] = {"enginebench": fusion or None, "test": lines or None}
json.dump(res, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)

print("\n%-14s %6s %8s" % ("step", "exit", "seconds"))
for name, s in steps.items():
    print("%-14s %6d %8.1f%s" % (name, s["exit"], s["seconds"], "  (time limit)" if s["timed_out"] else ""))
bad = [n for n, r in res["tests"].items() if r not in ("OK", "EXPECTEDFAIL")]
print("tests: %d, not OK: %s" % (len(res["tests"]), ", ".join(bad) or "none"))
print("memcheck:", res["memcheck_errors"])
def row(who, r):
    if not r:
        print("%-10s no result" % who)
        return None
    ips = r.get("images_per_s")
    acc = r.get("test_acc", r.get("final_test_acc"))
    print("%-10s %10s img/s  test acc %s" % (who, "%.0f" % ips if ips else "?", "%.4f" % acc if acc else "?"))
    return ips
a, b = row("stoker gpu", res["train_gpu"]), row("torch gpu", res["torch_gpu"])
if a and b:
    print("stoker/torch images/s: %.2fx" % (a / b))
for r in bench:
    print("bench %-7s %-8s %-10s %-5s %s%10.0f img/s%s" % (r.get("tool"), r.get("mode", "graph" if r.get(
        "cuda_graph") else ""), os.path.basename(r.get("model", "")).replace(".model", ""), r.get("precision"),
        "cl " if r.get("channels_last") else "   ", r.get("images_per_s", 0),
        "  (loader: data wait %.2f%%, H2D %.2f GB/s)" % (100 * r.get("data_wait", 0),
                                                         r.get("h2d_bytes_per_s", 0) / 1e9)
        if r.get("input") == "loader" else ""))
for k, v in ratios.items():
    print("ratio %-40s %s" % (k, "%.2fx" % v if v else "n/a"))
for p, e in (res["eval_fusion"]["enginebench"] or {}).items():
    f = e.get("fused") or {}
    print("eval fusion %-5s fused/unfused %s; %s of %s chains fused, %s fell back" % (
        p, "%.2fx" % e["fused_vs_unfused"] if e.get("fused_vs_unfused") else "n/a", f.get("fused"),
        f.get("fusion_chains"), f.get("fusion_fallbacks")))
for l in res["eval_fusion"]["test"] or []:
    print("cuda_fusion: " + l)
if res.get("recipe_precision"):
    rp = res["recipe_precision"]
    print("recipe test acc: " + ", ".join("%s %s" % (p, "%.4f" % a if a else "?") for p, a in rp["test_acc"].items()) +
          "; points below fp32: " + ", ".join("%s %s" % kv for kv in rp["points_below_fp32"].items()))
print("wall: %d s; results in %s" % (wall, os.path.join(out, "gpu-check.json")))
PY
exit $rc
