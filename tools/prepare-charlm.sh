#!/bin/sh
# SPDX-License-Identifier: MIT
# Packs the character language model's data (configs/charlm.conf): the
# words of /usr/share/dict/words (Debian's wamerican), every 10th line held
# out for testing, one record of bytes per word, into data/words-train and
# data/words-test. tools/train_seq_torch.py splits the same way.
#   tools/prepare-charlm.sh [WORDS] [BUILD]
set -eu
words=${1:-/usr/share/dict/words}
build=${2:-build}
[ -r "$words" ] || { echo "prepare-charlm: $words not found (apt-get install wamerican)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk 'NR % 10 != 0' "$words" > "$tmp/train.txt"
awk 'NR % 10 == 0' "$words" > "$tmp/test.txt"
mkdir -p data
"$build/tools/stoker-pack" text "$tmp/train.txt" -o data/words-train --force --quiet
"$build/tools/stoker-pack" text "$tmp/test.txt" -o data/words-test --force --quiet
echo "prepare-charlm: data/words-train ($(wc -l < "$tmp/train.txt") words), data/words-test ($(wc -l < "$tmp/test.txt") words)"
