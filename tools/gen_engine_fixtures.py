#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Generates the engine's PyTorch fixtures (tests/data/engine/*.safetensors):
# for each case a tiny model in Stoker's model-file syntax, the input, the
# parameters, an upstream gradient, and what PyTorch 1.13 computes (output,
# loss, input gradient, parameter gradients, running stats). The C test
# (tests/unit/test_engine.c) rebuilds the model from the text and compares.
# The whole-network case (fmnist-cnn, batch 4) takes its parameters from
# Stoker's seeded init (Philox, ported below) so the file holds no weights,
# and its dropout mask from the same Philox stream as the engine's.
# Run: /usr/bin/python3 tools/gen_engine_fixtures.py [outdir]
import json
import zlib
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float32)
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "data", "engine")
M64 = (1 << 64) - 1

# ---------------------------------------------------------------- Philox


def rng_mix(a, b):
    z = a ^ ((b + 0x9E3779B97F4A7C15 + ((a << 6) & M64) + (a >> 2)) & M64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def philox(key, ctr_hi, ctr_lo):
    """Philox4x32-10 over arrays of ctr_lo; returns uint32 [n, 4]."""
    lo = np.asarray(ctr_lo, dtype=np.uint64)
    c0 = (lo & 0xFFFFFFFF).astype(np.uint64)
    c1 = (lo >> np.uint64(32)).astype(np.uint64)
    c2 = np.full_like(c0, ctr_hi & 0xFFFFFFFF)
    c3 = np.full_like(c0, (ctr_hi >> 32) & 0xFFFFFFFF)
    k0, k1 = key & 0xFFFFFFFF, (key >> 32) & 0xFFFFFFFF
    m32 = np.uint64(0xFFFFFFFF)
    for _ in range(10):
        p0 = np.uint64(0xD2511F53) * c0
        p1 = np.uint64(0xCD9E8D57) * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & m32
        hi1, lo1 = p1 >> np.uint64(32), p1 & m32
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0 = (k0 + 0x9E3779B9) & 0xFFFFFFFF
        k1 = (k1 + 0xBB67AE85) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def uniform_stream(key, stream, n):
    """stk_rng_uniform draws: n floats of the (key, stream) stream."""
    blocks = (n + 3) // 4
    words = philox(key, stream, np.arange(blocks)).reshape(-1)[:n]
    return (words >> 8).astype(np.float32) * np.float32(1.0 / 16777216.0)


def stoker_init(model_layers, seed):
    """The engine's init: U(-b, b), b = 1/sqrt(fan_in), keyed by (seed, layer index)."""
    state = {}
    for idx, (name, mod) in enumerate(model_layers):
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            w = mod.weight
            fan_in = w[0].numel()
            bound = np.float32(1.0) / np.sqrt(np.float32(fan_in))
            key = rng_mix(seed, idx)
            for t, p in enumerate([mod.weight, mod.bias]):
                if p is None:
                    continue
                u = uniform_stream(key, t, p.numel())
                v = (np.float32(2.0) * u - np.float32(1.0)) * bound
                with torch.no_grad():
                    p.copy_(torch.from_numpy(v.astype(np.float32)).reshape(p.shape))
    return state


def dropout_mask(seed, layer_index, step, shape, p):
    key = rng_mix(rng_mix(seed, 0x64726F70), layer_index)
    n = int(np.prod(shape))
    blocks = (n + 3) // 4
    words = philox(key, step, np.arange(blocks)).reshape(-1)[:n]
    u = (words >> 8).astype(np.float32) * np.float32(1.0 / 16777216.0)
    keep = (u >= np.float32(p)).astype(np.float32) * np.float32(1.0 / (1.0 - p))
    return torch.from_numpy(keep.reshape(shape))

# ------------------------------------------------------------ safetensors


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

# ------------------------------------------------------------------ cases


def layer_case(name, model_text, shape, fn, params, mode="train", extra_meta=None, buffers=None, x=None):
    """fn(x, params) -> y; params: {name: tensor}. dy random; stores grads."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if x is None:
        x = torch.randn(*shape, generator=g)
    x = x.clone().requires_grad_(True)
    ps = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    y = fn(x, ps)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy)
    t = {"x": x, "dy": dy, "y": y, "dx": x.grad}
    for k, v in params.items():
        t[k] = v
        t["grad." + k] = ps[k].grad
    for k, v in (buffers or {}).items():
        t[k] = v
    meta = {"model": model_text, "mode": mode}
    meta.update(extra_meta or {})
    return t, meta


def conv_case(cin, cout, h, w, k, stride, pad, dil, groups, bias=True):
    g = torch.Generator().manual_seed(cin * 1000 + cout * 100 + k * 10 + dil)
    wt = torch.randn(cout, cin // groups, k, k, generator=g) * 0.3
    params = {"c.weight": wt}
    if bias:
        params["c.bias"] = torch.randn(cout, generator=g) * 0.1
    text = (f"input shape={cin},{h},{w};conv2d name=c out={cout} kernel={k} stride={stride} pad={pad} "
            f"dilation={dil} groups={groups} bias={int(bias)}")
    fn = lambda x, p: F.conv2d(x, p["c.weight"], p.get("c.bias"), stride, pad, dil, groups)
    return layer_case(f"conv{cin}{cout}{k}{stride}{pad}{dil}{groups}", text, (2, cin, h, w), fn, params)


def bn_case(train):
    c, h, w = 3, 5, 4
    g = torch.Generator().manual_seed(7)
    params = {"bn.weight": torch.rand(c, generator=g) + 0.5, "bn.bias": torch.randn(c, generator=g)}
    rm, rv = torch.randn(c, generator=g) * 0.1, torch.rand(c, generator=g) + 0.5
    text = f"input shape={c},{h},{w};batchnorm2d name=bn eps=0.001 momentum=0.2"
    after = {}

    def fn(x, p):
        m, v = rm.clone(), rv.clone()
        y = F.batch_norm(x, m, v, p["bn.weight"], p["bn.bias"], training=train, momentum=0.2, eps=1e-3)
        after["after.bn.running_mean"], after["after.bn.running_var"] = m, v
        return y

    t, meta = layer_case("bn" + str(train), text, (3, c, h, w), fn, params, "train" if train else "eval",
                         buffers={"bn.running_mean": rm, "bn.running_var": rv})
    t.update(after)
    if not train:  # eval backward is not offered: keep only the forward
        for k in ["dy", "dx", "grad.bn.weight", "grad.bn.bias"]:
            del t[k]
    return t, meta


def simple_case(name, line, fn, shape=(2, 3, 5, 6), mode="train", meta=None):
    c, h, w = shape[1:]
    return layer_case(name, f"input shape={c},{h},{w};{line}", shape, fn, {}, mode, meta)


def linear_case():
    g = torch.Generator().manual_seed(3)
    params = {"fc.weight": torch.randn(5, 12, generator=g) * 0.3, "fc.bias": torch.randn(5, generator=g)}
    return layer_case("linear", "input shape=12;linear name=fc out=5", (3, 12),
                      lambda x, p: F.linear(x, p["fc.weight"], p["fc.bias"]), params)


def xent_case(name, smoothing, soft):
    n, k = 5, 7
    g = torch.Generator().manual_seed(11 + int(soft))
    x = torch.randn(n, k, generator=g) * 2
    labels = torch.randint(0, k, (n,), generator=g)
    target = torch.softmax(torch.randn(n, k, generator=g), 1) if soft else labels
    xx = x.clone().requires_grad_(True)
    loss = F.cross_entropy(xx, target, label_smoothing=smoothing)
    loss.backward()
    t = {"x": x, "loss": loss.reshape(1), "dx": xx.grad}
    if soft:
        t["soft"] = target
    else:
        t["labels"] = labels
    return t, {"model": f"input shape={k};cross_entropy name=loss smoothing={smoothing}", "mode": "train"}


def dropout_case():
    seed, step, p = 1234, 77, 0.3
    shape = (2, 3, 5, 6)
    mask = dropout_mask(seed, 1, step, shape, p)
    return simple_case("dropout", f"dropout name=d p={p}", lambda x, _: x * mask, shape,
                       meta={"seed": str(seed), "step": str(step)})


def concat_add_cases():
    out = []
    c, h, w = 3, 4, 5
    text = f"input name=data shape={c},{h},{w};relu name=r;add name=a inputs=data,r"
    out.append(("add", layer_case("add", text, (2, c, h, w), lambda x, _: x + F.relu(x), {})))
    text = f"input name=data shape={c},{h},{w};tanh name=t;concat name=cat inputs=t,data"
    out.append(("concat", layer_case("concat", text, (2, c, h, w), lambda x, _: torch.cat([torch.tanh(x), x], 1), {})))
    return out


def blocked_chain_case():
    """8 and 16 channels: the engine keeps these in oneDNN's blocked layout."""
    g = torch.Generator().manual_seed(21)
    p = {"c1.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.3, "c1.bias": torch.randn(8, generator=g) * 0.1,
         "bn.weight": torch.rand(8, generator=g) + 0.5, "bn.bias": torch.randn(8, generator=g) * 0.1,
         "c2.weight": torch.randn(16, 8, 3, 3, generator=g) * 0.2, "c2.bias": torch.randn(16, generator=g) * 0.1,
         "c3.weight": torch.randn(16, 4, 3, 3, generator=g) * 0.2}
    rm, rv = torch.zeros(8), torch.ones(8)
    text = ("input name=data shape=3,9,9;conv2d name=c1 out=8 kernel=3 pad=1;batchnorm2d name=bn;relu name=r1;"
            "maxpool2d name=p kernel=3 stride=2 pad=1;conv2d name=c2 out=16 kernel=3 pad=2 dilation=2;"
            "gelu name=g;conv2d name=c3 out=16 kernel=3 pad=1 groups=4 bias=0;add name=res inputs=c3,g;"
            "avgpool2d name=ap kernel=2;flatten name=fl")

    def fn(x, q):
        h = F.conv2d(x, q["c1.weight"], q["c1.bias"], 1, 1)
        h = F.relu(F.batch_norm(h, rm.clone(), rv.clone(), q["bn.weight"], q["bn.bias"], True, 0.1, 1e-5))
        h = F.max_pool2d(h, 3, 2, 1)
        gg = F.gelu(F.conv2d(h, q["c2.weight"], q["c2.bias"], 1, 2, 2))
        h = F.conv2d(gg, q["c3.weight"], None, 1, 1, 1, 4) + gg
        return torch.flatten(F.avg_pool2d(h, 2), 1)

    return layer_case("blocked", text, (2, 3, 9, 9), fn, p, buffers={"bn.running_mean": rm, "bn.running_var": rv})


FMNIST = os.path.join(os.path.dirname(__file__), "..", "models", "fmnist-cnn.model")


class FmnistCnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(32)
        self.conv2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(32)
        self.conv3 = torch.nn.Conv2d(32, 64, 3, padding=2, dilation=2)
        self.bn3 = torch.nn.BatchNorm2d(64)
        self.conv4 = torch.nn.Conv2d(64, 64, 3, padding=1)
        self.bn4 = torch.nn.BatchNorm2d(64)
        self.fc1 = torch.nn.Linear(3136, 128)
        self.fc2 = torch.nn.Linear(128, 10)
        self.mask = None

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.max_pool2d(F.relu(self.bn4(self.conv4(x))), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        if self.mask is not None:
            x = x * self.mask
        return self.fc2(x)

    def stoker_layers(self):
        """(name, module) in the order of models/fmnist-cnn.model's lines."""
        seq = ["data", "conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "pool1", "conv3", "bn3", "relu3",
               "conv4", "bn4", "relu4", "pool2", "flatten", "fc1", "relu5", "drop", "fc2", "loss"]
        return [(s, getattr(self, s, None)) for s in seq]


def network_case():
    seed, step, n = 42, 5, 4
    net = FmnistCnn()
    stoker_init(net.stoker_layers(), seed)
    g = torch.Generator().manual_seed(99)
    x = torch.rand(n, 1, 28, 28, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    drop_index = [s for s, _ in net.stoker_layers()].index("drop")
    net.mask = dropout_mask(seed, drop_index, step, (n, 128, 1, 1), 0.25).reshape(n, 128)
    net.train()
    logits = net(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    t = {"x": x, "labels": labels, "loss": loss.reshape(1), "logits": logits}
    for k, v in net.named_parameters():
        gr = v.grad
        if gr.numel() > 65536:  # keep the fixture small: every 8th row
            t["gradrows8." + k] = gr[::8]
        else:
            t["grad." + k] = gr
    for k, v in net.named_buffers():
        if v.dtype == torch.float32:
            t["after." + k] = v
    with open(FMNIST) as f:
        text = ";".join(l.split("#")[0].strip() for l in f if l.split("#")[0].strip())
    return t, {"model": text, "mode": "train", "init_seed": str(seed), "step": str(step)}


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = [
        ("conv_basic", conv_case(3, 4, 7, 6, 3, 1, 1, 1, 1)),
        ("conv_stride2", conv_case(2, 3, 9, 8, 3, 2, 1, 1, 1)),
        ("conv_dil2", conv_case(2, 4, 9, 9, 3, 1, 2, 2, 1)),
        ("conv_dil3_odd", conv_case(3, 2, 11, 9, 3, 2, 0, 3, 1)),
        ("conv_groups", conv_case(4, 6, 7, 7, 3, 1, 1, 1, 2, bias=False)),
        ("conv_depthwise_k5", conv_case(3, 3, 8, 7, 5, 2, 2, 1, 3)),
        ("bn_train", bn_case(True)),
        ("bn_eval", bn_case(False)),
        ("relu", simple_case("relu", "relu name=r", lambda x, _: F.relu(x))),
        ("leaky_relu", simple_case("leaky", "leaky_relu name=r slope=0.2", lambda x, _: F.leaky_relu(x, 0.2))),
        ("gelu", simple_case("gelu", "gelu name=g", lambda x, _: F.gelu(x))),
        ("sigmoid", simple_case("sigmoid", "sigmoid name=s", lambda x, _: torch.sigmoid(x))),
        ("tanh", simple_case("tanh", "tanh name=t", lambda x, _: torch.tanh(x))),
        ("maxpool", simple_case("maxpool", "maxpool2d name=p kernel=2", lambda x, _: F.max_pool2d(x, 2),
                                (2, 3, 7, 9))),
        ("maxpool_k3s2p1", simple_case("maxpool3", "maxpool2d name=p kernel=3 stride=2 pad=1",
                                       lambda x, _: F.max_pool2d(x, 3, 2, 1), (2, 3, 7, 8))),
        ("avgpool_k3s2p1", simple_case("avgpool", "avgpool2d name=p kernel=3 stride=2 pad=1",
                                       lambda x, _: F.avg_pool2d(x, 3, 2, 1), (2, 3, 7, 8))),
        ("global_avgpool", simple_case("gap", "global_avgpool name=p",
                                       lambda x, _: F.adaptive_avg_pool2d(x, 1), (2, 3, 5, 7))),
        ("flatten_linear", linear_case()),
        ("dropout", dropout_case()),
        ("xent", xent_case("xent", 0.0, False)),
        ("xent_smooth", xent_case("xent_smooth", 0.1, False)),
        ("xent_soft", xent_case("xent_soft", 0.0, True)),
        ("xent_soft_smooth", xent_case("xent_soft_smooth", 0.2, True)),
        ("blocked_chain", blocked_chain_case()),
    ] + concat_add_cases() + [("fmnist_cnn", network_case())]
    for name, (t, meta) in cases:
        write_safetensors(os.path.join(OUT, name + ".safetensors"), t, meta)
    print(f"wrote {len(cases)} fixtures to {OUT}")


if __name__ == "__main__":
    main()
