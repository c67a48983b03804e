#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Writes the PyTorch reference trajectories that tests/unit/test_optim.c and
# test_sched.c compare against, under tests/data/optim/. Run with Debian's
# python3-torch 1.13:  /usr/bin/python3 tools/gen_optim_fixtures.py
# Text files, one record per line, floats printed so they read back exactly.
import os
import sys

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'data', 'optim')
STEPS = 20

# Flat layout: tensors p0 [0,3), p1 [3,7), p2 [7,10), p3 [10,12).
# Group A = p0 + p2 (two ranges), group B = p1, p3 is in no group (frozen).
SIZES = [3, 4, 3, 2]
OFFS = [0, 3, 7, 10]
N = 12


def fl(xs):
    return ' '.join(repr(float(v)) for v in xs)


def hp_text(h):
    out = []
    for k, v in h.items():
        if k == 'betas':
            out.append('betas=%r;%r' % v)
        elif isinstance(v, bool):
            out.append('%s=%d' % (k, int(v)))
        else:
            out.append('%s=%r' % (k, v))
    return ','.join(out)


OPT_CASES = [
    ('sgd_plain', 'sgd', dict(lr=0.1), dict(lr=0.05)),
    ('sgd_momentum', 'sgd', dict(lr=0.1, momentum=0.9), dict(lr=0.02, momentum=0.5)),
    ('sgd_dampening', 'sgd', dict(lr=0.1, momentum=0.9, dampening=0.3), dict(lr=0.05, momentum=0.8, dampening=0.9)),
    ('sgd_nesterov_wd', 'sgd', dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
     dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)),
    ('sgd_wd_mixed', 'sgd', dict(lr=0.05, momentum=0.9, weight_decay=1e-2), dict(lr=0.2, momentum=0.0, weight_decay=0.1)),
    ('sgd_maximize', 'sgd', dict(lr=0.1, momentum=0.9, maximize=True), dict(lr=0.01, maximize=True, weight_decay=0.01)),
    ('adam_default', 'adam', dict(lr=1e-3), dict(lr=1e-2)),
    ('adam_wd_betas', 'adam', dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2), dict(lr=3e-3, eps=1e-6)),
    ('adam_amsgrad', 'adam', dict(lr=1e-2, amsgrad=True), dict(lr=1e-2, amsgrad=True, weight_decay=0.1)),
    ('adam_maximize', 'adam', dict(lr=1e-2, maximize=True), dict(lr=1e-3, maximize=True, amsgrad=True)),
    ('adamw_default', 'adamw', dict(lr=1e-3), dict(lr=1e-2, weight_decay=0.0)),
    ('adamw_amsgrad_wd', 'adamw', dict(lr=1e-2, weight_decay=0.1, amsgrad=True),
     dict(lr=5e-3, betas=(0.85, 0.95), weight_decay=0.05)),
    ('rmsprop_plain', 'rmsprop', dict(lr=1e-2), dict(lr=1e-3, alpha=0.9)),
    ('rmsprop_momentum', 'rmsprop', dict(lr=1e-2, momentum=0.9), dict(lr=1e-3, momentum=0.5, weight_decay=0.01)),
    ('rmsprop_centered', 'rmsprop', dict(lr=1e-2, centered=True), dict(lr=1e-2, centered=True, momentum=0.9)),
    ('rmsprop_centered_wd_max', 'rmsprop', dict(lr=1e-2, centered=True, weight_decay=0.1, eps=1e-4),
     dict(lr=1e-2, maximize=True, alpha=0.5)),
]

TORCH_OPT = {'sgd': torch.optim.SGD, 'adam': torch.optim.Adam, 'adamw': torch.optim.AdamW,
             'rmsprop': torch.optim.RMSprop}


