#!/usr/bin/env python3
"""The reverse: MMDetection / MMSegmentation checkpoint (or converted backbone) -> iFormer weights.

Takes the ``backbone.`` tensors, drops the mm-only per-stage output norms (``norm0..3``) and writes
a plain ``state_dict`` in the authors' key layout, without classifier. It starts a classifier
(``tools/classification/train.py --initial-checkpoint OUT``: head and final norm are
re-initialised) or a timm model, e.g. to fine-tune a detection-trained backbone on a new
classification task.

    python tools/model_converters/mm_to_iformer.py work_dirs/mask_rcnn/epoch_12.pth iformer_s_det.pth --trust-pickle

mmengine's own checkpoints pickle its logging objects, which ``weights_only=True`` refuses:
``--trust-pickle`` reads such a file with a fixed allow-list of training-state classes (still
``weights_only=True``: a crafted file cannot run code); the output is tensors only.
"""
from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any, Dict, Optional, Sequence

warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from iformer_mm.cli import main_entry  # noqa: E402
from iformer_mm.convert import from_mm, read_checkpoint, save_plain  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('src', help='mmdet/mmseg checkpoint or backbone state_dict')
    p.add_argument('dst', help='output iFormer state_dict (.pth)')
    p.add_argument('--trust-pickle', action='store_true',
                   help='read an mmengine checkpoint that safe loading refuses (only files you produced)')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    out, info = from_mm(read_checkpoint(args.src, args.trust_pickle), source=args.src)
    arch = info['arch']
    if any(arch['depths'][i] == 0 for i in range(4)):
        print(f'warning: the backbone has only stages with depths {arch["depths"]} (out_indices pruned it); '
              'the missing stages start from scratch when used as a classifier')
    save_plain(out, args.dst)
    print(f'{args.src} -> {args.dst}: {len(out)} tensors of iFormer-{arch.get("name") or "custom"} '
          f'({"; ".join(info["notes"]) or "plain"}); dropped {info["dropped"]} mm output-norm tensors')
    return dict(tensors=len(out), dropped=info['dropped'])


if __name__ == '__main__':
    main_entry(main)
