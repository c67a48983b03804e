#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# The PyTorch side of the sequence reference tasks (configs/fmnist-lstm.conf,
# configs/charlm.conf): reads the same config (model file, optimizer, epochs,
# batch, clip_norm, seed, threads, the sequence keys) and the same data
# (Fashion-MNIST IDX files; /usr/share/dict/words split as
# tools/prepare-charlm.sh splits it), trains the same recipe with
# torch.nn.LSTM over packed sequences, and prints per-epoch test accuracy or
# bits per character and the training phase's samples/s (images, or
# characters: the counted target steps).
#
#   LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
#     /usr/bin/python3 tools/train_seq_torch.py configs/fmnist-lstm.conf [--set key=value]... [--json]
import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idx_file import read_idx  # noqa: E402

IDX = "/usr/share/datasets/fashion-mnist"


def parse_conf(path, sets):
    cfg = {}
    with open(path) as f:
        lines = list(enumerate(f, 1))
    for lineno, line in lines + [(0, s) for s in sets]:
        for i, ch in enumerate(line):
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


class SeqModel(nn.Module):
    """The sequence subset of Stoker's model files: input (steps, features
    or tokens), embedding, lstm / gru, seq_last / seq_mean, linear,
    cross_entropy, in that order. The modules carry the model file's layer
    names, so state_dict() keys are Stoker's parameter names."""

    def __init__(self, path):
        super().__init__()
        self.order = []  # (kind, name)
        self.ignore_index = -100
        feat = None
        with open(path) as f:
            for i, raw in enumerate(f):
                line = raw.split("#", 1)[0].split()
                if not line:
                    continue
                kind, kv = line[0], dict(tok.split("=", 1) for tok in line[1:])
                name = kv.get("name", "%s%d" % (kind, len(self.order)))
                mod = None
                if kind == "input":
                    self.steps = int(kv["steps"])
                    self.tokens = kv.get("tokens", "0") in ("1", "true")
                    feat = None if self.tokens else int(kv["features"])
                elif kind == "embedding":
                    pad = int(kv.get("padding_idx", -1))
                    mod = nn.Embedding(int(kv["vocab"]), int(kv["dim"]), padding_idx=None if pad < 0 else pad)
                    feat = int(kv["dim"])
                elif kind in ("lstm", "gru"):
                    cls = nn.LSTM if kind == "lstm" else nn.GRU
                    bi = kv.get("bidirectional", "0") in ("1", "true")
                    mod = cls(feat, int(kv["hidden"]), int(kv.get("layers", 1)), batch_first=True,
                              bidirectional=bi, dropout=float(kv.get("dropout", 0)))
                    feat = int(kv["hidden"]) * (2 if bi else 1)
                elif kind in ("seq_last", "seq_mean"):
                    pass
                elif kind == "linear":
                    mod = nn.Linear(feat, int(kv["out"]))
                    feat = int(kv["out"])
                elif kind == "cross_entropy":
                    self.ignore_index = int(kv.get("ignore_index", -100))
                    continue
                else:
                    sys.exit(f"{path}: train_seq_torch.py does not know layer '{kind}'")
                if mod is not None:
                    self.add_module(name, mod)  # state_dict keys "<name>.<param>", as Stoker's
                self.order.append((kind, name))

    def forward(self, x, lengths):
        for kind, name in self.order[1:]:
            mod = self._modules.get(name)
            if kind in ("embedding", "linear"):
                x = mod(x)
            elif kind in ("lstm", "gru"):
                t = x.shape[1]
                if not self.tokens and bool((lengths == t).all()):
                    # fixed-length features (row-sequential images): the plain
                    # path torch users take; variable-length text is packed
                    x, _ = mod(x)
                else:
                    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
                    out, _ = mod(packed)
                    x, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
            elif kind == "seq_last":
                x = x[torch.arange(x.shape[0]), lengths - 1]
            elif kind == "seq_mean":
                t = x.shape[1]
                mask = (torch.arange(t)[None, :] < lengths[:, None]).to(x.dtype)
                x = (x * mask[:, :, None]).sum(1) / lengths[:, None].to(x.dtype)
        return x


