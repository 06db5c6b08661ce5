"""The one checkpoint loader of the package (timm classifier, OpenMMLab backbone, tools).

Accepted sources, all loaded with ``torch.load(weights_only=True)`` (a checkpoint never runs
code): the authors' plain ``state_dict`` files, timm training checkpoints (``state_dict`` /
``state_dict_ema`` / ``model`` / ``model_ema``, ``module.`` prefixes), our classification
checkpoints and converted backbones, and MMDetection/MMSegmentation checkpoints (the
``backbone.`` sub-dict is taken). Position tables are resized to the target model;
classifier keys are dropped when the target has no classifier. Every load reports exactly
which keys were loaded, resized, dropped, missing and unexpected, and raises
:class:`CheckpointError` with a fix when nothing or the wrong variant matched.
"""
from __future__ import annotations

import _compat_pickle
import logging
import os
import pickle
import re
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from timm.layers import resample_abs_pos_embed_nhwc

from .compat import has_safe_global_aliases, safe_globals

__all__ = [
    'CheckpointError', 'LoadReport', 'load_checkpoint_file', 'extract_state_dict',
    'adapt_state_dict', 'load_state_dict_into', 'load_pretrained', 'infer_arch',
    'load_timm_weights', 'mobile_iformer_safe_globals', 'load_mobile_iformer',
    'explain_download_failure', 'torch_load_allowing',
]

logger = logging.getLogger('iformer_mm')

StateDict = Dict[str, torch.Tensor]
# Keys a classification checkpoint has that a backbone (no classifier) does not.
HEAD_KEY_RE = re.compile(r'^(head|norm)\.')
POS_EMBED_RE = re.compile(r'^pos_embed\d$')
# Stage modules a backbone may not build (stages after its last output index).
STAGE_KEY_RE = re.compile(r'^((?:blocks|patch_embed|pos_embed)[2-4])(?:\.|$)')
_CONTAINER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model', 'module')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason and the fix in the message."""


@dataclass
class LoadReport:
    """What a load did: key lists, so logs and tests can state it exactly."""

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    resized: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f'Loaded {len(self.loaded)} tensors from {self.source}']
        lines += [f'  note: {n}' for n in self.notes]
        for k, (a, b) in self.resized.items():
            lines.append(f'  resized {k}: {list(a)} -> {list(b)}')
        if self.dropped:
            lines.append(f'  dropped (not part of this model by design): {_short(self.dropped)}')
        lines.append(f'  missing (left at init): {_short(self.missing) if self.missing else "none"}')
        lines.append(f'  unexpected (ignored): {_short(self.unexpected) if self.unexpected else "none"}')
        return '\n'.join(lines)


def _short(keys: List[str], n: int = 12) -> str:
    return ', '.join(keys[:n]) + (f' ... (+{len(keys) - n} more)' if len(keys) > n else '')


class _AllowListUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only the globals in :attr:`allowed` and refuses the rest.

    Objects can only be made by calling what :meth:`find_class` returns, so a file built by
    ``__reduce__`` (``posix.system``, ``builtins.eval``, ...) is refused before anything runs.
    """

    allowed: Dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles (torch.save's default) write Python 2 names, e.g. __builtin__.getattr
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        obj = self.allowed.get(f'{module}.{name}')
        if obj is None:  # worded as torch words it, so _refused names the object
            raise pickle.UnpicklingError(
                f'Unsupported global: GLOBAL {module}.{name} (not on the allow-list of this load)')
        return obj


def _allow_list_pickle_module(allowed: Sequence[Any]) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load`` that reads with :class:`_AllowListUnpickler`.

    Allowed: torch's own ``weights_only`` globals (tensor and storage rebuilding, dtypes,
    ``OrderedDict`` ...; torch's private table, present on every supported torch), bytes from
    protocol-2 pickles (``_codecs.encode``), and ``allowed`` (objects, or ``(object,
    'module.name')`` pairs for an object pickled under another name).
    """
    import codecs

    from torch import _weights_only_unpickler
    table = dict(_weights_only_unpickler._get_allowed_globals())
    table['_codecs.encode'] = codecs.encode
    for g in allowed:
        obj, name = g if isinstance(g, tuple) else (g, f'{g.__module__}.{g.__qualname__}')
        table[name] = obj
    unpickler = type('AllowListUnpickler', (_AllowListUnpickler,), {'allowed': table})
    module = types.ModuleType('iformer_mm_allow_list_pickle')
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = lambda f, **kw: unpickler(f, **kw).load()  # type: ignore[attr-defined]
    return module


