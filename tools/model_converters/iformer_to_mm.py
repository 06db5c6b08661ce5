#!/usr/bin/env python3
"""Classification checkpoint -> plain iFormer backbone ``state_dict`` for MMDetection / MMSegmentation.

Accepts the authors' ``.pth`` files, ``tools/classification/train.py`` checkpoints (EMA weights
are taken when present, ``--no-ema`` for the raw ones) and timm training checkpoints. The
classifier (``head``, final ``norm``) is dropped; the output holds tensors only, so
``torch.load(out, weights_only=True)`` reads it, and it is checked by loading it strictly into
the backbone before it is written.

Examples::

    python tools/model_converters/iformer_to_mm.py iformer_small.pth iformer_small_backbone.pth
    python tools/model_converters/iformer_to_mm.py work_dirs/cls/iformer_small/best.pth out.pth --prefix backbone.

Use the output as ``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=OUT)``
(without prefix) or with ``load_from`` (with ``--prefix backbone.``).

A checkpoint that safe loading refuses (e.g. a timm ``train.py`` file that pickled its
``argparse.Namespace``, or an mmengine training checkpoint with logger state) is rejected; if
you produced that file yourself, ``--trust-pickle`` reads it with an allow-list of exactly those
data classes (``argparse.Namespace`` and the mmengine/numpy classes of
``iformer_mm.engine.trusted_runs``) — still ``weights_only=True``: nothing else is unpickled, so
even with the flag a file cannot run code. The output is tensors only.
"""
from __future__ import annotations

import argparse
import logging
import warnings
from typing import Any, Dict, Optional, Sequence

warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

from iformer_mm.cli import main_entry  # noqa: E402
from iformer_mm.convert import add_prefix, read_checkpoint, save_plain, to_backbone  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('src', help='classification checkpoint')
    p.add_argument('dst', help='output backbone state_dict (.pth)')
    p.add_argument('--prefix', default='', help="key prefix, e.g. 'backbone.' for load_from")
    p.add_argument('--no-ema', action='store_true', help='take the raw weights even if EMA weights exist')
    p.add_argument('--keep-head', action='store_true', help='keep head/norm (a full classifier state_dict)')
    p.add_argument('--no-verify', action='store_true', help='skip the strict load check (custom archs)')
    p.add_argument('--trust-pickle', action='store_true',
                   help='also accept argparse.Namespace and mmengine logger state (your own training '
                   'checkpoints); still weights_only=True')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    obj = read_checkpoint(args.src, args.trust_pickle)
    sd, info = to_backbone(obj, use_ema=not args.no_ema, keep_head=args.keep_head, verify=not args.no_verify)
    save_plain(add_prefix(sd, args.prefix), args.dst)
    arch = info['arch'] or {}
    print(f'{args.src} -> {args.dst}: {len(sd)} tensors of iFormer-{arch.get("name") or "custom"}'
          f' ({"; ".join(info["notes"]) or "plain state_dict"}); dropped {len(info["dropped"])} classifier '
          f'tensors; prefix {args.prefix!r}')
    return dict(tensors=len(sd), dropped=info['dropped'], arch=arch.get('name'))


if __name__ == '__main__':
    main_entry(main)
