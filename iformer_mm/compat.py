"""What differs between the torch releases we support (2.1 up to the newest): the one place that asks.

Every probe here asks torch for the feature itself (``hasattr``, or a tiny in-memory round
trip), never for a version number, so a backport or a build from source gets the right answer.
The rest of the package imports these names instead of calling a torch API that an older
supported torch lacks. Torch 2.1 has none of ``torch.compiler.is_compiling``,
``torch.get_autocast_dtype``, ``torch.fx._symbolic_trace.is_fx_symbolic_tracing`` or the
``weights_only`` allow-list (``torch.serialization.add_safe_globals`` / ``safe_globals``).

Where a feature cannot be had on the installed torch (today: reading a checkpoint that holds
Python objects besides tensors under ``weights_only=True``), the caller gets one line that
names the torch it needs (:class:`TorchFeatureError`, or the caller's own error class), never
an ``AttributeError``.
"""
from __future__ import annotations

import functools
import io
import pickle
import re
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence, Type

import torch
import torch.fx

__all__ = ['HAS_SAFE_GLOBALS', 'SAFE_GLOBALS_TORCH', 'SAFE_GLOBAL_ALIASES_TORCH', 'TorchFeatureError',
           'autocast_dtype', 'has_safe_global_aliases', 'is_compiling', 'is_fx_tracing', 'is_graph_capture',
           'load_defaults_to_weights_only', 'has_onnx_dynamo_exporter', 'require_safe_globals', 'safe_globals',
           'unsafe_globals_in_checkpoint']

_ser = torch.serialization

#: torch can extend what ``torch.load(weights_only=True)`` reconstructs (an allow-list).
HAS_SAFE_GLOBALS: bool = all(hasattr(_ser, n) for n in ('add_safe_globals', 'get_safe_globals',
                                                        'clear_safe_globals'))
# The first releases with the feature; only quoted in messages (the probes decide).
#: first torch with ``torch.serialization.add_safe_globals``
SAFE_GLOBALS_TORCH = '2.4'
#: first torch whose allow-list takes ``(object, 'module.name')`` entries (objects under another name)
SAFE_GLOBAL_ALIASES_TORCH = '2.6'


class TorchFeatureError(RuntimeError):
    """The installed torch lacks a feature the request needs; the message names the torch needed."""


# ----------------------------------------------------------------------------- graph capture
def is_compiling() -> bool:
    """True while ``torch.compile`` (dynamo) traces the code."""
    probe = getattr(getattr(torch, 'compiler', None), 'is_compiling', None)
    if probe is None:  # torch < 2.3 has it under dynamo only
        probe = getattr(getattr(torch, '_dynamo', None), 'is_compiling', None)
    return bool(probe()) if probe is not None else False


_fx = torch.fx._symbolic_trace
# is_fx_symbolic_tracing (newer torch) is true for symbolic_trace only; the older is_fx_tracing
# is true for make_fx too, which is also graph capture.
_fx_tracing = getattr(_fx, 'is_fx_symbolic_tracing', None) or getattr(_fx, 'is_fx_tracing')


def is_fx_tracing() -> bool:
    """True while ``torch.fx.symbolic_trace`` records the model."""
    return bool(_fx_tracing())