def torch_load_allowing(path: Union[str, os.PathLike], allowed: Sequence[Any],
                        map_location: Any = 'cpu') -> Any:
    """``torch.load`` that rebuilds tensors plus exactly ``allowed``, on every supported torch.

    Where torch's ``weights_only`` allow-list takes ``(object, name)`` entries (2.6+):
    ``torch.load(weights_only=True)`` inside it. On older torch (2.1-2.5, whose allow-list is
    missing or cannot name an object under another module path, e.g. NumPy 1's
    ``numpy.core.multiarray.scalar`` read under NumPy 2): the same list enforced by
    :class:`_AllowListUnpickler`, given to ``torch.load`` as its ``pickle_module`` (torch then
    calls our ``find_class`` for every global, so nothing outside the list is ever resolved).
    Errors are torch's/pickle's (a refused global is a ``pickle.UnpicklingError`` naming it).
    """
    if has_safe_global_aliases():
        with safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)
    return torch.load(path, map_location=map_location, weights_only=False,
                      pickle_module=_allow_list_pickle_module(allowed))


def load_checkpoint_file(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = 'cpu',
                         allowed: Sequence[Any] = ()) -> Any:
    """Read a checkpoint file safely (``weights_only=True``; ``.safetensors`` supported).

    Args:
        path: the file.
        map_location: as ``torch.load``.
        allowed: Python objects the file may hold besides tensors (e.g.
            :func:`mobile_iformer_safe_globals`), read by :func:`torch_load_allowing` on every
            supported torch; empty: tensors and plain containers only.

    Raises:
        CheckpointError: the file is missing, truncated/corrupt, or holds Python objects that
            safe loading refuses (such a file is never unpickled).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(
            f'checkpoint file not found: {path!r}. Download the weights (see '
            'configs/*/README.md) or set the path, e.g. '
            "--cfg-options model.backbone.init_cfg.checkpoint=/path/to/iformer_small.pth")
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise CheckpointError(f'{path} is a .safetensors file: pip install safetensors') from e
        try:
            return load_file(path, device=str(map_location))
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f'{path} is not a readable safetensors file ({e}); re-download it') from e
    try:
        if allowed:
            return torch_load_allowing(path, allowed, map_location)
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused(path, e) from e
    except Exception as e:  # noqa: BLE001 - any parse failure of the bytes means a broken file

        raise CheckpointError(
            f'{path} is truncated or corrupt ({type(e).__name__}: {_first_sentence(e)}); '
            f'size {os.path.getsize(path)} bytes. Re-download or re-save it.') from e


def _first_sentence(e: Exception) -> str:
    """torch's zip errors run to several sentences; the first says what broke."""
    text = (str(e).strip().splitlines() or [''])[0]
    return text.split('. ')[0][:160]


# torch words a refused global three ways: "Unsupported global: GLOBAL a.b" (not allowlisted),
# "unsupported GLOBAL posix.system whose module posix is blocked" (blocked module) and, before
# torch 2.4, "Unsupported class posix.system".
_GLOBAL_RE = re.compile(r'[Uu]nsupported (?:global: )?(?:GLOBAL|class) ([\w.]+)')


