#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Generates the per-op fixtures of the backend conformance test
# (tests/conformance/): for each case one safetensors file with the op's
# parameters (metadata "op" and "params"), its inputs, and what PyTorch
# 1.13 computes from them (outputs and gradients). The C test runs the
# op through every backend that is present and compares the CPU backend
# with these numbers and every other backend with the CPU backend.
# Dropout's expected values come from the engine's Philox mask, computed
# here in numpy (tools/gen_engine_fixtures.py has the port).
# Run: /usr/bin/python3 tools/gen_conformance_fixtures.py [outdir]
import os
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_engine_fixtures import philox, write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float32)
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data",
                                                         "conformance")


def gen(name):
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def params_text(p):
    return ",".join(f"{k}={v}" for k, v in p.items())


def grads(out, inputs, dy):
    return torch.autograd.grad(out, inputs, dy)


# ------------------------------------------------------------------ cases


def conv(name, n, ic, ih, iw, oc, kh, kw, sh=1, sw=1, ph=0, pw=0, dh=1, dw=1, groups=1, bias=1):
    g = gen(name)
    x = torch.randn(n, ic, ih, iw, generator=g).requires_grad_(True)
    w = (torch.randn(oc, ic // groups, kh, kw, generator=g) * 0.3).requires_grad_(True)
    b = torch.randn(oc, generator=g).requires_grad_(True)
    y = F.conv2d(x, w, b if bias else None, (sh, sw), (ph, pw), (dh, dw), groups)
    dy = torch.randn(y.shape, generator=g)
    ins = [x, w] + ([b] if bias else [])
    gr = grads(y, ins, dy)
    p = dict(n=n, ic=ic, ih=ih, iw=iw, oc=oc, oh=y.shape[2], ow=y.shape[3], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph,
             pw=pw, dh=dh, dw=dw, groups=groups, bias=bias)
    t = {"x": x, "w": w, "b": b, "dy": dy, "y": y, "dx": gr[0], "dw": gr[1]}
    if bias:
        t["db"] = gr[2]
    return name, "conv", p, t


def bn(name, n, c, h, w, relu=0, eps=1e-5):
    g = gen(name)
    x = (torch.randn(n, c, h, w, generator=g) * 2 + 0.5).requires_grad_(True)
    gamma = (torch.rand(c, generator=g) + 0.5).requires_grad_(True)
    beta = torch.randn(c, generator=g).requires_grad_(True)
    rm0, rv0 = torch.randn(c, generator=g) * 0.1, torch.rand(c, generator=g) + 0.5
    rm, rv = rm0.clone(), rv0.clone()
    y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=eps)
    if relu:
        y = F.relu(y)
    dy = torch.randn(y.shape, generator=g)
    dx, dgamma, dbeta = grads(y, [x, gamma, beta], dy)
    mean = x.detach().mean(dim=(0, 2, 3))
    var = x.detach().var(dim=(0, 2, 3), unbiased=False)
    ye = F.batch_norm(x.detach(), rm0, rv0, gamma.detach(), beta.detach(), training=False, eps=eps)
    if relu:
        ye = F.relu(ye)
    p = dict(n=n, c=c, h=h, w=w, relu=relu, eps=eps, momentum=0.1)
    t = {"x": x, "gamma": gamma, "beta": beta, "dy": dy, "y": y, "mean": mean, "var": var, "dx": dx,
         "dgamma": dgamma, "dbeta": dbeta, "running_mean0": rm0, "running_var0": rv0, "running_mean": rm,
         "running_var": rv, "y_eval": ye}
    return name, "batchnorm", p, t


def pool(name, mx, n, c, ih, iw, kh, kw, sh, sw, ph=0, pw=0):
    g = gen(name)
    x = torch.randn(n, c, ih, iw, generator=g).requires_grad_(True)
    if mx:
        y = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw))
    else:
        y = F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), count_include_pad=True)
    dy = torch.randn(y.shape, generator=g)
    (dx,) = grads(y, [x], dy)
    p = dict(max=mx, n=n, c=c, ih=ih, iw=iw, oh=y.shape[2], ow=y.shape[3], kh=kh, kw=kw, sh=sh, sw=sw, ph=ph, pw=pw)
    return name, "pool", p, {"x": x, "dy": dy, "y": y, "dx": dx}


def linear(name, n, fin, fout, bias=1):
    g = gen(name)
    x = torch.randn(n, fin, generator=g).requires_grad_(True)
    w = (torch.randn(fout, fin, generator=g) * 0.2).requires_grad_(True)
    b = torch.randn(fout, generator=g).requires_grad_(True)
    y = F.linear(x, w, b if bias else None)
    dy = torch.randn(y.shape, generator=g)
    gr = grads(y, [x, w] + ([b] if bias else []), dy)
    t = {"x": x, "w": w, "b": b, "dy": dy, "y": y, "dx": gr[0], "dw": gr[1]}
    if bias:
        t["db"] = gr[2]
    return name, "linear", dict(n=n, fin=fin, fout=fout, bias=bias), t


