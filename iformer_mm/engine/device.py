"""Device and process-group fixes so one config runs on GPUs and on CPU-only machines.

On a machine with CUDA nothing here changes behaviour. Without CUDA:

* ``SyncBN`` / ``MMSyncBN`` layers in the config become ``BN`` (both need CUDA; mmengine only
  reverts them in single-process runs, a 2-process CPU run would crash in the forward pass);
* process groups use gloo, are created by us with ``torch.cuda.set_device`` suppressed
  (mmengine calls it unconditionally), so mmengine's ``Runner`` finds them initialised;
* DDP gets ``device_ids=None`` (CPU modules refuse a device list).

:func:`teardown_distributed` destroys the process group at exit: without it gloo ranks
sometimes abort with SIGABRT after a successful run.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional
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


def teardown_distributed() -> None:
    """Destroy the process group if one exists (safe to call always).

    No barrier first: after a failure on one rank, a barrier would hang the others.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()
