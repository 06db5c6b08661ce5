"""Which checkpoints we load, and how (see "Checkpoints and trust" in configs/detection/README.md).

mmengine 0.10.7 reads every local checkpoint with a bare ``torch.load(filename)``: on torch
>= 2.6 that is ``weights_only=True``, which refuses the checkpoints mmengine itself writes (the
message hub's ``HistoryBuffer`` objects and numpy arrays/scalars next to the tensors); on older
torch it is ``weights_only=False``, which would run whatever code a crafted file holds.

``import iformer_mm`` therefore registers :func:`load_from_local_safely` as mmengine's loader of
local files (:func:`register_mmengine_loader`). Every mmengine load of a local path goes through
it: resume, ``load_from``, ``tools/test.py``, ``init_cfg=dict(type='Pretrained')`` of
mmdet/mmseg modules, and the inference APIs (``init_detector``, ``DetInferencer``,
``init_model``, ``MMSegInferencer``). It reads tensors plus exactly the globals of
:func:`trusted_globals` — data containers that run no code when unpickled, and ``getattr``
restricted to the four ``HistoryBuffer`` methods mmengine pickles by name — on every torch:
``torch.load(weights_only=True)`` with that allow-list where torch's allow-list takes it, and a
restricted unpickler (torch's own tensor allow-list plus ours, nothing else) on older torch.
Any other global is refused with one :class:`~iformer_mm.pretrained.CheckpointError` line,
whoever wrote the file. We never switch safe loading off (no
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``).

Pretrained backbone weights never use this allow-list: they go through
:func:`iformer_mm.pretrained.load_checkpoint_file`, plain tensors only.
"""
from __future__ import annotations

import collections
import logging
import os
import os.path as osp
import pickle
from contextlib import contextmanager
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch

from ..compat import safe_globals
from ..pretrained import CheckpointError, explain_load_error, torch_load_allowing

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
    # worded as torch words a refused global, so explain_load_error names it
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL builtins.getattr (asked for {name!r} of {obj!r}; only '
        f'HistoryBuffer.{{{",".join(_HISTORY_BUFFER_METHODS)}}} are allowed, iformer_mm/engine/trusted_runs.py)')


def _numpy_globals() -> List[Any]:
    try:
        import numpy._core.multiarray as multiarray  # numpy 2 (and 1.26's alias of it)
    except ImportError:
        import numpy.core.multiarray as multiarray
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
    Float64/Int64 dtype classes and ``builtins.getattr`` (replaced by a 4-name lookup); and
    ``collections.Counter`` (the milestones of a MultiStep lr schedule), which torch >= 2.4
    allows by default and torch 2.1 does not.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    return ([HistoryBuffer, (_history_buffer_getattr, 'builtins.getattr'), collections.Counter]
            + _numpy_globals())


#: Names of :func:`trusted_globals` (documentation and tests).
TRUSTED_RUN_CHECKPOINT_GLOBALS: Tuple[str, ...] = (
    'mmengine.logging.history_buffer.HistoryBuffer',
    'builtins.getattr (only HistoryBuffer.min/max/current/mean)', 'collections.Counter',
    'numpy.ndarray', 'numpy.dtype', 'numpy._core.multiarray._reconstruct',
    'numpy._core.multiarray.scalar',
) + tuple(f'numpy.dtypes.{n}' for n in _NUMPY_DTYPES)


def load_from_local_safely(filename: Union[str, os.PathLike], map_location: Any = None) -> Any:
    """Read a local checkpoint: tensors, plain containers and :func:`trusted_globals`, nothing else.

    The loader ``import iformer_mm`` registers for mmengine's local files (same signature and
    ``FileNotFoundError`` as mmengine's ``load_from_local``), reading with
    :func:`iformer_mm.pretrained.torch_load_allowing`: on a torch whose ``weights_only``
    allow-list takes ``(object, name)`` entries (2.6+), ``torch.load(weights_only=True)`` with
    :func:`trusted_globals`; on older torch (2.1-2.5) the same allow-list enforced by a
    restricted unpickler (given to ``torch.load`` as its ``pickle_module``: torch then calls its
    ``find_class`` for every global, so nothing outside the list is ever resolved).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file holds a global outside the allow-list (one line naming it;
            nothing was unpickled), or it is truncated/corrupt.
    """
    filename = osp.expanduser(os.fspath(filename))
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    try:
        return torch_load_allowing(filename, trusted_globals(), map_location)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise
        msg = explain_load_error(e, filename, allow_list=True)
        if msg is None:
            raise
        raise CheckpointError(msg) from None


