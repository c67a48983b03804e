#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# PyTorch's DataLoader doing the work stoker-bench does, for side-by-side
# ratios. Run with /usr/bin/python3 (Debian's python3-torch), e.g.
#   LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
#     tools/bench_loader_torch.py fmnist --workers 2 --augment
#   tools/bench_loader_torch.py npy --data /tmp/syn/data.npy --labels /tmp/syn/labels.npy \
#     --batch 64 --workers 2 --augment
# Workload "fmnist": Fashion-MNIST train IDX (gz) decoded into memory as
# torchvision does; augment = RandomCrop(28, padding=2) + hflip +
# normalize to f32. Workload "npy": a raw uint8 .npy (N, C, H, W) read
# through np.load(mmap_mode="r") (page cache); augment = hflip +
# normalize to f32. One JSON object per run on stdout.
# "gen DIR" writes the synthetic workload (8192 random 3x224x224 uint8
# images, 1.2 GB: keep it in /tmp, never commit it) as DIR/data.npy and
# DIR/labels.npy; pack it for stoker-bench with
#   stoker-pack npy DIR/data.npy DIR/labels.npy -o DIR/stk --field image -l 0
import argparse
import json
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
import torchvision.transforms as T

from idx_file import read_idx

FMNIST = "/usr/share/datasets/fashion-mnist"


class ArrayDataset(Dataset):
    """Images (N, C, H, W) uint8 (array or memmap) and int64 labels."""

    def __init__(self, images, labels, transform):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = torch.from_numpy(np.array(self.images[i], copy=True))
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])


class BatchDataset(Dataset):
    """PyTorch at its best: the sampler hands over a whole batch of indices
    (a sampler yielding index tensors, batch_size=None), so one tensor gather
    replaces 256 __getitem__ calls and default_collate's stack. Without a
    transform that gather is the whole batch; with one, each sample still
    gets its own random transform (as RandomCrop/RandomHorizontalFlip
    need), then one stack. torch 1.13 has no __getitems__, this is its
    equivalent."""

    def __init__(self, images, labels, transform):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        # index_select: about 15x faster than x[idx] advanced indexing here.
        x = self.images.index_select(0, idx)
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels.index_select(0, idx)


class BatchAugment:
    """The same augmentation as the per-sample torchvision pipeline
    (RandomCrop(size, padding) with a crop per sample, RandomHorizontalFlip
    per sample, ConvertImageDtype to f32, Normalize), written as a few
    whole-batch tensor ops: torchvision's per-sample transforms cost
    ~150 us a 28x28 image here, mostly per-call overhead."""

    def __init__(self, crop, pad, mean, std):
        self.crop, self.pad = crop, pad
        c = len(mean)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)

    def __call__(self, x):
        b, c, h, w = x.shape
        if self.crop:
            p = self.pad
            xp = torch.nn.functional.pad(x, (p, p, p, p))
            i = torch.randint(0, h + 2 * p - self.crop + 1, (b,))
            j = torch.randint(0, w + 2 * p - self.crop + 1, (b,))
            ar = torch.arange(self.crop)
            rows = (i[:, None] + ar).view(b, 1, self.crop, 1).expand(b, c, self.crop, w + 2 * p)
            x = torch.gather(xp, 2, rows)
            cols = (j[:, None] + ar).view(b, 1, 1, self.crop).expand(b, c, self.crop, self.crop)
            x = torch.gather(x, 3, cols)
        flip = (torch.rand(b) < 0.5).view(b, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        x = x.to(torch.float32).div_(255.0)
        return x.sub_(self.mean).div_(self.std)


class PermBatches:
    """Sampler yielding each batch as an int64 tensor slice of one
    randperm per epoch: BatchSampler's Python lists cost ~70 us a batch."""

    def __init__(self, n, batch, generator):
        self.n, self.batch, self.g = n, batch, generator

    def __len__(self):
        return (self.n + self.batch - 1) // self.batch

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.g).split(self.batch))


