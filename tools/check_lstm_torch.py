#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Checks that a sequence model Stoker saved loads into PyTorch: the state
# file (safetensors, torch's parameter names) goes into the torch.nn
# version of the model file (tools/train_seq_torch.py's SeqModel:
# torch.nn.LSTM / GRU, Linear, Embedding) with load_state_dict(strict=True),
# and PyTorch's eval-mode logits on the input Stoker used must equal
# Stoker's within 1e-5. The three files come from
#   build/tools/stoker-enginebench --model MODEL --export PREFIX
# (PREFIX.safetensors, PREFIX.input.f32, PREFIX.logits.f32); run:
#   /usr/bin/python3 tools/check_lstm_torch.py MODEL PREFIX
# Exit 0 when within tolerance, 1 otherwise.
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_safetensors import read_safetensors  # noqa: E402
from train_seq_torch import SeqModel  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: check_lstm_torch.py MODEL PREFIX")
    model_path, prefix = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    m = SeqModel(model_path).double()
    state = {k: v.double() for k, v in read_safetensors(prefix + ".safetensors").items()}
    missing = m.load_state_dict(state, strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    logits = torch.from_numpy(np.fromfile(prefix + ".logits.f32", dtype=np.float32)).double()
    x = torch.from_numpy(np.fromfile(prefix + ".input.f32", dtype=np.float32)).double()
    n = logits.numel() // m._modules[m.order[-1][1]].out_features
    if m.tokens:
        sys.exit("check_lstm_torch.py: token inputs are not exported by stoker-enginebench")
    x = x.reshape(n, m.steps, -1)
    m.eval()
    with torch.no_grad():
        ref = m(x, torch.full((n,), m.steps, dtype=torch.long)).reshape(-1)
    err = float((ref - logits).abs().max())
    print(f"{model_path}: {len(state)} tensors loaded into PyTorch ({', '.join(list(state)[:3])}, ...); "
          f"logits of {n} samples: max |PyTorch - Stoker| = {err:.3g}")
    sys.exit(0 if err <= 1e-5 else 1)


if __name__ == "__main__":
    main()
