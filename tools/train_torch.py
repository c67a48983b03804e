#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# The PyTorch side of the stoker-train comparison: reads the same config
# file (model file, augment spec, optimizer, scheduler, epochs, batch,
# workers, threads, seed) and the same Fashion-MNIST IDX files, trains the
# same recipe the ordinary PyTorch way (torchvision transforms per sample in
# DataLoader workers) and prints per-epoch accuracy, images/s and data wait.
#
#   LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
#     /usr/bin/python3 tools/train_torch.py configs/fmnist-cnn.conf [--set key=value]... [--json]
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from idx_file import read_idx

IDX = "/usr/share/datasets/fashion-mnist"


def parse_conf(path, sets):
    cfg = {}
    with open(path) as f:
        lines = list(enumerate(f, 1))
    for lineno, line in lines + [(0, s) for s in sets]:
        for i, ch in enumerate(line):  # '#' starts a comment at a word start
            if ch == "#" and (i == 0 or line[i - 1].isspace()):
                line = line[:i]
                break
        line = line.strip()
        if not line:
            continue
        if "=" not in line:
            sys.exit(f"{path}:{lineno}: expected 'key = value'")
        k, v = line.split("=", 1)
        cfg[k.strip()] = v.strip()
    return cfg


def read_idx_tensor(path):
    """An IDX file as a (writable) uint8 tensor."""
    return torch.from_numpy(read_idx(path).copy())


def build_model(path):
    """Translates a Stoker model file (engine/MODEL_FORMAT.md), sequential
    layers only, into an nn.Sequential, and returns (model, loss kwargs)."""
    layers, shape, loss_kw, flat = [], None, {}, False
    with open(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.split("#", 1)[0].split()
            if not line:
                continue
            kind, kv = line[0], dict(tok.split("=", 1) for tok in line[1:])
            kv.pop("name", None)
            kv.pop("input", None)

            def pair(key, default):
                v = kv.get(key)
                if v is None:
                    return default
                p = [int(x) for x in v.split(",")]
                return (p[0], p[0]) if len(p) == 1 else (p[0], p[1])

            if kind == "input":
                shape = [int(x) for x in kv["shape"].split(",")]
                while len(shape) < 3:
                    shape = shape + [1]
                continue
            c, h, w = shape
            if kind == "conv2d":
                k = pair("kernel", (1, 1))
                s = pair("stride", (1, 1))
                p = pair("pad", (0, 0))
                d = pair("dilation", (1, 1))
                out = int(kv["out"])
                layers.append(nn.Conv2d(c, out, k, s, p, d, groups=int(kv.get("groups", 1)),
                                        bias=kv.get("bias", "1") in ("1", "true", "yes")))
                h = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
                w = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
                c = out
            elif kind == "batchnorm2d":
                layers.append(nn.BatchNorm2d(c, eps=float(kv.get("eps", 1e-5)),
                                             momentum=float(kv.get("momentum", 0.1))))
            elif kind in ("maxpool2d", "avgpool2d"):
                k = pair("kernel", None)
                s = pair("stride", k)
                p = pair("pad", (0, 0))
                cls = nn.MaxPool2d if kind == "maxpool2d" else nn.AvgPool2d
                layers.append(cls(k, s, p))
                h = (h + 2 * p[0] - k[0]) // s[0] + 1
                w = (w + 2 * p[1] - k[1]) // s[1] + 1
            elif kind == "global_avgpool":
                layers.append(nn.AdaptiveAvgPool2d(1))
                h = w = 1
            elif kind == "flatten":
                layers.append(nn.Flatten())
                c, h, w = c * h * w, 1, 1
                flat = True
            elif kind == "linear":
                if not flat:  # the engine's linear takes N x C x H x W as N x (C*H*W)
                    layers.append(nn.Flatten())
                    flat = True
                out = int(kv["out"])
                layers.append(nn.Linear(c * h * w, out, bias=kv.get("bias", "1") in ("1", "true", "yes")))
                c, h, w = out, 1, 1
            elif kind == "relu":
                layers.append(nn.ReLU(inplace=True))
            elif kind == "leaky_relu":
                layers.append(nn.LeakyReLU(float(kv.get("slope", 0.01)), inplace=True))
            elif kind == "gelu":
                layers.append(nn.GELU())
            elif kind == "sigmoid":
                layers.append(nn.Sigmoid())
            elif kind == "tanh":
                layers.append(nn.Tanh())
            elif kind == "dropout":
                layers.append(nn.Dropout(float(kv.get("p", 0.5))))
            elif kind == "cross_entropy":
                loss_kw["label_smoothing"] = float(kv.get("smoothing", 0.0))
            else:
                sys.exit(f"{path}:{lineno}: layer '{kind}' is not supported by this script")
            shape = [c, h, w]
    return nn.Sequential(*layers), loss_kw


def parse_spec(text):
    """'kind:a=1,b=2' -> (kind, {a: '1', b: '2'}, [positional])."""
    kind, _, rest = text.partition(":")
    kv, pos = {}, []
    for item in filter(None, rest.split(",")):
        if "=" in item:
            k, v = item.split("=", 1)
            kv[k.strip()] = v.strip()
        else:
            pos.append(item.strip())
    return kind.strip(), kv, pos


def make_transforms(spec, train):
    import torchvision.transforms as T
    steps = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        kind, kv, pos = parse_spec(part)
        if kind == "crop":
            if train:
                steps.append(T.RandomCrop(int(pos[0]), padding=int(kv.get("pad", 0))))
        elif kind == "hflip":
            if train:
                steps.append(T.RandomHorizontalFlip(float(kv.get("p", 0.5))))
        elif kind == "normalize":
            steps.append(T.ConvertImageDtype(torch.float32))
            steps.append(T.Normalize([float(x) for x in kv["mean"].split(";")],
                                     [float(x) for x in kv["std"].split(";")]))
        else:
            sys.exit(f"augment '{kind}' is not supported by this script")
    if not any(isinstance(s, T.Normalize) for s in steps):
        steps.append(T.ConvertImageDtype(torch.float32))
    return T.Compose(steps)


class Images(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i].unsqueeze(0)), int(self.labels[i])


