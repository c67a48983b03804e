#!/bin/sh
# SPDX-License-Identifier: MIT
# The loader issue's targets, each measured side by side with PyTorch in
# the same run, at workers 0, 1 and 2, repeated REPS times (medians; the
# machine may be busy):
#   W1   Fashion-MNIST raw, batch 256, no augment, 10 epochs: stoker vs PyTorch
#        (tuned: whole-batch gathers; and the classic per-sample Dataset)
#   W1z  the same from a zstd level-3 pack (only with ZSET)
#   W1a  Fashion-MNIST, crop 28 pad 2 + hflip + normalize f32, batch 256;
#        10 epochs for stoker: worker RSS after epoch 1 vs at the end, and
#        time to first batch of a fresh loader (its creation counted)
#   W2   synthetic 3x224x224 u8 (1.2 GB, page cache), hflip + normalize
#        f32, batch 64: MB/s written vs memcpy MB/s of the same run
# Usage: tools/bench-loader-targets.sh BUILD_DIR FMNIST_SET SYN_DIR [REPS [ZSET]]
#   FMNIST_SET: stoker-pack idx ... -o DIR (raw, the default level)
#   SYN_DIR:    bench_loader_torch.py gen DIR, then stoker-pack npy ... -o DIR/stk -l 0
#   ZSET:       stoker-pack idx ... -o DIR -l 3
set -eu
b=$1 fm=$2 syn=$3 reps=${4:-3} zset=${5:-}
py() { LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread /usr/bin/python3 \
       "$(dirname "$0")/bench_loader_torch.py" "$@" 2>/dev/null; }
# --no-checksum: PyTorch's loop reads no batch either.
sb() { "$b/tools/stoker-bench" "$@" --no-checksum --json; }
aug1='crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'
aug2='hflip|normalize:mean=0.5,std=0.25'
npy="--data $syn/data.npy --labels $syn/labels.npy --batch 64"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
i=0
while [ "$i" -lt "$reps" ]; do
    i=$((i + 1))
    for w in 0 1 2; do
        echo "w1 stoker $w $(sb "$fm" --workers "$w" --epochs 10 --no-memcpy)"
        [ -z "$zset" ] || echo "w1z stoker $w $(sb "$zset" --workers "$w" --epochs 10 --no-memcpy)"
        echo "w1 torch $w $(py fmnist --workers "$w" --epochs 10)"
        echo "w1a stoker $w $(sb "$fm" --workers "$w" --epochs 10 --augment "$aug1" --no-memcpy)"
        echo "w1a torch $w $(py fmnist --workers "$w" --augment)"
        echo "w2 stoker $w $(sb "$syn/stk" --batch 64 --workers "$w" --augment "$aug2")"
        if [ "$i" -le 1 ]; then # slow: 1.2 GB through PyTorch
            # shellcheck disable=SC2086
            echo "w2 torch $w $(py npy $npy --workers "$w" --augment)"
        fi
    done
    # The classic per-sample Dataset + default collate, for reference only.
    echo "w1 torch-1by1 0 $(py fmnist --workers 0 --epochs 3 --mode sample)"
    echo "w1a torch-1by1 2 $(py fmnist --workers 2 --augment --mode sample)"
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
    return S.median(r[f] for r in rows[k]) if k in rows and f in rows[k][0] else float("nan")
print("%-4s %-11s %2s %5s %12s %10s %10s" % ("wl", "who", "w", "runs", "samples/s", "MB/s", "first ms"))
for k in sorted(rows):
    print("%-4s %-11s %2d %5d %12.0f %10.1f %10.2f" % (k + (len(rows[k]), med(k, "samples_per_s"),
          med(k, "mb_per_s"), med(k, "first_batch_ms"))))
sps = lambda wl, who, w: med((wl, who, w), "samples_per_s")
best = lambda wl, who: max(sps(wl, who, w) for w in (0, 1, 2))
print("W1  raw, stoker best %.0f / torch best %.0f = %.2fx (target 5x); / the issue's 660k = %.2fx;"
      " / torch per-sample Dataset = %.1fx" % (best("w1", "stoker"), best("w1", "torch"),
      best("w1", "stoker") / best("w1", "torch"), best("w1", "stoker") / 660e3,
      best("w1", "stoker") / sps("w1", "torch-1by1", 0)))
if ("w1z", "stoker", 0) in rows:
    print("W1z zstd-3 pack, stoker samples/s at w 0/1/2: %s (io %s)" % (
          " / ".join("%.0f" % sps("w1z", "stoker", w) for w in (0, 1, 2)), rows[("w1z", "stoker", 0)][0]["io"]))
print("W1a stoker / torch at the same workers (target 20x): %s; vs torch per-sample transforms at 2: %.1fx"
      % (", ".join("w%d %.1fx" % (w, sps("w1a", "stoker", w) / sps("w1a", "torch", w)) for w in (0, 1, 2)),
         sps("w1a", "stoker", 2) / sps("w1a", "torch-1by1", 2)))
ft = sorted(r["first_batch_ms"] for r in rows[("w1a", "stoker", 2)])
print("W1a time to first batch, 2 workers (target < 10 ms): median %.2f ms, runs %s; torch %.1f ms"
      % (S.median(ft), " ".join("%.2f" % x for x in ft), med(("w1a", "torch", 2), "first_batch_ms")))
rss = [(r["worker_rss_after_epoch1_kb"], r["worker_max_rss_kb"], r["worker_private_after_epoch1_kb"],
        r["worker_max_private_kb"]) for r in rows[("w1a", "stoker", 2)]]
print("W1a worker RSS after epoch 1 -> peak over 10 epochs (kB): %s; private memory: %s"
      % (", ".join("%d -> %d" % x[:2] for x in rss), ", ".join("%d -> %d" % x[2:] for x in rss)))
for w in (0, 1, 2):
    r2 = [r["mb_per_s"] / r["memcpy_mb_per_s"] for r in rows[("w2", "stoker", w)]]
    print("W2  w%d stoker MB/s / memcpy MB/s: median %.2f (target >= 0.5), runs %s; stoker / torch %.1fx (target 3x)"
          % (w, S.median(r2), " ".join("%.2f" % x for x in r2), sps("w2", "stoker", w) / sps("w2", "torch", w)))
PY
