#!/usr/bin/env python
"""Fourier analysis of feature maps (iFormer paper Figs. 1 and 4) for any backbone.

    python tools/analysis/frequency.py CONFIG_OR_MODEL [CONFIG_OR_MODEL ...] \
        --images DIR_OR_FILES --out DIR [--checkpoint F [F ...]] [--layers PATTERN]

Writes into --out: ``relative_log_amplitude.png`` (Fig. 1b: relative log amplitude vs
frequency, one panel per model, curves coloured by depth), ``high_frequency_vs_depth.png``,
``spectra_2d.png`` (Fig. 1a: 2-D spectra of a few blocks), ``branches.png`` for iFormer models
(Fig. 4: max-pool / dw-conv / attention branch spectra) and ``frequency.json`` (all numbers).
Method and how to read the figures: docs/analysis.md.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from iformer_mm.analysis import cli
from iformer_mm.cli import main_entry


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = cli.make_parser(__doc__)
    p.add_argument('--layers', default=None,
                   help='layers to analyse: module names or full-match regexes, comma-separated '
                        r"(default: every block, e.g. blocks\d+\.\d+ for iFormer, layer\d+\.\d+ for ResNet)")
    p.add_argument('--no-branches', action='store_true', help='skip the per-branch spectra of iFormer mixers')
    p.add_argument('--batch-size', type=int, default=4)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    from iformer_mm.analysis.frequency import analyse, write_outputs
    images, _, files = cli.load_inputs(args)  # bad paths fail before any model is built
    models = cli.load_models(args)
    print(f'{len(files)} images at {tuple(images.shape[-2:])}')
    results = [analyse(m, images, layers=args.layers, branches=not args.no_branches,
                       batch_size=args.batch_size, layout=args.layout, progress=not args.no_progress)
               for m in models]
    for res in results:
        some = list(res.blocks.items())[::max(1, len(res.blocks) // 6)]
        highs = ', '.join(f'{n} {b["high"]:.2f}' for n, b in some)
        print(f'{res.label}: {len(res.blocks)} layers, {len(res.branches)} mixers with branches; '
              f'high-frequency Δ log amplitude: {highs}')
    for what, path in write_outputs(results, args.out).items():
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    main_entry(main)
