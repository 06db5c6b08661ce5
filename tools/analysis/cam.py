#!/usr/bin/env python
"""Grad-CAM / Grad-CAM++ / EigenCAM of backbones, side by side (iFormer paper Fig. 5).

    python tools/analysis/cam.py CONFIG_OR_MODEL [CONFIG_OR_MODEL ...] \
        --images DIR_OR_FILES --out DIR [--checkpoint F [F ...]] [--layer NAME [NAME ...]] \
        [--method gradcam|gradcam++|eigencam] [--target-class K]

Classifiers (timm names) explain the predicted class (or --target-class); two-stage mmdet
detectors explain the R-CNN score of their top box (drawn dashed); mmseg segmentors explain the
region of their most frequent predicted class. Default layer: the backbone's last block.
Writes ``cam.png`` (one row per image, one column per model) and ``cam.json`` into --out.
Built on the grad-cam package (pip install grad-cam torch==2.13.0).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional, Sequence

from iformer_mm.analysis import cli
from iformer_mm.cli import main_entry


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.make_parser(__doc__)
    p.add_argument('--layer', nargs='+', default=[], metavar='NAME',
                   help='target layer per model (module name in the whole model, e.g. '
                        'backbone.blocks4.2); default: the backbone\'s last block')
    p.add_argument('--method', default='gradcam', choices=('gradcam', 'gradcam++', 'eigencam'))
    p.add_argument('--target-class', type=int, default=None,
                   help='class to explain (classifiers, segmentors); default: the predicted one')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from iformer_mm.analysis.cam import compute_cam, plot_side_by_side
    images, rgb, files = cli.load_inputs(args)  # bad paths fail before any model is built
    layers = cli.per_model(args.layer, len(args.models), '--layer')
    models = cli.load_models(args)
    results = [compute_cam(m, images, layer=lay, method=args.method, target_class=args.target_class,
                           layout=args.layout, progress=not args.no_progress)
               for m, lay in zip(models, layers)]
    os.makedirs(args.out, exist_ok=True)
    png = plot_side_by_side(rgb, results, os.path.join(args.out, 'cam.png'), files)
    with open(os.path.join(args.out, 'cam.json'), 'w') as f:
        json.dump(dict(images=files, size=list(images.shape[-2:]), models=[
            dict(label=r.label, layer=r.layer, method=r.method, checkpoint=m.checkpoint,
                 targets=r.targets, boxes=r.boxes) for r, m in zip(results, models)]), f, indent=1)
    for r in results:
        print(f'{r.label}: {r.method} at {r.layer}; ' + '; '.join(r.targets))
    print(f'wrote {png}')
    print(f'wrote {os.path.join(args.out, "cam.json")}')
    return 0


if __name__ == '__main__':
    main_entry(main)
