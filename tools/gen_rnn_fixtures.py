#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Generates the recurrent layers' PyTorch fixtures (tests/data/rnn/*.safetensors):
# torch.nn.LSTM / torch.nn.GRU (batch_first) forward and backward over a padded
# batch with per-sequence lengths (packed-sequence semantics through
# pack_padded_sequence), one- and two-layer, uni- and bidirectional, with and
# without an initial state. PyTorch computes in float64 and the file stores
# float32, so the reference is exact to f32 rounding. Parameters keep
# PyTorch's names (weight_ih_l0, bias_hh_l1_reverse, ...). The C tests
# (tests/unit/test_rnn.c) read these; CI needs no PyTorch.
# Run: /usr/bin/python3 tools/gen_rnn_fixtures.py [outdir]
import json
import os
import struct
import sys
import zlib

import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "rnn")


def write_safetensors(path, tensors, meta):
    header = {"__metadata__": meta}
    blobs, off = [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if t.dtype == torch.int64:
            dt, b = "I64", t.numpy().astype("<i8").tobytes()
        else:
            dt, b = "F32", t.float().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def rnn_case(name, cell, n, t, inp, hidden, layers, bidir, init, lengths):
    """One case: stores x, lengths, h0/c0 (when init), the parameters, the
    upstream gradients dy (zero past each end), dhn, dcn, and PyTorch's y,
    hn, cn, dx, dh0, dc0 and parameter gradients."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    dirs = 2 if bidir else 1
    mod_cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
    mod = mod_cls(inp, hidden, num_layers=layers, bidirectional=bidir, batch_first=True).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * 0.6)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()  # [n, t]
    # Round every input to f32 first so that the C side sees the same numbers.
    f32 = lambda a: a.float().double()
    x = f32(torch.randn(n, t, inp, generator=g, dtype=torch.float64)) * mask[:, :, None]
    x.requires_grad_(True)
    for p in mod.parameters():
        with torch.no_grad():
            p.copy_(f32(p))
    h0 = f32(torch.randn(layers * dirs, n, hidden, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    c0 = f32(torch.randn(layers * dirs, n, hidden, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    dy = f32(torch.randn(n, t, dirs * hidden, generator=g, dtype=torch.float64)) * mask[:, :, None]
    dhn = f32(torch.randn(layers * dirs, n, hidden, generator=g, dtype=torch.float64))
    dcn = f32(torch.randn(layers * dirs, n, hidden, generator=g, dtype=torch.float64))

    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    if cell == "lstm":
        state = (h0, c0) if init else None
        out, (hn, cn) = mod(packed, state)
    else:
        state = h0 if init else None
        out, hn = mod(packed, state)
        cn = None
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
    loss = (y * dy).sum() + (hn * dhn).sum()
    if cn is not None:
        loss = loss + (cn * dcn).sum()
    loss.backward()

    ts = {"x": x, "lengths": lengths, "dy": dy, "dhn": dhn, "y": y, "hn": hn, "dx": x.grad}
    if cell == "lstm":
        ts["dcn"] = dcn
        ts["cn"] = cn
    if init:
        ts["h0"] = h0
        ts["dh0"] = h0.grad
        if cell == "lstm":
            ts["c0"] = c0
            ts["dc0"] = c0.grad
    for pname, p in mod.named_parameters():
        ts["param." + pname] = p
        ts["grad." + pname] = p.grad
    meta = {"cell": cell, "batch": str(n), "steps": str(t), "input": str(inp), "hidden": str(hidden),
            "layers": str(layers), "bidirectional": str(int(bidir)), "init": str(int(init)),
            "params": ",".join(pn for pn, _ in mod.named_parameters())}
    write_safetensors(os.path.join(OUT, name + ".safetensors"), ts, meta)
    return name


def main():
    os.makedirs(OUT, exist_ok=True)
    names = []
    ragged = [5, 2, 4, 1]  # unsorted on purpose, one sequence of length 1
    for cell in ("lstm", "gru"):
        for layers in (1, 2):
            for bidir in (False, True):
                for init in (False, True):
                    for rag in (False, True):
                        name = "%s_l%d_%s_%s_%s" % (cell, layers, "bi" if bidir else "uni",
                                                   "h0" if init else "zero", "ragged" if rag else "full")
                        lens = ragged if rag else [5, 5, 5, 5]
                        names.append(rnn_case(name, cell, 4, 5, 3, 4, layers, bidir, init, lens))
    # Larger shapes (blocked kernels, sizes that are not multiples of 8) and
    # many distinct lengths, including a tie and a full-length sequence.
    names.append(rnn_case("lstm_l2_bi_h0_big", "lstm", 9, 11, 13, 24, 2, True, True,
                          [11, 3, 7, 7, 1, 9, 2, 11, 5]))
    names.append(rnn_case("gru_l2_bi_h0_big", "gru", 9, 11, 13, 24, 2, True, True,
                          [4, 11, 6, 6, 10, 1, 8, 2, 11]))
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("# generated by tools/gen_rnn_fixtures.py; one case per line\n")
        for n in names:
            f.write(n + "\n")
    print("wrote %d cases to %s" % (len(names), OUT))


if __name__ == "__main__":
    main()