ELT = {"relu": (0, F.relu), "leaky_relu": (1, lambda x: F.leaky_relu(x, 0.1)), "gelu": (2, F.gelu),
       "sigmoid": (3, torch.sigmoid), "tanh": (4, torch.tanh)}


def eltwise(fn, count=1003):
    name = "eltwise_" + fn
    g = gen(name)
    x = (torch.randn(count, generator=g) * 3).requires_grad_(True)
    alg, f = ELT[fn]
    y = f(x)
    dy = torch.randn(count, generator=g)
    (dx,) = grads(y, [x], dy)
    return name, "eltwise", dict(alg=alg, alpha=0.1, n=count), {"x": x, "dy": dy, "y": y, "dx": dx}


def add(count=777):
    g = gen("add")
    a, b, y0 = (torch.randn(count, generator=g) for _ in range(3))
    return "add", "add", dict(n=count), {"a": a, "b": b, "y": a + b, "y0": y0, "acc": y0 + a}


def concat(name, n, ca, cb, hw):
    g = gen(name)
    a = torch.randn(n, ca, hw, generator=g).requires_grad_(True)
    b = torch.randn(n, cb, hw, generator=g).requires_grad_(True)
    y = torch.cat([a, b], 1)
    dy = torch.randn(y.shape, generator=g)
    da, db = grads(y, [a, b], dy)
    db0 = torch.randn(db.shape, generator=g)
    t = {"a": a, "b": b, "y": y, "dy": dy, "da": da, "db": db, "db0": db0, "db_acc": db0 + db}
    return name, "concat", dict(n=n, ca=ca, cb=cb, hw=hw), t


def dropout(name, count, p, key, step):
    g = gen(name)
    x = torch.randn(count, generator=g)
    dy = torch.randn(count, generator=g)
    blocks = (count + 3) // 4
    words = philox(key, step, np.arange(blocks)).reshape(-1)[:count]
    u = (words >> 8).astype(np.float32) * np.float32(1.0 / 16777216.0)
    scale = np.float32(1.0 / (1.0 - p)) if p < 1 else np.float32(0)
    keep = torch.from_numpy((u >= np.float32(p)).astype(np.float32) * scale)
    prm = dict(n=count, p=p, key=key, step=step)
    return name, "dropout", prm, {"x": x, "dy": dy, "y": x * keep, "dx": dy * keep}


def xent(name, n, k, smoothing, soft, scale=1.0):
    g = gen(name)
    z = (torch.randn(n, k, generator=g) * 2).requires_grad_(True)
    t = {"logits": z}
    if soft:
        target = torch.softmax(torch.randn(n, k, generator=g) * 2, 1)
        t["soft"] = target
    else:
        target = torch.randint(0, k, (n,), generator=g)
        t["labels"] = target
    loss = F.cross_entropy(z, target, label_smoothing=smoothing)
    (dz,) = grads(loss * scale, [z], torch.tensor(1.0))
    t.update({"prob": torch.softmax(z.detach(), 1), "loss": loss.reshape(1), "dlogits": dz})
    if not soft:
        # Top-k accuracy as the backends count it: rank = logits above the
        # label's, plus equal ones at lower indices.
        zd, lab = z.detach(), target
        zy = zd.gather(1, lab[:, None])
        idx = torch.arange(k)[None, :]
        rank = ((zd > zy) | ((zd == zy) & (idx < lab[:, None]))).sum(1)
        t["correct1"] = (rank < 1).sum().float().reshape(1)
        t["correct3"] = (rank < 3).sum().float().reshape(1)
    return name, "xent", dict(n=n, k=k, smoothing=smoothing, soft=int(soft), scale=scale), t


def rows(name, n, f, nrows):
    """gather_rows (an embedding lookup, repeated indices) and
    scatter_add_rows (its gradient), with and without a skipped index."""
    g = gen(name)
    src = torch.randn(nrows, f, generator=g)
    idx = torch.randint(0, nrows, (n,), generator=g)
    idx[3] = idx[0]  # a repeat
    grad = torch.randn(n, f, generator=g)
    dst0 = torch.randn(nrows, f, generator=g)
    skip = int(idx[1])
    keep = idx != skip
    t = {"src": src, "idx": idx, "grad": grad, "dst0": dst0, "dst": src[idx],
         "scatter": dst0.index_add(0, idx, grad), "scatter_skip": dst0.index_add(0, idx[keep], grad[keep])}
    return name, "rows", dict(n=n, f=f, rows=nrows, skip=skip), t


