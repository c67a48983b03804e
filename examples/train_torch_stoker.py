#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# The reference fmnist-cnn (models/fmnist-cnn.model, configs/fmnist-cnn.conf)
# trained in PyTorch as tools/train_torch.py does, with stoker.Loader in
# place of torch.utils.data.DataLoader: the lines that change are marked
# "# STOKER". Augmentation (crop+flip+normalize) runs in Stoker's workers,
# batches arrive as torch tensors without a copy. Prints per-epoch accuracy,
# images/s and the share of time the loop waited for data.
#
#   PYTHONPATH=build/python LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
#     /usr/bin/python3 examples/train_torch_stoker.py configs/fmnist-cnn.conf [--set key=value]...
import argparse
import json
import math
import os
import sys
import time

import stoker  # STOKER: import before torch, so workers fork from a clean process
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from train_torch import IDX, build_model, lr_schedule, make_optimizer, parse_conf  # noqa: E402


def packed(data, name, images, labels, limit):  # STOKER: .stk shards, packed once
    out = os.path.join(data, f"{name}-{limit}" if limit else name)
    if not os.path.exists(os.path.join(out, "shard.manifest")):
        stoker.pack_idx(images, labels, out, limit=limit, overwrite=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--idx", default=IDX, help="folder with the Fashion-MNIST .gz IDX files")
    ap.add_argument("--data", default="data", help="folder for the packed sets")  # STOKER
    a = ap.parse_args()
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

    train_set = packed(a.data, "fmnist-train", f"{a.idx}/train-images-idx3-ubyte.gz",  # STOKER
                       f"{a.idx}/train-labels-idx1-ubyte.gz", int(cfg.get("train_limit", 0)))
    test_set = packed(a.data, "fmnist-test", f"{a.idx}/t10k-images-idx3-ubyte.gz",  # STOKER
                      f"{a.idx}/t10k-labels-idx1-ubyte.gz", int(cfg.get("test_limit", 0)))
    drop_last = cfg.get("drop_last", "true") in ("1", "true", "yes", "on")
    train_dl = stoker.Loader(train_set, batch_size=batch, shuffle=True, drop_last=drop_last,  # STOKER
                             num_workers=workers, persistent_workers=workers > 0, seed=seed,
                             augment=spec, prefetch=int(cfg.get("prefetch", 2)))
    test_dl = stoker.Loader(test_set, batch_size=int(cfg.get("eval_batch_size", 0)) or batch,  # STOKER
                            num_workers=workers, persistent_workers=workers > 0, augment=eval_spec)

    model, loss_kw = build_model(cfg["model"])
    opt = make_optimizer(cfg.get("optimizer", "sgd:lr=0.1"), model.parameters())
    steps_per_epoch = math.ceil(len(train_dl) / accum)
    factor = lr_schedule(cfg.get("scheduler", "constant"), steps_per_epoch, steps_per_epoch * total_epochs)
    base = opt.param_groups[0]["lr"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: factor(t, base))

    print(f"# torch {torch.__version__} + stoker {stoker.__version__}, threads {threads}, workers {workers}, "
          f"batch {batch}x{accum}", file=sys.stderr)
    hist, t_all = [], time.perf_counter()
    tot_img = tot_train = tot_wait = 0.0
    for epoch in range(epochs):
        train_dl.set_epoch(epoch)  # STOKER: the shuffle order of this epoch
        model.train()
        seen = correct = 0
        loss_sum = wait = 0.0
        t0 = time.perf_counter()
        it = iter(train_dl)
        nb = len(train_dl)
        for k in range(nb):
            tw = time.perf_counter()
            b = next(it).torch()  # STOKER: zero-copy tensors of the shared-memory batch
            x, y = b["image"], b["label"]  # STOKER
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
            test_dl.set_epoch(0)  # STOKER: the same (unshuffled) pass each time
            for tb in test_dl:  # STOKER
                x, y = tb.torch()["image"], tb.torch()["label"]  # STOKER
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
              f"wait {100 * row['data_wait']:.2f}%  {row['epoch_s']:.1f}s", flush=True)
    train_dl.close()  # STOKER
    test_dl.close()  # STOKER
    if a.json:
        print(json.dumps({"final_test_acc": hist[-1]["test_acc"], "best_test_acc": max(h["test_acc"] for h in hist),
                          "epochs": len(hist), "images_per_s": tot_img / tot_train,
                          "data_wait": tot_wait / tot_train, "wall_s": time.perf_counter() - t_all}))


if __name__ == "__main__":
    main()
