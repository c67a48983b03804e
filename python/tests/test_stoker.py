# SPDX-License-Identifier: MIT
"""Tests of the stoker Python module (run by meson test through pytest).

Same batches as the C loader (stoker-bench's checksum) for workers 0, 1, 2;
zero-copy arrays in the shared arena and what a released batch allows;
exact resume through state_dict; a SIGKILLed worker raising WorkerError;
Ctrl-C leaving no process, fd or mapping; flat RSS over 10 epochs; errors
carrying the library's message. Torch-dependent tests skip without torch.
"""

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import numpy as np
import pytest

import stoker
from stoker import _stoker

BUILD = os.environ.get('STK_BUILD_ROOT', '')
AUG = 'crop:28,pad=2|hflip|normalize:mean=0.2860,std=0.3530'

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None


@pytest.fixture(scope='module')
def fm(tmp_path_factory):
    """1000 synthetic 1x28x28 u8 images with labels, packed raw in 4 shards."""
    d = tmp_path_factory.mktemp('sets') / 'fm'
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(1000, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=1000).astype(np.int64)
    res = stoker.pack_arrays(d, image=images, label=labels, level=0, records_per_shard=250)
    assert res['records'] == 1000 and res['shards'] == 4
    return d, images, labels


def mix_bytes(h, data):
    """stoker-bench's batch checksum (tools/stoker-bench.c mix_bytes)."""
    M = (1 << 64) - 1
    P = 0x100000001b3
    b = bytes(data)
    n = len(b)
    lanes = [h, h ^ 0x9e3779b97f4a7c15, h ^ 0xc2b2ae3d27d4eb4f, h ^ 0x165667b19e3779f9]
    full = n - n % 32
    if full:
        words = np.frombuffer(b[:full], dtype='<u8').reshape(-1, 4)
        for k in range(4):
            l = lanes[k]
            for w in words[:, k].tolist():
                l = ((l ^ w) * P) & M
            lanes[k] = l
    for c in b[full:]:
        lanes[0] = ((lanes[0] ^ c) * P) & M
    mix = _stoker.rng_mix
    return mix(mix(lanes[0], lanes[1]), mix(lanes[2], lanes[3])) ^ n


@pytest.mark.parametrize('workers', [0, 1, 2])
def test_same_batches_as_c_loader(fm, workers):
    d, _, _ = fm
    bench = os.path.join(BUILD, 'tools', 'stoker-bench')
    if not os.access(bench, os.X_OK):
        pytest.fail(f'{bench} not built (STK_BUILD_ROOT={BUILD!r})')
    out = subprocess.run([bench, str(d), '--batch', '100', '--epochs', '2', '--seed', '7',
                          '--workers', str(workers), '--augment', AUG, '--no-memcpy', '--json'],
                         check=True, capture_output=True, text=True).stdout
    want = json.loads(out.strip().splitlines()[-1])['checksum']
    h = 0x5354424e43480000
    batches = 0
    with stoker.Loader(d, batch_size=100, num_workers=workers, shuffle=True, seed=7,
                       augment=AUG) as loader:
        for epoch in range(2):
            loader.set_epoch(epoch)
            for b in loader:
                h = mix_bytes(h, b.indices.astype('<u8').tobytes())
                for name in b:
                    h = mix_bytes(h, b[name])
                batches += 1
    assert batches == 20
    assert f'{h:016x}' == want


def arena_of(maps_text, addr):
    for line in maps_text.splitlines():
        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
        if lo <= addr < hi:
            return line
    return None


def test_zero_copy_and_release(fm):
    d, images, labels = fm
    pins = []
    pin = (lambda a, n: pins.append((a, n)) or 0, lambda a, n: pins.append(('unpin', a, n)))
    loader = stoker.Loader(d, batch_size=50, num_workers=2, prefetch=2, _pin=pin)
    assert len(pins) == 1, 'the arena is pinned once, at create'
    base, size = pins[0]
    it = iter(loader)
    b = next(it)
    img = b['image']
    addr = img.__array_interface__['data'][0]
    assert base <= addr and addr + img.nbytes <= base + size, 'the array lies in the arena'
    with open('/proc/self/maps') as f:
        assert 'stoker-batches' in arena_of(f.read(), addr)
    np.testing.assert_array_equal(img, images[:50])
    np.testing.assert_array_equal(b['label'], labels[:50])
    if torch is not None:
        t = b.torch()['image']
        assert t.data_ptr() == addr, 'batch.torch() shares the memory'
    kept = img.copy()
    # Asking for the next batch releases this one: new arrays are refused,
    # the array taken before keeps its own data while later batches pass.
    b2 = next(it)
    assert b.released
    with pytest.raises(stoker.ReleasedError, match='batch 0 of epoch 0 was released'):
        b._b.field('image')
    with pytest.raises(stoker.ReleasedError):
        b['label']
    for _ in range(8):
        b2 = next(it)
    np.testing.assert_array_equal(img, kept)
    assert not b._b.returned, 'the slot stays with the live array'
    del img, t
    gc.collect()
    assert b._b.returned, 'the slot goes back once no array is alive'
    # Closing with a batch alive: no new batch or array, and the arena
    # stays until that batch (and any array of it) is gone.
    loader.close()
    with pytest.raises(ValueError, match='closed'):
        next(iter(loader))
    with pytest.raises(stoker.ReleasedError, match='closed'):
        b2['image']
    assert len(pins) == 1
    del b2, it
    gc.collect()
    assert pins[-1] == ('unpin', base, size)


