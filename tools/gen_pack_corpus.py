#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# Writes the seed corpus of tests/fuzz/fuzz_pack.c: small valid IDX, .npy
# and CIFAR inputs, and the inputs behind importer bugs found before (IDX
# with trailing bytes, an empty .npy). Each file: a format byte (0 idx,
# 1 npy, 2 cifar10, 3 cifar100), u32 LE length A, A bytes of the first
# input, then the second. Run: /usr/bin/python3 tools/gen_pack_corpus.py
import gzip
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), '..', 'tests', 'fuzz', 'corpus', 'pack')


def case(name, fmt, a, b=b''):
    with open(os.path.join(OUT, name), 'wb') as f:
        f.write(bytes([fmt]) + struct.pack('<I', len(a)) + a + b)


def idx(dims, typ, payload):
    return struct.pack('>BBBB', 0, 0, typ, len(dims)) + b''.join(struct.pack('>I', d) for d in dims) + payload


def npy(descr, shape, payload):
    hdr = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    hdr += ' ' * ((64 - (10 + len(hdr) + 1) % 64) % 64) + '\n'
    return b'\x93NUMPY\x01\x00' + struct.pack('<H', len(hdr)) + hdr.encode() + payload


os.makedirs(OUT, exist_ok=True)
img = idx([3, 2, 2], 0x08, bytes(range(12)))
lab = idx([3], 0x08, bytes([1, 2, 3]))
case('idx_ok', 0, img, lab)
case('idx_gz', 0, gzip.compress(img, mtime=0), gzip.compress(lab, mtime=0))
case('idx_trailing_bytes', 0, img + b'\xab' * 7, lab)
case('idx_trailing_bytes_gz', 0, gzip.compress(img + b'\xab' * 7, mtime=0), lab)
case('idx_zero_images', 0, idx([0, 2, 2], 0x08, b''), idx([0], 0x08, b''))
case('idx_truncated', 0, img[:-3], lab)
x = npy('<f4', '(3, 2)', struct.pack('<6f', *range(6)))
y = npy('<i2', '(3,)', struct.pack('<3h', -1, 0, 1))
case('npy_ok', 1, x, y)
case('npy_empty', 1, npy('<f4', '(0, 2)', b''), npy('<i4', '(0,)', b''))
case('npy_trailing_bytes', 1, x + b'\0' * 4, y)
case('npy_v2', 1, b'\x93NUMPY\x02\x00' + x[8:10] + b'\0\0' + x[10:], y)
case('cifar10_ok', 2, bytes(3073 * 2))
case('cifar100_ok', 3, bytes(3074))
case('cifar_ragged', 2, bytes(3073 + 5))