def is_graph_capture() -> bool:
    """True while TorchScript, torch.fx, torch.compile or the ONNX exporter records the model."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if is_compiling() or torch.onnx.is_in_onnx_export():
        return True
    return is_fx_tracing()


def has_onnx_dynamo_exporter() -> bool:
    """Whether ``torch.onnx.export`` has the ``torch.export``-based exporter with what
    :mod:`iformer_mm.deploy.onnx` asks of it: ``dynamo=True``, ``optimize=`` and symbolic sizes
    through ``torch.export.Dim.DYNAMIC`` (torch >= 2.6). torch 2.5 has a first ``dynamo=True``
    without the other two (it ignores ``optimize``; ``Dim`` is a function there); older torch
    has only the TorchScript-based exporter."""
    import inspect
    params = inspect.signature(torch.onnx.export).parameters
    dim = getattr(getattr(torch, 'export', None), 'Dim', None)
    return 'dynamo' in params and 'optimize' in params and hasattr(dim, 'DYNAMIC')


# ----------------------------------------------------------------------------- autocast
# torch < 2.4: one pair of functions per device instead of a device argument.
_OLD_AUTOCAST = {'cpu': ('is_autocast_cpu_enabled', 'get_autocast_cpu_dtype'),
                 'cuda': ('is_autocast_enabled', 'get_autocast_gpu_dtype'),
                 'xpu': ('is_autocast_xpu_enabled', 'get_autocast_xpu_dtype'),
                 'hpu': ('is_autocast_hpu_enabled', 'get_autocast_hpu_dtype')}


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype ``torch.autocast`` computes matmuls in on ``device_type``; ``None`` when it is off."""
    if hasattr(torch, 'get_autocast_dtype'):
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    enabled, dtype = _OLD_AUTOCAST.get(device_type, (None, None))
    if enabled is None or not hasattr(torch, enabled):
        return None
    return getattr(torch, dtype)() if getattr(torch, enabled)() else None


# ----------------------------------------------------------------------------- safe loading
class _AliasProbe:
    """A class pickled by reference to test whether the allow-list takes ``(obj, name)`` entries."""


@functools.lru_cache(maxsize=None)
def has_safe_global_aliases() -> bool:
    """Whether the ``weights_only`` allow-list takes ``(object, 'module.name')`` entries."""
    if not HAS_SAFE_GLOBALS:
        return False
    buf = io.BytesIO()
    torch.save({'c': _AliasProbe}, buf)
    name = f'{__name__}.{_AliasProbe.__qualname__}'
    try:
        with _allowing([(_AliasProbe, name)]):
            buf.seek(0)
            return torch.load(buf, weights_only=True)['c'] is _AliasProbe
    except Exception:  # noqa: BLE001  (older allow-lists fail on a tuple in many ways)
        return False


@contextmanager
def _allowing(allowed: Sequence[Any]) -> Iterator[None]:
    """torch's own ``safe_globals`` block, or the same built from add/get/clear (torch 2.4)."""
    if hasattr(_ser, 'safe_globals'):
        with _ser.safe_globals(list(allowed)):
            yield
        return
    before = _ser.get_safe_globals()
    _ser.add_safe_globals(list(allowed))
    try:
        yield
    finally:
        _ser.clear_safe_globals()
        _ser.add_safe_globals(before)


_GLOBAL_NAME = re.compile(r'(?:GLOBAL|[Uu]nsupported class) ([\w.]+)')


def _refusal(exc: BaseException) -> Optional[pickle.UnpicklingError]:
    """The ``weights_only`` refusal in ``exc``'s chain (callers often wrap it), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, '_torch_needed', None):  # already explained by an inner block
            return None
        if isinstance(exc, pickle.UnpicklingError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _names(allowed: Sequence[Any]) -> set:
    """The pickle names of an allow-list's entries (``module.qualname``, or the name given)."""
    return {a[1] if isinstance(a, tuple) else f'{a.__module__}.{getattr(a, "__qualname__", a.__name__)}'
            for a in allowed}


def _needs(what: str, torch_needed: str, why: str, refused: Optional[BaseException] = None) -> str:
    m = _GLOBAL_NAME.search(str(refused or ''))
    held = f' ({m.group(1)})' if m else ''
    return (f'{what} holds Python objects besides tensors{held}; {why} needs torch >= {torch_needed}, '
            f'and this is torch {torch.__version__}. Install a newer torch with its torchvision, or '
            f'convert the file once on torch >= {torch_needed} to a plain state_dict, which every '
            'torch reads.')