def _refused(path: str, e: Exception, allow_list: bool = False) -> CheckpointError:
    """Say *why* safe loading refused ``path``: a Python object it names, or not a checkpoint.

    ``allow_list``: the refusing load already allowed the training-state classes of
    :mod:`iformer_mm.engine.trusted_runs` (mmengine's loader once ``iformer_mm`` is imported).
    """
    text = str(e)
    m = _GLOBAL_RE.search(text)
    with open(path, 'rb') as f:
        head = f.read(16)
    if m is None and head.startswith(b'PK'):  # a real torch zip checkpoint, refused for its content
        return CheckpointError(
            f'{path} was refused by safe loading (weights_only=True): it holds Python objects '
            f'beyond tensors ({_first_sentence(e)}); unpickling them could run code. Use the official '
            'weights, or re-save a model you trust as a plain state_dict.')
    if m is None:  # the unpickler met bytes it cannot parse at all
        return CheckpointError(
            f'{path} is not a PyTorch checkpoint (corrupt, or another file type; first bytes '
            f'{head!r}, size {os.path.getsize(path)} bytes). Re-download it; a failed download '
            'often saves an HTML error page under the .pth name.')
    name = m.group(1)
    if allow_list and name.startswith(('mmengine.', 'numpy.')):
        hint = ('it is not one of the training-state classes iformer_mm allows in a run checkpoint '
                '(docs/reliability.md), so nothing was unpickled. Re-save the weights of a model '
                'you trust as a plain state_dict (torch.save(model.state_dict(), path)).')
    elif name.startswith(('mmengine.', 'numpy.')):
        hint = ('it looks like an mmengine training checkpoint (optimizer/logger state). To resume '
                'or test it use tools/train.py --resume / tools/test.py, which trust only the '
                'checkpoint classes in docs/reliability.md; to use its weights as pretrained weights '
                'convert it once to a plain state_dict: python tools/model_converters/mm_to_iformer.py '
                'CKPT OUT.pth --trust-pickle (for a checkpoint you produced).')
    else:
        hint = ('nothing in a weights file needs it, so it was not unpickled: the file may be '
                'malicious. Use the official weights, or re-save a model you trust as a plain '
                'state_dict (torch.save(model.state_dict(), path)).')
    return CheckpointError(
        f'{path} was refused by safe loading (weights_only=True): it references the Python '
        f'object {name!r}, and unpickling it could run code; {hint}')


def explain_load_error(exc: BaseException, path: Optional[str], allow_list: bool = False) -> Optional[str]:
    """One clear message for a checkpoint that mmengine's loader (resume / load_from / testing /
    the inference APIs) failed on, or ``None`` when ``exc`` is not a checkpoint-reading error.

    torch's own text for a refused file suggests ``weights_only=False``; ours says what the file
    holds and never recommends disabling safe loading. ``allow_list``: the load already allowed
    our runs' training-state classes (see :func:`_refused`).
    """
    name = path or 'the checkpoint'
    if isinstance(exc, pickle.UnpicklingError):
        if path and os.path.isfile(path):
            return str(_refused(path, exc, allow_list))
        return f'{name} was refused by safe loading (weights_only=True): {_first_sentence(exc)}'
    if isinstance(exc, (RuntimeError, EOFError)) and (
            'PytorchStreamReader' in str(exc) or isinstance(exc, EOFError)):
        return (f'{name} is truncated or corrupt ({_first_sentence(exc)}). Resume from an earlier '
                'checkpoint (iter_N.pth / epoch_N.pth in the work dir) or re-download it.')
    return None