def test_copy_option(fm):
    d, images, _ = fm
    with stoker.Loader(d, batch_size=100, copy=True) as loader:
        kept = [b['image'] for b in loader]
    assert len(kept) == 10
    np.testing.assert_array_equal(np.concatenate(kept), images)


def test_hoarding_says_why(fm):
    d, _, _ = fm
    with stoker.Loader(d, batch_size=10, num_workers=1, prefetch=2) as loader:
        kept = []
        with pytest.raises(stoker.StateError, match='held'):
            for b in loader:
                kept.append(b['image'])
        assert 1 <= len(kept) <= 3
        del kept


def test_resume(fm):
    d, _, _ = fm
    kw = dict(batch_size=64, num_workers=2, shuffle=True, seed=11, augment=AUG)
    with stoker.Loader(d, **kw) as a:
        a.set_epoch(3)
        it = iter(a)
        for _ in range(5):
            next(it)
        state = a.state_dict()
        want = [(b.indices.copy(), b['image'].copy()) for b in it]
    assert state == {'epoch': 3, 'batch': 5}
    with stoker.Loader(d, **kw) as b:
        b.load_state_dict(state)
        got = [(x.indices.copy(), x['image'].copy()) for x in b]
        assert b.state_dict() == {'epoch': 4, 'batch': 0}
    assert len(got) == len(want) == 16 - 5
    for (i1, x1), (i2, x2) in zip(want, got):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(x1, x2)


def test_epochs_advance(fm):
    d, _, _ = fm
    with stoker.Loader(d, batch_size=250, shuffle=True, seed=1) as loader:
        first = [b.indices.copy() for b in loader]
        second = [b.indices.copy() for b in loader]
        assert loader.epoch == 1
        loader.set_epoch(0)
        again = [b.indices.copy() for b in loader]
    assert not all((a == b).all() for a, b in zip(first, second))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def run_child(code, timeout=120):
    env = dict(os.environ)
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_worker_killed_raises(fm):
    d, _, _ = fm
    r = run_child(f'''
        import os, signal, time, stoker
        loader = stoker.Loader({str(d)!r}, batch_size=10, num_workers=2, augment={AUG!r})
        it = iter(loader)
        next(it)
        pid = loader.worker_pids()[0]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        try:
            # 99 batches at 2 ms: the loader looks at its workers every
            # 50 ms even when it never has to wait for one.
            for b in it:
                time.sleep(0.002)
            print('NO ERROR')
        except stoker.WorkerError as e:
            print('PID', pid, 'SECONDS', time.monotonic() - t0, 'MSG', e)
    ''')
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[0] == 'PID', r.stdout
    pid, seconds, msg = words[1], float(words[3]), ' '.join(words[5:])
    assert f'pid {pid}' in msg and ('SIGKILL' in msg or 'signal 9' in msg), msg
    assert seconds < 10.0, f'WorkerError after {seconds:.1f} s'


def test_keyboard_interrupt_leaves_nothing(fm):
    d, _, _ = fm
    r = run_child(f'''
        import gc, os, signal, threading, time, stoker
        def fds():
            return sorted(os.listdir('/proc/self/fd'))
        def arena():
            with open('/proc/self/maps') as f:
                return [l for l in f if 'stoker-batches' in l or 'stoker-dataset' in l]
        before = fds()
        pids = []
        def loop():
            with stoker.Loader({str(d)!r}, batch_size=10, num_workers=2, augment={AUG!r}) as loader:
                pids.extend(loader.worker_pids())
                for epoch in range(1000):
                    loader.set_epoch(epoch)
                    for b in loader:
                        x = b['image'].sum()
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        try:
            loop()
            print('NOT INTERRUPTED')
        except KeyboardInterrupt:
            pass
        gc.collect()
        time.sleep(0.5)
        alive = []
        for p in pids:
            try:
                os.kill(p, 0)
                with open(f'/proc/{{p}}/stat') as f:
                    if f.read().split()[2] != 'Z':
                        alive.append(p)
            except (ProcessLookupError, FileNotFoundError):
                pass
        after = fds()
        print('PIDS', len(pids), 'ALIVE', alive, 'FDS', before == after, before, after, 'MAPS', arena())
    ''')
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith('PIDS 2 ALIVE [] FDS True'), out
    assert out.rstrip().endswith('MAPS []'), out


