"""Training that survives being killed: atomic checkpoint files and exact RNG resumption.

* :func:`atomic_local_writes` — while active, every file mmengine's local file backend writes
  (checkpoints ``iter_N.pth`` / ``epoch_N.pth`` and the ``last_checkpoint`` pointer) is
  written to a hidden temporary file in the same folder, flushed, fsynced and then renamed
  over the final name with ``os.replace`` (atomic on POSIX and Windows). A ``SIGKILL``, OOM
  kill or power loss during a save leaves either the previous complete file or no file —
  never a truncated ``iter_N.pth`` that looks valid and fails at resume.
* :class:`RNGStateHook` — mmengine checkpoints carry the seed but not the RNG *positions*;
  after a resume, dropout / drop-path / RPN and RoI sampling would draw different numbers
  than the uninterrupted run. The hook stores torch's (and CUDA's) generator states in every
  checkpoint (as plain tensors: loads with ``weights_only=True``) and restores them right
  before the first iteration after a resume. numpy / python ``random`` (used by the data
  pipeline) need nothing: mmengine replays the pipeline for the skipped iterations, which
  advances them exactly as the interrupted run did.

``tools/train.py`` enables both; with mmdet's/mmseg's own ``train.py`` add
``custom_hooks = [dict(type='iformer_mm.RNGStateHook'), dict(type='iformer_mm.AtomicCheckpointHook')]``
(and ``custom_imports=dict(imports=['iformer_mm', 'iformer_mm.engine.resilience'])``).
"""
from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch
from mmengine.fileio.backends.local_backend import LocalBackend
from mmengine.hooks import Hook

from ..registry import HOOKS

__all__ = ['atomic_write_bytes', 'atomic_local_writes', 'AtomicCheckpointHook', 'RNGStateHook',
           'add_resilience_hooks', 'RNG_STATE_KEY']

RNG_STATE_KEY = 'iformer_mm_rng_state'
_TMP_MARK = '.tmp-'
_lock = threading.Lock()
_depth = 0
_orig_put = LocalBackend.put
_orig_put_text = LocalBackend.put_text


def atomic_write_bytes(data: bytes, path: Union[str, os.PathLike]) -> None:
    """Write ``data`` to ``path`` so that ``path`` is either the old file or the complete new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}{_TMP_MARK}', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _atomic_put(self: LocalBackend, obj: bytes, filepath: Union[str, Path]) -> None:
    atomic_write_bytes(obj, filepath)


def _atomic_put_text(self: LocalBackend, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
    atomic_write_bytes(obj.encode(encoding), filepath)


@contextmanager
def atomic_local_writes() -> Iterator[None]:
    """Make mmengine's local file writes atomic inside this block (re-entrant, process-wide)."""
    global _depth
    with _lock:
        _depth += 1
        LocalBackend.put = _atomic_put
        LocalBackend.put_text = _atomic_put_text
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                LocalBackend.put = _orig_put
                LocalBackend.put_text = _orig_put_text


def remove_stale_temp_files(folder: Union[str, os.PathLike]) -> int:
    """Delete temporary files left by a save that was killed (they never carry a final name)."""
    n = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith('.') and _TMP_MARK in name:
                try:
                    os.unlink(os.path.join(folder, name))
                    n += 1
                except OSError:
                    pass
    return n


@HOOKS.register_module()
class AtomicCheckpointHook(Hook):
    """Hook form of :func:`atomic_local_writes` for the whole run (also cleans stale temp files)."""

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._cm: Optional[Any] = None

    def before_run(self, runner: Any) -> None:
        n = remove_stale_temp_files(runner.work_dir)
        if n:
            runner.logger.warning(f'removed {n} temporary file(s) of an interrupted checkpoint save')
        self._cm = atomic_local_writes()
        self._cm.__enter__()

    def after_run(self, runner: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save torch/CUDA RNG states in checkpoints; restore them before the first resumed iteration.

    In a distributed run every process's states go into the checkpoint (only rank 0 writes
    the file) and each process gets its own back on resume, so a multi-process resume is
    bit-identical too. Resuming with a different number of processes falls back to rank
    0's state on every rank, with a warning.
    """

    # Runs before CheckpointHook (VERY_LOW) in after_train_iter, so the states gathered
    # there are the ones at the moment the checkpoint is written.
    priority = 'LOW'

    def __init__(self) -> None:
        self._pending: Optional[dict] = None
        self._ranks: Optional[list] = None

    @staticmethod
    def _local_state() -> dict:
        state = {'torch': torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state['cuda'] = torch.cuda.get_rng_state_all()
        return state

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None,
                         outputs: Any = None) -> None:
        # mmengine calls before_save_checkpoint on rank 0 only (Runner.save_checkpoint is
        # master-only), so the other ranks' states are collected here, where every rank
        # runs: a few KB per iteration.
        from mmengine.dist import all_gather_object, get_world_size
        if get_world_size() > 1:
            self._ranks = all_gather_object(self._local_state())

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        state = self._local_state()
        if self._ranks is not None:
            state['ranks'] = self._ranks
        checkpoint[RNG_STATE_KEY] = state

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        from mmengine.dist import get_rank, get_world_size
        # Applied later: mmengine re-seeds and replays the skipped batches after loading.
        state = checkpoint.get(RNG_STATE_KEY)
        if state is None:
            runner.logger.warning('checkpoint has no RNG state (not saved with RNGStateHook): '
                                  'training continues correctly, but random draws differ from '
                                  'an uninterrupted run')
        else:
            ranks, world = state.get('ranks'), get_world_size()
            if ranks is not None and len(ranks) == world:
                state = ranks[get_rank()]
            elif world > 1 or ranks is not None:
                runner.logger.warning(
                    f'checkpoint RNG state was saved by {len(ranks) if ranks else 1} process(es), '
                    f'resuming with {world}: every process continues from rank 0\'s state '
                    '(training is correct; random draws differ from an uninterrupted run)')
        self._pending = state

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending['torch'])
        cuda = self._pending.get('cuda')
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        self._pending = None


def add_resilience_hooks(cfg: Any) -> Any:
    """Append :class:`AtomicCheckpointHook` and :class:`RNGStateHook` to ``cfg.custom_hooks``
    unless the config already has them (in place; also returned)."""
    hooks = list(cfg.get('custom_hooks') or [])
    have = {str(h.get('type', '')).split('.')[-1] for h in hooks if isinstance(h, dict)}
    for name in ('AtomicCheckpointHook', 'RNGStateHook'):
        if name not in have:
            hooks.append(dict(type=f'iformer_mm.{name}'))
    cfg.custom_hooks = hooks
    return cfg
