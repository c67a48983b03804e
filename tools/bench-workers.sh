#!/bin/sh
# SPDX-License-Identifier: MIT
# Issue 17 §6: workers 0, 1, 2 and auto on one shard set, each with main
# idle between batches (--work-us 0, as stoker-bench alone) and with main
# busy WORK us per batch (a training step's stand-in), runs alternating,
# REPS of each; prints medians of samples/s, the ratio to 0 workers, and
# where a batch's time goes (CPU us per batch of main and of a worker,
# which a busy machine does not inflate as it does samples/s; sleeps per
# batch), and what auto chose.
# Usage: tools/bench-workers.sh BUILD_DIR SET [REPS [EPOCHS [WORK [EXTRA...]]]]
#   e.g. tools/bench-workers.sh build /tmp/fm 5 10 100
#        tools/bench-workers.sh build /tmp/fm 5 5 100 --augment 'crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'
set -eu
b=$1 set=$2 reps=${3:-5} epochs=${4:-10} work=${5:-100}
shift $(($# < 5 ? $# : 5))
out=$(mktemp)
trap 'rm -f "$out"' EXIT
i=0
while [ "$i" -lt "$reps" ]; do
    i=$((i + 1))
    for wk in 0 "$work"; do
        for w in 0 1 2 auto; do
            echo "$wk $w $("$b/tools/stoker-bench" "$set" --workers "$w" --epochs "$epochs" \
                --work-us "$wk" --no-checksum --no-memcpy --json "$@" 2>/dev/null)"
        done
    done
done >"$out"
/usr/bin/python3 - "$out" <<'PY'
import json, statistics as S, sys
rows = {}
for line in open(sys.argv[1]):
    wk, w, js = line.split(" ", 2)
    rows.setdefault((int(wk), w), []).append(json.loads(js))
med = lambda k, f: S.median(r[f] for r in rows[k])
print("%7s %5s %4s %10s %7s %10s %10s %8s %8s  %s" % ("work_us", "w", "runs", "samples/s", "vs w0",
      "main us/b", "wrk us/b", "main sl", "wrk sl", "auto chose"))
for (wk, w) in sorted(rows, key=lambda k: (k[0], "0 1 2 auto".split().index(k[1]))):
    k = (wk, w)
    chose = ""
    if w == "auto":
        chose = " ".join(str(r["workers"]) for r in rows[k])
    print("%7d %5s %4d %10.0f %7.2f %10.1f %10.1f %8.2f %8.2f  %s" % (wk, w, len(rows[k]),
          med(k, "samples_per_s"), med(k, "samples_per_s") / med((wk, "0"), "samples_per_s"),
          med(k, "main_cpu_us_per_batch"), med(k, "worker_cpu_us_per_batch"),
          med(k, "main_sleeps_per_batch"), med(k, "worker_sleeps_per_batch"), chose))
PY
