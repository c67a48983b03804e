#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# PyTorch's side of the training-step benchmark (tools/gpu-check.sh): images/s
# of whole training steps (forward, backward, SGD with momentum) on a batch
# already on the device, as `stoker-enginebench --train --device cuda` measures
# Stoker. Models: fmnist-cnn (translated from models/fmnist-cnn.model, as
# tools/train_torch.py does) and ResNet-18 (torchvision's layout, written out
# here so torchvision is not needed; models/resnet18.model is the same net).
#
#   python3 tools/bench_train_torch.py --model fmnist-cnn --batch 256 --mode eager --json
#   python3 tools/bench_train_torch.py --model resnet18 --precision bf16 --channels-last --mode compile
#
# --mode eager sets cudnn.benchmark = True; --mode compile wraps the model in
# torch.compile(mode="reduce-overhead") (CUDA graphs), timed after its
# warm-up (compilation excluded). --precision: fp32 (TF32 off everywhere),
# tf32 (allow_tf32 on for cuDNN and matmuls), bf16 / fp16 (autocast; fp16
# with a GradScaler). Each run prints one JSON line with --json.
import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)), inplace=True)


class ResNet18(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make_model(name):
    if name == "resnet18":
        return ResNet18(), (3, 224, 224), 1000
    from train_torch import build_model  # noqa: E402 (needs only torch)

    net, _ = build_model(os.path.join(HERE, "..", "models", name + ".model"))
    return net, (1, 28, 28), 10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("fmnist-cnn", "resnet18"), default="fmnist-cnn")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--mode", choices=("eager", "compile"), default="eager")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.batch < 1 or a.iters < 1 or a.warmup < 0:
        sys.exit("bench_train_torch: --batch and --iters must be >= 1, --warmup >= 0")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    tf32 = a.precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net, shape, classes = make_model(a.model)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    net = net.to(dev, memory_format=fmt).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(a.batch, *shape, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (a.batch,), device=dev)
    if a.mode == "compile":
        if not hasattr(torch, "compile"):
            sys.exit("bench_train_torch: torch %s has no torch.compile (2.0 or newer)" % torch.__version__)
        net = torch.compile(net, mode="reduce-overhead")
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    scaler = torch.cuda.amp.GradScaler() if a.precision == "fp16" and cuda else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=half) if half else contextlib.nullcontext():
            loss = F.cross_entropy(net(x), y)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    t_warm = time.perf_counter()
    for _ in range(a.warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    ips = a.iters * a.batch / dt
    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    print(f"torch {torch.__version__} {a.mode}: {a.model} batch {a.batch} {a.precision}"
          f"{' channels_last' if a.channels_last else ''} on {name}: {ips:.1f} images/s "
          f"({1e3 * dt / a.iters:.2f} ms/iter, warm-up {t0 - t_warm:.1f} s, loss {loss.item():.4f})")
    if a.json:
        print(json.dumps({"tool": "torch", "torch": torch.__version__, "mode": a.mode, "model": a.model,
                          "batch": a.batch, "device": name, "precision": a.precision,
                          "channels_last": a.channels_last, "iters": a.iters, "images_per_s": round(ips, 1),
                          "ms_per_iter": round(1e3 * dt / a.iters, 3), "warmup_s": round(t0 - t_warm, 2)}))


if __name__ == "__main__":
    main()
