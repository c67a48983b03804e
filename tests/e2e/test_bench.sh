#!/bin/sh
# SPDX-License-Identifier: MIT
# stoker-bench end to end: packs 4096 Fashion-MNIST records raw and
# compressed, then reads them with 0, 1 and 2 workers, mmap (auto for raw)/
# io_uring (auto for compressed)/pread, with augmentation: every run must
# print the same checksum of all delivered batches. Then the tools' option
# checks, their exits, and stoker-bench under signals and stopped workers.
set -eu
src=/usr/share/datasets/fashion-mnist
if [ ! -f "$src/train-images-idx3-ubyte.gz" ]; then
    echo "skip: no Fashion-MNIST in $src" >&2
    exit 77
fi
tools="$STK_BUILD_ROOT/tools"
dir=$(mktemp -d /tmp/stk-bench-e2e-XXXXXX)
# A background run this script started dies with it, whatever ends the
# script (a failed check, meson's timeout): nothing is left running.
bg=
trap 'rc=$?; for p in $bg; do kill -KILL $p 2>/dev/null || true; done; rm -rf "$dir"; exit $rc' EXIT
"$tools/stoker-pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" \
    -o "$dir/fm" --limit 4096 -n 1000 -q
# The same records zstd-compressed: STK_IO_AUTO reads those with io_uring
# (or pread where refused) instead of mapping them as the raw set above.
"$tools/stoker-pack" idx "$src/train-images-idx3-ubyte.gz" "$src/train-labels-idx1-ubyte.gz" \
    -o "$dir/fmz" --limit 4096 -n 1000 -l 3 -q
aug='crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'
ref=
for args in "--workers 0" "--workers 2 --prefetch 3" "--workers 2 --io pread" \
            "--workers 1 --io mmap" "--workers 0 --io pread" "z --workers 0" \
            "z --workers 2" "z --workers 1 --io pread" "--workers auto" "--workers 1 --work-us 20"; do
    set -- $args
    set_dir=$dir/fm
    if [ "$1" = z ]; then set_dir=$dir/fmz; shift; args="$*"; fi
    # shellcheck disable=SC2086
    out=$("$tools/stoker-bench" "$set_dir" --batch 100 --epochs 2 --seed 7 --no-memcpy --checksum \
          --augment "$aug" --json $args)
    sum=$(echo "$out" | sed -n 's/.*"checksum":"\([0-9a-f]*\)".*/\1/p')
    samples=$(echo "$out" | sed -n 's/.*"samples":\([0-9]*\),.*/\1/p')
    echo "$set_dir $args: checksum $sum, samples $samples, io $(echo "$out" | sed -n 's/.*"io":"\([a-z]*\)".*/\1/p')"
    [ "$samples" = 8192 ] || { echo "FAIL: $samples samples, want 8192" >&2; exit 1; }
    [ -n "$sum" ] || { echo "FAIL: no checksum in: $out" >&2; exit 1; }
    if [ -z "$ref" ]; then ref=$sum; elif [ "$sum" != "$ref" ]; then
        echo "FAIL: checksum $sum differs from $ref" >&2
        exit 1
    fi
done
# A different seed gives different batches.
out=$("$tools/stoker-bench" "$dir/fm" --batch 100 --seed 8 --no-memcpy --checksum --augment "$aug" --json)
case "$out" in *"\"checksum\":\"$ref\""*) echo "FAIL: seed 8 gave seed 7's batches" >&2; exit 1 ;; esac
# Bad arguments: usage and exit status 2; a missing set: exit status 1.
if "$tools/stoker-bench" "$dir/fm" --io bogus >/dev/null 2>&1; then exit 1; else [ $? -eq 2 ]; fi
if "$tools/stoker-bench" "$dir/nope" --no-memcpy >/dev/null 2>&1; then exit 1; else [ $? -eq 1 ]; fi
# Every number of every option is checked whole and in range.
bad() { # expected message, then the command
    want=$1
    shift
    if err=$("$@" 2>&1 >/dev/null); then echo "FAIL: $* ran" >&2; exit 1; else rc=$?; fi
    [ "$rc" -eq 2 ] || { echo "FAIL: $* exited $rc, want 2: $err" >&2; exit 1; }
    case "$err" in *"$want"*) ;; *) echo "FAIL: $*: '$err' lacks '$want'" >&2; exit 1 ;; esac
}
for opt in --workers --batch --prefetch --epochs --seed --work-us; do
    bad "$opt: 'abc' is not a whole number" "$tools/stoker-bench" "$dir/fm" "$opt" abc
    bad "$opt: '2x' is not a whole number" "$tools/stoker-bench" "$dir/fm" "$opt" 2x
    bad "$opt: -1 is outside" "$tools/stoker-bench" "$dir/fm" "$opt" -1
done
bad "--workers: 1025 is outside [0, 1024]" "$tools/stoker-bench" "$dir/fm" --workers 1025
bad "--workers: 'automatic' is not a whole number" "$tools/stoker-bench" "$dir/fm" --workers automatic
bad "--timeout: 'soon' is not a finite number" "$tools/stoker-bench" "$dir/fm" --timeout soon
bad "--timeout: -2 is outside" "$tools/stoker-bench" "$dir/fm" --timeout -2
for opt in --epochs --batch --processes; do
    bad "$opt: '3y' is not a whole number" "$tools/stoker-gatherbench" "$dir/fm" "$opt" 3y
