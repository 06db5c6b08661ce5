"""Arguments shared by ``tools/analysis/frequency.py`` and ``cam.py`` (their errors end as one
line through :func:`iformer_mm.cli.main_entry`)."""
from __future__ import annotations

import argparse
from typing import List, Optional, Sequence

from .features import AnalysisError, LoadedModel, load_images, load_model

NO_CHECKPOINT = ('none', '-', '')


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A tool's parser: its docstring as help, and the arguments both tools take."""
    p = argparse.ArgumentParser(description=doc.split('\n')[0], epilog=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    return p


def add_common_args(p: argparse.ArgumentParser) -> None:
    """Model(s), checkpoints, labels, images and output folder."""
    p.add_argument('models', nargs='+', metavar='CONFIG_OR_MODEL',
                   help='one or more models: a config (.py path or mmdet::/mmseg:: name) or a timm '
                        'model name; two or more give side-by-side figures')
    p.add_argument('--checkpoint', nargs='+', default=[], metavar='FILE',
                   help="weights, one per model in order ('none' keeps a model's initialisation)")
    p.add_argument('--labels', nargs='+', default=[], help='names shown in the figures, one per model')
    p.add_argument('--images', nargs='+', required=True, metavar='DIR_OR_FILE',
                   help='image folder(s) and/or files')
    p.add_argument('--out', required=True, help='output folder (created)')
    p.add_argument('--size', type=int, nargs='+', default=[224], metavar='PX',
                   help='resize images to this side, or H W (default 224)')
    p.add_argument('--max-images', type=int, default=None, help='use only the first N images')
    p.add_argument('--layout', default='auto', choices=('auto', 'nchw', 'nhwc', 'tokens'),
                   help="layout of the analysed layers' outputs (auto detects it)")
    p.add_argument('--num-classes', type=int, default=None,
                   help='classes of timm classifiers (to fit a fine-tuned checkpoint)')
    p.add_argument('--seed', type=int, default=0,
                   help='seed for the initialisation of models without a checkpoint (default 0)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')


def per_model(values: Sequence[str], n: int, what: str) -> List[Optional[str]]:
    """Spread ``values`` over ``n`` models: none, one per model, or (one value) the same for all."""
    if not values:
        return [None] * n
    if len(values) == 1 and n > 1 and what != '--checkpoint':
        return [values[0]] * n
    if len(values) != n:
        raise AnalysisError(f'{what} got {len(values)} values for {n} models; give one per model '
                            "(use 'none' for a model without a checkpoint)")
    return [None if v.lower() in NO_CHECKPOINT else v for v in values]


def load_models(args: argparse.Namespace) -> List[LoadedModel]:
    import torch
    torch.manual_seed(args.seed)  # a "random init" model is the same on every run
    n = len(args.models)
    ckpts = per_model(args.checkpoint, n, '--checkpoint')
    labels = per_model(args.labels, n, '--labels')
    return [load_model(m, checkpoint=c, label=lab, num_classes=args.num_classes)
            for m, c, lab in zip(args.models, ckpts, labels)]


def load_inputs(args: argparse.Namespace):
    if len(args.size) not in (1, 2) or min(args.size) < 8:
        raise AnalysisError(f'--size takes one side or H W of at least 8 pixels, got {args.size}')
    size = args.size[0] if len(args.size) == 1 else tuple(args.size)
    return load_images(args.images, size, args.max_images)

