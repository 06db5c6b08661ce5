"""The logic of ``tools/demo.py``: Mask R-CNN iFormer-S trained and evaluated on a generated
dataset with mmengine's Runner (the config, a before/after evaluation hook, the console, the
picture of predictions)."""
from __future__ import annotations

import logging
import os.path as osp
import time
import warnings
from typing import Any, List

from mmengine.hooks import Hook

from ..datagen.demo_data import CLASSES, PALETTE

__all__ = ['CONFIG', 'EvalBeforeAndAfter', 'build_demo_config', 'console_warnings_only', 'paint_predictions']

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs', 'detection', 'mask_rcnn_iformer_s_1x.py')


def build_demo_config(args: Any, data: dict) -> Any:
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


def console_warnings_only(logger: logging.Logger, console) -> None:
    """Keep mmengine's full log in the work-dir file; show only warnings on ``console``."""
    for h in logger.handlers:
        if type(h) is logging.StreamHandler:
            h.setStream(console)
            h.setLevel(logging.WARNING)


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