def test_ctrl_c_while_a_worker_is_stopped(fm):
    """No timeout, the worker stopped: Ctrl-C still ends the wait at once."""
    d, _, _ = fm
    r = run_child(f'''
        import os, signal, threading, time, stoker
        loader = stoker.Loader({str(d)!r}, batch_size=10, num_workers=1)
        it = iter(loader)
        next(it)
        pid = loader.worker_pids()[0]
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        t0 = time.monotonic()
        try:
            for b in it:
                pass
            print('NOT INTERRUPTED')
        except KeyboardInterrupt:
            print('INTERRUPTED', time.monotonic() - t0)
        os.kill(pid, signal.SIGCONT)
        loader.close()
    ''', timeout=60)
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[0] == 'INTERRUPTED', r.stdout
    assert float(words[1]) < 10.0


def test_gil_released_while_waiting(fm):
    d, _, _ = fm
    loader = stoker.Loader(d, batch_size=10, num_workers=1, timeout=1.5)
    it = iter(loader)
    next(it)
    pid = loader.worker_pids()[0]
    os.kill(pid, signal.SIGSTOP)
    count = 0
    stop = False

    def spin():
        nonlocal count
        while not stop:
            count += 1
    t = threading.Thread(target=spin)
    try:
        t.start()
        t0 = time.monotonic()
        with pytest.raises(stoker.Error) as e:
            for _ in range(1000):
                next(it)
        waited = time.monotonic() - t0
        seen = count
    finally:
        stop = True
        t.join()
        os.kill(pid, signal.SIGCONT)
        loader.close()
    assert getattr(e.value, 'errno', None) == 110 or 'timeout' in str(e.value), str(e.value)
    assert str(pid) in str(e.value)
    assert waited >= 1.0
    # The spinning thread ran while the main thread waited in C.
    assert seen > 100000, seen


def test_rss_flat_over_epochs(fm):
    d, _, _ = fm

    def rss_kb():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024
    rss = []
    with stoker.Loader(d, batch_size=100, num_workers=1, augment=AUG, shuffle=True) as loader:
        for epoch in range(10):
            for b in loader:
                b['image'].sum()
                b.indices
                if torch is not None:
                    b.torch()
            gc.collect()
            rss.append(rss_kb())
    growth = rss[-1] - rss[1]
    assert growth < 2048, f'RSS grew {growth} KiB over epochs 2..10: {rss}'


def test_variable_length_fields(tmp_path):
    root = tmp_path / 'root'
    for cls, files in {'a': {'1': b'x' * 5, '2': b'yy'}, 'b': {'3': b'zzzzzzz'}}.items():
        (root / cls).mkdir(parents=True)
        for name, data in files.items():
            (root / cls / name).write_bytes(data)
    res = stoker.pack_folder(root, tmp_path / 'set', level=0)
    assert res['records'] == 3
    assert (tmp_path / 'set' / 'classes.txt').read_text() == 'a\nb\n'
    with stoker.Loader(tmp_path / 'set', batch_size=3) as loader:
        b = next(iter(loader))
        lengths = b.lengths('data')
        np.testing.assert_array_equal(lengths, [5, 2, 7])
        data = b['data']
        assert data.shape == (3, 7)
        assert bytes(data[1, :2]) == b'yy' and not data[1, 2:].any()
        np.testing.assert_array_equal(b['label'], [0, 0, 1])
        assert b.lengths('label') is None
        if torch is not None:
            t = b.torch()
            assert t['data_lengths'].tolist() == [5, 2, 7]


