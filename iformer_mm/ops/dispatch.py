"""When a fast kernel may stand in for the reference modules: the package's one rule.

A model is built with ``impl='auto' | 'reference' | 'fast'`` (chosen once, at construction).
On every call, a module that has a kernel twin asks :func:`kernel_allowed`; the kernel runs
only when **all** of these hold, otherwise the reference modules run:

1. ``impl`` is not ``'reference'``;
2. nothing is tracing, scripting, compiling or exporting (TorchScript, ``torch.fx``,
   ``torch.compile``, ONNX): tools that read the graph see the real modules;
3. the (device, compute dtype) pair is one the kernel was measured to win on
   (:data:`MEASURED_WINS`) — or ``impl='fast'``, which lifts only this condition so the
   kernels can be measured elsewhere (e.g. on a GPU by the benchmark);
4. no global module hooks are registered, and none of the modules the kernel replaces has a
   forward/backward (pre-)hook;
5. each replaced module has exactly its built type (a LoRA ``nn.Linear`` subclass, a
   quantised or otherwise swapped module fails this) and no parametrisation
   (``weight_norm``, ``spectral_norm``, ...).

This mirrors ``torch.nn.MultiheadAttention``'s fast-path checks. The checks are dictionary
lookups on a handful of modules: microseconds against a block's milliseconds.
"""
from __future__ import annotations

from typing import Iterable, Tuple

import torch
from torch import nn
from torch.nn.modules import module as _module
from torch.nn.utils import parametrize

__all__ = ['IMPLS', 'MEASURED_WINS', 'check_impl', 'compute_dtype', 'kernel_allowed', 'is_graph_capture']

IMPLS = ('auto', 'reference', 'fast')

# (device type, compute dtype) pairs where the kernels were measured faster than the
# reference (tools/analysis/benchmark.py; the figures: docs/performance.md, "What runs where").
# CUDA is absent on purpose: no GPU measurement exists, so GPUs run the reference (SDPA picks
# flash/efficient kernels).
MEASURED_WINS = frozenset({('cpu', torch.float32), ('cpu', torch.bfloat16)})

_AUTOCAST_DEVICES = ('cpu', 'cuda', 'xpu', 'mps', 'hpu')
_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks', '_global_backward_hooks',
                 '_global_backward_pre_hooks')


def check_impl(impl: str) -> str:
    """Validate an ``impl`` constructor argument."""
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    return impl


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in for ``x`` (``x.dtype`` without autocast)."""
    dev = x.device.type
    if x.is_floating_point() and dev in _AUTOCAST_DEVICES and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def is_graph_capture() -> bool:
    """True while TorchScript, torch.fx, torch.compile or the ONNX exporter records the model."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export():
        return True
    return torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks)


def kernel_allowed(impl: str, x: torch.Tensor, parts: Iterable[Tuple[nn.Module, type]]) -> bool:
    """Whether a kernel may replace ``parts`` for input ``x`` (the rule in the module docstring).

    Args:
        impl: the model's ``impl`` (``'auto'``, ``'reference'`` or ``'fast'``).
        x: the input the kernel would get.
        parts: ``(module, type it was built as)`` for every module the kernel replaces.
    """
    if impl == 'reference' or is_graph_capture() or not isinstance(x, torch.Tensor):
        return False
    if type(x) is not torch.Tensor and not isinstance(x, nn.Parameter):
        return False  # tensor subclasses (fake, distributed, ...) take the modules' path
    if impl == 'auto' and (x.device.type, compute_dtype(x)) not in MEASURED_WINS:
        return False
    if any(getattr(_module, name) for name in _GLOBAL_HOOKS):
        return False
    for m, built_as in parts:
        if type(m) is not built_as or _has_hooks(m) or parametrize.is_parametrized(m):
            return False
    return True