def _strip(sd: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_iformer_key(key: str) -> bool:
    return key.startswith('blocks1.')


def extract_state_dict(obj: Any, use_ema: bool = True,
                       is_model_key: Callable[[str], bool] = _is_iformer_key,
                       take_backbone: bool = False) -> Tuple[StateDict, List[str]]:
    """Find the model weights inside any supported checkpoint layout.

    Args:
        obj: a loaded checkpoint.
        use_ema: prefer EMA weights when there are some.
        is_model_key: says whether a key belongs to the model (default: an iFormer key); a
            ``backbone.``/``model.``/``encoder.`` sub-dict is taken when its keys are.
        take_backbone: also take a ``backbone.`` sub-dict whose keys are in another layout
            (an mmdet/mmseg checkpoint of a model whose weights need renaming).

    Returns:
        ``(state_dict, notes)``: the model's tensors and what was unwrapped (for the report).
    """
    notes: List[str] = []
    if not isinstance(obj, Mapping):
        raise CheckpointError(f'checkpoint is a {type(obj).__name__}, not a dict of tensors')
    for _ in range(3):  # nested containers, e.g. {'model': {'state_dict': ...}}
        keys = [k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)]
        if not use_ema:
            keys = [k for k in keys if 'ema' not in k]
        if not keys:
            break
        notes.append(f"took '{keys[0]}'")
        obj = obj[keys[0]]
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f'checkpoint holds no tensors (top-level keys: {_short(list(obj))})')
    for prefix in ('module.', '_orig_mod.'):
        if all(k.startswith(prefix) for k in sd):
            sd = _strip(sd, prefix)
            notes.append(f"stripped '{prefix}'")
    for prefix in ('backbone.', 'model.', 'encoder.'):
        if any(k.startswith(prefix) for k in sd) and not any(is_model_key(k) for k in sd):
            sub = _strip(sd, prefix)
            if any(is_model_key(k) for k in sub) or (take_backbone and prefix == 'backbone.'):
                notes.append(f"took the '{prefix}' sub-dict ({len(sub)} of {len(sd)} tensors)")
                sd = sub
                break
    return sd, notes


def infer_arch(sd: Mapping[str, torch.Tensor],
               arch_zoo: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Optional[Dict[str, Any]]:
    """Depths and dims of the iFormer that produced ``sd`` (``None`` if it is not one).

    Args:
        sd: a state dict in the authors' key layout.
        arch_zoo: named architectures (e.g. ``InceptionTransformer.arch_zoo``) to name the
            variant by; ``name`` is ``None`` for a custom one or without a zoo.
    """
    arch_zoo = arch_zoo or {}
    depths, dims = [], []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in sd for m in [re.match(rf'^blocks{i}\.(\d+)\.', k)] if m}
        depths.append(max(idx) + 1 if idx else 0)
        key = f'blocks{i}.0.norm1.weight'
        dims.append(int(sd[key].shape[0]) if key in sd else 0)
    if not any(depths):
        return None
    name = next((n for n, a in arch_zoo.items()
                 if tuple(a['depths']) == tuple(depths) and tuple(a['embed_dims']) == tuple(dims)), None)
    return dict(name=name, depths=tuple(depths), embed_dims=tuple(dims))


def _describe(arch: Optional[Mapping[str, Any]]) -> str:
    if arch is None:
        return 'not an iFormer'
    label = f"iFormer-{arch['name']}" if arch.get('name') else 'a custom iFormer'
    return f"{label} (depths {list(arch['depths'])}, dims {list(arch['embed_dims'])})"


def _variant_differs(ckpt: Mapping[str, Any], model: Mapping[str, Any]) -> bool:
    """Compare only the stages the model has (a pruned backbone lacks the last ones)."""
    return any(m_depth and (c_depth, c_dim) != (m_depth, m_dim) for c_depth, c_dim, m_depth, m_dim in zip(
        ckpt['depths'], ckpt['embed_dims'], model['depths'], model['embed_dims']))


