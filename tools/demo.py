#!/usr/bin/env python
"""Train and evaluate Mask R-CNN iFormer-S on a generated dataset: no download, a few CPU minutes.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters 150] [--threads 2] [--amp bf16] [--verbose]

What it does, end to end with the real config (configs/detection/mask_rcnn_iformer_s_1x.py)
and mmengine's Runner:

1. writes a small COCO-layout instance-segmentation set (shapes on crops of a real photo,
   :mod:`iformer_mm.datagen.demo_data`) into ``WORK_DIR/data``;
2. evaluates the freshly initialised model on the val split (COCO box and mask AP);
3. trains from scratch (no pretrained weights exist offline) at 128 px;
4. evaluates again and prints both results side by side;
5. paints ground truth next to the predictions on validation images
   (``WORK_DIR/demo_predictions.jpg``).

The console shows progress bars with ETA and a summary; the full config
(``WORK_DIR/demo_config.py``, reusable with ``tools/train.py``/``tools/test.py``), mmengine's log
and COCO's evaluation tables (``WORK_DIR/coco_eval.txt``) go to the work dir. Only the trained weights are kept
(``WORK_DIR/demo_model.pth``, tensors only), not mmengine's optimizer-state checkpoint.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import os.path as osp
import sys
import time
import warnings
from typing import Any, Dict

# setuptools' own notice, raised when mmengine imports pkg_resources: harmless here.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

import iformer_mm  # noqa: E402,F401  (registers iformer_mm.IFormer)
from iformer_mm.cli import main_entry  # noqa: E402
from iformer_mm.datagen.demo_data import make_demo_dataset  # noqa: E402
from iformer_mm.engine.demo import (EvalBeforeAndAfter, build_demo_config, console_warnings_only,  # noqa: E402
                                    paint_predictions)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--iters', type=int, default=150, help='training iterations (batch 4)')
    p.add_argument('--num-train', type=int, default=64, help='generated training images')
    p.add_argument('--num-val', type=int, default=16, help='generated validation images')
    p.add_argument('--size', type=int, default=128, help='image side in pixels')
    p.add_argument('--lr', type=float, default=5e-4, help='AdamW learning rate (demo: from scratch)')
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)),
                   help='torch CPU threads')
    p.add_argument('--seed', type=int, default=0, help='seed of the training run (and of the data, unless --data-seed)')
    p.add_argument('--data-seed', type=int, default=None,
                   help='seed of the generated images (default: --seed); fix it and vary --seed to see the '
                        'run-to-run spread of AP on the same data')
    p.add_argument('--show', type=int, default=6, help='validation images in the picture')
    p.add_argument('--verbose', action='store_true', help="also print mmengine's log (config, every 10 iterations)")
    p.add_argument('--amp', choices=['bf16', 'fp16'], default=None,
                   help='mixed precision: backbone + neck in bf16 (CPUs with bf16 units, GPUs) or fp16 (GPU)')
    return p.parse_args(argv)


def main(argv=None) -> Dict[str, Any]:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(max(args.threads, 1))
    from mmengine.runner import Runner

    from iformer_mm.engine import prepare_runtime_cfg

    t0 = time.time()
    os.makedirs(args.work_dir, exist_ok=True)
    print(f'[demo] generating {args.num_train} train / {args.num_val} val images '
          f'({args.size} px, 3 classes) in {args.work_dir}/data ...')
    data = make_demo_dataset(osp.join(args.work_dir, 'data'), args.num_train, args.num_val, args.size,
                             args.seed if args.data_seed is None else args.data_seed)
    cfg = build_demo_config(args, data)
    if args.amp:
        from iformer_mm.engine.amp import apply_amp
        apply_amp(cfg, args.amp, training=True)
    prepare_runtime_cfg(cfg)
    cfg_file = osp.join(args.work_dir, 'demo_config.py')
    cfg.dump(cfg_file)
    print(f'[demo] config: {cfg_file}; building Mask R-CNN + iFormer-S ...')

    if args.verbose:
        runner = Runner.from_cfg(cfg)
    else:
        console = sys.stdout
        with open(os.devnull, 'w') as null, contextlib.redirect_stdout(null):
            runner = Runner.from_cfg(cfg)  # logs the environment and the whole config (to its file too)
            console_warnings_only(runner.logger, console)
    print(f'[demo] log: {runner.log_dir}; evaluating the untrained model, then training '
          f'{args.iters} iterations, then evaluating again ...')
    recorder = EvalBeforeAndAfter()
    runner.register_hook(recorder, priority='LOW')
    if args.verbose:
        runner.train()
    else:  # pycocotools prints its loading messages and AP tables: keep them in the work dir
        with open(osp.join(args.work_dir, 'coco_eval.txt'), 'w') as f, contextlib.redirect_stdout(f):
            runner.train()
    train_end = time.time()

    weights = osp.join(args.work_dir, 'demo_model.pth')
    torch.save({'state_dict': runner.model.state_dict()}, weights)
    before, after = recorder.results[0], recorder.results[-1]
    out = paint_predictions(runner, cfg, data['val_ann'], osp.join(args.work_dir, 'demo_predictions.jpg'),
                            num=args.show)
    wall = time.time() - t0
    rows = [('box AP', 'coco/bbox_mAP'), ('box AP50', 'coco/bbox_mAP_50'),
            ('mask AP', 'coco/segm_mAP'), ('mask AP50', 'coco/segm_mAP_50')]
    print('=' * 64)
    print(f'Mask R-CNN iFormer-S, {args.iters} iterations x 4 images at {args.size} px, '
          f'{args.num_train} train / {args.num_val} val generated images')
    print(f'{"metric":<12}{"before training":>18}{"after training":>18}')
    for name, key in rows:
        print(f'{name:<12}{before.get(key, float("nan")):>18.3f}{after.get(key, float("nan")):>18.3f}')
    print(f'wall time: {wall:.0f} s total ({train_end - t0 - recorder.eval_seconds:.0f} s data+training, '
          f'{recorder.eval_seconds:.0f} s evaluation), {args.threads} thread(s)')
    print(f'picture (ground truth | prediction, {args.show} val images): {out}')
    print(f'weights: {weights} ({os.path.getsize(weights) / 2**20:.0f} MB, tensors only)')
    print('=' * 64)
    print('next: evaluate the weights, train on 2 processes, or try segmentation on the same data:')
    print(f'  python tools/test.py {cfg_file} {weights}')
    print(f'  bash tools/dist_train.sh {cfg_file} 2 --work-dir {args.work_dir}/dist')
    print(f'  python tools/dataset_converters/ade_from_coco.py {data["root"]} {args.work_dir}/ade')
    return dict(before=before, after=after, picture=out, weights=weights, wall_time=wall)


if __name__ == '__main__':
    main_entry(main)