def require_safe_globals(what: str = 'this checkpoint', error: Type[Exception] = TorchFeatureError) -> None:
    """Raise ``error`` (one line naming the torch needed) when torch has no ``weights_only`` allow-list."""
    if not HAS_SAFE_GLOBALS:
        raise error(_needs(what, SAFE_GLOBALS_TORCH, 'reading them safely (weights_only=True with an '
                                                     'allow-list)'))


@contextmanager
def safe_globals(allowed: Sequence[Any], what: str = 'this checkpoint',
                 error: Type[Exception] = TorchFeatureError) -> Iterator[None]:
    """Within the block, ``torch.load(weights_only=True)`` also accepts the objects in ``allowed``.

    ``torch.serialization.safe_globals`` on every torch that can do it. On a torch without an
    allow-list, ``weights_only=True`` still reads plain tensor files, so the block runs
    anyway; if torch refuses an object of ``allowed`` inside it, that refusal is raised as
    ``error`` with one line that names the torch needed. Anything else torch refuses (a crafted
    ``posix.system``) propagates unchanged: no torch reads it. ``(object, 'module.name')``
    entries (an object under another name, e.g. NumPy 1's path of a NumPy 2 function) are
    dropped on a torch whose allow-list cannot take them, with the same message if a file then
    needs them.

    Args:
        allowed: classes/functions, or ``(object, 'module.name')`` pairs, as torch takes them.
        what: the file, for the message (e.g. its path).
        error: exception class raised for a refusal the installed torch cannot avoid (e.g.
            :class:`iformer_mm.pretrained.CheckpointError`); it takes one message argument.
    """
    allowed = list(allowed)
    usable = allowed
    if HAS_SAFE_GLOBALS and not has_safe_global_aliases():
        usable = [a for a in allowed if not isinstance(a, tuple)]
    aliases = {a[1] for a in allowed if isinstance(a, tuple)} if len(usable) < len(allowed) else set()
    try:
        if HAS_SAFE_GLOBALS:
            with _allowing(usable):
                yield
        else:
            yield
    except Exception as e:
        refused = _refusal(e)
        if refused is None:
            raise
        m = _GLOBAL_NAME.search(str(refused))
        name = m.group(1) if m else None
        if not HAS_SAFE_GLOBALS and name in _names(allowed):
            needed, why = SAFE_GLOBALS_TORCH, 'reading them safely (weights_only=True with an allow-list)'
        elif HAS_SAFE_GLOBALS and name in aliases:
            needed, why = SAFE_GLOBAL_ALIASES_TORCH, 'allowing an object under another module path'
        else:  # not on the allow-list: refused on every torch (the caller's message says why)
            raise
        err = error(_needs(what, needed, why, refused))
        err._torch_needed = needed  # type: ignore[attr-defined]
        raise err from None


def unsafe_globals_in_checkpoint(f: Any) -> List[str]:
    """Names of the Python objects a checkpoint references that ``weights_only`` would refuse.

    Raises:
        TorchFeatureError: torch lacks ``torch.serialization.get_unsafe_globals_in_checkpoint``.
    """
    scan = getattr(_ser, 'get_unsafe_globals_in_checkpoint', None)
    if scan is None:
        raise TorchFeatureError('listing the Python objects in a checkpoint needs torch >= 2.5 '
                                f'(torch.serialization.get_unsafe_globals_in_checkpoint); this is '
                                f'torch {torch.__version__}')
    return list(scan(f))


def load_defaults_to_weights_only() -> bool:
    """Whether a plain ``torch.load(f)`` (no ``weights_only`` argument) reads safely.

    torch < 2.6 unpickles anything by default; newer torch reads with ``weights_only=True``
    unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set (read on every call, so not cached).
    """
    import warnings
    buf = io.BytesIO()
    torch.save({'c': _AliasProbe}, buf)
    buf.seek(0)
    with warnings.catch_warnings():  # torch 2.4/2.5 warn that the default will change
        warnings.simplefilter('ignore')
        try:
            torch.load(buf)
        except pickle.UnpicklingError:
            return True
    return False