def make_optimizer(text, params):
    kind, kv, _ = parse_spec(text)
    f = {k: float(v) for k, v in kv.items() if k not in ("nesterov", "amsgrad", "betas")}
    if kind == "sgd":
        return torch.optim.SGD(params, lr=f["lr"], momentum=f.get("momentum", 0),
                               dampening=f.get("dampening", 0), weight_decay=f.get("weight_decay", 0),
                               nesterov=kv.get("nesterov", "0") in ("1", "true"))
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[kind]
    betas = (f.get("beta1", 0.9), f.get("beta2", 0.999))
    return cls(params, lr=f.get("lr", 1e-3), betas=betas, eps=f.get("eps", 1e-8),
               weight_decay=f.get("weight_decay", 0 if kind == "adam" else 1e-2))


def lr_schedule(text, steps_per_epoch, total_steps):
    """Closed forms of the optim.h phases this recipe uses: a factor of the
    base lr per optimizer step. Supports constant, warmup|linear and cosine
    chains."""
    phases = []
    for part in filter(None, (p.strip() for p in text.split("|"))):
        kind, kv, pos = parse_spec(part)

        def count(v):
            return round(float(v[:-2]) * steps_per_epoch) if v.endswith("ep") else int(v)
        n = count(pos[0]) if pos else 0
        phases.append((kind, kv, n))
    fixed = sum(n for _, _, n in phases)

    def factor(t, base):
        m = 0
        for i, (kind, kv, n) in enumerate(phases):
            length = n if n else max(total_steps - fixed, 1)
            if i + 1 < len(phases) and t >= m + length:
                m += length
                continue
            k = t - m
            if kind in ("warmup", "linear"):
                s, e = float(kv.get("start", kv.get("start_factor", 1 / 3))), float(kv.get("end", 1))
                it = int(kv.get("total_iters", length))
                return s + (e - s) * min(k, it) / it
            if kind == "cosine":
                eta = float(kv.get("eta_min", 0))
                tmax = int(kv.get("t_max", kv.get("T_max", length)))
                return (eta + (base - eta) * (1 + math.cos(math.pi * k / tmax)) / 2) / base
            if kind == "constant":
                return 1.0
            sys.exit(f"scheduler '{kind}' is not supported by this script")
        return 1.0
    return factor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--idx", default=IDX, help="folder with the Fashion-MNIST .gz IDX files")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda[:N] (PyTorch's defaults: TF32 convolutions)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"train_torch: --device {a.device}: this torch ({torch.__version__}) has no usable CUDA",
              file=sys.stderr)
        return 2
    cfg = parse_conf(a.config, a.set)
    threads = int(cfg.get("threads", 0)) or os.cpu_count()
    torch.set_num_threads(threads)
    seed = int(cfg.get("seed", 0))
    torch.manual_seed(seed)
    epochs = int(cfg.get("stop_after_epochs", 0) or cfg.get("epochs", 1))
    total_epochs = int(cfg.get("epochs", 1))
    batch = int(cfg.get("batch_size", 128))
    accum = int(cfg.get("accum_steps", 1))
    workers = int(cfg.get("workers", 2))
    spec = cfg.get("augment", "")
    eval_spec = cfg.get("test_augment") or "|".join(
        p for p in spec.split("|") if p.strip().startswith("normalize"))

    xtr, ytr = read_idx_tensor(f"{a.idx}/train-images-idx3-ubyte.gz"), read_idx_tensor(f"{a.idx}/train-labels-idx1-ubyte.gz")
    xte, yte = read_idx_tensor(f"{a.idx}/t10k-images-idx3-ubyte.gz"), read_idx_tensor(f"{a.idx}/t10k-labels-idx1-ubyte.gz")
    if int(cfg.get("train_limit", 0)):
        xtr, ytr = xtr[:int(cfg["train_limit"])], ytr[:int(cfg["train_limit"])]
    if int(cfg.get("test_limit", 0)):
        xte, yte = xte[:int(cfg["test_limit"])], yte[:int(cfg["test_limit"])]
    drop_last = cfg.get("drop_last", "true") in ("1", "true", "yes", "on")
    train_dl = torch.utils.data.DataLoader(Images(xtr, ytr, make_transforms(spec, True)), batch_size=batch,
                                           shuffle=True, drop_last=drop_last, num_workers=workers,
                                           persistent_workers=workers > 0, pin_memory=dev.type == "cuda")
    test_dl = torch.utils.data.DataLoader(Images(xte, yte, make_transforms(eval_spec, False)),
                                          batch_size=int(cfg.get("eval_batch_size", 0)) or batch,
                                          num_workers=workers, persistent_workers=workers > 0)

    model, loss_kw = build_model(cfg["model"])
    model.to(dev)
    opt = make_optimizer(cfg.get("optimizer", "sgd:lr=0.1"), model.parameters())
    steps_per_epoch = math.ceil(len(train_dl) / accum)
    factor = lr_schedule(cfg.get("scheduler", "constant"), steps_per_epoch, steps_per_epoch * total_epochs)
    base = opt.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: factor(t, base))

    print(f"# torch {torch.__version__} on {a.device}, threads {threads}, workers {workers}, batch {batch}x{accum}, "
          f"{len(xtr)} train / {len(xte)} test", file=sys.stderr)
    hist, t_all = [], time.perf_counter()
    tot_img = tot_train = tot_wait = 0.0
    for epoch in range(epochs):
        model.train()
        seen = correct = 0
        loss_sum = wait = 0.0
        t0 = time.perf_counter()
        it = iter(train_dl)
        nb = len(train_dl)
        for k in range(nb):
            tw = time.perf_counter()
            x, y = next(it)
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            wait += time.perf_counter() - tw
            g0 = k // accum * accum
            group = min(accum, nb - g0)
            out = model(x)
            loss = F.cross_entropy(out, y, **loss_kw)
            (loss / group).backward()
            if k + 1 == g0 + group:
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=False)
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
        train_s = time.perf_counter() - t0
        model.eval()
        tcorrect = tseen = 0
        tloss = 0.0
        with torch.no_grad():
            for x, y in test_dl:
                x, y = x.to(dev), y.to(dev)
                out = model(x)
                tloss += F.cross_entropy(out, y, **loss_kw).item() * len(y)
                tcorrect += (out.argmax(1) == y).sum().item()
                tseen += len(y)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
               "test_loss": tloss / tseen, "test_acc": tcorrect / tseen, "lr": opt.param_groups[0]["lr"],
               "images_per_s": seen / train_s, "data_wait": wait / train_s,
               "epoch_s": time.perf_counter() - t0}
        hist.append(row)
        tot_img += seen
        tot_train += train_s
        tot_wait += wait
        print(f"epoch {row['epoch']:3d}  loss {row['train_loss']:.4f}  acc {100 * row['train_acc']:.2f}%  "
              f"test_acc {100 * row['test_acc']:.2f}%  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  "
              f"wait {100 * row['data_wait']:.1f}%  {row['epoch_s']:.1f}s", flush=True)
    if a.json:
        print(json.dumps({"final_test_acc": hist[-1]["test_acc"], "best_test_acc": max(h["test_acc"] for h in hist),
                          "epochs": len(hist), "images_per_s": tot_img / tot_train,
                          "data_wait": tot_wait / tot_train, "wall_s": time.perf_counter() - t_all,
                          "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
                          "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if dev.type == "cuda" else None}))


if __name__ == "__main__":
    sys.exit(main())
