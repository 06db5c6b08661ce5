#!/usr/bin/env python
"""Export a segmentor, a detector's backbone + neck, or a timm classifier to ONNX.

    python tools/deploy/export_onnx.py CONFIG [CHECKPOINT] --shape H W --out FILE.onnx
                                       [--dynamic] [--opset N] [--fold-preprocess] [--argmax]
                                       [--batch N] [--check]

CONFIG is an mmseg/mmdet config file or a timm model name (``iformer_small``, ``iformer_t``).
Segmentors export whole (normalised images -> logits at the input size; ``--fold-preprocess``
takes raw 0..255 pixels in the loader's channel order, ``--argmax`` outputs the label map);
detectors export ``backbone + neck`` (``feat0..``); classifiers their logits. ``--dynamic`` makes
batch, height and width symbolic. ``--check`` runs the file in ONNX Runtime on a random input
and prints the largest difference to PyTorch. Exporter: ``torch.onnx.export(dynamo=True)``
(docs/deploy.md). Needs ``pip install -e ".[deploy]"``.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from iformer_mm.cli import main_entry


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from iformer_mm.deploy.onnx import DEFAULT_OPSET
    p = argparse.ArgumentParser(description='Export a model to ONNX (torch.onnx dynamo exporter)')
    p.add_argument('config', help='mmdet/mmseg config file, or a timm model name for a classifier')
    p.add_argument('checkpoint', nargs='?', default=None,
                   help='weights (a run checkpoint of this config, or a classifier checkpoint); '
                   'none: initialised weights')
    p.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                   help='example input size (the only size unless --dynamic)')
    p.add_argument('--batch', type=int, default=1, help='example batch size (default 1)')
    p.add_argument('--out', required=True, help='the .onnx file to write')
    p.add_argument('--dynamic', action='store_true', help='symbolic batch, height and width')
    p.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (default {DEFAULT_OPSET})')
    p.add_argument('--fold-preprocess', action='store_true',
                   help="segmentors: apply the data preprocessor's BGR->RGB and mean/std in the graph")
    p.add_argument('--argmax', action='store_true', help='segmentors: output the label map, not logits')
    p.add_argument('--check', action='store_true', help='compare ONNX Runtime with PyTorch on a random input')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    from iformer_mm.deploy.onnx import ExportError, check_against_pytorch, export_from_config
    try:
        res = export_from_config(args.config, args.out, (args.batch, 3, *args.shape), args.checkpoint,
                                 dynamic=args.dynamic, opset=args.opset,
                                 fold_preprocess=args.fold_preprocess, argmax=args.argmax,
                                 keep_model=args.check)
        print(f'wrote {res.path}: {res.kind}, inputs {res.input_names} -> outputs {res.output_names}, '
              f'opset {res.opset}, {"dynamic" if res.dynamic else "static"} shape, {res.num_nodes} nodes')
        if args.check:
            errs = check_against_pytorch(res, (args.batch, 3, *args.shape))
            print('ONNX Runtime vs PyTorch, max |diff| / max |PyTorch| per output: '
                  + ', '.join(f'{n} {e:.2e}' for n, e in errs.items()))
    except ExportError as e:
        raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
    main_entry(main)
