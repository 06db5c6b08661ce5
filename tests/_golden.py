"""The golden-case helpers the tests use (:mod:`iformer_mm.analysis.golden`, shared with the GPU
check), and the reduced copy of the mobile iFormer's golden file that ships with the tests
(:func:`reduce_mobile_golden`).

Regenerate the shipped copy from the spec (what ``tests/test_first_contact.py`` checks)::

    PYTHONPATH=tests python tests/_golden.py ../shared/spec/mobile_iformer/mobile_iformer_golden.pt \
        tests/assets/golden/mobile_iformer/mobile_iformer_golden_reduced.pt
"""
import sys
from typing import Any, Dict, List

import torch

from iformer_mm.analysis.golden import (TINY_ARCH, case_input, load_cases, make_state_dict, rel_err,  # noqa: F401
                                        stage_errors)


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
    spec, dst = sys.argv[1:3]
    torch.save(reduce_mobile_golden(torch.load(spec, weights_only=True)), dst)
    print(f'wrote {dst}')
