# SPDX-License-Identifier: MIT
"""Stoker's data loader for Python and PyTorch users.

``stoker.Loader`` reads a ``.stk`` shard set with worker processes and gives
batches as zero-copy NumPy arrays (``batch.torch()``: torch tensors, no copy)
over shared memory. Batches are the same for any ``num_workers`` and a run
resumes mid-epoch exactly (``state_dict``). ``pack_arrays``, ``pack_idx``,
``pack_cifar``, ``pack_npy``, ``pack_folder`` write shard sets; ``verify``
checks one. Errors raise ``stoker.Error`` subclasses whose message names the
file, record, worker pid or signal (``WorkerError`` for a dead worker).
"""

import atexit
import warnings
import weakref
from collections.abc import Mapping

import numpy as np

from . import _stoker
from ._stoker import (ConfigError, DataError, EmptyError, Error, FormatError, LimitError,
                      ReleasedError, ShapeError, StateError, WorkerError)

__all__ = ['Loader', 'Batch', 'pack_arrays', 'pack_idx', 'pack_cifar', 'pack_npy', 'pack_folder',
           'verify', 'Error', 'WorkerError', 'DataError', 'FormatError', 'ConfigError',
           'ShapeError', 'LimitError', 'StateError', 'EmptyError', 'ReleasedError']
__version__ = _stoker.version

# Workers are forked from a small server process made here, while the
# program is still clean (before CUDA or threads): import stoker first.
_stoker.forkserver_start()

_live = weakref.WeakSet()


@atexit.register
def _shutdown():
    for loader in list(_live):
        loader.close()
    _stoker.forkserver_stop()


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise ImportError('batch.torch() needs PyTorch') from e
    return torch


class Batch(Mapping):
    """One batch: a mapping from field name to a NumPy array.

    The arrays are views of a shared-memory slot (no copy) and stay valid as
    long as they are alive: the slot goes back to the loader once the batch
    is released *and* no array of it is alive. A batch is released by
    ``release()``, at the end of a ``with batch:`` block, when the loader is
    asked for the next batch, or when the batch object is dropped. After that, taking a new array from it
    raises ``ReleasedError``; arrays taken before keep their data (never
    stale), each holding the slot. Keep copies (``copy=True`` on the loader,
    or ``array.copy()``) of what you store past the next batch, or the
    loader runs out of slots and says so.

    Variable-length fields are padded with zeros to the longest sample in
    the batch; ``lengths(name)`` gives each sample's extent.
    """

    __slots__ = ('_b', '_arrays', '_copy')

    def __init__(self, cbatch, copy=False):
        self._b = cbatch
        self._arrays = {}
        self._copy = copy
        if copy:
            for name in cbatch.names():
                self._arrays[name] = self._view(name).copy()
            self._arrays['__indices__'] = np.asarray(cbatch.indices()).copy()
            self._arrays['__lengths__'] = {n: (None if (l := cbatch.lengths(n)) is None
                                               else np.asarray(l).copy()) for n in cbatch.names()}
            cbatch.release()

    def _view(self, name):
        a = np.asarray(self._b.field(name))
        if self._b.dtype(name) == 'bf16':
            a = a.view(np.uint16)
        return a

    def __getitem__(self, name):
        a = self._arrays.get(name)
        if a is None or (not self._copy and self._b.released):
            a = self._view(name)
            self._arrays[name] = a
        return a

    def __iter__(self):
        return iter(self._b.names())

    def __len__(self):
        return len(self._b.names())

    def keys(self):
        return self._b.names()

    @property
    def indices(self):
        """Dataset index of each sample (int64)."""
        if self._copy:
            return self._arrays['__indices__']
        return np.asarray(self._b.indices())

    def lengths(self, name):
        """Per-sample extents of a variable-length field, or None."""
        if self._copy:
            return self._arrays['__lengths__'][name]
        l = self._b.lengths(name)
        return None if l is None else np.asarray(l)

    def dtype(self, name):
        """The stored dtype name ('u8', 'f32', 'bf16', ...)."""
        return self._b.dtype(name)

    @property
    def epoch(self):
        return self._b.epoch

    @property
    def number(self):
        """Batch number within the epoch."""
        return self._b.number

    @property
    def size(self):
        """Samples in the batch."""
        return self._b.size

    @property
    def released(self):
        return self._b.released

    def release(self):
        """Done with the batch: its slot goes back once no array of it is alive."""
        self._b.release()
        if not self._copy:
            self._arrays.clear()  # the batch's own references to its arrays

    def torch(self):
        """A dict of torch tensors sharing memory with the arrays (no copy).

        bf16 fields come as torch.bfloat16; lengths of variable fields under
        '<name>_lengths'. Pinned when the loader was made with pin_memory=True.
        """
        torch = _torch()
        out = {}
        for name in self._b.names():
            t = torch.from_numpy(self[name])
            if self._b.dtype(name) == 'bf16':
                t = t.view(torch.bfloat16)
            out[name] = t
            l = self.lengths(name)
            if l is not None:
                out[name + '_lengths'] = torch.from_numpy(l)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __repr__(self):
        fields = ', '.join(f'{n}: {self._b.dtype(n)}' for n in self._b.names())
        return f'<stoker.Batch epoch {self.epoch} batch {self.number}, {self.size} samples, {fields}>'