def gen_optim(name, kind, ha, hb, seed):
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(N, generator=g, dtype=torch.float32)
    ps = [torch.nn.Parameter(init[o:o + s].clone()) for o, s in zip(OFFS, SIZES)]
    groups = [dict(params=[ps[0], ps[2]], **ha), dict(params=[ps[1]], **hb)]
    opt = TORCH_OPT[kind](groups, **({'lr': 0.1} if kind == 'sgd' else {}))
    lines = ['optim %s' % kind, 'n %d' % N,
             'group A %s' % hp_text(ha), 'ranges A 0 3 7 3',
             'group B %s' % hp_text(hb), 'ranges B 3 4',
             'init %s' % fl(init.tolist())]
    for _ in range(STEPS):
        grad = torch.randn(N, generator=g, dtype=torch.float32) * 0.5
        for p, o, s in zip(ps, OFFS, SIZES):
            p.grad = grad[o:o + s].clone()
        opt.step()
        flat = torch.cat([p.detach() for p in ps])
        lines.append('grad %s' % fl(grad.tolist()))
        lines.append('param %s' % fl(flat.tolist()))
    with open(os.path.join(OUT, name + '.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')


LS = torch.optim.lr_scheduler


def two_group_opt(kind='sgd'):
    a = torch.nn.Parameter(torch.zeros(2))
    b = torch.nn.Parameter(torch.zeros(3))
    if kind == 'adam':
        return torch.optim.Adam([dict(params=[a], lr=0.1), dict(params=[b], lr=0.01)])
    return torch.optim.SGD([dict(params=[a], lr=0.1), dict(params=[b], lr=0.01)], lr=0.1, momentum=0.9)


def mom_of(opt):
    out = []
    for grp in opt.param_groups:
        out.append(grp['betas'][0] if 'betas' in grp else grp['momentum'])
    return out


def gen_sched(name, text, make, steps=100, total_steps=0, spe=0, metrics=None, kind='sgd'):
    opt = two_group_opt(kind)
    sch = make(opt)
    lines = ['sched %s' % text, 'optim %s' % kind, 'base 0.1 0.01', 'total_steps %d' % total_steps,
             'steps_per_epoch %d' % spe]
    rows = []

    def row(metric):
        lrs = [grp['lr'] for grp in opt.param_groups]
        rows.append('row %r %s %s' % (metric, fl(lrs), fl(mom_of(opt))))

    row(float('nan'))
    for t in range(steps):
        opt.step()
        if metrics is not None:
            sch.step(metrics[t])
            row(metrics[t])
        else:
            sch.step()
            row(float('nan'))
    with open(os.path.join(OUT, name + '.txt'), 'w') as f:
        f.write('\n'.join(lines + rows) + '\n')


def plateau_metrics():
    # Improves, stalls, improves a little (below threshold), noisy tail.
    g = torch.Generator().manual_seed(7)
    m, out = 1.0, []
    for t in range(100):
        if t < 10:
            m *= 0.9
        elif t < 30:
            m *= 1.0 + 1e-6
        elif t < 40:
            m *= 0.99
        out.append(round(m + 0.01 * float(torch.rand(1, generator=g)), 6))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for i, (name, kind, ha, hb) in enumerate(OPT_CASES):
        gen_optim(name, kind, ha, hb, 1000 + i)
    gen_sched('sched_step', 'step:step_size=7,gamma=0.5', lambda o: LS.StepLR(o, 7, 0.5))
    gen_sched('sched_multistep', 'multistep:milestones=10;30;30;60,gamma=0.3',
              lambda o: LS.MultiStepLR(o, [10, 30, 30, 60], 0.3))
    gen_sched('sched_exp', 'exp:gamma=0.97', lambda o: LS.ExponentialLR(o, 0.97))
    gen_sched('sched_cosine', 'cosine:T_max=100,eta_min=0.001', lambda o: LS.CosineAnnealingLR(o, 100, 0.001))
    # Past T_max PyTorch's recursive form keeps going round the cosine.
    gen_sched('sched_cosine_wrap', 'cosine:T_max=30', lambda o: LS.CosineAnnealingLR(o, 30))
    gen_sched('sched_linear', 'linear:start=0.25,end=0.75,total_iters=40',
              lambda o: LS.LinearLR(o, 0.25, 0.75, 40))
    gen_sched('sched_constant', 'constant:factor=0.5,total_iters=12', lambda o: LS.ConstantLR(o, 0.5, 12))
    # Warmup one epoch (spe 8 steps) then cosine over the rest: SequentialLR.
    gen_sched('sched_warmup_cosine', 'warmup:1ep,start=0.1|cosine:eta_min=0', lambda o: LS.SequentialLR(
        o, [LS.LinearLR(o, 0.1, 1.0, 8), LS.CosineAnnealingLR(o, 92, 0.0)], [8]), total_steps=100, spe=8)
    gen_sched('sched_chain3', 'constant:5,factor=0.2|step:20,step_size=4,gamma=0.8|exp:gamma=0.9',
              lambda o: LS.SequentialLR(o, [LS.ConstantLR(o, 0.2, 5), LS.StepLR(o, 4, 0.8),
                                           LS.ExponentialLR(o, 0.9)], [5, 25]))
    gen_sched('sched_onecycle_cos', 'onecycle:total_steps=100',
              lambda o: LS.OneCycleLR(o, [0.1, 0.01], total_steps=100))
    gen_sched('sched_onecycle_lin3', 'onecycle:max_lr=0.5,total_steps=100,anneal_strategy=linear,three_phase=1,'
              'pct_start=0.25,div_factor=10,final_div_factor=100,base_momentum=0.8,max_momentum=0.9',
              lambda o: LS.OneCycleLR(o, 0.5, total_steps=100, anneal_strategy='linear', three_phase=True,
                                      pct_start=0.25, div_factor=10., final_div_factor=100., base_momentum=0.8,
                                      max_momentum=0.9))
    gen_sched('sched_onecycle_adam', 'onecycle:total_steps=60,pct_start=0.4',
              lambda o: LS.OneCycleLR(o, [0.1, 0.01], total_steps=60, pct_start=0.4), steps=60, kind='adam')
    met = plateau_metrics()
    gen_sched('sched_plateau_min', 'plateau:patience=3,factor=0.5,cooldown=2,min_lr=0.004',
              lambda o: LS.ReduceLROnPlateau(o, 'min', 0.5, 3, cooldown=2, min_lr=0.004), metrics=met)
    gen_sched('sched_plateau_max_abs', 'plateau:mode=max,threshold_mode=abs,threshold=0.01,patience=2,factor=0.3',
              lambda o: LS.ReduceLROnPlateau(o, 'max', 0.3, 2, threshold=0.01, threshold_mode='abs'),
              metrics=[-x for x in met])
    print('wrote fixtures to', os.path.normpath(OUT), file=sys.stderr)


if __name__ == '__main__':
    main()
