"""ATen ops per step: the CPU-side proxy for kernel launches on a GPU.

Every op that reaches the dispatcher's Python mode is one kernel launch on CUDA (views and
metadata ops included, as they cost a launch's worth of host time there too). Counted with a
``TorchDispatchMode`` around forward and backward, on any device.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['OpCounter', 'count_ops']


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops run inside the ``with`` block (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        self.by_op[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], Any]) -> OpCounter:
    """Run ``fn`` once under an :class:`OpCounter` and return it."""
    with OpCounter() as counter:
        fn()
    return counter
