"""Device and process-group fixes so one config runs on GPUs and on CPU-only machines.

On a machine with CUDA nothing here changes behaviour. Without CUDA:

* ``SyncBN`` / ``MMSyncBN`` layers in the config become ``BN`` (both need CUDA; mmengine only
  reverts them in single-process runs, a 2-process CPU run would crash in the forward pass);
* process groups use gloo, are created by us with ``torch.cuda.set_device`` suppressed
  (mmengine calls it unconditionally), so mmengine's ``Runner`` finds them initialised;
* DDP gets ``device_ids=None`` (CPU modules refuse a device list).

:func:`teardown_distributed` destroys the process group when a run ends; after a gloo run
:func:`end_process` then ends the tool's process without interpreter finalization (why: its
docstring), so that a finished run neither hangs nor aborts with SIGABRT at exit.
"""
from __future__ import annotations

import atexit
import gc
import io
import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator, List, NoReturn, Optional
from unittest import mock

import torch
import torch.distributed as torch_dist

logger = logging.getLogger('iformer_mm')

_SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN', 'nn.SyncBatchNorm', 'SyncBatchNorm')


def _log(msg: str) -> None:
    # Runner's logger does not exist yet when the config is prepared; print on rank 0.
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'[iformer_mm] {msg}', flush=True)
    logger.info(msg)


def convert_sync_bn(node: Any, path: str = 'model', converted: Optional[List[str]] = None) -> List[str]:
    """Turn every ``type='SyncBN'``-like dict under ``node`` into ``type='BN'`` in place.

    Returns:
        The config paths that were converted (for the log line and tests).
    """
    converted = [] if converted is None else converted
    if isinstance(node, dict):
        if node.get('type') in _SYNC_BN_TYPES:
            node['type'] = 'BN'
            converted.append(path)
        for k, v in node.items():
            convert_sync_bn(v, f'{path}.{k}', converted)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            convert_sync_bn(v, f'{path}[{i}]', converted)
    return converted


def _fix_dataloader(cfg: Any, name: str) -> None:
    loader = cfg.get(name)
    if isinstance(loader, dict) and loader.get('num_workers', 1) == 0 and loader.get('persistent_workers'):
        # torch's DataLoader raises for persistent workers without workers.
        loader['persistent_workers'] = False


def prepare_runtime_cfg(cfg: Any, launcher: str = 'none') -> Any:
    """Adapt a loaded mmengine ``Config`` to the devices at hand (in place; also returned).

    Args:
        cfg: the config (mmdet, mmseg or any mmengine-runner config).
        launcher: ``'none' | 'pytorch' | 'slurm' | 'mpi'``.
    """
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        _fix_dataloader(cfg, name)
    if torch.cuda.is_available():
        return cfg
    converted = convert_sync_bn(cfg.get('model'))
    if converted:
        _log(f'CUDA is not available: converted SyncBN -> BN in {len(converted)} place(s) '
             f'({", ".join(converted[:4])}{" ..." if len(converted) > 4 else ""}).')
    if launcher != 'none':
        env_cfg = cfg.setdefault('env_cfg', {})
        dist_cfg = env_cfg.setdefault('dist_cfg', {})
        if dist_cfg.get('backend', 'nccl') != 'gloo':
            _log(f"CUDA is not available: distributed backend {dist_cfg.get('backend', 'nccl')!r} -> 'gloo'.")
            dist_cfg['backend'] = 'gloo'
        wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel')
        # mmengine fills device_ids=[LOCAL_RANK] unless the config sets it; CPU DDP needs None.
        wrapper.setdefault('device_ids', None)
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg['model_wrapper_cfg'] = wrapper
    return cfg


@contextmanager
def _no_cuda_set_device() -> Iterator[None]:
    """mmengine's ``init_dist`` calls ``torch.cuda.set_device(local_rank)`` with or without CUDA."""
    if torch.cuda.is_available():
        yield
        return
    with mock.patch.object(torch.cuda, 'set_device', lambda *_a, **_k: None):
        yield


def init_distributed(cfg: Any, launcher: str) -> None:
    """Create the process group before the ``Runner`` does (it then reuses it).

    Uses mmengine's own ``init_dist`` (so ``pytorch``, ``slurm`` and ``mpi`` launchers and
    ``env_cfg.dist_cfg`` keep their meaning); on CPU without the ``set_device`` call.
    """
    if launcher == 'none' or torch_dist.is_available() and torch_dist.is_initialized():
        return
    from mmengine.dist import init_dist
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}))
    mp_cfg = cfg.get('env_cfg', {}).get('mp_cfg', {})
    if mp_cfg.get('mp_start_method'):
        # init_dist would otherwise pick 'spawn' for the data workers.
        import torch.multiprocessing as mp
        if mp.get_start_method(allow_none=True) is None:
            mp.set_start_method(mp_cfg['mp_start_method'])
    with _no_cuda_set_device():
        init_dist(launcher, **dist_cfg)


# The default gloo groups :func:`teardown_distributed` destroyed, kept referenced until the
# process ends (see end_process): their C++ destructors must never run.
_destroyed_groups: List[Any] = []


def teardown_distributed() -> None:
    """Destroy the process group if one exists (safe to call always).

    A gloo group object stays referenced, so a process that called this should end through
    :func:`end_process` (``iformer_mm.cli.main_entry`` does). No barrier first: after a
    failure on one rank, a barrier would hang the others.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        if torch_dist.get_backend() == 'gloo':  # where the hazard was seen; NCCL runs unchanged
            _destroyed_groups.append(torch_dist.group.WORLD)
        torch_dist.destroy_process_group()


def end_process(status: int) -> NoReturn:
    """End the process with exit ``status``; after a distributed run, without finalization.

    A gloo group's worker thread frees each finished collective's tensors itself, and when
    Python no longer holds them it needs the GIL to free their Python objects (while holding
    the group's work lock). Two ends of a run can meet such a worker:

    * the group's C++ destructor, which joins the workers: DDP's reducer holds the group, so
      the destructor runs when the runner (a reference cycle) is collected — with the GIL
      held: a deadlock, the rank hangs;
    * interpreter finalization, while the group is still alive: CPython ends a thread that
      asks for the GIL with ``pthread_exit``, whose unwinding through C++ calls
      ``std::terminate`` (``terminate called without an active exception``, SIGABRT): torchrun
      reports a finished run as failed (about 1 run in 50 on a busy 2-core machine).

    So :func:`teardown_distributed` keeps a reference to the group (its destructor never runs)
    and this ends the process without finalization: it does what Python's exit does — waits
    for non-daemon threads, runs ``atexit`` handlers (logging's among them), flushes every file
    still open, stdout and stderr included — then calls ``os._exit``. Without a destroyed gloo
    group (a single-process run, or NCCL on GPUs, where this was not measured) it is
    ``sys.exit(status)``.
    """
    if not _destroyed_groups:
        sys.exit(status)
    for t in threading.enumerate():
        if t is not threading.current_thread() and not t.daemon:
            t.join()
    atexit._run_exitfuncs()  # noqa: SLF001  (CPython's own exit sequence, run early)
    gc.collect()  # what finalization would free (closing the files of unreachable objects)
    for f in [o for o in gc.get_objects() if isinstance(o, io.IOBase)] + [sys.stdout, sys.stderr]:
        try:  # files still open, sys.stdout among them: finalization would flush them
            if not f.closed and f.writable():
                f.flush()
        except (OSError, ValueError):  # a broken pipe or a detached stream: nothing to save
            pass
    os._exit(status)
