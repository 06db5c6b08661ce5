"""Figures written to files: matplotlib's object API, so no GUI backend is chosen or needed
(a tool never opens a window, and a notebook that imports the analysis keeps its own backend)."""
from __future__ import annotations

from typing import Any, Tuple

__all__ = ['subplots']


def subplots(*grid: int, figsize: Tuple[float, float], constrained_layout: bool = False,
             **kwargs: Any) -> Tuple[Any, Any]:
    """``pyplot.subplots`` without pyplot: a ``Figure`` (save it with ``fig.savefig``) and its axes."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, constrained_layout=constrained_layout)
    return fig, fig.subplots(*grid, **kwargs)
