"""The spec's golden cases: deterministic weights, inputs and the authors' model's recorded outputs.

The folder (``tests/assets/golden`` in a checkout, or ``shared/spec/golden``) holds
``weights.py`` (the spec's weight generator), ``official_state_dict_shapes.json`` and
``iformer_golden.pt``; its ``README.md`` describes them. This module reads them without pytest,
so the tests and :mod:`iformer_mm.analysis.gpu_check` (which runs them on a GPU) share it.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Sequence, Union

import torch

__all__ = ['CASES', 'DEFAULT_DIR', 'TINY_ARCH', 'TOL', 'case_input', 'find_dir', 'load_cases',
           'make_state_dict', 'rel_err', 'rel_l2', 'stage_errors', 'variant_of']

# In a checkout the golden data ships with the tests.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / 'tests' / 'assets' / 'golden'
TINY_ARCH = dict(depths=[1, 1, 2, 1], embed_dims=[64, 64, 96, 128], attention_heads=[1, 1, 1, 2, 3])
CASES = ('tiny_64', 'tiny_nonsquare', 'small_224', 'small_nonsquare')
TOL = 1e-4  # max abs error relative to the reference tensor's max magnitude (the spec's README)
_FILES = ('weights.py', 'official_state_dict_shapes.json', 'iformer_golden.pt')


def find_dir(path: Optional[Union[str, Path]] = None) -> Path:
    """The golden folder (``path``, else the checkout's ``tests/assets/golden``); one-line error if absent."""
    folder = Path(path) if path is not None else DEFAULT_DIR
    missing = [f for f in _FILES if not (folder / f).is_file()]
    if missing:
        raise SystemExit(f'golden data not found: {folder} lacks {", ".join(missing)}; pass the folder '
                         'that holds them (tests/assets/golden of a checkout, or shared/spec/golden)')
    return folder


def _weights_module(golden_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location('iformer_golden_weights', golden_dir / 'weights.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the spec's own generator, shipped beside the data
    return module


def make_state_dict(golden_dir: Path, variant: str) -> Dict[str, torch.Tensor]:
    """Deterministic weights in the authors' key layout for ``variant`` (e.g. 'iformer_small', 'tiny')."""
    shapes = json.loads((Path(golden_dir) / 'official_state_dict_shapes.json').read_text())[variant]
    return _weights_module(Path(golden_dir)).make_state_dict(shapes)


def load_cases(golden_dir: Path) -> List[dict]:
    """Every golden case (a list of dicts, see the folder's README)."""
    return torch.load(Path(golden_dir) / 'iformer_golden.pt', weights_only=True)


def variant_of(case_name: str) -> str:
    """The weight variant a case runs: ``'tiny'`` or ``'iformer_small'``."""
    return 'tiny' if case_name.startswith('tiny') else 'iformer_small'


def case_input(case: dict) -> torch.Tensor:
    """The case's input, drawn from its seed."""
    return torch.randn(case['input_shape'], generator=torch.Generator().manual_seed(case['input_seed']))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Max abs error relative to ``ref``'s max magnitude (the golden metric)."""
    return ((a - ref).abs().max() / ref.abs().max()).item()


def rel_l2(a: torch.Tensor, ref: torch.Tensor) -> float:
    """``||a - ref|| / ||ref||`` in fp32 (the reduced-precision metric)."""
    a, ref = a.float(), ref.float()
    return ((a - ref).norm() / ref.norm()).item()


def stage_errors(stages: Sequence[torch.Tensor], case: dict) -> List[float]:
    """Max relative error of each stage output (NCHW, on any device) against the golden record."""
    errs = []
    for out, ref in zip(stages, case['stages']):
        out = out.detach().float().cpu()
        if tuple(out.shape) != tuple(ref['shape']):
            raise AssertionError(f'stage shape {tuple(out.shape)} != golden {tuple(ref["shape"])}')
        if 'full' in ref:
            errs.append(rel_err(out, ref['full']))
        else:
            err = max(rel_err(out[:, :16, :8, :8], ref['crop']),
                      rel_err(out.mean((2, 3)), ref['mean']),
                      rel_err(out.std((2, 3)), ref['std']))
            if 'crop_end' in ref:  # the shipped (reduced) mobile set: the bottom-right corner too
                err = max(err, rel_err(out[:, -16:, -8:, -8:], ref['crop_end']))
            errs.append(err)
    return errs
