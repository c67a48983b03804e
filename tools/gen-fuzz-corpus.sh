#!/bin/sh
# SPDX-License-Identifier: MIT
# Regenerates tests/fuzz/corpus/shard/: tiny shard sets packed by
# stoker-pack (raw, zstd, zstd + dictionary, variable-length records) plus a
# manifest and a few broken files (the hashed names beside them are inputs
# libFuzzer found, kept after -merge=1). Usage: tools/gen-fuzz-corpus.sh BUILDDIR
set -eu
build=${1:?usage: $0 BUILDDIR}
pack="$build/tools/stoker-pack"
src=$(cd "$(dirname "$0")/.." && pwd)
out="$src/tests/fuzz/corpus/shard"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 - "$tmp" <<'PY'
import numpy as np, os, sys
t = sys.argv[1]
np.save(f"{t}/u8.npy", (np.arange(4 * 3 * 3) % 7).astype(np.uint8).reshape(4, 3, 3))
np.save(f"{t}/lab4.npy", np.array([0, 1, 2, 1], dtype=np.int64))
np.save(f"{t}/f32.npy", (np.arange(40 * 32) // 8 % 5).astype(np.float32).reshape(40, 32))
np.save(f"{t}/lab40.npy", (np.arange(40) % 3).astype(np.uint8))
for c, files in (("cat", ["a.bin", "b.bin"]), ("dog", ["c.bin"])):
    os.makedirs(f"{t}/folder/{c}", exist_ok=True)
    for i, f in enumerate(files):
        open(f"{t}/folder/{c}/{f}", "wb").write(bytes(range(i * 5, i * 5 + 9)))
PY
mkdir -p "$out"
rm -f "$out"/raw.stk "$out"/manifest "$out"/zstd.stk "$out"/dict.stk "$out"/var.stk "$out"/truncated.stk "$out"/badmagic
"$pack" npy "$tmp/u8.npy" "$tmp/lab4.npy" -o "$tmp/raw" --level 0 -q
cp "$tmp/raw/shard-00000.stk" "$out/raw.stk"
cp "$tmp/raw/shard.manifest" "$out/manifest"
"$pack" npy "$tmp/f32.npy" "$tmp/lab40.npy" -o "$tmp/zstd" --level 3 --no-dict -n 20 -q
cp "$tmp/zstd/shard-00001.stk" "$out/zstd.stk"
"$pack" npy "$tmp/f32.npy" "$tmp/lab40.npy" -o "$tmp/dict" --level 1 --dict-size 256 -q
cp "$tmp/dict/shard-00000.stk" "$out/dict.stk"
"$pack" folder "$tmp/folder" -o "$tmp/folder.out" --level 0 -q
cp "$tmp/folder.out/shard-00000.stk" "$out/var.stk"
head -c 100 "$out/raw.stk" > "$out/truncated.stk"
printf 'NOTASHRD0123456789' > "$out/badmagic"
ls -l "$out"
