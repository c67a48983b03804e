#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Side-by-side timing of augment/ against torchvision on the same u8 CHW
# tensors, one thread each: runs build/tools/stoker-augbench, times the
# matching torchvision transform in the same run, prints both and the
# speed-up (torchvision ns / Stoker ns).
# Run: LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
#      /usr/bin/python3 tools/augbench_torch.py [build/tools/stoker-augbench] [seconds]
import subprocess
import sys
import time

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F

torch.set_num_threads(1)
BENCH = sys.argv[1] if len(sys.argv) > 1 else "build/tools/stoker-augbench"
SECS = float(sys.argv[2]) if len(sys.argv) > 2 else 0.3


def to_float_norm(mean, std):
    norm = T.Normalize(mean, std)
    return lambda x: norm(x.float().div(255))


def cutout(size):
    def f(x):
        h, w = x.shape[-2:]
        cy, cx = int(torch.randint(h, (1,))), int(torch.randint(w, (1,)))
        y0, x0 = max(cy - size // 2, 0), max(cx - size // 2, 0)
        return F.erase(x, y0, x0, min(size, h - y0), min(size, w - x0), torch.tensor(0, dtype=x.dtype))
    return f


def torch_for(spec, side, c):
    """The torchvision equivalent of a spec in stoker-augbench's list."""
    mean = [0.286] if c == 1 else [0.485, 0.456, 0.406]
    std = [0.353] if c == 1 else [0.229, 0.224, 0.225]
    BIL = T.InterpolationMode.BILINEAR
    stages = []
    for st in spec.split("|"):
        name, _, arg = st.partition(":")
        kv = dict(p.split("=") for p in arg.split(",") if "=" in p)
        size = [int(v) for v in arg.split(",")[0].split("x")] if arg and "=" not in arg.split(",")[0] else None
        if name == "crop":
            stages.append(T.RandomCrop(size, padding=int(kv.get("pad", 0)),
                                       padding_mode="reflect" if kv.get("mode") == "reflect" else "constant"))
        elif name == "centercrop":
            stages.append(T.CenterCrop(size))
        elif name == "rrcrop":
            stages.append(T.RandomResizedCrop(size, interpolation=BIL, antialias=False))
        elif name == "resize":
            stages.append(T.Resize(size, interpolation=BIL, antialias=False))
        elif name == "hflip":
            stages.append(T.RandomHorizontalFlip(float(kv.get("p", 0.5))))
        elif name == "vflip":
            stages.append(T.RandomVerticalFlip(float(kv.get("p", 0.5))))
        elif name == "rot90":
            stages.append(lambda x: torch.rot90(x, int(kv.get("k", 1)), (1, 2)))
        elif name == "jitter":
            stages.append(T.ColorJitter(brightness=float(kv.get("brightness", 0)),
                                        contrast=float(kv.get("contrast", 0))))
        elif name == "cutout":
            stages.append(cutout(size[0]))
        elif name == "normalize":
            if kv.get("dtype", "f32") != "f32":
                return None
            stages.append(to_float_norm(mean, std))
        else:
            return None
    return T.Compose(stages)


def time_torch(fn, x):
    best = 1e30
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while True:
            fn(x)
            n += 1
            t = time.perf_counter() - t0
            if t >= SECS / 5:
                break
        best = min(best, t / n)
    return best


out = subprocess.run([BENCH, "-t", str(SECS)], check=True, capture_output=True, text=True).stdout
print("one thread each; best of 5 trials; speed-up = torchvision ns / Stoker ns")
c = side = None
for line in out.splitlines():
    if "u8 (" in line:
        dims = line.split()[0].split("x")
        c, side = int(dims[0]), int(dims[1])
        x = torch.randint(0, 256, (c, side, side), dtype=torch.uint8)
        print("\n%s\n%-80s %12s %14s %8s" % (line, "spec", "Stoker ns", "torchvision ns", "speed-up"))
        continue
    parts = line.split()
    if len(parts) < 5 or not parts[0][0].isalpha() or parts[0] == "spec" or parts[0].startswith("stoker"):
        continue
    spec, unfused = parts[0], "[unfused]" in line
    ns = float(parts[-2])
    fn = None if unfused else torch_for(spec, side, c)
    tv = time_torch(fn, x) * 1e9 if fn else float("nan")
    label = spec + ("  [unfused]" if unfused else "")
    print("%-80s %12.0f %14.0f %8.1f" % (label, ns, tv, tv / ns if fn else float("nan")))
