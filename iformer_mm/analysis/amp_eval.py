"""One checkpoint evaluated in fp32 and in bf16 (or fp16) side by side: speed and metrics.

What ``tools/test.py CFG CKPT`` and ``tools/test.py CFG CKPT --amp bf16`` each report, in one
process on the same batches, so the two can be compared directly:

* **time**: the model's ``test_step`` only (data preprocessing, backbone, neck, heads,
  post-processing), per image, after one warm-up batch; the batches are loaded once before
  timing, and the evaluator's work is not counted. ``clock='cpu'`` uses the process's CPU
  time (robust on a shared machine with 1 thread), ``'wall'`` the wall clock.
* **metrics**: the config's test evaluator on the same predictions (COCO box/mask AP for
  mmdet, mIoU for mmseg).

The reduced-precision pass is exactly what ``--amp`` does in ``tools/test.py``
(:func:`iformer_mm.engine.amp.autocast_features` with ``inference=True``): backbone,
neck and dense heads under autocast with their conv/linear weights stored in the dtype; box
decoding, nms and RoIAlign in fp32.

    python tools/analysis/amp_eval.py work_dirs/demo/demo_config.py work_dirs/demo/demo_model.pth
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import itertools
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

__all__ = ['evaluate_precisions', 'format_report', 'main']


def _build(cfg_path: str, checkpoint: str, work_dir: str, max_batches: Optional[int]) -> Any:
    """Runner pieces for ``cfg_path``: the model with ``checkpoint`` loaded, the test batches
    (loaded once) and a function building a fresh test evaluator."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    from iformer_mm.engine import prepare_runtime_cfg
    from iformer_mm.engine.trusted_runs import run_trusted
    from iformer_mm.engine.config_check import preflight_or_exit
    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = work_dir
    cfg.load_from = None
    cfg.launcher = 'none'
    if isinstance(cfg.get('visualizer'), dict):
        # mmengine keeps visualizers by name for the whole process, and the next Runner given
        # mmdet's/mmseg's default name ('visualizer') would reuse this one, whose save_dir (our
        # temporary work dir) is gone by then: a name of our own keeps it out of their way.
        cfg.visualizer['name'] = f'amp_eval_{os.getpid()}_{time.time_ns()}'
    prepare_runtime_cfg(cfg)
    preflight_or_exit(cfg, splits=('test',))
    with contextlib.redirect_stdout(io.StringIO()):  # the environment and the whole config
        runner = Runner.from_cfg(cfg)
    run_trusted(lambda: runner.load_checkpoint(checkpoint, map_location='cpu'), checkpoint)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools loading messages
        loader = runner.build_dataloader(cfg.test_dataloader)
    batches: List[Any] = list(itertools.islice(loader, max_batches))

    def evaluator() -> Any:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = runner.build_evaluator(copy.deepcopy(cfg.test_evaluator))
        ev.dataset_meta = loader.dataset.metainfo
        return ev
    return runner.model.eval(), batches, evaluator


def _one_pass(model: Any, batches: List[Any], evaluator: Any, clock: str) -> Dict[str, Any]:
    import torch
    now = time.process_time if clock == 'cpu' else time.perf_counter
    with torch.no_grad():
        model.test_step(copy.deepcopy(batches[0]))  # warm-up (allocator, oneDNN primitives)
    seconds, images = 0.0, 0
    for data in batches:
        data = copy.deepcopy(data)  # predictions are written into the data samples
        t0 = now()
        with torch.no_grad():
            outs = model.test_step(data)
        seconds += now() - t0
        images += len(outs)
        evaluator.process(data_samples=outs, data_batch=data)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' tables
        metrics = evaluator.evaluate(images)
    return dict(seconds=seconds, images=images, s_per_image=seconds / max(images, 1),
                metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})


def evaluate_precisions(cfg_path: str, checkpoint: str, dtype: str = 'bf16', clock: str = 'cpu',
                        max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` in fp32, then in ``dtype`` as ``tools/test.py --amp`` runs it.

    Returns:
        ``{'fp32': pass, dtype: pass, 'speedup': fp32 s / dtype s, 'metric_diff': {name:
        dtype - fp32}}``, each pass with ``seconds``, ``images``, ``s_per_image``, ``metrics``.
    """
    from iformer_mm.engine.amp import autocast_features
    with tempfile.TemporaryDirectory() as wd:
        model, batches, evaluator = _build(cfg_path, checkpoint, wd, max_batches)
        if not batches:
            raise SystemExit(f'error: the test set of {cfg_path} is empty')
        out: Dict[str, Any] = {'fp32': _one_pass(model, batches, evaluator(), clock)}
        autocast_features(model, dtype, inference=True)
        out[dtype] = _one_pass(model, batches, evaluator(), clock)
    out['speedup'] = out['fp32']['seconds'] / out[dtype]['seconds']
    m32, mlow = out['fp32']['metrics'], out[dtype]['metrics']
    out['metric_diff'] = {k: mlow[k] - m32[k] for k in m32 if k in mlow}
    out.update(config=cfg_path, checkpoint=checkpoint, dtype=dtype, clock=clock)
    return out


# The headline metrics, in the order printed (others stay in the JSON).
_HEADLINE = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP', 'coco/segm_mAP_50', 'mIoU', 'aAcc', 'mAcc')


def format_report(res: Dict[str, Any]) -> str:
    """A small markdown table: time per image and the headline metrics, fp32 against ``dtype``."""
    dt = res['dtype']
    a, b = res['fp32'], res[dt]
    lines = [f"| | fp32 | {dt} | {dt} vs fp32 |", '|---|---|---|---|',
             f"| s / image ({res['clock']} clock, {a['images']} images) | {a['s_per_image']:.3f} | "
             f"{b['s_per_image']:.3f} | {res['speedup']:.2f}x faster |"]
    names = [k for k in _HEADLINE if k in a['metrics']] or sorted(a['metrics'])
    for k in names:
        lines.append(f"| {k} | {a['metrics'][k]:.3f} | {b['metrics'].get(k, float('nan')):.3f} | "
                     f"{res['metric_diff'].get(k, float('nan')):+.3f} |")
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--amp', default='bf16', choices=['bf16', 'fp16'], help='the reduced precision (fp16: GPU)')
    p.add_argument('--clock', default='cpu', choices=['cpu', 'wall'],
                   help="'cpu': process CPU time (default; robust on a shared machine), 'wall': wall clock")
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (default: torch\'s)')
    p.add_argument('--max-batches', type=int, default=None, help='evaluate only the first N test batches')
    p.add_argument('--json', default=None, help='write the full result here')
    args = p.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    for path in (args.config, args.checkpoint):
        if not os.path.isfile(path):
            raise SystemExit(f'error: {path} not found')
    res = evaluate_precisions(args.config, args.checkpoint, args.amp, args.clock, args.max_batches)
    res['threads'] = torch.get_num_threads()
    print(format_report(res))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
        print(f'[amp_eval] wrote {args.json}')
    return 0
