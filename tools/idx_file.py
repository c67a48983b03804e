# SPDX-License-Identifier: MIT
# Reads the gzipped IDX files Fashion-MNIST comes in (magic, dims, then
# the bytes), for the PyTorch sides of the benchmarks and the training
# comparison: one reader, so that both see the same data.
import gzip
import struct

import numpy as np


def read_idx(path):
    """The file's data as a read-only uint8 array of its dims."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
