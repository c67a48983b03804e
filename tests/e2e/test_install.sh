#!/bin/sh
# SPDX-License-Identifier: MIT
# Installs this build into a temporary DESTDIR (meson install --destdir) and
# builds the examples against the installed headers and library through
# pkg-config, as an outside user would; runs two of them against the
# installed library, and checks that the format documents were installed.
# Usage: test_install.sh MESON CC SOURCE_ROOT BUILD_ROOT [EXTRA_CFLAGS]
set -eu
meson=$1 cc=$2 src=$3 build=$4 extra=${5:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$meson" install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; exit 1; }
pc=$(find "$tmp/root" -name stoker.pc | head -1)
[ -n "$pc" ] || { echo "no stoker.pc installed" >&2; exit 1; }
# The .pc names the final prefix; the sysroot points it into DESTDIR.
export PKG_CONFIG_PATH="$(dirname "$pc")" PKG_CONFIG_SYSROOT_DIR="$tmp/root"
flags=$(pkg-config --cflags --libs stoker)
libdir=$(pkg-config --libs-only-L stoker | sed 's/^ *-L//; s/ .*//')
for h in stoker.h train.h checkpoint.h engine.h loader.h; do
    f=$(find "$tmp/root" -path "*/include/stoker/$h" | head -1)
    [ -n "$f" ] || { echo "header stoker/$h not installed" >&2; exit 1; }
done
for e in custom_loop custom_dataset model_in_c; do
    # -I only from pkg-config: an example that reached an internal header
    # would not compile here.
    # shellcheck disable=SC2086
    "$cc" -std=c11 -Wall -Wextra -Werror -O1 $extra "$src/examples/$e.c" $flags -lm -o "$tmp/$e"
done
export LD_LIBRARY_PATH="$libdir"
"$tmp/model_in_c" "$src/models/fmnist-cnn.model" >"$tmp/out1"
tail -1 "$tmp/out1"
"$tmp/custom_dataset" >"$tmp/out2"
tail -1 "$tmp/out2"
# The binaries ran on the installed library, not the build tree's.
ldd "$tmp/model_in_c" | grep -q "$tmp/root" || { echo "model_in_c did not use the installed library" >&2; exit 1; }
for d in design.md custom-loop.md distributed.md train-state-format.md shard-format.md model-format.md train-config.md; do
    [ -n "$(find "$tmp/root" -path "*/doc/stoker/$d")" ] || { echo "doc $d not installed" >&2; exit 1; }
done
echo "installed, built against pkg-config stoker, ran"
