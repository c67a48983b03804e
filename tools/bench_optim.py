# SPDX-License-Identifier: MIT
# Optimizer step throughput, Stoker (libstoker.so through ctypes) side by side
# with PyTorch in the same run, one thread each. Not a test. Usage:
#   LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-pthread \
#     /usr/bin/python3 tools/bench_optim.py build/libstoker.so [n_params] [reps]
# Prints ms per step for each and the ratio PyTorch / Stoker (> 1: we are
# faster). PyTorch runs one flat tensor (its best case: one kernel launch
# per op), with foreach off (1.13's default) and on.
import ctypes
import sys
import time

import torch

CASES = [
    ('sgd:lr=0.1,momentum=0.9,nesterov=1,weight_decay=5e-4',
     lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)),
    ('adam:lr=1e-3', lambda p: torch.optim.Adam([p], lr=1e-3)),
    ('adamw:lr=1e-3,weight_decay=0.01', lambda p: torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01)),
    ('rmsprop:lr=1e-2,momentum=0.9,centered=1',
     lambda p: torch.optim.RMSprop([p], lr=1e-2, momentum=0.9, centered=True)),
]


def best_of(fn, reps):
    fn()  # warm: allocates state
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main():
    lib = ctypes.CDLL(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    torch.set_num_threads(1)
    lib.stk_optim_config_parse.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    lib.stk_optim_create.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
    lib.stk_optim_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.stk_optim_destroy.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
    g = torch.Generator().manual_seed(0)
    params = torch.randn(n, generator=g)
    grads = torch.randn(n, generator=g) * 1e-3
    print('n_params %d, best of %d, 1 thread, ms per step' % (n, reps))
    print('%-50s %9s %9s %9s %7s' % ('optimizer', 'stoker', 'torch', 'foreach', 'ratio'))
    for text, make in CASES:
        # stk_optim_config_t: kind (int) then n_params (size_t) at offset 8;
        # groups NULL / 0 (zeroed) means one group over everything.
        cfg = ctypes.create_string_buffer(512)
        if lib.stk_optim_config_parse(text.encode(), cfg) != 0:
            raise SystemExit('parse failed: ' + text)
        ctypes.c_size_t.from_buffer(cfg, 8).value = n
        opt = ctypes.c_void_p()
        if lib.stk_optim_create(ctypes.byref(opt), cfg) != 0:
            raise SystemExit('create failed: ' + text)
        p = params.clone()
        ours = best_of(lambda: lib.stk_optim_step(opt, p.data_ptr(), grads.data_ptr()), reps)
        lib.stk_optim_destroy(ctypes.byref(opt))
        res = []
        for foreach in (False, True):
            tp = torch.nn.Parameter(params.clone())
            tp.grad = grads.clone()
            o = make(tp)
            for grp in o.param_groups:
                grp['foreach'] = foreach
            res.append(best_of(o.step, reps))
        print('%-50s %9.2f %9.2f %9.2f %7.2f' % (text, ours, res[0], res[1], min(res) / ours))


if __name__ == '__main__':
    main()
