"""Helpers to turn the spec's golden cases into checkpoints and inputs, and the reduced copy
of the mobile iFormer's golden file that ships with the tests (``reduce_mobile_golden``).

Regenerate the shipped copy from the spec (what ``tests/test_first_contact.py`` checks)::

    PYTHONPATH=tests python tests/_golden.py ../shared/spec/mobile_iformer/mobile_iformer_golden.pt \
        tests/assets/golden/mobile_iformer/mobile_iformer_golden_reduced.pt
"""
import json
import sys
from pathlib import Path
from typing import Any, Dict, List

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
            err = max(rel_err(out[:, :16, :8, :8], ref['crop']),
                      rel_err(out.mean((2, 3)), ref['mean']),
                      rel_err(out.std((2, 3)), ref['std']))
            if 'crop_end' in ref:  # the reduced mobile set: the bottom-right corner too
                err = max(err, rel_err(out[:, -16:, -8:, -8:], ref['crop_end']))
            errs.append(err)
    return errs


def reduce_mobile_golden(cases: List[dict]) -> List[dict]:
    """The spec's mobile iFormer cases with every stage map stored as the spec stores its large
    ones: ``crop`` (``out[:, :16, :8, :8]``), per-channel ``mean`` and ``std`` over (H, W),
    plus ``crop_end`` (``out[:, -16:, -8:, -8:]``, the bottom-right corner, where stage 3's
    window padding sits) where the spec has the full map. Logits and every other field are
    kept as they are. 8.3 MB become about 0.4 MB; see tests/assets/golden/mobile_iformer/README.md.
    """
    out = []
    for case in cases:
        small: Dict[str, Any] = {k: v for k, v in case.items() if k != 'stages'}
        small['stages'] = []
        for ref in case['stages']:
            st = {k: v for k, v in ref.items() if k != 'full'}
            if 'full' in ref:
                full = ref['full']
                st['crop'] = full[:, :16, :8, :8].clone()
                st['crop_end'] = full[:, -16:, -8:, -8:].clone()
            small['stages'].append(st)
        out.append(small)
    return out


if __name__ == '__main__':
    import torch as _torch
    spec, dst = sys.argv[1:3]
    _torch.save(reduce_mobile_golden(_torch.load(spec, weights_only=True)), dst)
    print(f'wrote {dst}')