def make_optimizer(spec, params):
    name, _, args = spec.partition(":")
    kw = dict(a.split("=", 1) for a in args.split(",")) if args else {}
    lr = float(kw.get("lr", 0.1))
    wd = float(kw.get("weight_decay", 0))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(kw.get("momentum", 0)),
                               nesterov=kw.get("nesterov", "0") in ("1", "true"), weight_decay=wd)
    if name in ("adam", "adamw"):
        cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
        return cls(params, lr=lr, betas=(float(kw.get("beta1", 0.9)), float(kw.get("beta2", 0.999))),
                   eps=float(kw.get("eps", 1e-8)), weight_decay=wd)
    sys.exit(f"optimizer '{spec}': train_seq_torch.py knows sgd, adam and adamw")


def make_schedule(spec, base_lr, total_steps):
    """lr of optimizer step k: 'constant', or 'cosine[:eta_min=x]' over the
    whole run (Stoker's cosine phase: eta_min + (lr - eta_min)(1 + cos(pi k/T))/2)."""
    name, _, args = spec.partition(":")
    kw = dict(a.split("=", 1) for a in args.split(",")) if args else {}
    if name == "constant":
        return lambda k: base_lr
    if name == "cosine":
        eta = float(kw.get("eta_min", 0))
        return lambda k: eta + (base_lr - eta) * (1 + math.cos(math.pi * k / total_steps)) / 2
    sys.exit(f"scheduler '{spec}': train_seq_torch.py knows constant and cosine")


# ------------------------------------------------------------------ data


def fmnist(cfg):
    mean, std = 0.2860, 0.3530
    for stage in cfg.get("augment", "").split("|"):
        if stage.startswith("normalize:"):
            kv = dict(a.split("=") for a in stage[len("normalize:"):].split(","))
            mean, std = float(kv["mean"]), float(kv["std"])

    def load(prefix):
        x = torch.from_numpy(read_idx(f"{IDX}/{prefix}-images-idx3-ubyte.gz").copy()).float().div_(255)
        y = torch.from_numpy(read_idx(f"{IDX}/{prefix}-labels-idx1-ubyte.gz").copy()).long()
        return (x - mean) / std, y

    return load("train"), load("t10k")


