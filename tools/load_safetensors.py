#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Loads a Stoker state file (safetensors) into the PyTorch version of
# models/fmnist-cnn.model and checks that PyTorch computes the same logits
# as Stoker. The `safetensors` package may be missing, so the format is
# parsed by hand: 8-byte little-endian header length, JSON header, raw data.
#   /usr/bin/python3 tools/load_safetensors.py STATE.safetensors [INPUT.f32 LOGITS.f32]
# With the two raw float32 files (an N x 1 x 28 x 28 input and the N x 10
# logits Stoker computed in eval mode, as tools/stoker-enginebench --export
# writes them) it compares outputs; without them it only loads the weights.
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_engine_fixtures import FmnistCnn  # noqa: E402

DTYPES = {"F32": np.float32, "I64": np.int64, "F16": np.float16, "I32": np.int32}


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    data = blob[8 + hlen:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype=DTYPES[info["dtype"]]).reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def main():
    state = read_safetensors(sys.argv[1])
    net = FmnistCnn()
    missing, unexpected = net.load_state_dict(state, strict=True), None
    print(f"loaded {len(state)} tensors into the PyTorch model ({missing})")
    if len(sys.argv) >= 4:
        x = torch.from_numpy(np.fromfile(sys.argv[2], dtype=np.float32)).reshape(-1, 1, 28, 28)
        want = torch.from_numpy(np.fromfile(sys.argv[3], dtype=np.float32)).reshape(x.shape[0], -1)
        net.eval()
        with torch.no_grad():
            got = net(x)
        err = (got - want).abs().max().item()
        print(f"max |torch - stoker| over {x.shape[0]} samples: {err:.3g}")
        if err > 1e-4 * max(1.0, want.abs().max().item()):
            print("MISMATCH")
            sys.exit(1)
        print("outputs match")


if __name__ == "__main__":
    main()
