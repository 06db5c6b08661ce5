#!/usr/bin/env python3
"""The Mobile iFormer authors' MMDet/MMSeg checkpoint -> one ``tools/test.py`` can evaluate.

Their detection/segmentation checkpoints keep the backbone in their own key layout
(``backbone.downsample_layers.*``, ``backbone.stages.<i>.<j>.block.*``), while
``iformer_mm.MobileIFormer`` uses timm's names. As a backbone init (``init_cfg=Pretrained``)
such a file loads directly; a *whole-model* checkpoint for ``tools/test.py`` (which loads with
mmengine, non-strictly) needs the backbone keys renamed first, or the backbone would silently
stay random. This renames them with timm's own converter, keeps every other tensor (neck,
heads: mmdet/mmseg's standard names) and writes a plain state_dict (tensors only); it checks
that the config's model loads the result with no missing or unexpected key.

    python tools/model_converters/mobile_iformer_to_mm.py mask_rcnn_iformer_m.pth mask_rcnn_mobile_m.pth \
        --config configs/detection/mask_rcnn_mobile_iformer_m_1x.py
    python tools/test.py configs/detection/mask_rcnn_mobile_iformer_m_1x.py mask_rcnn_mobile_m.pth

Reading stays ``weights_only=True``: the file may hold ``argparse.Namespace`` and NumPy scalars;
``--trust-pickle`` also allows mmengine's logging objects (see iformer_to_mm.py).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Sequence

import torch

from iformer_mm.cli import main_entry
from iformer_mm.convert import read_checkpoint, save_plain
from iformer_mm.pretrained import CheckpointError, extract_state_dict, mobile_iformer_safe_globals


def convert(obj: Any) -> Dict[str, torch.Tensor]:
    """Whole-model tensors with the backbone renamed from the authors' layout to timm's."""
    from timm.models.iformer import checkpoint_filter_fn

    sd, _ = extract_state_dict(obj, use_ema=False, is_model_key=lambda k: k.startswith('backbone.'))
    backbone = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    if not any(k.startswith('downsample_layers.') for k in backbone):
        raise CheckpointError('no backbone.downsample_layers.* keys: not a checkpoint of the authors\' '
                              'dense Mobile iFormer (ours already use timm\'s names and need no conversion)')
    out = {k: v for k, v in sd.items() if not k.startswith('backbone.')}
    out.update({f'backbone.{k}': v for k, v in checkpoint_filter_fn(backbone, None).items()})
    return out


def verify(sd: Dict[str, torch.Tensor], config: str) -> None:
    """The config's whole model loads ``sd`` strictly (no missing, no unexpected key)."""
    import iformer_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f'the converted checkpoint does not fit {config}: missing {missing[:8]}, '
                              f'unexpected {unexpected[:8]}')


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('src', help="the authors' mmdet/mmseg checkpoint")
    p.add_argument('dst', help='output: a plain state_dict (tensors only)')
    p.add_argument('--config', help='check that this config\'s model loads the result strictly')
    p.add_argument('--trust-pickle', action='store_true',
                   help="also allow mmengine's logging objects when reading (still weights_only=True)")
    args = p.parse_args(argv)
    with torch.serialization.safe_globals(mobile_iformer_safe_globals()):
        obj = read_checkpoint(args.src, args.trust_pickle)
    sd = convert(obj)
    if args.config:
        verify(sd, args.config)
    save_plain(sd, args.dst)
    print(f'wrote {args.dst}: {len(sd)} tensors ({sum(k.startswith("backbone.") for k in sd)} backbone)')
    return sd


if __name__ == '__main__':
    main_entry(main)