def adapt_state_dict(sd: StateDict, model: nn.Module, report: LoadReport, reinit_head: bool = False) -> StateDict:
    """Fit ``sd`` to ``model``: resize position tables, drop keys the model lacks by design.

    Args:
        reinit_head: when the classifier's shape differs (another ``num_classes``), leave the
            model's freshly initialised head instead of raising (noted in the report).

    Raises:
        CheckpointError: the checkpoint is of another variant, or matches nothing.
    """
    target = model.state_dict()
    zoo = getattr(model, 'arch_zoo', {})
    ckpt_arch, model_arch = infer_arch(sd, zoo), infer_arch(target, zoo)
    if ckpt_arch is None or not (set(sd) & set(target)):
        raise CheckpointError(
            f'{report.source}: no key matches the model ({_describe(ckpt_arch)}; first keys: '
            f'{_short(sorted(sd), 5)}). Expected an iFormer checkpoint: the authors\' .pth, a timm/'
            'iformer_mm classification checkpoint, or an mmdet/mmseg checkpoint with a backbone.')
    if model_arch and _variant_differs(ckpt_arch, model_arch):
        raise CheckpointError(
            f'{report.source} holds {_describe(ckpt_arch)} weights but the model is '
            f'{_describe(model_arch)}. Build the model with arch={ckpt_arch.get("name") or "<matching dict>"!r} '
            'or use the checkpoint of the matching variant.')
    out: StateDict = {}
    for k, v in sd.items():
        if k not in target:
            stage = STAGE_KEY_RE.match(k)
            if HEAD_KEY_RE.match(k) or (stage and not hasattr(model, stage.group(1))):
                report.dropped.append(k)
            else:
                report.unexpected.append(k)
            continue
        want = tuple(target[k].shape)
        if POS_EMBED_RE.match(k) and tuple(v.shape) != want:
            if v.ndim != 4 or v.shape[0] != 1 or v.shape[-1] != want[-1]:
                raise CheckpointError(f'{k}: checkpoint shape {list(v.shape)} cannot be resized to {list(want)}')
            report.resized[k] = (tuple(v.shape), want)
            # bilinear, align_corners=False: what the model itself does at run time
            v = resample_abs_pos_embed_nhwc(v, list(want[1:3]), interpolation='bilinear', antialias=False)
        elif tuple(v.shape) != want and reinit_head and k.startswith('head.'):
            report.notes.append(f'classifier re-initialised: checkpoint {k} {list(v.shape)}, model {list(want)}')
            report.dropped.append(k)
            continue
        elif tuple(v.shape) != want:
            raise CheckpointError(
                f'{report.source}: {k} has shape {list(v.shape)} in the checkpoint but '
                f'{list(want)} in the model ({_describe(ckpt_arch)} vs {_describe(model_arch)}). '
                'Check arch / num_classes / in_chans against the checkpoint.')
        out[k] = v
    report.missing = sorted(set(target) - set(out))
    report.loaded = sorted(out)
    return out