def seq_pool(name, lengths, t, f):
    g = gen(name)
    n = len(lengths)
    x = torch.randn(n, t, f, generator=g).requires_grad_(True)
    lens = torch.tensor(lengths, dtype=torch.int64)
    dy = torch.randn(n, f, generator=g)
    out = {"x": x, "lengths": lens, "dy": dy}
    for mean, tag in ((0, "last"), (1, "mean")):
        ys = []
        for i, ln in enumerate(lengths):
            if ln == 0:
                ys.append(x[i, 0] * 0)
            elif mean:
                ys.append(x[i, :ln].sum(0) * (1.0 / ln))
            else:
                ys.append(x[i, ln - 1])
        y = torch.stack(ys)
        (dx,) = grads(y, [x], dy)
        out["y_" + tag], out["dx_" + tag] = y, dx
    return name, "seq_pool", dict(n=n, t=t, f=f), out


def rnn(name, cell, n, t, inp, hidden, layers, bidir, lengths):
    """An LSTM / GRU stack over padded sequences (PyTorch's packed-sequence
    semantics), as tools/gen_rnn_fixtures.py makes them: float64 math on
    inputs rounded to float32. Parameters under their PyTorch names."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    g = gen(name)
    f32 = lambda a: a.float().double()
    dirs = 2 if bidir else 1
    mod = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(inp, hidden, num_layers=layers,
                                                              bidirectional=bidir, batch_first=True).double()
    with torch.no_grad():
        for prm in mod.parameters():
            prm.copy_(f32((torch.rand(prm.shape, generator=g, dtype=torch.float64) * 2 - 1) * 0.5))
    lens = torch.tensor(lengths, dtype=torch.int64)
    mask = (torch.arange(t)[None, :] < lens[:, None]).double()
    x = (f32(torch.randn(n, t, inp, generator=g, dtype=torch.float64)) * mask[:, :, None]).requires_grad_(True)
    sh = (layers * dirs, n, hidden)
    h0 = f32(torch.randn(*sh, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    c0 = f32(torch.randn(*sh, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    dy = f32(torch.randn(n, t, dirs * hidden, generator=g, dtype=torch.float64)) * mask[:, :, None]
    dhn, dcn = f32(torch.randn(*sh, generator=g, dtype=torch.float64)), f32(torch.randn(*sh, generator=g,
                                                                                          dtype=torch.float64))
    packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
    if cell == "lstm":
        out, (hn, cn) = mod(packed, (h0, c0))
    else:
        out, hn = mod(packed, h0)
        cn = None
    y, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
    loss = (y * dy).sum() + (hn * dhn).sum() + ((cn * dcn).sum() if cn is not None else 0)
    loss.backward()
    ts = {"x": x, "lengths": lens, "h0": h0, "dy": dy, "dhn": dhn, "y": y, "hn": hn, "dx": x.grad, "dh0": h0.grad}
    if cell == "lstm":
        ts.update({"c0": c0, "dcn": dcn, "cn": cn, "dc0": c0.grad})
    for pname, prm in mod.named_parameters():
        ts["param." + pname] = prm
        ts["grad." + pname] = prm.grad
    prm = dict(lstm=int(cell == "lstm"), n=n, t=t, input=inp, hidden=hidden, layers=layers, bidirectional=int(bidir))
    return name, "rnn", prm, ts


OPTIM_KIND = {"sgd": 1, "adam": 2, "adamw": 3, "rmsprop": 4}


def optim(name, kind, steps=3, **h):
    """torch.optim over the elements of two ranges of a 1000-float arena
    (the rest must stay as it is), `steps` steps with fresh gradients."""
    g = gen(name)
    size, ranges = 1000, [(0, 300), (420, 580)]
    p0 = torch.randn(size, generator=g)
    gs = [torch.randn(size, generator=g) for _ in range(steps)]
    parts = [p0[a:a + c].clone().requires_grad_(True) for a, c in ranges]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
           "rmsprop": torch.optim.RMSprop}[kind]
    opt = cls(parts, **h)
    for gr in gs:
        for part, (a, c) in zip(parts, ranges):
            part.grad = gr[a:a + c].clone()
        opt.step()
    p = p0.clone()
    with torch.no_grad():
        for part, (a, c) in zip(parts, ranges):
            p[a:a + c] = part
    t = {"p0": p0, "p": p}
    for i, gr in enumerate(gs):
        t[f"g{i}"] = gr
    prm = dict(kind=OPTIM_KIND[kind], steps=steps, size=size, r0=ranges[0][0], n0=ranges[0][1], r1=ranges[1][0],
               n1=ranges[1][1])
    for k, v in h.items():
        if k == "betas":
            prm["beta1"], prm["beta2"] = v
        else:
            prm[k] = int(v) if isinstance(v, bool) else v
    return name, "optim", prm, t


def reorder(name, n, c, h, w):
    g = gen(name)
    x = torch.randn(n, c, h, w, generator=g)
    blocked = x.reshape(n, c // 8, 8, h, w).permute(0, 1, 3, 4, 2).contiguous()
    return name, "reorder", dict(n=n, c=c, h=h, w=w), {"x": x, "blocked": blocked}


def cases():
    return [
        conv("conv_basic", 2, 3, 9, 8, 8, 3, 3, ph=1, pw=1),
        conv("conv_stride2_nobias", 2, 4, 10, 10, 6, 3, 3, sh=2, sw=2, bias=0),
        conv("conv_dilation2", 1, 4, 12, 11, 8, 3, 3, ph=2, pw=2, dh=2, dw=2),
        conv("conv_groups4", 2, 8, 7, 7, 16, 3, 3, ph=1, pw=1, groups=4),
        conv("conv_depthwise_k5", 2, 8, 9, 9, 8, 5, 5, ph=2, pw=2, groups=8),
        conv("conv_rect_mixed", 3, 5, 8, 11, 7, 3, 2, sh=2, sw=1, ph=1, pw=0, dh=1, dw=2),
        conv("conv_1x1", 4, 16, 5, 6, 24, 1, 1),
        bn("bn_train", 4, 6, 5, 5),
        bn("bn_relu", 3, 8, 4, 4, relu=1),
        bn("bn_1x1", 8, 16, 1, 1, eps=1e-3),
        pool("maxpool_2x2", 1, 2, 3, 8, 8, 2, 2, 2, 2),
        pool("maxpool_k3s2p1", 1, 2, 4, 9, 9, 3, 3, 2, 2, 1, 1),
        pool("maxpool_overlap", 1, 1, 2, 6, 7, 3, 3, 1, 1, 1, 1),
        pool("avgpool_k3s2p1", 0, 2, 3, 9, 10, 3, 3, 2, 2, 1, 1),
        pool("avgpool_global", 0, 2, 8, 7, 7, 7, 7, 1, 1),
        linear("linear_basic", 5, 12, 7),
        linear("linear_nobias", 3, 33, 10, bias=0),
        linear("linear_batch1", 1, 64, 3),
        eltwise("relu"),
        eltwise("leaky_relu"),
        eltwise("gelu"),
        eltwise("sigmoid"),
        eltwise("tanh"),
        add(),
        concat("concat", 2, 3, 5, 12),
        dropout("dropout_p03", 1001, 0.3, 0x123456789ABCDEF, 7),
        dropout("dropout_p09", 64, 0.9, 42, 1 << 40),
        dropout("dropout_p0", 9, 0.0, 5, 0),
        xent("xent_labels", 6, 10, 0.0, False),
        xent("xent_smooth", 5, 7, 0.1, False, scale=0.5),
        xent("xent_soft", 4, 9, 0.0, True),
        xent("xent_soft_smooth", 3, 6, 0.2, True, scale=2.0),
        xent("xent_wide", 3, 1500, 0.05, False),
        reorder("reorder_c16", 2, 16, 3, 5),
        rows("rows_embedding", 37, 12, 20),
        rnn("rnn_lstm_2l_bi_ragged", "lstm", 4, 6, 5, 7, 2, True, [6, 3, 1, 2]),
        rnn("rnn_gru_1l_full", "gru", 3, 5, 4, 6, 1, False, [5, 5, 5]),
        seq_pool("seq_pool", [6, 1, 0, 3, 5], 6, 7),
        optim("optim_sgd_nesterov", "sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        optim("optim_sgd_plain", "sgd", lr=0.05),
        optim("optim_sgd_dampening", "sgd", lr=0.05, momentum=0.8, dampening=0.3, maximize=True),
        optim("optim_adam", "adam", lr=1e-3, weight_decay=1e-2),
        optim("optim_adam_amsgrad", "adam", lr=2e-3, betas=(0.8, 0.99), amsgrad=True),
        optim("optim_adamw", "adamw", lr=1e-3, weight_decay=0.05),
        optim("optim_rmsprop", "rmsprop", lr=1e-2),
        optim("optim_rmsprop_centered", "rmsprop", lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3),
    ]


def main():
    os.makedirs(OUT, exist_ok=True)
    cs = cases()
    for name, op, p, t in cs:
        write_safetensors(os.path.join(OUT, name + ".safetensors"), t, {"op": op, "params": params_text(p)})
    print(f"wrote {len(cs)} fixtures to {OUT}")


if __name__ == "__main__":
    main()
