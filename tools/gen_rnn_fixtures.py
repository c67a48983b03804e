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


# ------------------------------------------------------------ whole models


def model_case(name, text, build, forward, n, t, lengths, tokens=None, x=None, targets=None, labels=None):
    """A model in Stoker's model-file syntax and its torch twin: the
    parameters (by Stoker's names), the batch, and torch's loss and
    parameter gradients (float64 math, stored as f32)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    mods = build()
    f32 = lambda a: a.float().double()
    with torch.no_grad():
        for mname, mod in mods.items():
            for pname, p in mod.named_parameters():
                p.copy_(f32((torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 - 1) * 0.5))
            if isinstance(mod, torch.nn.Embedding) and mod.padding_idx is not None:
                mod.weight[mod.padding_idx].zero_()
    lengths = torch.tensor(lengths, dtype=torch.int64)
    loss = forward(mods, lengths)
    loss.backward()
    ts = {"lengths": lengths, "loss": loss.detach().reshape(1)}
    if tokens is not None:
        ts["tokens"] = tokens
    if x is not None:
        ts["x"] = x
    if targets is not None:
        ts["targets"] = targets
    if labels is not None:
        ts["labels"] = labels
    for mname, mod in mods.items():
        for pname, p in mod.named_parameters():
            ts["param.%s.%s" % (mname, pname)] = p
            ts["grad.%s.%s" % (mname, pname)] = p.grad
    # the engine's JSON reader takes no escapes: lines are joined by '|'
    write_safetensors(os.path.join(OUT, name + ".safetensors"), ts,
                      {"model": text.strip().replace("\n", "|"), "batch": str(n), "steps": str(t)})
    return name


def packed_run(rnn, x, lengths, t):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, _ = rnn(packed)
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
    return y


def lm_case():
    n, t, v = 4, 6, 11
    lengths = [6, 3, 1, 4]
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(1, v, (n, t), generator=g)
    targets = torch.randint(0, v, (n, t), generator=g)
    for i, L in enumerate(lengths):
        tokens[i, L:] = 0
        targets[i, L:] = -1
    targets[0, 2] = -1  # ignored inside a sequence too
    targets[3, 0] = -1
    text = ("input name=tok steps=6 tokens=1\n"
            "embedding name=emb vocab=11 dim=5 padding_idx=0\n"
            "lstm name=lstm hidden=7 layers=2\n"
            "linear name=out out=11\n"
            "cross_entropy name=loss ignore_index=-1\n")

    def build():
        return {"emb": torch.nn.Embedding(v, 5, padding_idx=0).double(),
                "lstm": torch.nn.LSTM(5, 7, 2, batch_first=True).double(),
                "out": torch.nn.Linear(7, v).double()}

    def forward(m, lens):
        y = packed_run(m["lstm"], m["emb"](tokens), lens, t)
        logits = m["out"](y)
        mask = (torch.arange(t)[None, :] < lens[:, None]).reshape(-1)
        flat_t = targets.reshape(-1).clone()
        flat_t[~mask] = -1
        return torch.nn.functional.cross_entropy(logits.reshape(-1, v), flat_t, ignore_index=-1)

    return model_case("model_lm", text, build, forward, n, t, lengths, tokens=tokens, targets=targets)


def classifier_case(name, cell, head, bidir):
    n, t, f, h, k = 5, 6, 3, 4, 3
    lengths = [6, 2, 5, 1, 6]
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + 1)
    x = (torch.randn(n, t, f, generator=g, dtype=torch.float64)).float().double()
    for i, L in enumerate(lengths):
        x[i, L:] = 0
    labels = torch.randint(0, k, (n,), generator=g)
    text = ("input name=x steps=6 features=3\n"
            "%s name=rnn hidden=4 layers=2 bidirectional=%d\n"
            "%s name=pool\n"
            "linear name=fc out=3\n"
            "cross_entropy name=loss\n") % (cell, int(bidir), head)
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU

    def build():
        return {"rnn": cls(f, h, 2, batch_first=True, bidirectional=bidir).double(),
                "fc": torch.nn.Linear((2 if bidir else 1) * h, k).double()}

    def forward(m, lens):
        y = packed_run(m["rnn"], x, lens, t)
        if head == "seq_last":
            pooled = y[torch.arange(n), lens - 1]
        else:
            mask = (torch.arange(t)[None, :] < lens[:, None]).double()
            pooled = (y * mask[:, :, None]).sum(1) / lens[:, None].double()
        return torch.nn.functional.cross_entropy(m["fc"](pooled), labels)

    return model_case(name, text, build, forward, n, t, lengths, x=x, labels=labels)


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
    models = [lm_case(), classifier_case("model_lstm_last", "lstm", "seq_last", False),
              classifier_case("model_gru_bi_mean", "gru", "seq_mean", True)]
    with open(os.path.join(OUT, "models.txt"), "w") as f:
        f.write("# generated by tools/gen_rnn_fixtures.py; one whole-model case per line\n")
        for n in models:
            f.write(n + "\n")
    with open(os.path.join(OUT, "cases.txt"), "w") as f:
        f.write("# generated by tools/gen_rnn_fixtures.py; one case per line\n")
        for n in names:
            f.write(n + "\n")
    print("wrote %d cases to %s" % (len(names), OUT))


if __name__ == "__main__":
    main()
