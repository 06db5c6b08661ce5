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
import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from iformer_mm.models.iformer import ARCH_SETTINGS
from iformer_mm.pretrained import (CheckpointError, extract_state_dict, infer_arch,
                                   load_checkpoint_file, load_state_dict_into)
from iformer_mm.models import InceptionTransformer

_logger = logging.getLogger('iformer_mm.convert')
CLASSIFIER_RE = re.compile(r'^(head|norm|head_drop)\.')
MM_OUT_NORM_RE = re.compile(r'^norm\d\.')  # the mm backbone's per-stage output norms


def read_any(path: str, trust_pickle: bool = False) -> Any:
    """The package's safe read; with ``trust_pickle`` a fixed allow-list of training-state classes."""
    try:
        return load_checkpoint_file(path)
    except CheckpointError as e:
        if not trust_pickle or 'safe loading' not in str(e):
            raise
    from iformer_mm.engine.trusted_runs import trusted_globals
    _logger.warning(f'{path}: holds training state (--trust-pickle): reading it with the allow-list '
                    'argparse.Namespace + mmengine logger classes, still weights_only=True')
    with torch.serialization.safe_globals(trusted_globals() + [argparse.Namespace]):
        return load_checkpoint_file(path)


def build_reference(sd: Dict[str, torch.Tensor], num_classes: int = 0) -> InceptionTransformer:
    """An iFormer with the checkpoint's variant and position-table size (to verify a conversion)."""
    arch = infer_arch(sd, ARCH_SETTINGS)
    if arch is None:
        raise CheckpointError(f'not an iFormer checkpoint (first keys: {sorted(sd)[:5]})')
    if arch['name'] is None:
        raise CheckpointError(f"custom iFormer arch {arch}: cannot verify it against a named variant "
                              '(small/base/large); convert with --no-verify')
    n = sd['pos_embed1'].shape[1]
    return InceptionTransformer(arch['name'], img_size=(4 * n, 4 * sd['pos_embed1'].shape[2]),
                                num_classes=num_classes)


def to_backbone(obj: Any, use_ema: bool = True, keep_head: bool = False,
                verify: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Backbone tensors (authors' key names) from any supported classification checkpoint.

    Returns:
        ``(state_dict, info)`` where ``info`` says which variant and what was dropped.
    """
    sd, notes = extract_state_dict(obj, use_ema=use_ema)
    dropped = sorted(k for k in sd if CLASSIFIER_RE.match(k)) if not keep_head else []
    out = {k: v.detach().clone().contiguous() for k, v in sd.items() if k not in dropped}
    info = dict(notes=notes, dropped=dropped, arch=infer_arch(out, ARCH_SETTINGS))
    if verify:
        ref = build_reference(out)
        # the reference keeps the final norm of a classifier; a backbone has none
        report = load_state_dict_into(ref, out, strict=True, allowed_missing=[r'^norm\.'])
        missing = [k for k in report.missing if not CLASSIFIER_RE.match(k)]
        if missing or report.resized:
            raise CheckpointError(f'converted weights do not fill the backbone: missing {missing[:8]}')
    return out, info


def add_prefix(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def save_plain(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Write tensors only, then prove the file reads back with ``weights_only=True``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(sd, path)
    back = torch.load(path, map_location='cpu', weights_only=True)
    if set(back) != set(sd):
        raise RuntimeError(f'{path} did not read back intact')


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
    obj = read_any(args.src, args.trust_pickle)
    sd, info = to_backbone(obj, use_ema=not args.no_ema, keep_head=args.keep_head, verify=not args.no_verify)
    save_plain(add_prefix(sd, args.prefix), args.dst)
    arch = info['arch'] or {}
    print(f'{args.src} -> {args.dst}: {len(sd)} tensors of iFormer-{arch.get("name") or "custom"}'
          f' ({"; ".join(info["notes"]) or "plain state_dict"}); dropped {len(info["dropped"])} classifier '
          f'tensors; prefix {args.prefix!r}')
    return dict(tensors=len(sd), dropped=info['dropped'], arch=arch.get('name'))


if __name__ == '__main__':
    main()
