#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes the torchvision reference outputs that tests/unit/test_augment.c
# checks augment/'s cores against: bilinear resize and resized crop (u8,
# antialias=False), RandomResizedCrop's centre fallback, center crop,
# padded crop + flip, rot90, brightness/contrast and ToTensor+Normalize.
# Run: /usr/bin/python3 tools/gen_augment_fixtures.py tests/data/augment
#
# Each file is a run of cases: i32 nparams, i32 params[nparams],
# u32 in_len, in bytes, u32 out_len, out bytes (little endian). Fractions
# travel as integers scaled by 1e6.
import struct
import sys

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/data/augment"
gen = torch.Generator().manual_seed(1234)


def img(c, h, w):
    return torch.randint(0, 256, (c, h, w), dtype=torch.uint8, generator=gen)


def case(f, params, inp, out):
    f.write(struct.pack("<i", len(params)))
    f.write(struct.pack("<%di" % len(params), *params))
    f.write(struct.pack("<I", len(inp)))
    f.write(inp)
    f.write(struct.pack("<I", len(out)))
    f.write(out)


def u8(t):
    return t.contiguous().numpy().tobytes()


with open(OUT + "/resize.bin", "wb") as f:
    # c, h, w, top, left, bh, bw, oh, ow
    for (c, h, w, box, oh, ow) in [
        (1, 28, 28, None, 14, 14),
        (1, 28, 28, None, 40, 36),
        (3, 32, 48, None, 20, 27),
        (3, 17, 23, None, 31, 13),
        (1, 28, 28, (3, 5, 17, 20), 28, 28),
        (3, 40, 30, (7, 2, 25, 11), 24, 24),
        (3, 20, 20, (0, 0, 20, 20), 56, 56),
        (3, 50, 70, (10, 20, 33, 41), 16, 16),
        (1, 5, 7, (1, 1, 3, 1), 9, 4),
    ]:
        x = img(c, h, w)
        if box is None:
            y = F.resize(x, [oh, ow], interpolation=T.InterpolationMode.BILINEAR, antialias=False)
            box = (0, 0, h, w)
        else:
            y = F.resized_crop(x, box[0], box[1], box[2], box[3], [oh, ow],
                               interpolation=T.InterpolationMode.BILINEAR, antialias=False)
        case(f, [c, h, w, *box, oh, ow], u8(x), u8(y))

with open(OUT + "/rrc_fallback.bin", "wb") as f:
    # h, w, scale lo/hi e6, ratio lo/hi e6 -> box (top, left, h, w) as i32
    for (h, w, ratio) in [(28, 28, (0.75, 1.333333)), (100, 20, (0.75, 1.333333)),
                          (20, 100, (0.75, 1.333333)), (31, 57, (0.5, 1.5)),
                          (57, 31, (0.9, 1.1)), (10, 15, (1.5, 1.5))]:
        scale = (5.0, 6.0)  # never fits: every attempt fails, the fallback decides
        box = T.RandomResizedCrop.get_params(torch.zeros(1, h, w), list(scale), list(ratio))
        params = [h, w, int(round(scale[0] * 1e6)), int(round(scale[1] * 1e6)),
                  int(round(ratio[0] * 1e6)), int(round(ratio[1] * 1e6))]
        case(f, params, b"", struct.pack("<4i", *box))

with open(OUT + "/centercrop.bin", "wb") as f:
    for (c, h, w, th, tw) in [(1, 29, 30, 24, 25), (3, 10, 10, 7, 7), (1, 28, 28, 24, 24),
                              (3, 11, 12, 8, 9)]:
        x = img(c, h, w)
        case(f, [c, h, w, th, tw], u8(x), u8(F.center_crop(x, [th, tw])))

with open(OUT + "/padcrop.bin", "wb") as f:
    # c, h, w, pad, reflect, top, left, th, tw, hflip, vflip (top/left in padded coords)
    for (c, h, w, pad, refl, top, left, th, tw, hf, vf) in [
        (1, 28, 28, 2, 0, 0, 4, 28, 28, 1, 0),
        (1, 28, 28, 2, 1, 3, 0, 28, 28, 0, 1),
        (3, 8, 9, 4, 1, 0, 0, 16, 17, 1, 1),
        (3, 8, 9, 4, 0, 7, 1, 10, 12, 1, 0),
        (3, 32, 32, 4, 1, 8, 8, 32, 32, 0, 0),
    ]:
        x = img(c, h, w)
        p = F.pad(x, [pad], padding_mode="reflect" if refl else "constant")
        y = F.crop(p, top, left, th, tw)
        if hf:
            y = F.hflip(y)
        if vf:
            y = F.vflip(y)
        case(f, [c, h, w, pad, refl, top, left, th, tw, hf, vf], u8(x), u8(y))

with open(OUT + "/rot90.bin", "wb") as f:
    for (c, h, w, k) in [(1, 5, 7, 1), (3, 6, 4, 2), (2, 3, 8, 3), (1, 9, 9, 0)]:
        x = img(c, h, w)
        case(f, [c, h, w, k], u8(x), u8(torch.rot90(x, k, (1, 2))))

with open(OUT + "/jitter.bin", "wb") as f:
    # c, h, w, brightness e6, contrast e6 (1e6 = unchanged)
    for (c, h, w, b, ct) in [(1, 28, 28, 1.3, 1.0), (1, 28, 28, 1.0, 0.6), (3, 16, 20, 0.7, 1.4),
                             (3, 16, 20, 1.8, 0.2), (1, 12, 12, 0.55, 1.9)]:
        x = img(c, h, w)
        y = x
        if b != 1.0:
            y = F.adjust_brightness(y, b)
        if ct != 1.0:
            y = F.adjust_contrast(y, ct)
        case(f, [c, h, w, int(round(b * 1e6)), int(round(ct * 1e6))], u8(x), u8(y))

with open(OUT + "/normalize.bin", "wb") as f:
    # c, h, w, mean e6 x c, std e6 x c; out f32 (ToTensor + Normalize)
    for (c, h, w, mean, std) in [(1, 28, 28, [0.2860], [0.3530]),
                                 (3, 8, 8, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]:
        x = img(c, h, w)
        y = F.normalize(x.float().div(255), mean, std)
        params = [c, h, w] + [int(round(m * 1e6)) for m in mean] + [int(round(s * 1e6)) for s in std]
        case(f, params, u8(x), y.contiguous().numpy().tobytes())
print("fixtures written to", OUT)