def load_state_dict_into(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
                         strict: bool = True, use_ema: bool = True,
                         allowed_missing: Iterable[str] = (), reinit_head: bool = False) -> LoadReport:
    """Load a checkpoint (path or already-read dict) into an iFormer model.

    Args:
        model: an :class:`InceptionTransformer` (or a subclass, e.g. the mm backbone).
        checkpoint: a file path or a loaded checkpoint object.
        strict: raise if any model key stays missing (``allowed_missing`` patterns excepted),
            or any checkpoint key is unexpected.
        use_ema: prefer EMA weights when the checkpoint has them.
        allowed_missing: regexes of model keys that may stay at init (e.g. a new head).
        reinit_head: a classifier of another size is left at init instead of raising.
    """
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else '<state_dict>'
    obj = load_checkpoint_file(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    report = LoadReport(source=source)
    sd, report.notes = extract_state_dict(obj, use_ema=use_ema)
    sd = adapt_state_dict(sd, model, report, reinit_head=reinit_head)
    allowed = [re.compile(p) for p in allowed_missing] + ([re.compile(r'^head\.')] if reinit_head else [])
    bad_missing = [k for k in report.missing if not any(p.search(k) for p in allowed)]
    if strict and (bad_missing or report.unexpected):
        raise CheckpointError(
            f'{source} does not match the model strictly.\n  missing: {_short(bad_missing) or "none"}\n'
            f'  unexpected: {_short(report.unexpected) or "none"}')
    model.load_state_dict(sd, strict=False)
    return report


def load_pretrained(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
                    strict: bool = True, use_ema: bool = True, log: Optional[logging.Logger] = None,
                    allowed_missing: Iterable[str] = (), reinit_head: bool = False) -> LoadReport:
    """:func:`load_state_dict_into` plus a log of the report."""
    report = load_state_dict_into(model, checkpoint, strict=strict, use_ema=use_ema,
                                  allowed_missing=allowed_missing, reinit_head=reinit_head)
    (log or logger).info(report.summary())
    return report


# --------------------------------------------------------------------------- any timm model
class _AnyKey(dict):
    """Model tensors for a timm ``checkpoint_filter_fn``: a key the model lacks (a foreign tensor,
    e.g. a detector's output norm) gets an empty placeholder instead of the filter's KeyError, so
    the filter renames everything and the loader reports what does not fit."""

    def __missing__(self, key: str) -> torch.Tensor:
        return torch.empty(0, device='meta')


class _FilterTarget:
    """What a timm ``checkpoint_filter_fn`` reads from its model: ``state_dict()`` (the complete
    classifier's keys and shapes, as meta tensors) and attributes (from the real model)."""

    def __init__(self, model: nn.Module, shapes: Mapping[str, Tuple[int, ...]]) -> None:
        self._model, self._shapes = model, shapes

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return _AnyKey({k: torch.empty(s, device='meta') for k, s in self._shapes.items()})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def load_timm_weights(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]], *,
                      full_shapes: Mapping[str, Tuple[int, ...]],
                      filter_fn: Optional[Callable[[Dict[str, torch.Tensor], Any], Dict[str, torch.Tensor]]] = None,
                      filter_model: Optional[nn.Module] = None, strict: bool = True, use_ema: bool = True,
                      allowed_missing: Iterable[str] = (), log: Optional[logging.Logger] = None,
                      allowed: Sequence[Any] = ()) -> LoadReport:
    """Load a checkpoint into a model that keeps timm's parameter names (e.g. ``TimmBackbone``).

    Accepted: a timm-hub / timm training file (or one of ours), the authors' original layout
    (renamed by the family's own timm ``checkpoint_filter_fn``, after unwrapping
    ``model``/``state_dict`` containers; tensors the filter cannot place are reported), and an
    mmdet/mmseg checkpoint (its ``backbone.`` sub-dict).

    Args:
        model: the target; its ``state_dict()`` keys are timm's canonical names.
        checkpoint: a file path (read with ``weights_only=True``) or a loaded checkpoint.
        full_shapes: key -> shape of the complete timm model (classifier, every stage), so keys
            the backbone leaves out on purpose are reported as dropped, not unexpected.
        filter_fn: timm's ``checkpoint_filter_fn`` of the model's family, for other layouts.
        filter_model: what ``filter_fn`` reads attributes from (default ``model``).
        strict: raise when a model key stays missing (``allowed_missing`` regexes excepted) or a
            checkpoint key fits nowhere.
        use_ema: prefer EMA weights when the checkpoint has them.
        allowed_missing: regexes of model keys that may stay at init (e.g. new output norms).
        log: where the report goes (default the package logger).
        allowed: Python objects a checkpoint *file* may hold besides tensors
            (:func:`load_checkpoint_file`).

    Raises:
        CheckpointError: unreadable file, nothing matches, another variant (shape mismatch), or
            a strict mismatch; the message lists the keys.
    """
    source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else '<state_dict>'
    obj = (load_checkpoint_file(checkpoint, allowed=allowed) if isinstance(checkpoint, (str, os.PathLike))
           else checkpoint)
    report = LoadReport(source=source)
    target = model.state_dict()
    known = set(full_shapes) | set(target)
    sd, report.notes = extract_state_dict(obj, use_ema=use_ema, is_model_key=known.__contains__,
                                          take_backbone=True)
    if filter_fn is not None and 2 * sum(k in known for k in sd) < len(sd):
        own = {k: v for k, v in sd.items() if k in target}  # e.g. our output norms in an mm checkpoint
        rest = {k: v for k, v in sd.items() if k not in target}
        try:
            converted = filter_fn(rest, _FilterTarget(filter_model or model, full_shapes))
        except Exception as e:  # noqa: BLE001 - any failure of a foreign filter means "not this layout"
            raise CheckpointError(
                f'{source}: the keys are not in timm\'s layout and {filter_fn.__module__}.'
                f'{filter_fn.__name__} could not convert them ({type(e).__name__}: {e}); first keys: '
                f'{_short(sorted(rest), 5)}. Is it a checkpoint of this model family?') from e
        report.notes.append(f'renamed {len(rest)} tensors from another layout with '
                            f'{filter_fn.__module__}.{filter_fn.__name__}')
        sd = {**converted, **own}
    if not set(sd) & set(target):
        raise CheckpointError(
            f'{source}: no key matches the model (first checkpoint keys: {_short(sorted(sd), 5)}; '
            f'model keys: {_short(sorted(target), 5)}). Use a checkpoint of this model: timm-hub, '
            "the authors' release or an mmdet/mmseg checkpoint with this backbone.")
    out: StateDict = {}
    for k, v in sd.items():
        if k not in target:
            (report.dropped if k in full_shapes else report.unexpected).append(k)
            continue
        if tuple(v.shape) != tuple(target[k].shape):
            raise CheckpointError(
                f'{source}: {k} has shape {list(v.shape)} in the checkpoint but '
                f'{list(target[k].shape)} in the model: the checkpoint is of another variant (or '
                'in_chans differs). Build the model that matches the checkpoint.')
        out[k] = v
    report.loaded = sorted(out)
    report.missing = sorted(set(target) - set(out))
    allowed = [re.compile(p) for p in allowed_missing]
    bad_missing = [k for k in report.missing if not any(p.search(k) for p in allowed)]
    if strict and (bad_missing or report.unexpected):
        raise CheckpointError(
            f'{source} does not match the model strictly.\n  missing: {_short(bad_missing) or "none"}\n'
            f'  unexpected: {_short(report.unexpected) or "none"}\nPass strict=False in init_cfg to '
            'load what matches anyway (the report lists the rest).')
    model.load_state_dict(out, strict=False)
    (log or logger).info(report.summary())
    return report


