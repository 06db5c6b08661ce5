#!/usr/bin/env python3
"""Top-1 / top-5 accuracy and loss of an iFormer classifier on an ImageFolder validation split.

Examples::

    # the authors' published weights (plain state_dict), 224 with crop_pct 0.9
    python tools/classification/validate.py /data/imagenet --model iformer_small --checkpoint iformer_small.pth
    # 384 weights (crop_pct 1.0 from the model's config)
    python tools/classification/validate.py /data/imagenet --model iformer_small_384 --checkpoint iformer_small_384.pth
    # a train.py checkpoint: classes and resolution are read from it, EMA weights used when present
    python tools/classification/validate.py DATA --checkpoint work_dirs/cls/iformer_small/best.pth

Weights are read by :mod:`iformer_mm.pretrained` (``weights_only=True``), strictly: a checkpoint
that does not match the model fully is an error, not a silently wrong number.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from contextlib import nullcontext
from functools import partial
from typing import Any, Dict, Optional, Sequence

import torch

from iformer_mm.classification import common as C
from iformer_mm.cli import main_entry
from iformer_mm.pretrained import load_pretrained

_logger = logging.getLogger('validate')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='Validate an iFormer classifier (top-1/top-5/loss)',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('data_dir', help='ImageFolder root (DATA_DIR/<split>/<class>/*) or the split folder itself')
    p.add_argument('--split', default='val')
    p.add_argument('--model', default=None,
                   help="timm name iformer_{small,base,large}[_384] (default: the checkpoint's, else iformer_small)")
    p.add_argument('--checkpoint', default='', help="weights: the authors' .pth, a train.py checkpoint, ...")
    p.add_argument('--no-ema', action='store_true', help='use the raw weights even if EMA weights exist')
    p.add_argument('--num-classes', type=int, default=None, help="default: the checkpoint's classifier size")
    p.add_argument('--img-size', type=int, default=None, help="default: the checkpoint's, else the model's")
    p.add_argument('--crop-pct', type=float, default=None, help="default: the model's (0.9 at 224, 1.0 at 384)")
    p.add_argument('--interpolation', default=None, help="default: the model's (bicubic)")
    p.add_argument('-b', '--batch-size', type=int, default=64)
    p.add_argument('-j', '--workers', type=int, default=4)
    p.add_argument('--amp', action='store_true', help='autocast (bf16 on CPU, fp16 on CUDA)')
    p.add_argument('--device', default=None)
    p.add_argument('--log-interval', type=int, default=10)
    p.add_argument('--results-file', default='', help='also write the metrics as JSON here')
    return p


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = build_parser().parse_args(argv)
    C.setup_logging()
    from timm.data import create_dataset, create_loader, resolve_data_config
    from timm.models import create_model

    # What the checkpoint says about itself (train.py stores model, classes and size).
    sd, meta = None, {}
    if args.checkpoint:
        sd, notes, raw = C.read_weights(args.checkpoint, use_ema=not args.no_ema)
        meta = {k: raw[k] for k in ('model', 'img_size', 'class_to_idx') if isinstance(raw, dict) and k in raw}
        _logger.info(f'{args.checkpoint}: {"; ".join(notes) or "plain state_dict"}')
    model_name = args.model or meta.get('model') or 'iformer_small'
    num_classes = args.num_classes or (C.checkpoint_num_classes(sd) if sd else None) or 1000
    img_size = args.img_size or meta.get('img_size')
    kwargs: Dict[str, Any] = dict(num_classes=num_classes)
    if img_size:
        kwargs['img_size'] = img_size
    model = create_model(model_name, **kwargs)
    img_size = model.img_size[0]
    if sd is not None:
        # strict: a partial load would report a meaningless accuracy
        load_pretrained(model, sd, strict=True, log=_logger)
    else:
        _logger.warning('no --checkpoint: validating randomly initialised weights')

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    model.to(device).eval()
    crop_pct = C.resolve_crop_pct(model, img_size, args.crop_pct)
    data_cfg = resolve_data_config(dict(input_size=(3, img_size, img_size), crop_pct=crop_pct,
                                        interpolation=args.interpolation), model=model)
    root, split = args.data_dir, args.split
    if not os.path.isdir(os.path.join(root, split)):
        root, split = args.data_dir, ''  # DATA_DIR is the split folder itself
    # A train.py checkpoint knows its class folders: label the val images by that map, so a val
    # split with fewer (or differently ordered) folders is still scored against the right outputs.
    class_map = meta.get('class_to_idx') or None
    if class_map:
        folders = sorted(d.name for d in os.scandir(os.path.join(root, split)) if d.is_dir())
        unknown = [f for f in folders if f not in class_map]
        if unknown:
            raise SystemExit(f'{args.data_dir}: class folders {unknown[:5]} are not classes of {args.checkpoint} '
                             f'(it knows {sorted(class_map)[:10]}...)')
    dataset = create_dataset('', root=root, split=split, is_training=False, class_map=class_map or '')
    C.check_dataset_classes(dataset, num_classes, args.data_dir)
    loader = create_loader(dataset, input_size=data_cfg['input_size'], batch_size=args.batch_size,
                           is_training=False, interpolation=data_cfg['interpolation'],
                           mean=data_cfg['mean'], std=data_cfg['std'], crop_pct=data_cfg['crop_pct'],
                           crop_mode=data_cfg.get('crop_mode'), num_workers=args.workers,
                           device=device, use_prefetcher=False)
    amp_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp else nullcontext
    _logger.info(f'Validating {model_name} ({num_classes} classes) on {len(dataset)} images at {img_size}px, '
                 f'crop_pct {data_cfg["crop_pct"]}, {data_cfg["interpolation"]}, '
                 f'{torch.get_num_threads()} threads')
    m = C.evaluate(model, loader, device, autocast, log_interval=args.log_interval, log=_logger, progress=True)
    print(f'* {model_name} @ {img_size}px: top-1 {m["top1"]:.3f}%  top-{m["topk"]} {m["top5"]:.3f}%  '
          f'loss {m["loss"]:.4f}  ({m["images"]} images, {m["img_per_s"]:.1f} img/s)', flush=True)
    results = dict(model=model_name, checkpoint=args.checkpoint, img_size=img_size,
                   crop_pct=data_cfg['crop_pct'], num_classes=num_classes, **m)
    if args.results_file:
        with open(args.results_file, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main_entry(main)