def words(path):
    """Every line of the words file as bytes, split as prepare-charlm.sh
    does: line numbers divisible by 10 (1-based) are held out."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    train = [w for i, w in enumerate(lines, 1) if i % 10]
    test = [w for i, w in enumerate(lines, 1) if i % 10 == 0]
    return train, test


def lm_batch(ws, boundary, ignore):
    """Input: boundary + word, target: word + boundary, padded."""
    n, t = len(ws), max(len(w) for w in ws) + 1
    x = torch.zeros(n, t, dtype=torch.long)
    y = torch.full((n, t), ignore, dtype=torch.long)
    lengths = torch.empty(n, dtype=torch.long)
    for i, w in enumerate(ws):
        b = torch.tensor(list(w), dtype=torch.long)
        x[i, 0] = boundary
        x[i, 1:len(w) + 1] = b
        y[i, :len(w)] = b
        y[i, len(w)] = boundary
        lengths[i] = len(w) + 1
    return x, lengths, y


def bucket_batches(lengths, bs, pool_batches, rng, drop_last):
    """Pools of pool_batches * bs of a random order sorted by length, cut
    into batches, full batches shuffled (the recipe of Stoker's bucketing
    sampler; the draws are Python's, not Philox)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    used = len(order) - (len(order) % bs if drop_last else 0)
    order = order[:used]
    pool = pool_batches * bs if pool_batches > 0 else used
    out = []
    for p in range(0, used, pool):
        chunk = sorted(order[p:p + pool], key=lambda i: (lengths[i], i))
        out.extend(chunk[k:k + bs] for k in range(0, len(chunk), bs))
    full = [b for b in out if len(b) == bs]
    part = [b for b in out if len(b) != bs]
    rng.shuffle(full)
    return full + part


# ------------------------------------------------------------------ loop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cfg = parse_conf(a.config, a.set)
    threads = int(cfg.get("threads", 2))
    torch.set_num_threads(threads)
    seed = int(cfg.get("seed", 1))
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = SeqModel(cfg["model"])
    opt = make_optimizer(cfg.get("optimizer", "sgd:lr=0.1"), model.parameters())
    epochs = int(cfg.get("epochs", 1))
    bs = int(cfg.get("batch_size", 128))
    ebs = int(cfg.get("eval_batch_size", 0)) or bs
    clip = float(cfg.get("clip_norm", 0))
    drop_last = cfg.get("drop_last", "true") in ("1", "true")
    lm = cfg.get("target", "label") == "next_token"
    limit = int(cfg.get("train_limit", 0))
    rows = []
    if lm:
        boundary = int(cfg.get("boundary_token", 10))
        train, test = words(cfg.get("words", "/usr/share/dict/words"))
        if limit:
            train = train[:limit]
        pool = int(cfg.get("bucket_pool", 0))
        tr_len = [len(w) for w in train]
    else:
        (xtr, ytr), (xte, yte) = fmnist(cfg)
        if limit:
            xtr, ytr = xtr[:limit], ytr[:limit]
    if lm:
        per_epoch = len(train) // bs if drop_last else (len(train) + bs - 1) // bs
    else:
        per_epoch = len(xtr) // bs if drop_last else (len(xtr) + bs - 1) // bs
    base_lr = opt.param_groups[0]["lr"]
    lr_at = make_schedule(cfg.get("scheduler", "constant"), base_lr, epochs * per_epoch)
    step = 0
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        seen = counted = 0
        loss_sum = 0.0
        if lm:
            batches = bucket_batches(tr_len, bs, pool, rng, drop_last) if pool >= 0 else None
        else:
            perm = torch.randperm(len(xtr))
            nb = len(xtr) // bs if drop_last else (len(xtr) + bs - 1) // bs
            batches = [perm[k * bs:(k + 1) * bs] for k in range(nb)]
        for b in batches:
            if lm:
                x, lengths, y = lm_batch([train[i] for i in b], boundary, model.ignore_index)
                logits = model(x, lengths)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       ignore_index=model.ignore_index)
                n_count = int((y != model.ignore_index).sum())
            else:
                x = xtr[b]
                lengths = torch.full((len(b),), x.shape[1], dtype=torch.long)
                loss = F.cross_entropy(model(x, lengths), ytr[b])
                n_count = len(b)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.step()
            step += 1
            loss_sum += float(loss) * n_count
            counted += n_count
            seen += len(b)
        train_s = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            if lm:
                nats = cnt = 0.0
                for k in range(0, len(test), ebs):
                    x, lengths, y = lm_batch(test[k:k + ebs], boundary, model.ignore_index)
                    logits = model(x, lengths)
                    nats += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                  ignore_index=model.ignore_index, reduction="sum"))
                    cnt += int((y != model.ignore_index).sum())
                metric = nats / cnt / math.log(2)
            else:
                correct = 0
                for k in range(0, len(xte), ebs):
                    x = xte[k:k + ebs]
                    lengths = torch.full((len(x),), x.shape[1], dtype=torch.long)
                    correct += int((model(x, lengths).argmax(1) == yte[k:k + ebs]).sum())
                metric = correct / len(xte)
        row = {"epoch": epoch, "train_loss": loss_sum / counted, "train_s": train_s,
               "samples_per_s": counted / train_s, "sequences_per_s": seen / train_s}
        row["test_bpc" if lm else "test_acc"] = metric
        rows.append(row)
        print(f"epoch {epoch}: train loss {row['train_loss']:.4f}, "
              + (f"test bpc {metric:.4f}" if lm else f"test acc {100 * metric:.2f}%")
              + f", {row['samples_per_s']:.0f} {'chars' if lm else 'images'}/s", file=sys.stderr, flush=True)
    if a.json:
        print(json.dumps({"epochs": rows, "final": rows[-1], "threads": threads}))


if __name__ == "__main__":
    main()
