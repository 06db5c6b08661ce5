"""Backbones side by side, from our configs and tools, in one run: the table of docs/comparison.md.

For each backbone (as its Mask R-CNN 1x config builds it, ImageNet weights not needed):

* parameters and FLOPs counted both ways by ``tools/analysis/get_flops.py --backbone-only``
  (the papers' mmcv-1.x counting and the full count with attention products), at 800x1344 and
  at 224x224;
* time and peak memory of the backbone alone, each case in a fresh process: a 1x3x800x1344
  forward + backward in train mode (what a detector's training step costs the backbone) and a
  32x3x224x224 forward under ``no_grad`` (ImageNet-style inference). Median of ``--repeats``
  runs after one warm-up; memory is the process's peak RSS, and that peak minus the RSS before
  the first forward (the activations and gradients of the case).

Usage::

    OMP_NUM_THREADS=1 python tools/analysis/compare_backbones.py --markdown
    python tools/analysis/compare_backbones.py --only caformer_s18 --repeats 1 --json

Times depend on the machine and its load: compare rows of one run, not runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _mmdet_config(rel: str) -> str:
    import mmdet
    return os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', rel)


# name -> (label, config path or a callable giving it)
BACKBONES = {
    'iformer_s': ('iFormer-S', 'configs/detection/mask_rcnn_iformer_s_1x.py'),
    'caformer_s18': ('CAFormer-S18', 'configs/detection/mask_rcnn_caformer_s18_1x.py'),
    'convformer_s18': ('ConvFormer-S18', 'configs/detection/mask_rcnn_convformer_s18_1x.py'),
    'poolformer_s24': ('PoolFormer-S24', 'configs/detection/mask_rcnn_poolformer_s24_1x.py'),
    'swin_t': ('Swin-T (mmdet)', lambda: _mmdet_config('swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py')),
}
CASES = {
    'det_fwd_bwd': dict(batch=1, shape=(800, 1344), train=True),
    'cls_fwd': dict(batch=32, shape=(224, 224), train=False),
}


def _config_path(name: str) -> str:
    path = BACKBONES[name][1]
    path = path() if callable(path) else os.path.join(REPO, path)
    return path


def _rss_gb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e9


def build_backbone(name: str) -> Any:
    """The backbone its config builds (no pretrained weights, drop path off for stable timing)."""
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import mmdet.models  # noqa: F401  (registers)
    from mmdet.registry import MODELS
    import iformer_mm  # noqa: F401
    cfg = Config.fromfile(_config_path(name))
    bb = cfg.model.backbone
    bb.init_cfg = None
    if 'drop_path_rate' in bb:
        bb.drop_path_rate = 0.0
    init_default_scope('mmdet')
    torch.manual_seed(0)
    return MODELS.build(bb)


def run_case(name: str, case: str, repeats: int) -> Dict[str, Any]:
    """Time one (backbone, case) in this process; call it in a fresh process."""
    import torch
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    spec = CASES[case]
    model = build_backbone(name)
    model.train(spec['train'])
    x = torch.randn(spec['batch'], 3, *spec['shape'])
    base = _rss_gb()

    def step() -> None:
        if spec['train']:
            model.zero_grad(set_to_none=True)
            sum(o.float().mean() for o in model(x)).backward()
        else:
            with torch.no_grad():
                model(x)

    t0 = time.perf_counter()
    step()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux
    return dict(name=name, case=case, threads=torch.get_num_threads(), warmup_s=warm, times_s=times,
                median_s=statistics.median(times), base_rss_gb=base, peak_rss_gb=peak,
                peak_minus_base_gb=peak - base)


def flops(name: str, shape: Sequence[int]) -> Dict[str, Any]:
    """``tools/analysis/get_flops.py --backbone-only --json`` in its own process."""
    cmd = [sys.executable, os.path.join(REPO, 'tools', 'analysis', 'get_flops.py'), _config_path(name),
           '--backbone-only', '--json', '--shape', str(shape[0]), str(shape[1])]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{res.stderr[-2000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


def _subprocess(name: str, case: str, repeats: int) -> Dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), '--one', name, case, '--repeats', str(repeats)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed:\n{res.stderr[-2000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


def collect(names: Sequence[str], repeats: int) -> Dict[str, Any]:
    import timm
    import torch
    rows = []
    for name in names:
        row: Dict[str, Any] = dict(name=name, label=BACKBONES[name][0])
        for key, shape in (('flops_det', (800, 1344)), ('flops_224', (224, 224))):
            f = flops(name, shape)
            row['params'] = f['params']
            row[key] = dict(paper=f['paper_flops'], full=f['full_flops'], attention=f['attention_flops'])
        for case in CASES:
            row[case] = _subprocess(name, case, repeats)
        rows.append(row)
        print(f'[compare] {name} done', file=sys.stderr)
    return dict(date=datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                torch=torch.__version__, timm=timm.__version__,
                threads=int(os.environ.get('OMP_NUM_THREADS', '1')), repeats=repeats,
                cpu_count=os.cpu_count(), rows=rows)


def markdown(res: Dict[str, Any]) -> str:
    out = ['| backbone | params | FLOPs 800×1344, paper counting | FLOPs 800×1344 incl. attention | '
           'FLOPs 224, paper | FLOPs 224 incl. attention | 800×1344 fwd+bwd, s | peak RSS GB (Δ) | '
           '224 ×32 fwd, s | peak RSS GB (Δ) |',
           '|---|---|---|---|---|---|---|---|---|---|']
    for r in res['rows']:
        d, c = r['det_fwd_bwd'], r['cls_fwd']
        out.append(
            f"| {r['label']} | {r['params'] / 1e6:.2f} M | {r['flops_det']['paper'] / 1e9:.1f} G | "
            f"{r['flops_det']['full'] / 1e9:.1f} G | {r['flops_224']['paper'] / 1e9:.2f} G | "
            f"{r['flops_224']['full'] / 1e9:.2f} G | {d['median_s']:.2f} | "
            f"{d['peak_rss_gb']:.2f} ({d['peak_minus_base_gb']:.2f}) | {c['median_s']:.2f} | "
            f"{c['peak_rss_gb']:.2f} ({c['peak_minus_base_gb']:.2f}) |")
    return '\n'.join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--only', nargs='+', choices=list(BACKBONES), help='a subset of the backbones')
    parser.add_argument('--repeats', type=int, default=3, help='timed runs after the warm-up')
    parser.add_argument('--json', metavar='FILE', help='also write the raw results here')
    parser.add_argument('--markdown', action='store_true', help='print the docs table')
    parser.add_argument('--one', nargs=2, metavar=('NAME', 'CASE'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_case(args.one[0], args.one[1], args.repeats)))
        return 0
    res = collect(args.only or list(BACKBONES), args.repeats)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    print(markdown(res) if args.markdown else json.dumps(res, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
