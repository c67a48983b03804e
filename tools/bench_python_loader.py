#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# stoker.Loader (the Python module) beside stoker-bench (the C loader) on
# the same set, in one run: samples/s of batches handed to Python as torch
# tensors (batch.torch(), no copy), and torch's DataLoader doing the same
# crop+flip+normalize per sample (torch ops, as torchvision's RandomCrop,
# RandomHorizontalFlip and Normalize do; torchvision itself is not needed)
# on the IDX files in memory. One JSON line per worker count.
#   PYTHONPATH=build/python /usr/bin/python3 tools/bench_python_loader.py DIR \
#     --workers 0 1 2 --batch 256 --epochs 3 --augment 'crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'
import argparse
import json
import os
import subprocess
import time

import stoker
import torch  # noqa: F401  (batch.torch(): import outside the timed loop)


def run_python(path, workers, batch, epochs, augment):
    with stoker.Loader(path, batch_size=batch, num_workers=workers, shuffle=True, seed=7,
                       augment=augment or None, prefetch=2) as loader:
        n = 0
        t0 = time.perf_counter()
        for e in range(epochs):
            loader.set_epoch(e)
            for b in loader:
                t = b.torch()
                n += t['image'].shape[0]
        dt = time.perf_counter() - t0
    return n / dt


class Augmented(torch.utils.data.Dataset):
    """Fashion-MNIST in memory, RandomCrop(28, padding=2) + flip + normalize per sample."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.nn.functional.pad(self.images[i].unsqueeze(0), (2, 2, 2, 2))
        dy, dx = torch.randint(0, 5, (2,)).tolist()
        x = x[:, dy:dy + 28, dx:dx + 28]
        if torch.rand(1).item() < 0.5:
            x = x.flip(-1)
        return (x.float() / 255 - 0.2860) / 0.3530, int(self.labels[i])


def run_torch(idx, workers, batch, epochs):
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from idx_file import read_idx
    ds = Augmented(torch.from_numpy(read_idx(f'{idx}/train-images-idx3-ubyte.gz').copy()),
                   torch.from_numpy(read_idx(f'{idx}/train-labels-idx1-ubyte.gz').copy()))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                     persistent_workers=workers > 0)
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in dl:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def run_bench(tool, path, workers, batch, epochs, augment):
    args = [tool, path, '--batch', str(batch), '--workers', str(workers), '--epochs', str(epochs),
            '--seed', '7', '--no-memcpy', '--no-checksum', '--json']
    if augment:
        args += ['--augment', augment]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])['samples_per_s']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('path')
    ap.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--augment', default='crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530')
    ap.add_argument('--bench', default=os.path.join('build', 'tools', 'stoker-bench'))
    ap.add_argument('--repeat', type=int, default=2, help='alternating runs of each side')
    ap.add_argument('--torch-idx', default='/usr/share/datasets/fashion-mnist',
                    help="IDX folder for torch's DataLoader side ('' to skip it)")
    ap.add_argument('--torch-epochs', type=int, default=1)
    a = ap.parse_args()
    for w in a.workers:
        py, c, tv = [], [], []
        for _ in range(a.repeat):
            py.append(run_python(a.path, w, a.batch, a.epochs, a.augment))
            c.append(run_bench(a.bench, a.path, w, a.batch, a.epochs, a.augment))
            if a.torch_idx:
                tv.append(run_torch(a.torch_idx, w, a.batch, a.torch_epochs))
        row = {'workers': w, 'batch': a.batch, 'python_samples_per_s': max(py),
               'stoker_bench_samples_per_s': max(c), 'python_vs_bench': max(py) / max(c),
               'runs_python': py, 'runs_bench': c}
        if tv:
            row.update({'torch_dataloader_samples_per_s': max(tv), 'python_vs_torch': max(py) / max(tv),
                        'runs_torch': tv})
        print(json.dumps(row), flush=True)


if __name__ == '__main__':
    main()