def test_importers_and_errors(tmp_path):
    import gzip
    img = bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(range(8))
    lab = bytes([0, 0, 8, 1, 0, 0, 0, 2, 3, 4])
    (tmp_path / 'i.gz').write_bytes(gzip.compress(img))
    (tmp_path / 'l').write_bytes(lab)
    assert stoker.pack_idx(tmp_path / 'i.gz', tmp_path / 'l', tmp_path / 'idx')['records'] == 2
    assert stoker.verify(tmp_path / 'idx') == {'records': 2, 'bad': 0}
    # Refused again without overwrite, replaced with it.
    with pytest.raises(stoker.Error, match='not empty') as e:
        stoker.pack_idx(tmp_path / 'i.gz', tmp_path / 'l', tmp_path / 'idx')
    assert e.value.errno == 17 and e.value.name == 'EEXIST'
    stoker.pack_idx(tmp_path / 'i.gz', tmp_path / 'l', tmp_path / 'idx', overwrite=True, limit=1)
    assert stoker.verify(tmp_path / 'idx')['records'] == 1
    (tmp_path / 'long').write_bytes(img + b'\0\0\0')
    with pytest.raises(stoker.FormatError, match='long: 3 bytes after the last of its 2 images'):
        stoker.pack_idx(tmp_path / 'long', tmp_path / 'l', tmp_path / 'x')
    with pytest.raises(stoker.Error, match='nope') as e:
        stoker.pack_idx(tmp_path / 'nope', tmp_path / 'l', tmp_path / 'x')
    assert e.value.errno == 2
    np.save(tmp_path / 'x0.npy', np.zeros((0, 3), np.float32))
    np.save(tmp_path / 'y0.npy', np.zeros((0,), np.int32))
    with pytest.raises(stoker.EmptyError, match='x0.npy'):
        stoker.pack_npy(tmp_path / 'x0.npy', tmp_path / 'y0.npy', tmp_path / 'npy0')
    assert not (tmp_path / 'npy0').exists()
    np.save(tmp_path / 'x.npy', np.arange(12, dtype=np.float32).reshape(4, 3))
    np.save(tmp_path / 'y.npy', np.arange(4, dtype=np.int16))
    stoker.pack_npy(tmp_path / 'x.npy', tmp_path / 'y.npy', tmp_path / 'npy', field='feat')
    with stoker.Loader(tmp_path / 'npy', batch_size=4) as loader:
        b = next(iter(loader))
        np.testing.assert_array_equal(b['feat'], np.arange(12, dtype=np.float32).reshape(4, 3))
    cifar = bytes([7]) + bytes(3072)
    (tmp_path / 'c.bin').write_bytes(cifar * 3)
    assert stoker.pack_cifar(tmp_path / 'c.bin', tmp_path / 'c10')['records'] == 3
    with pytest.raises(stoker.FormatError, match='c.bin'):
        stoker.pack_cifar([tmp_path / 'c.bin'], tmp_path / 'c100', cifar100=True)
    with pytest.raises(stoker.ConfigError, match='float64'):
        stoker.pack_arrays(tmp_path / 'f64', x=np.zeros((3, 2)))
    with pytest.raises(stoker.Error, match='nope-set'):
        stoker.Loader(tmp_path / 'nope-set')
    with pytest.raises(stoker.ConfigError, match='augment'):
        stoker.Loader(tmp_path / 'idx', augment='bogus:1')
    # A flipped byte: verify names the shard and record.
    shard = tmp_path / 'idx' / 'shard-00000.stk'
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 1  # inside the (single, raw) record area of a tiny shard
    shard.write_bytes(bytes(raw))
    with pytest.raises(stoker.Error, match='shard-00000.stk'):
        stoker.verify(tmp_path / 'idx')


def test_pin_memory_without_cuda_warns(fm):
    d, _, _ = fm
    if torch is not None and torch.cuda.is_available():  # pragma: no cover
        pytest.skip('CUDA is available: pin_memory pins for real (tests/gpu)')
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        with stoker.Loader(d, batch_size=10, pin_memory=True) as loader:
            assert not loader.pinned
    assert any('pin_memory' in str(x.message) for x in w)


@pytest.mark.skipif(torch is None or not torch.cuda.is_available(),
                    reason='needs CUDA torch and a GPU: torch here is a CPU build')
def test_pin_memory_cuda(fm):  # pragma: no cover - no GPU on this machine
    d, images, _ = fm
    with stoker.Loader(d, batch_size=100, num_workers=2, pin_memory=True) as loader:
        assert loader.pinned
        for b in loader:
            t = b.torch()['image']
            assert t.is_pinned()
            g = t.cuda(non_blocking=True)
            torch.cuda.synchronize()
            assert torch.equal(g.cpu(), t)


@pytest.mark.skipif(torch is None, reason='needs PyTorch')
def test_example_trains(tmp_path):
    src = os.environ.get('STK_SOURCE_ROOT', '')
    idx = '/usr/share/datasets/fashion-mnist'
    if not os.path.exists(f'{idx}/train-images-idx3-ubyte.gz'):
        pytest.skip(f'no Fashion-MNIST in {idx} (apt install dataset-fashion-mnist)')
    env = dict(os.environ, LD_LIBRARY_PATH='/usr/lib/x86_64-linux-gnu/openblas-pthread')
    r = subprocess.run([sys.executable, os.path.join(src, 'examples', 'train_torch_stoker.py'),
                        os.path.join(src, 'configs', 'fmnist-cnn.conf'), '--set', 'train_limit=256', '--set', 'threads=1',
                        '--set', 'test_limit=128', '--set', 'epochs=1', '--set', 'batch_size=64',
                        '--data', str(tmp_path), '--json'],
                       capture_output=True, text=True, timeout=300, cwd=src, env=env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res['epochs'] == 1 and 0.0 <= res['data_wait'] < 1.0 and res['final_test_acc'] > 0.1
