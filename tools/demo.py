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
import logging
import os
import os.path as osp
import sys
import time
import warnings
from typing import Any, Dict, List

# setuptools' own notice, raised when mmengine imports pkg_resources: harmless here.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

import iformer_mm  # noqa: E402,F401  (registers iformer_mm.IFormer)
from mmengine.hooks import Hook  # noqa: E402
from iformer_mm.datagen.demo_data import CLASSES, PALETTE, make_demo_dataset  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(REPO, 'configs', 'detection', 'mask_rcnn_iformer_s_1x.py')


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


def build_cfg(args: argparse.Namespace, data: dict):
    """The real iFormer-S Mask R-CNN config, shrunk to a 3-class, 128 px, few-minute CPU job."""
    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG)
    size = (args.size, args.size)
    metainfo = dict(classes=CLASSES, palette=list(PALETTE))  # mmdet reads a tuple as one colour for all
    train_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=size, keep_ratio=True),
        dict(type='RandomFlip', prob=0.5),
        dict(type='PackDetInputs'),
    ]
    test_pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=size, keep_ratio=True),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
    ]

    def loader(split: str, pipeline: list, batch: int, shuffle: bool) -> dict:
        return dict(batch_size=batch, num_workers=0, persistent_workers=False,
                    # training draws batches without epoch ends (mmengine warns at each restart otherwise)
                    sampler=dict(type='InfiniteSampler' if shuffle else 'DefaultSampler', shuffle=shuffle),
                    dataset=dict(data_root=data['root'], ann_file=f'annotations/instances_{split}.json',
                                 data_prefix=dict(img=f'images/{split}/'), metainfo=metainfo,
                                 filter_cfg=dict(filter_empty_gt=True, min_size=4) if shuffle else None,
                                 pipeline=pipeline, test_mode=not shuffle))

    evaluator = dict(type='CocoMetric', ann_file=data['val_ann'], metric=['bbox', 'segm'],
                     format_only=False, backend_args=None)
    n = args.iters
    cfg.merge_from_dict(dict(
        model=dict(
            backbone=dict(init_cfg=None, drop_path_rate=0.0),  # no weights offline: from scratch
            roi_head=dict(bbox_head=dict(num_classes=len(CLASSES)), mask_head=dict(num_classes=len(CLASSES))),
            # fewer proposals/samples than COCO needs: a few objects per small image
            train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200),
                           rcnn=dict(sampler=dict(num=64))),
            # score_thr 0: the untrained model's (low-score) detections are evaluated too
            test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=100),
                          rcnn=dict(score_thr=0.0, max_per_img=50))),
        train_dataloader=loader('train2017', train_pipeline, 4, True),
        val_dataloader=loader('val2017', test_pipeline, 4, False),
        test_dataloader=loader('val2017', test_pipeline, 4, False),
        val_evaluator=evaluator, test_evaluator=evaluator,
        train_cfg=dict(_delete_=True, type='IterBasedTrainLoop', max_iters=n, val_interval=n),
        optim_wrapper=dict(optimizer=dict(lr=args.lr), clip_grad=dict(max_norm=5.0)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=max(n // 10, 1)),
            dict(type='CosineAnnealingLR', by_epoch=False, begin=max(n // 10, 1), end=n, T_max=n - max(n // 10, 1),
                 eta_min=args.lr * 0.01),
        ],
        # No mmengine checkpoint (471 MB with the optimizer state): main() keeps the weights only.
        default_hooks=dict(logger=dict(interval=10), checkpoint=None, visualization=dict(draw=False)),
        custom_hooks=[dict(type='iformer_mm.ProgressBarHook')],
        log_processor=dict(by_epoch=False, window_size=10),
        randomness=dict(seed=args.seed),
        work_dir=args.work_dir,
    ))
    return cfg


class EvalBeforeAndAfter(Hook):
    """Evaluate the initialised model before training; record every val result."""

    def __init__(self) -> None:
        self.results: List[dict] = []
        self.eval_seconds = 0.0

    def before_train(self, runner) -> None:
        runner.val_loop.run()

    def before_val_epoch(self, runner) -> None:
        self._t = time.time()

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.eval_seconds += time.time() - self._t
        self.results.append(dict(metrics or {}))