# --------------------------------------------------------------------------- Mobile iFormer files
def mobile_iformer_safe_globals() -> List[Any]:
    """The Python objects the authors' Mobile iFormer (ICLR 2025) files hold besides tensors.

    Their training script saves ``args`` (an ``argparse.Namespace`` of strings and numbers) and
    NumPy scalars (e.g. the best accuracy). Rebuilding these runs no code, so they are allowed
    by name under ``weights_only=True``, as timm does for the same files (timm allows float64
    scalars under the NumPy 1.x name only; this list also covers files re-saved under NumPy 2
    and the other usual scalar types); anything else a file references is still refused.
    Files written with NumPy 1.x name the scalar constructor ``numpy.core.multiarray.scalar``;
    NumPy 2 moved it to ``numpy._core``.
    """
    import argparse
    import importlib

    import numpy as np
    numpy2 = np.lib.NumpyVersion(np.__version__) >= '2.0.0'
    scalar = importlib.import_module('numpy._core.multiarray' if numpy2 else 'numpy.core.multiarray').scalar
    # dtype classes (NumPy >= 1.25 gives each dtype its own class) of the scalars such files hold
    dtypes = {type(np.dtype(t)) for t in ('float64', 'float32', 'float16', 'int64', 'int32', 'bool')}
    allowed: List[Any] = [argparse.Namespace, np.dtype, scalar, *sorted(dtypes, key=str)]
    if numpy2:
        allowed.append((scalar, 'numpy.core.multiarray.scalar'))
    return allowed