def _cuda_pin():
    """cudaHostRegister / cudaHostUnregister through torch, or None."""
    try:
        import torch
        if not torch.cuda.is_available():
            return None
        cudart = torch.cuda.cudart()
    except Exception:  # pragma: no cover - no CUDA torch here
        return None

    def pin(addr, nbytes):
        return int(cudart.cudaHostRegister(addr, nbytes, 0))

    def unpin(addr, nbytes):
        cudart.cudaHostUnregister(addr)

    return pin, unpin


class Loader:
    """Batches from a .stk shard set, by worker processes.

    Loader(path, batch_size=1, num_workers=0, shuffle=False, seed=0,
           augment=None, augment_field='image', drop_last=False, prefetch=2,
           persistent_workers=False, timeout=0, rank=0, world_size=1,
           io='auto', respawn=False, skip_corrupt=False, copy=False,
           pin_memory=False)

    Iterating gives ``Batch`` objects (mappings of zero-copy NumPy arrays)
    for one epoch; the next iteration goes on to the next epoch unless
    ``set_epoch`` chooses one. An iteration broken off continues where it
    stopped. Asking for the next batch releases the previous one (see
    ``Batch``). ``augment`` is a spec as in stoker-bench, e.g.
    ``'crop:28,pad=2|hflip|normalize:mean=0.286,std=0.353'``; ``rank`` and
    ``world_size`` shard each epoch as torch's DistributedSampler.
    ``timeout`` (seconds, 0 = none) bounds the wait for one batch.
    ``copy=True`` copies every batch out of shared memory (plain arrays you
    may keep), ``pin_memory=True`` registers the batch arena with CUDA once
    (through torch) so that ``.cuda(non_blocking=True)`` is asynchronous;
    without CUDA torch it warns and does nothing, as torch's DataLoader.

    The GIL is released while waiting. A worker that dies raises
    ``WorkerError`` (pid and signal in the message) in the iterating thread.
    ``close()`` (or the end of a ``with`` block, or the program's exit)
    stops the workers; the shared memory goes when no array of it is left.
    """

    def __init__(self, path, batch_size=1, num_workers=0, shuffle=False, seed=0, augment=None,
                 augment_field='image', drop_last=False, prefetch=2, persistent_workers=False,
                 timeout=0, rank=0, world_size=1, io='auto', respawn=False, skip_corrupt=False,
                 copy=False, pin_memory=False, _pin=None):
        self._copy = bool(copy)
        pin = unpin = None
        if _pin is not None:  # tests: (pin, unpin) callables
            pin, unpin = _pin
        elif pin_memory:
            fns = _cuda_pin()
            if fns is None:
                warnings.warn('pin_memory=True but CUDA torch is not available: not pinning',
                              stacklevel=2)
            else:
                pin, unpin = fns
        self._c = _stoker.Loader(str(path), int(batch_size), int(num_workers), bool(shuffle),
                                 int(seed), augment, augment_field, bool(drop_last), int(prefetch),
                                 bool(persistent_workers), float(timeout), int(rank),
                                 int(world_size), io, bool(respawn), bool(skip_corrupt), pin, unpin)
        self._advance = False
        self._epoch = 0
        self.pinned = pin is not None
        _live.add(self)

    def __len__(self):
        return self._c.len()

    def __iter__(self):
        if self._advance:
            self.set_epoch(self._epoch + 1)
        # The batch handed out is released when the next one is asked for;
        # one left when the iteration stops is released when it is dropped.
        prev = None
        while True:
            if prev is not None:
                prev.release()
                prev = None
            cb = self._c.next()
            if cb is None:
                self._advance = True
                return
            prev = Batch(cb, self._copy)
            yield prev

    def set_epoch(self, epoch):
        """Select an epoch and rewind to its first batch."""
        self._c.set_epoch(int(epoch))
        self._epoch = int(epoch)
        self._advance = False

    @property
    def epoch(self):
        return self._epoch

    def state_dict(self):
        """Where the loader stands: {'epoch', 'batch'} of the next batch it gives."""
        e, k = self._c.get_state()
        if self._advance:
            e, k = self._epoch + 1, 0
        return {'epoch': e, 'batch': k}

    def load_state_dict(self, state):
        """Continue with exactly the batches that would have come next."""
        self._c.set_state(int(state['epoch']), int(state['batch']))
        self._epoch = int(state['epoch'])
        self._advance = False

    def stats(self):
        """Per-stage times and bytes, batches, samples, respawns, worker RSS."""
        return self._c.stats()

    def worker_pids(self):
        return self._c.worker_pids()

    def close(self):
        self._c.close()

    @property
    def closed(self):
        return self._c.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _pack_config(level=None, dict=True, dict_size=65536, records_per_shard=10000, prefix='shard',
                 overwrite=False):
    return {'level': -1 if level in (None, 'auto') else int(level), 'dict': bool(dict),
            'dict_size': int(dict_size), 'records_per_shard': int(records_per_shard),
            'prefix': prefix, 'overwrite': bool(overwrite)}