def _console_warnings_only(logger: logging.Logger, console) -> None:
    """Keep mmengine's full log in the work-dir file; show only warnings on ``console``."""
    for h in logger.handlers:
        if type(h) is logging.StreamHandler:
            h.setStream(console)
            h.setLevel(logging.WARNING)


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
    cfg = build_cfg(args, data)
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
            _console_warnings_only(runner.logger, console)
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
    print('next: run the model on your own images, evaluate the weights, train on 2 processes, or try '
          'segmentation on the same data:')
    print(f'  python tools/infer.py {cfg_file} {weights} {osp.join(data["root"], "images", "val2017")} '
          f'--out-dir {args.work_dir}/infer')
    print(f'  python tools/test.py {cfg_file} {weights}')
    print(f'  bash tools/dist_train.sh {cfg_file} 2 --work-dir {args.work_dir}/dist')
    print(f'  python tools/dataset_converters/ade_from_coco.py {data["root"]} {args.work_dir}/ade')
    return dict(before=before, after=after, picture=out, weights=weights, wall_time=wall)


def paint_predictions(runner, cfg, val_ann: str, out_file: str, num: int = 6, scale: int = 3,
                      score_thr: float = 0.3) -> str:
    """Ground truth next to the predictions on ``num`` validation images, enlarged ``scale`` times.

    The images are enlarged before inference (the test pipeline resizes them back to the training
    size), so boxes, masks and scores are drawn at a readable size.
    """
    import json

    import cv2
    import mmcv
    import numpy as np
    import torch
    from mmdet.apis import inference_detector
    from mmdet.structures.mask import PolygonMasks
    from mmengine.structures import InstanceData

    model = runner.model
    model.cfg = cfg  # inference_detector builds its pipeline from the config
    model.eval()
    vis = runner.visualizer  # the config's DetLocalVisualizer
    vis.dataset_meta = dict(classes=CLASSES, palette=list(PALETTE))  # mmdet reads a tuple as one colour for all
    coco = json.loads(open(val_ann).read())
    img_dir = osp.join(osp.dirname(osp.dirname(val_ann)), 'images', 'val2017')
    panels = []
    # mmengine warns for every box or polygon touching the image border: harmless when drawing
    warnings.filterwarnings('ignore', message='Warning: The (bbox|polygon) is out of bounds')
    for im in coco['images'][:num]:
        rgb = mmcv.imread(osp.join(img_dir, im['file_name']), channel_order='rgb')
        h, w = rgb.shape[:2]
        rgb = mmcv.imresize(rgb, (w * scale, h * scale), interpolation='bicubic')
        result = inference_detector(model, mmcv.rgb2bgr(rgb))
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        result.gt_instances = InstanceData(
            bboxes=torch.tensor([[a['bbox'][0], a['bbox'][1], a['bbox'][0] + a['bbox'][2],
                                  a['bbox'][1] + a['bbox'][3]] for a in anns]).reshape(-1, 4) * scale,
            labels=torch.tensor([a['category_id'] - 1 for a in anns], dtype=torch.long),
            masks=PolygonMasks([[np.asarray(p) * scale for p in a['segmentation']] for a in anns],
                               h * scale, w * scale))
        vis.add_datasample(im['file_name'], rgb, result, draw_gt=True, draw_pred=True,
                           pred_score_thr=score_thr, show=False)
        panels.append(vis.get_image())
    cols = 2
    while len(panels) % cols:
        panels.append(np.full_like(panels[0], 255))
    grid = np.concatenate([np.concatenate(panels[i:i + cols], axis=1) for i in range(0, len(panels), cols)], axis=0)
    header = np.full((40, grid.shape[1], 3), 255, dtype=np.uint8)
    for c in range(cols):
        x = c * grid.shape[1] // cols
        cv2.putText(header, 'ground truth', (x + 10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
        cv2.putText(header, f'prediction (score >= {score_thr})', (x + grid.shape[1] // (2 * cols) + 10, 28),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
    mmcv.imwrite(mmcv.rgb2bgr(np.concatenate([header, grid], axis=0)), out_file)
    return out_file


if __name__ == '__main__':
    main()