done
bad "--processes: 65 is outside" "$tools/stoker-gatherbench" "$dir/fm" --processes 65
bad "-t: 'x' is not a finite number" "$tools/stoker-augbench" -t x
bad "-s: 30 is neither 28 nor 224" "$tools/stoker-augbench" -s 30
bad "-s: '28px' is not a whole number" "$tools/stoker-augbench" -s 28px

# A tool that exits on an error leaves no process behind (its fork server
# is reaped, not left to a subreaper or init as a zombie): stoker-bench on
# a missing set, stoker-train on a run folder that is a file (found after
# its fork server started).
reaped() { # EXPECTED_STATUS TOOL ARGS...
/usr/bin/python3 - "$@" <<'PY'
import ctypes, os, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
r = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
left, end = [], time.time() + 1.0
while time.time() < end:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break
    left += [pid] if pid else []
    time.sleep(0.01)
if r.returncode != int(sys.argv[1]) or left:
    sys.exit("FAIL: %s exited %d and left pids %s behind" % (sys.argv[2], r.returncode, left))
PY
}
reaped 1 "$tools/stoker-bench" "$dir/nope"
: >"$dir/not-a-folder"
reaped 2 "$tools/stoker-train" "${STK_SOURCE_ROOT:?}/configs/fmnist-cnn.conf" --set train_data="$dir/fm" \
    --set test_data="$dir/fm" --set run_dir="$dir/not-a-folder" --set workers=1

# --augment on a pack of a .npy array: its field is "data", the only
# image-like one, and that is what is augmented.
/usr/bin/python3 - "$dir" <<'PY'
import struct, sys
def npy(path, descr, shape, data):
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    hdr += " " * (63 - (10 + len(hdr)) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + data)
n = 64
npy(sys.argv[1] + "/x.npy", "|u1", "(%d, 12, 12)" % n, bytes((i * 7) % 256 for i in range(n * 144)))
npy(sys.argv[1] + "/y.npy", "<i8", "(%d,)" % n, b"".join(struct.pack("<q", i % 3) for i in range(n)))
PY
"$tools/stoker-pack" npy "$dir/x.npy" "$dir/y.npy" -o "$dir/npy" -q
out=$("$tools/stoker-bench" "$dir/npy" --batch 16 --workers 1 --augment 'crop:12,pad=2|hflip' --no-memcpy --json)
case "$out" in *'"samples":64,'*) ;; *) echo "FAIL: --augment on the .npy pack: $out" >&2; exit 1 ;; esac
if err=$("$tools/stoker-bench" "$dir/npy" --augment hflip --field image --no-memcpy 2>&1); then
    echo "FAIL: --field image on a pack without it ran" >&2; exit 1
fi
case "$err" in *'no field "image" in the dataset (its fields: data u8[12,12], label i64)'*) ;;
    *) echo "FAIL: no list of fields in: $err" >&2; exit 1 ;; esac

# Workers stopped (SIGSTOP) under a run without a timeout: SIGINT still
# ends it at once (130); with --timeout 1, it fails naming a stopped
# worker. The workers are the fork server's children, the server the
# tool's only child.
# (cat, not awk on the files: a process may end between the glob and the read)
children() { cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$1" '$4 == p { print $1 }'; }
stop_workers() { # tool pid: waits for its workers, stops them
    # Generous: worker start-up under a loaded machine can take seconds.
    for _ in $(seq 600); do
        srv=$(children "$1")
        ws=$(for s in $srv; do children "$s"; done)
        [ -n "$ws" ] && break
        sleep 0.05
    done
    [ -n "$ws" ] || { echo "FAIL: no workers under $1" >&2; exit 1; }
    # shellcheck disable=SC2086
    kill -STOP $ws
}
"$tools/stoker-bench" "$dir/fm" --workers 2 --epochs 1000000 --no-memcpy 2>"$dir/err" >/dev/null &
pid=$!
bg="$bg $pid"
stop_workers $pid
sleep 0.3
kill -INT $pid
if wait $pid; then rc=0; else rc=$?; fi
[ "$rc" -eq 130 ] || { echo "FAIL: SIGINT with stopped workers: exit $rc: $(cat "$dir/err")" >&2; exit 1; }
grep -q "stopped by SIGINT" "$dir/err" || { echo "FAIL: $(cat "$dir/err")" >&2; exit 1; }
"$tools/stoker-bench" "$dir/fm" --workers 2 --epochs 1000000 --timeout 1 --no-memcpy 2>"$dir/err" >/dev/null &
pid=$!
bg="$bg $pid"
stop_workers $pid
if wait $pid; then rc=0; else rc=$?; fi
[ "$rc" -eq 1 ] || { echo "FAIL: --timeout 1 with stopped workers: exit $rc" >&2; exit 1; }
grep -q "not ready after 1000 ms: worker [01] (pid [0-9]*, stopped)" "$dir/err" ||
    { echo "FAIL: $(cat "$dir/err")" >&2; exit 1; }
echo ok
