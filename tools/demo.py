#!/usr/bin/env python
"""Train and evaluate Mask R-CNN iFormer-S on a generated dataset: no download, a few CPU minutes.

    python tools/demo.py [--work-dir work_dirs/demo] [--iters 150] [--threads 2] [--amp bf16]

What it does, end to end with the real config (configs/detection/mask_rcnn_iformer_s_1x.py)
and mmengine's Runner:

1. writes a small COCO-format instance-segmentation set (shapes on crops of a real photo,
   :mod:`iformer_mm.datagen.demo_data`) into ``WORK_DIR/data``;
2. evaluates the freshly initialised model on the val split (COCO box and mask AP);
3. trains from scratch (no pretrained weights exist offline) at 128 px;
4. evaluates again and prints both results side by side;
5. paints the predictions on the full photo into ``WORK_DIR/demo_predictions.jpg``.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import iformer_mm  # noqa: E402,F401  (registers iformer_mm.IFormer; torchvision fix)
from iformer_mm.datagen.demo_data import CLASSES, PALETTE, make_demo_dataset, make_showcase_image  # noqa: E402

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
    p.add_argument('--seed', type=int, default=0)
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
                    sampler=dict(type='DefaultSampler', shuffle=shuffle),
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
        train_dataloader=loader('train', train_pipeline, 4, True),
        val_dataloader=loader('val', test_pipeline, 4, False),
        test_dataloader=loader('val', test_pipeline, 4, False),
        val_evaluator=evaluator, test_evaluator=evaluator,
        train_cfg=dict(_delete_=True, type='IterBasedTrainLoop', max_iters=n, val_interval=n),
        optim_wrapper=dict(optimizer=dict(lr=args.lr), clip_grad=dict(max_norm=5.0)),
        param_scheduler=[
            dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=max(n // 10, 1)),
            dict(type='CosineAnnealingLR', by_epoch=False, begin=max(n // 10, 1), end=n, T_max=n - max(n // 10, 1),
                 eta_min=args.lr * 0.01),
        ],
        default_hooks=dict(logger=dict(interval=max(n // 15, 1)),
                           checkpoint=dict(by_epoch=False, interval=n, max_keep_ckpts=1),
                           visualization=dict(draw=False)),
        log_processor=dict(by_epoch=False, window_size=10),
        randomness=dict(seed=args.seed),
        work_dir=args.work_dir,
    ))
    return cfg


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(max(args.threads, 1))
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    from iformer_mm.engine import prepare_runtime_cfg

    t0 = time.time()
    data = make_demo_dataset(osp.join(args.work_dir, 'data'), args.num_train, args.num_val, args.size, args.seed)
    cfg = build_cfg(args, data)
    if args.amp:
        from iformer_mm.engine.amp import apply_amp
        apply_amp(cfg, args.amp, training=True)
    prepare_runtime_cfg(cfg)

    class EvalBeforeAndAfter(Hook):
        """Evaluate the initialised model before the first iteration; record every val result."""

        def __init__(self) -> None:
            self.results: list = []
            self.eval_seconds = 0.0

        def before_train(self, runner) -> None:
            runner.logger.info('Evaluating the untrained model (same data, same settings)...')
            runner.val_loop.run()

        def before_val_epoch(self, runner) -> None:
            self._t = time.time()

        def after_val_epoch(self, runner, metrics=None) -> None:
            self.eval_seconds += time.time() - self._t
            self.results.append(dict(metrics or {}))

    runner = Runner.from_cfg(cfg)
    recorder = EvalBeforeAndAfter()
    runner.register_hook(recorder, priority='LOW')
    runner.train()
    train_end = time.time()

    before, after = recorder.results[0], recorder.results[-1]
    out = paint_predictions(runner, cfg, osp.join(args.work_dir, 'demo_predictions.jpg'))
    wall = time.time() - t0
    rows = [('box AP', 'coco/bbox_mAP'), ('box AP50', 'coco/bbox_mAP_50'),
            ('mask AP', 'coco/segm_mAP'), ('mask AP50', 'coco/segm_mAP_50')]
    print('\n' + '=' * 64)
    print(f'Mask R-CNN iFormer-S, {args.iters} iterations x 4 images at {args.size} px, '
          f'{args.num_train} train / {args.num_val} val generated images')
    print(f'{"metric":<12}{"before training":>18}{"after training":>18}')
    for name, key in rows:
        print(f'{name:<12}{before.get(key, float("nan")):>18.3f}{after.get(key, float("nan")):>18.3f}')
    print(f'wall time: {wall:.0f} s total ({train_end - t0 - recorder.eval_seconds:.0f} s data+training, '
          f'{recorder.eval_seconds:.0f} s evaluation), {args.threads} thread(s)')
    print(f'predictions painted on the photo: {out}')
    print('=' * 64)
    return dict(before=before, after=after, picture=out, wall_time=wall)


def paint_predictions(runner, cfg, out_file: str) -> str:
    """Run the trained model on the full photo (shapes added) and save the painted result."""
    import mmcv
    from mmdet.apis import inference_detector

    model = runner.model
    model.cfg = cfg  # inference_detector builds its pipeline from the config
    model.eval()
    rgb, _ = make_showcase_image()
    bgr = mmcv.rgb2bgr(rgb)
    result = inference_detector(model, bgr)
    vis = runner.visualizer  # the config's DetLocalVisualizer
    vis.dataset_meta = dict(classes=CLASSES, palette=list(PALETTE))  # mmdet reads a tuple as one colour for all
    vis.add_datasample('demo', rgb, result, draw_gt=False, pred_score_thr=0.5, show=False, out_file=out_file)
    return out_file


if __name__ == '__main__':
    main()
