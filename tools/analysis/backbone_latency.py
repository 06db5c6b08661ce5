"""CPU latency of the backbones of mm configs at one input size (default 512x512, batch 1).

The resolution the Mobile iFormer authors use for dense latency. Each backbone is built from
its config exactly as training builds it (no pretrained weights are loaded), put in eval mode,
and timed under ``torch.inference_mode`` after one warm-up: the median (and minimum) of
``--repeats`` runs on ``--threads`` torch threads.

Usage::

    python tools/analysis/backbone_latency.py                       # Mobile iFormer M/L/L2, iFormer-S, Swin-T
    python tools/analysis/backbone_latency.py CONFIG [CONFIG ...] --shape 512 512 --repeats 5

Default configs: the Mask R-CNN configs of Mobile iFormer-M/L/L2 and iFormer-S, and mmdet's
Swin-T Mask R-CNN (``mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import time
from typing import Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DET = os.path.join(REPO, 'configs', 'detection')
DEFAULT_CONFIGS = [
    os.path.join(DET, 'mask_rcnn_mobile_iformer_m_1x.py'),
    os.path.join(DET, 'mask_rcnn_mobile_iformer_l_1x.py'),
    os.path.join(DET, 'mask_rcnn_mobile_iformer_l2_1x.py'),
    os.path.join(DET, 'mask_rcnn_iformer_s_1x.py'),
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
]


def build_backbone(config: str) -> torch.nn.Module:
    """The config's backbone as training builds it, without pretrained weights."""
    import iformer_mm  # noqa: F401  (registers the iformer_mm backbones)
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    if '::' in config:  # a config of an installed package, e.g. mmdet::swin/...
        from mmengine.hub import get_config
        cfg = get_config(config)
    else:
        cfg = Config.fromfile(config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    backbone = cfg.model.backbone
    backbone.pop('init_cfg', None)
    backbone.pop('pretrained', None)
    model = MODELS.build(backbone)
    model.eval()
    return model


def time_backbone(model: torch.nn.Module, shape: List[int], repeats: int) -> Dict[str, float]:
    x = torch.randn(1, 3, *shape, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return dict(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times), params_m=params / 1e6)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='*', default=DEFAULT_CONFIGS, help='mmdet/mmseg config files')
    parser.add_argument('--shape', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--repeats', type=int, default=5, help='timed runs after one warm-up')
    parser.add_argument('--threads', type=int, default=1, help='torch threads (default 1)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print('| backbone (config) | params (M) | median ms | min ms |\n|---|---|---|---|')
    for config in args.configs:
        model = build_backbone(config)
        r = time_backbone(model, args.shape, args.repeats)
        name = f'{type(model).__name__} ({os.path.basename(config)})'
        print(f"| {name} | {r['params_m']:.2f} | {r['median_ms']:.0f} | {r['min_ms']:.0f} |", flush=True)
    print(f'\n{args.shape[0]}x{args.shape[1]}, batch 1, {args.threads} thread(s), median of {args.repeats} '
          f'runs after a warm-up; torch {torch.__version__}; {datetime.date.today().isoformat()}; '
          f'load average {os.getloadavg()[0]:.2f}')


if __name__ == '__main__':
    main()
