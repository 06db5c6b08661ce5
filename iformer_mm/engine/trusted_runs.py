"""Which checkpoints we load, and how (see "Checkpoints and trust" in configs/detection/README.md).

torch >= 2.6 loads with ``weights_only=True``; mmengine 0.10.7 calls ``torch.load`` without the
argument, so checkpoints that mmengine itself saved (they hold the message hub's
``HistoryBuffer`` objects and numpy arrays/scalars next to the tensors) are refused on resume,
``load_from`` and testing. We do **not** switch safe loading off (no
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, no ``weights_only=False``): the runner's loads stay
``weights_only=True`` and only the exact globals listed in
:data:`TRUSTED_RUN_CHECKPOINT_GLOBALS` are allowed in addition — data containers that run no
code when unpickled, and ``getattr`` restricted to the four ``HistoryBuffer`` methods mmengine
pickles by name. Any other global in a checkpoint is still refused, whoever wrote it.

Pretrained backbone weights never use this allow-list: they go through
:func:`iformer_mm.pretrained.load_checkpoint_file`, plain tensors only.
"""
from __future__ import annotations

import logging
import os
import pickle
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..compat import safe_globals
from ..pretrained import CheckpointError

logger = logging.getLogger('iformer_mm')


# HistoryBuffer pickles its statistics methods as ``getattr(HistoryBuffer, 'min')`` etc.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling: only the four lookups mmengine writes.

    A general ``getattr`` would let a crafted file fetch arbitrary attributes of every allowed
    class, so it is never allow-listed as such.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'checkpoint asks for getattr({obj!r}, {name!r}); only HistoryBuffer.'
        f'{{{",".join(_HISTORY_BUFFER_METHODS)}}} are allowed (iformer_mm/engine/trusted_runs.py)')


def _numpy_globals() -> List[Any]:
    import numpy._core.multiarray as multiarray  # numpy 2 (the pinned stack)
    out: List[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar,
                      # checkpoints written under numpy 1.x name the old module
                      (multiarray._reconstruct, 'numpy.core.multiarray._reconstruct'),
                      (multiarray.scalar, 'numpy.core.multiarray.scalar')]
    # dtype classes of the numpy scalars/arrays mmengine logs (losses, lr, time, best scores)
    out += [getattr(np.dtypes, n) for n in _NUMPY_DTYPES]
    return out


_NUMPY_DTYPES = ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType', 'BoolDType')


def trusted_globals() -> List[Any]:
    """What ``torch.load(weights_only=True)`` may additionally reconstruct from our runs' checkpoints.

    Measured with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on an mmengine 0.10.7
    Mask R-CNN checkpoint: HistoryBuffer, numpy ndarray/dtype/_reconstruct/scalar, the
    Float64/Int64 dtype classes and ``builtins.getattr`` (replaced by a 4-name lookup).
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    return [HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr')] + _numpy_globals()


#: Names of :func:`trusted_globals` (documentation and tests).
TRUSTED_RUN_CHECKPOINT_GLOBALS: Tuple[str, ...] = (
    'mmengine.logging.history_buffer.HistoryBuffer',
    'builtins.getattr (only HistoryBuffer.min/max/current/mean)',
    'numpy.ndarray', 'numpy.dtype', 'numpy._core.multiarray._reconstruct',
    'numpy._core.multiarray.scalar',
) + tuple(f'numpy.dtypes.{n}' for n in _NUMPY_DTYPES)


def run_trusted(step: Callable[[], Any], checkpoint: Optional[str]) -> Any:
    """Run ``runner.train`` / ``runner.test`` with our runs' checkpoints trusted (allow-list
    above), turning a refused or broken ``checkpoint`` into one clear ``SystemExit`` message —
    never torch's advice to retry with ``weights_only=False``.
    """
    from ..pretrained import explain_load_error
    with trusted_run_checkpoints():
        try:
            return step()
        except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
            msg = explain_load_error(e, checkpoint)
            if msg is None:
                raise
            raise SystemExit(f'error: {msg}') from None


@contextmanager
def trusted_run_checkpoints() -> Iterator[None]:
    """Within this block, ``torch.load`` (still ``weights_only=True``) also accepts the objects
    mmengine writes into its training checkpoints — used around ``runner.train()/test()``.
    """
    with safe_globals(trusted_globals()):
        yield


def _pretrained_cfgs(node: Any, path: str = 'model') -> Iterator[Tuple[str, dict, dict]]:
    """``(config path, owner dict, Pretrained init dict)`` for every pretrained init in ``node``."""
    if isinstance(node, dict):
        init = node.get('init_cfg')
        for item in (init if isinstance(init, (list, tuple)) else [init]):
            if isinstance(item, dict) and item.get('type') == 'Pretrained' and item.get('checkpoint'):
                yield f'{path}.init_cfg', node, item
        for k, v in node.items():
            if k != 'init_cfg':
                yield from _pretrained_cfgs(v, f'{path}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _pretrained_cfgs(v, f'{path}[{i}]')


def check_pretrained_files(cfg: Any) -> None:
    """Fail before training starts when a local ``init_cfg`` checkpoint does not exist.

    When the run resumes or loads a full checkpoint (``resume`` / ``load_from``), a missing
    pretrained file does not matter (its weights would be overwritten): that ``init_cfg`` is
    dropped with a log line instead.

    Raises:
        CheckpointError: naming the file, the config key and how to fix it.
    """
    from_ckpt = bool(cfg.get('load_from')) or bool(cfg.get('resume'))
    for where, owner, init in list(_pretrained_cfgs(cfg.get('model'))):
        ckpt = str(init['checkpoint'])
        if '://' in ckpt or os.path.isfile(ckpt):
            continue
        if from_ckpt:
            msg = (f'{ckpt} ({where}) not found; not needed because the weights come from '
                   'the resumed/loaded checkpoint: skipping that initialisation.')
            if int(os.environ.get('RANK', '0')) == 0:
                print(f'[iformer_mm] {msg}', flush=True)
            logger.warning(msg)
            inits = owner['init_cfg']
            owner['init_cfg'] = ([i for i in inits if i is not init] or None
                                 if isinstance(inits, (list, tuple)) else None)
            continue
        raise CheckpointError(
            f'pretrained weights not found: {ckpt!r} ({where}.checkpoint, resolved from '
            f'{os.getcwd()}).\n  fix: download the authors\' ImageNet checkpoint to that path '
            '(see configs/detection/README.md, "Pretrained weights"), or point the config at it: '
            f'--cfg-options {where}.checkpoint=/path/to/weights.pth ; to train from scratch '
            f'instead: --cfg-options {where}=None')