def load_from_url_safely(filename: str, map_location: Any = None, model_dir: Optional[str] = None,
                         progress: bool = os.isatty(0)) -> Any:
    """Download a checkpoint as mmengine's ``load_from_http`` does, then read it as
    :func:`load_from_local_safely` does.

    mmengine reads URLs with ``torch.hub.load_state_dict_from_url``, whose ``weights_only``
    defaults to False on every torch: a model-zoo file (``load_from``, an mmdet/mmseg
    ``init_cfg=dict(type='Pretrained', checkpoint='https://...')``, ``torchvision://``,
    ``open-mmlab://``, ``mmcls://``) would be unpickled with nothing checked. The download is
    torch.hub's, to the same cache file (``<torch hub dir>/checkpoints/<name>`` or
    ``model_dir``), so files mmengine cached before are reused; in a distributed run local rank
    0 downloads first.

    Raises:
        CheckpointError: as :func:`load_from_local_safely` (the message names the cached file).
    """
    from mmengine.dist import get_dist_info
    from torch.hub import download_url_to_file, get_dir
    from urllib.parse import urlparse

    model_dir = model_dir or osp.join(get_dir(), 'checkpoints')
    cached = osp.join(model_dir, osp.basename(urlparse(filename).path))

    def fetch() -> None:
        if not osp.exists(cached):
            os.makedirs(model_dir, exist_ok=True)
            logger.info('Downloading %s to %s', filename, cached)
            download_url_to_file(filename, cached, None, progress=progress)

    rank, world_size = get_dist_info()
    if rank == 0:
        fetch()
    if world_size > 1:
        torch.distributed.barrier()
        fetch()
    return load_from_local_safely(cached, map_location=map_location)


def register_mmengine_loader() -> None:
    """Make our safe readers mmengine's loaders of local files and of URLs.

    mmengine picks a loader by path prefix; ``''`` (the fallback for every path without a
    ``scheme://``) is its ``load_from_local``, ``http(s)://`` its ``load_from_http``. Its
    ``torchvision://``, ``open-mmlab://`` and ``mmcls://`` loaders map the name to a URL and call
    the module-level ``load_from_http``, so that name is rebound to :func:`load_from_url_safely`
    too. Other schemes (``s3://``, ``petrel://``, ``pavi://``) are left to mmengine.
    """
    from mmengine.runner import checkpoint as mm_checkpoint
    mm_checkpoint.CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safely, force=True)
    mm_checkpoint.CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                                   loader=load_from_url_safely, force=True)
    mm_checkpoint.load_from_http = load_from_url_safely


def run_trusted(step: Callable[[], Any], checkpoint: Optional[str]) -> Any:
    """Run ``runner.train`` / ``runner.test``, turning a refused or broken ``checkpoint`` into one
    clear ``SystemExit`` message — never torch's advice to retry with ``weights_only=False``.

    The runner reads checkpoints with :func:`load_from_local_safely` (registered on import).
    """
    try:
        return step()
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        if isinstance(e, CheckpointError):
            raise SystemExit(f'error: {e}') from None
        msg = explain_load_error(e, checkpoint, allow_list=True)
        if msg is None:
            raise
        raise SystemExit(f'error: {msg}') from None


@contextmanager
def trusted_run_checkpoints() -> Iterator[None]:
    """Within this block, a direct ``torch.load(f, weights_only=True)`` also accepts the objects
    mmengine writes into its training checkpoints (torch >= 2.6; see
    :func:`iformer_mm.compat.safe_globals` for older torch). mmengine's own loads need no block:
    they go through :func:`load_from_local_safely`.
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