def gen(out, n):
    os.makedirs(out, exist_ok=True)
    a = np.lib.format.open_memmap(os.path.join(out, "data.npy"), mode="w+", dtype=np.uint8,
                                  shape=(n, 3, 224, 224))
    rng = np.random.default_rng(0)
    for i in range(0, n, 512):
        a[i:i + 512] = rng.integers(0, 256, size=(min(512, n - i), 3, 224, 224), dtype=np.uint8)
    a.flush()
    np.save(os.path.join(out, "labels.npy"), (np.arange(n) % 1000).astype(np.int64))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", choices=["fmnist", "npy", "gen"])
    ap.add_argument("dir", nargs="?", help="gen: output folder")
    ap.add_argument("--data")
    ap.add_argument("--labels")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch.set_num_threads (match stoker-bench: 1 per process)")
    ap.add_argument("--mode", choices=["batch", "sample"], default="batch",
                    help="batch (default, fastest): BatchSampler-driven dataset gathering "
                         "whole batches from a preloaded uint8 tensor; sample: classic "
                         "per-sample __getitem__ + default collate")
    a = ap.parse_args()
    if a.workload == "gen":
        gen(a.dir, 8192)
        return
    torch.set_num_threads(a.threads)
    # The default fd-passing strategy hung a 2-worker run here once (main
    # and workers all polling); named shared memory files did not.
    torch.multiprocessing.set_sharing_strategy("file_system")
    torch.manual_seed(a.seed)

    if a.workload == "fmnist":
        images = read_idx(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"))[:, None, :, :]
        labels = read_idx(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz")).astype(np.int64)
        tf = T.Compose([T.RandomCrop(28, padding=2), T.RandomHorizontalFlip(),
                        T.ConvertImageDtype(torch.float32),
                        T.Normalize((0.2860,), (0.3530,))]) if a.augment else None
    else:
        images = np.load(a.data, mmap_mode="r")
        labels = np.load(a.labels)
        c = images.shape[1]
        tf = T.Compose([T.RandomHorizontalFlip(), T.ConvertImageDtype(torch.float32),
                        T.Normalize((0.5,) * c, (0.25,) * c)]) if a.augment else None

    if a.mode == "batch" and a.augment:
        if a.workload == "fmnist":
            tf = BatchAugment(28, 2, (0.2860,), (0.3530,))
        else:
            tf = BatchAugment(0, 0, (0.5,) * c, (0.25,) * c)
    if a.mode == "batch":
        # Preloaded into memory as one uint8 tensor (a 1.2 GB npy is read
        # once, before timing, as the fmnist arrays are).
        ds = BatchDataset(torch.from_numpy(np.array(images)),
                          torch.from_numpy(np.ascontiguousarray(labels)), tf)
        g = torch.Generator()
        g.manual_seed(a.seed)
        sampler = PermBatches(len(ds), a.batch, g)
        kw = dict(batch_size=None, sampler=sampler, num_workers=a.workers,
                  persistent_workers=a.workers > 0)
    else:
        ds = ArrayDataset(images, labels, tf)
        kw = dict(batch_size=a.batch, shuffle=True, num_workers=a.workers,
                  persistent_workers=a.workers > 0)
    if a.workers > 0:
        kw["prefetch_factor"] = a.prefetch
        kw["timeout"] = 300  # fail, not hang, should a worker's batch get lost
    t0 = time.perf_counter()
    dl = DataLoader(ds, **kw)
    first = None
    samples = 0
    nbytes = 0
    for _ in range(a.epochs):
        for x, y in dl:
            if first is None:
                first = time.perf_counter() - t0
            samples += x.shape[0]
            nbytes += x.numel() * x.element_size() + y.numel() * y.element_size()
    dt = time.perf_counter() - t0
    print(json.dumps({"workload": a.workload, "mode": a.mode, "batch": a.batch,
                      "workers": a.workers, "threads": a.threads,
                      "augment": a.augment, "epochs": a.epochs, "samples": samples,
                      "seconds": round(dt, 4), "samples_per_s": round(samples / dt, 1),
                      "mb_per_s": round(nbytes / dt / 1e6, 1),
                      "first_batch_ms": round(first * 1e3, 3)}))


if __name__ == "__main__":
    main()
