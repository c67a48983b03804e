#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# PyTorch side of the engine benchmark: forward + backward images/s of the
# fmnist-cnn reference model (same as models/fmnist-cnn.model) on random
# data, no optimizer step, as tools/stoker-enginebench does.
#   LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
#     /usr/bin/python3 tools/bench_engine_torch.py --batch 128 --threads 2
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_engine_fixtures import FmnistCnn  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = FmnistCnn()
    net.train()
    drop = torch.nn.Dropout(0.25)
    x = torch.rand(a.batch, 1, 28, 28)
    y = torch.randint(0, 10, (a.batch,))

    def step():
        net.zero_grad(set_to_none=False)
        h = F.relu(net.bn1(net.conv1(x)))
        h = F.max_pool2d(F.relu(net.bn2(net.conv2(h))), 2)
        h = F.relu(net.bn3(net.conv3(h)))
        h = F.max_pool2d(F.relu(net.bn4(net.conv4(h))), 2)
        h = drop(F.relu(net.fc1(torch.flatten(h, 1))))
        loss = F.cross_entropy(net.fc2(h), y)
        loss.backward()
        return loss

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        loss = step()
    dt = time.perf_counter() - t0
    print(f"torch {torch.__version__}: batch {a.batch} threads {torch.get_num_threads()}: "
          f"{a.iters * a.batch / dt:.1f} images/s ({1e3 * dt / a.iters:.2f} ms/iter, loss {loss.item():.4f})")


if __name__ == "__main__":
    main()
