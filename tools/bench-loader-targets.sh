#!/bin/sh
# SPDX-License-Identifier: MIT
# The loader issue's targets, each measured side by side with PyTorch in
# the same run, repeated REPS times (medians; the machine may be busy):
#   W1  Fashion-MNIST raw, batch 256, no augment: stoker vs PyTorch best
#   W1a Fashion-MNIST, augment crop+hflip+normalize, 2 workers, and the
#       time to first batch of a fresh loader (loader creation counted)
#   W2  synthetic 3x224x224 u8 (1.2 GB, page cache), hflip+normalize f32,
#       batch 64: MB/s written vs memcpy MB/s of the same stoker-bench run
# Usage: tools/bench-loader-targets.sh BUILD_DIR FMNIST_SET SYN_DIR [REPS]
#   FMNIST_SET: stoker-pack idx ... -o DIR (raw, the default level)
#   SYN_DIR:    bench_loader_torch.py gen DIR, then stoker-pack npy ... -o DIR/stk -l 0
set -eu
b=$1 fm=$2 syn=$3 reps=${4:-5}
py() { LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread /usr/bin/python3 \
       "$(dirname "$0")/bench_loader_torch.py" "$@" 2>/dev/null; }
aug1='crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'
aug2='hflip|normalize:mean=0.5,std=0.25'
out=$(mktemp)
trap 'rm -f "$out"' EXIT
i=0
while [ "$i" -lt "$reps" ]; do
    i=$((i + 1))
    for w in 0 1 2; do
        echo "w1 stoker $w $("$b/tools/stoker-bench" "$fm" --workers "$w" --epochs 3 --no-memcpy --json)"
    done
    for w in 0 2; do
        echo "w1 torch $w $(py fmnist --workers "$w" --epochs 3)"
    done
    # The classic per-sample Dataset + default collate, for reference only.
    echo "w1 torch-1by1 0 $(py fmnist --workers 0 --epochs 3 --mode sample)"
    echo "w1a stoker 2 $("$b/tools/stoker-bench" "$fm" --workers 2 --augment "$aug1" --no-memcpy --json)"
    echo "w1a torch 0 $(py fmnist --workers 0 --augment)"
    echo "w1a torch 2 $(py fmnist --workers 2 --augment)"
    echo "w2 stoker 2 $("$b/tools/stoker-bench" "$syn/stk" --batch 64 --workers 2 --augment "$aug2" --json)"
    if [ "$i" -le 2 ]; then # slow: 1.2 GB through PyTorch
        echo "w2 torch 0 $(py npy --data "$syn/data.npy" --labels "$syn/labels.npy" --batch 64 --workers 0 --augment)"
        echo "w2 torch 2 $(py npy --data "$syn/data.npy" --labels "$syn/labels.npy" --batch 64 --workers 2 --augment)"
    fi
done >"$out"
/usr/bin/python3 - "$out" <<'PY'
import json, statistics as S, sys
rows = {}
for line in open(sys.argv[1]):
    wl, who, w, js = line.split(" ", 3)
    try:
        rows.setdefault((wl, who, int(w)), []).append(json.loads(js))
    except ValueError:
        print("failed run:", line.strip())
def med(k, f):
    return S.median(r[f] for r in rows[k]) if k in rows else float("nan")
print("%-4s %-11s %2s %5s %12s %10s %10s" % ("wl", "who", "w", "runs", "samples/s", "MB/s", "first ms"))
for k in sorted(rows):
    print("%-4s %-11s %2d %5d %12.0f %10.1f %10.2f" % (k + (len(rows[k]), med(k, "samples_per_s"),
          med(k, "mb_per_s"), med(k, "first_batch_ms"))))
best_t1 = max(med(("w1", "torch", w), "samples_per_s") for w in (0, 2))
best_s1 = max(med(("w1", "stoker", w), "samples_per_s") for w in (0, 1, 2))
print("W1  stoker best / torch best: %.2fx (target >= 5x); / torch per-sample Dataset: %.2fx"
      % (best_s1 / best_t1, best_s1 / med(("w1", "torch-1by1", 0), "samples_per_s")))
best_t1a = max(med(("w1a", "torch", w), "samples_per_s") for w in (0, 2))
print("W1a stoker 2w / torch best: %.2fx; stoker time to first batch median %.2f ms (target < 10)"
      % (med(("w1a", "stoker", 2), "samples_per_s") / best_t1a, med(("w1a", "stoker", 2), "first_batch_ms")))
r2 = [r["mb_per_s"] / r["memcpy_mb_per_s"] for r in rows[("w2", "stoker", 2)]]
best_t2 = max(med(("w2", "torch", w), "samples_per_s") for w in (0, 2))
print("W2  stoker MB/s / memcpy MB/s: median %.2f (target >= 0.5), runs %s; stoker / torch best %.1fx"
      % (S.median(r2), " ".join("%.2f" % x for x in r2), med(("w2", "stoker", 2), "samples_per_s") / best_t2))
PY
