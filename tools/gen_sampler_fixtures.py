#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Fixtures for tests/unit/test_sampler.c: index lists of PyTorch's
# DistributedSampler (shuffle=False) for awkward (n, world, drop_last), and
# prints golden orders from an independent Python model of Stoker's sampler draws
# (Philox4x32-10, stk_rng_mix, Lemire's bounded draw, forward Fisher-Yates).
# Run: /usr/bin/python3 tools/gen_sampler_fixtures.py tests/data/sampler
import os
import sys

M64 = (1 << 64) - 1
M32 = (1 << 32) - 1


def philox(key, hi, lo):
    c = [lo & M32, lo >> 32, hi & M32, hi >> 32]
    k0, k1 = key & M32, key >> 32
    for _ in range(10):
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
        k0 = (k0 + 0x9E3779B9) & M32
        k1 = (k1 + 0xBB67AE85) & M32
    return c


def mix(a, b):
    z = a ^ ((b + 0x9E3779B97F4A7C15 + ((a << 6) & M64) + (a >> 2)) & M64)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class Rng:
    def __init__(self, key, stream):
        self.key, self.stream, self.ctr, self.buf = key, stream, 0, []

    def u32(self):
        if not self.buf:
            self.buf = philox(self.key, self.stream, self.ctr)
            self.ctr += 1
        return self.buf.pop(0)

    def below(self, bound):
        assert bound <= M32
        m = self.u32() * bound
        if (m & M32) < bound:
            t = ((1 << 32) - bound) % bound
            while (m & M32) < t:
                m = self.u32() * bound
        return m >> 32


DOMAIN = 0x73616D706C6572  # "sampler"


def epoch_key(seed, epoch):
    return mix(mix(seed, DOMAIN), epoch)


def permutation(seed, epoch, n, stream=0):
    r = Rng(epoch_key(seed, epoch), stream)
    a = list(range(n))
    for i in range(n - 1):
        j = i + r.below(n - i)
        a[i], a[j] = a[j], a[i]
    return a


def with_replacement(seed, epoch, n, count):
    key = epoch_key(seed, epoch)
    return [Rng(key, pos).below(n) for pos in range(count)]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/sampler"
    os.makedirs(out, exist_ok=True)
    from torch.utils.data.distributed import DistributedSampler

    cases = [(10, 3), (10, 4), (2, 5), (3, 8), (7, 7), (1, 3), (12, 5), (5, 2)]
    with open(os.path.join(out, "distributed_torch.txt"), "w") as f:
        f.write("# n world drop_last rank : indices (torch DistributedSampler, shuffle=False)\n")
        for n, world in cases:
            for drop in (0, 1):
                if drop and n < world:
                    continue  # every rank empty: Stoker refuses this config
                for rank in range(world):
                    s = DistributedSampler(range(n), num_replicas=world, rank=rank,
                                           shuffle=False, drop_last=bool(drop))
                    idx = list(iter(s))
                    assert len(idx) == len(s)
                    f.write("%d %d %d %d :%s\n" % (n, world, drop, rank,
                                                     "".join(" %d" % i for i in idx)))
    # Golden orders, pinned in test_sampler.c (printed, not written).
    print("perm seed 42 epoch 3 n 20:", permutation(42, 3, 20))
    print("perm seed 7 epoch 0 n 1000, first 16:", permutation(7, 0, 1000)[:16])
    print("with replacement seed 42 epoch 3 n 20, first 16:", with_replacement(42, 3, 20, 16))


if __name__ == "__main__":
    main()