def load_mobile_iformer(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
                        strict: bool = True, use_ema: bool = True, allowed_missing: Iterable[str] = (),
                        log: Optional[logging.Logger] = None) -> LoadReport:
    """Load any Mobile iFormer checkpoint into timm's ``iformer_*`` model or ``MobileIFormer``.

    Accepted: the authors' classification files (``model`` / ``model_ema``, plain or distilled,
    with ``Namespace`` and NumPy scalars inside), their MMDet/MMSeg checkpoints (``backbone.``
    keys in their layout), timm files and this package's runs. The authors' layout is renamed
    by timm's own ``checkpoint_filter_fn``; everything else is :func:`load_timm_weights`.

    Args:
        model: timm's ``iformer_*`` or :class:`~iformer_mm.models.mobile_iformer.MobileIFormer`.
        checkpoint: a file (tensors plus :func:`mobile_iformer_safe_globals`, on every supported
            torch: :func:`torch_load_allowing`) or a loaded checkpoint.
        strict, use_ema, allowed_missing, log: as :func:`load_timm_weights` (EMA weights are
            taken when present, as timm does).
    """
    from timm.models.iformer import checkpoint_filter_fn

    full_shapes = getattr(model, 'full_shapes', None) or {k: tuple(v.shape) for k, v in model.state_dict().items()}
    try:
        return load_timm_weights(model, checkpoint, full_shapes=full_shapes, filter_fn=checkpoint_filter_fn,
                                 filter_model=getattr(model, '_timm_model', model), strict=strict,
                                 use_ema=use_ema, allowed_missing=allowed_missing, log=log,
                                 allowed=mobile_iformer_safe_globals())
    except CheckpointError as e:
        if 'first checkpoint keys: blocks1.' in str(e):  # the two iFormers are easily confused
            raise CheckpointError(
                f'{e}\nThe file holds an Inception Transformer (NeurIPS 2022: iformer_small/base/'
                'large) checkpoint, not a Mobile iFormer (ICLR 2025) one: use the backbone '
                "type='iformer_mm.IFormer' for it (see docs/mobile_iformer.md).") from None
        raise

@contextmanager
def explain_download_failure(model_name: str, url: str, local_file: Optional[str] = None) -> Iterator[None]:
    """Turn a failed fetch of pretrained weights into one :class:`CheckpointError` line.

    Offline (or behind a proxy), ``timm.create_model(name, pretrained=True)`` ends in a bare
    ``URLError`` deep inside ``torch.hub``; a missing local file in a bare ``FileNotFoundError()``.
    This says which file could not be fetched and how to pass a local copy instead::

        with explain_download_failure('iformer_small', url, local_file=overlay.get('file')):
            model = build_model_with_cfg(...)

    Args:
        model_name: the timm model name (used in the suggested command).
        url: where the weights are downloaded from.
        local_file: the file the caller passed instead of downloading (timm's
            ``pretrained_cfg_overlay=dict(file=...)``), if any.

    Raises:
        CheckpointError: the download failed (``OSError``: ``URLError``, timeouts, connection
            errors of ``requests``/``huggingface_hub``), or ``local_file`` could not be read.
    """
    try:
        yield
    except OSError as e:
        file = url.rsplit('/', 1)[-1]
        detail = f'{type(e).__name__}: {_first_sentence(e) or "no detail"}'
        if local_file is not None:
            what = 'not found' if isinstance(e, FileNotFoundError) else f'unreadable ({detail})'
            raise CheckpointError(
                f'pretrained weights file {what}: {os.fspath(local_file)!r}. Download {file} '
                '(docs/model_zoo.md) and give its path.') from None
        raise CheckpointError(
            f'could not download the pretrained weights of {model_name} from {url} ({detail}). '
            f'Without network, download {file} on another machine (docs/model_zoo.md) and pass the '
            f"file: timm.create_model({model_name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='/path/to/{file}'))") from None