def pack_arrays(out, **fields):
    """Pack NumPy arrays sharing their first dimension into a shard set.

    pack_arrays('data/set', image=images, label=labels, level=0) -> dict.
    Each keyword that is an array becomes a field (uint8, int8, int32,
    int64, float16, float32; C order is made if needed); level, dict,
    dict_size, records_per_shard, prefix and overwrite configure the pack.
    The set appears whole or not at all; an existing one is replaced only
    with overwrite=True.
    """
    cfg_keys = ('level', 'dict', 'dict_size', 'records_per_shard', 'prefix', 'overwrite')
    cfg = {k: fields.pop(k) for k in cfg_keys if k in fields}
    if not fields:
        raise ConfigError('pack_arrays: no fields given')
    names, arrays = [], []
    for name, a in fields.items():
        a = np.asarray(a)
        if a.dtype == np.bool_:
            a = a.astype(np.uint8)
        elif a.dtype == np.float64:
            raise ConfigError(f"field '{name}': float64 is not a shard dtype; pass .astype(np.float32)")
        elif a.dtype == np.uint16 or a.dtype == np.uint32 or a.dtype == np.uint64 or a.dtype == np.int16:
            a = a.astype(np.int64)
        names.append(name)
        arrays.append(np.ascontiguousarray(a))
    return _stoker.pack_arrays(str(out), names, arrays, **_pack_config(**cfg))


def pack_idx(images, labels, out, limit=0, **cfg):
    """Pack IDX files (MNIST, Fashion-MNIST; gzip or plain): image:u8[1,H,W] label:i64."""
    return _stoker.pack('idx', [str(images), str(labels)], str(out), limit=limit, **_pack_config(**cfg))


def pack_cifar(files, out, cifar100=False, limit=0, **cfg):
    """Pack CIFAR-10 (or -100) binary batches: image:u8[3,32,32] label:i64."""
    if isinstance(files, (str, bytes)) or hasattr(files, '__fspath__'):
        files = [files]
    return _stoker.pack('cifar100' if cifar100 else 'cifar10', [str(f) for f in files], str(out),
                        limit=limit, **_pack_config(**cfg))


def pack_npy(data, labels, out, field='data', limit=0, **cfg):
    """Pack a .npy data array (N, ...) and integer labels (N,)."""
    return _stoker.pack('npy', [str(data), str(labels)], str(out), field=field, limit=limit,
                        **_pack_config(**cfg))


def pack_folder(root, out, limit=0, **cfg):
    """Pack ROOT/<class>/... files as data:u8[-1] label:i64 (ImageFolder order)."""
    return _stoker.pack('folder', [str(root)], str(out), limit=limit, **_pack_config(**cfg))


def verify(path):
    """Decode every record of a set and check it: {'records', 'bad'}; raises on a bad one."""
    return _stoker.verify(str(path))
