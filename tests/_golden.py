"""Helpers to turn the spec's golden cases into checkpoints and inputs."""
import json
from pathlib import Path
from typing import Dict, List

import torch

from assets.golden import weights  # the spec's generator, shipped with the tests

TINY_ARCH = dict(depths=[1, 1, 2, 1], embed_dims=[64, 64, 96, 128], attention_heads=[1, 1, 1, 2, 3])


def make_state_dict(golden_dir: Path, variant: str) -> Dict[str, torch.Tensor]:
    """Deterministic weights in the authors' key layout for ``variant`` (e.g. 'iformer_small', 'tiny')."""
    shapes = json.loads((golden_dir / 'official_state_dict_shapes.json').read_text())[variant]
    return weights.make_state_dict(shapes)


def load_cases(golden_dir: Path) -> List[dict]:
    return torch.load(golden_dir / 'iformer_golden.pt', weights_only=True)


def case_input(case: dict) -> torch.Tensor:
    return torch.randn(case['input_shape'], generator=torch.Generator().manual_seed(case['input_seed']))


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


def stage_errors(stages: List[torch.Tensor], case: dict) -> List[float]:
    """Max relative error of each stage output (NCHW) against the golden record."""
    errs = []
    for out, ref in zip(stages, case['stages']):
        assert tuple(out.shape) == tuple(ref['shape']), (tuple(out.shape), ref['shape'])
        if 'full' in ref:
            errs.append(rel_err(out, ref['full']))
        else:
            errs.append(max(rel_err(out[:, :16, :8, :8], ref['crop']),
                            rel_err(out.mean((2, 3)), ref['mean']),
                            rel_err(out.std((2, 3)), ref['std'])))
    return errs
