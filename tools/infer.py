#!/usr/bin/env python
"""Run a trained detector or segmentor on your own images, a folder of images or a video.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] [--out-dir DIR] [--device cpu|cuda:0]
                          [--amp bf16|fp16] [--score-thr 0.3] [--classes-from COCO_JSON_OR_CONFIG]

CONFIG and CHECKPOINT: what a run wrote — ``work_dirs/demo/demo_config.py`` and
``demo_model.pth`` after ``tools/demo.py``; ``<work_dir>/<config>.py`` and ``epoch_N.pth`` /
``iter_N.pth`` after ``tools/train.py``; or a config of ``configs/`` with a converted checkpoint.
INPUT: image files, folders of images (an image that does not decode is skipped with a
warning), videos (.mp4, .avi, ...).

Writes into ``--out-dir`` (default ``work_dirs/infer``), per image or video frame:

* ``vis/<name>.jpg``: detection — boxes, masks, class names and scores (score >= --score-thr);
  segmentation — the label map blended over the image, with a legend of the classes present.
  A video also gets ``vis/<video>.mp4``, the painted frames;
* ``preds/<name>.json``: detection — ``labels``, ``label_names``, ``scores``, ``bboxes``
  (x1, y1, x2, y2 in image pixels) and ``masks`` (COCO RLE, ``pycocotools.mask.decode``),
  the detections with score >= --score-thr; segmentation — ``label_map`` (the path of
  ``preds/<name>.png``, one class index per pixel) and the classes ``present``.

Class names: the checkpoint's, else the config's test dataset's; ``--classes-from`` (a COCO
annotation json or a config) when neither has the ones the model was trained with.
The work is mmdet's ``DetInferencer`` / mmseg's ``MMSegInferencer`` (iformer_mm/inference.py).
"""
from __future__ import annotations

import argparse
import os.path as osp
import warnings

# setuptools' own notice, raised when mmengine imports pkg_resources: harmless here.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated', category=UserWarning)

import iformer_mm  # noqa: E402,F401  (registers the backbones before the config is read)
from iformer_mm.cli import main_entry  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('config', help='detector or segmentor config (the one the checkpoint was trained with)')
    p.add_argument('checkpoint', help='its weights (.pth)')
    p.add_argument('inputs', nargs='+', help='image files, folders of images, videos')
    p.add_argument('--out-dir', default='work_dirs/infer', help='where vis/ and preds/ are written')
    p.add_argument('--device', default=None, help='cpu, cuda, cuda:1 ... (default: a GPU if there is one)')
    p.add_argument('--amp', choices=['bf16', 'fp16'], default=None,
                   help='mixed precision as tools/test.py --amp: backbone, neck and dense heads in bf16 '
                   '(CPU with bf16 units, GPU) or fp16 (GPU only)')
    p.add_argument('--score-thr', type=float, default=0.3,
                   help='detection: keep (draw and write) detections with at least this score')
    p.add_argument('--classes-from', default=None,
                   help="class names when the checkpoint has none: a COCO annotation json or a config "
                   "whose test dataset has metainfo=dict(classes=...)")
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from iformer_mm.inference import InferenceError, build_inferencer, collect_inputs, infer
    try:
        inputs = collect_inputs(args.inputs)  # before the model is built: bad input fails in a second
        inferencer, task = build_inferencer(args.config, args.checkpoint, device=args.device,
                                            classes_file=args.classes_from, amp=args.amp)
        summary = infer(inferencer, task, inputs, args.out_dir, score_thr=args.score_thr,
                        progress=not args.no_progress)
    except InferenceError as e:
        raise SystemExit(f'error: {e}') from None
    what = 'detector' if task == 'det' else 'segmentor'
    frames = f' and {summary.frames} video frames' if summary.frames else ''
    print(f'[infer] {what}: {summary.images} images{frames} -> {args.out_dir}')
    print(f'  pictures:    {osp.join(args.out_dir, "vis")}/' + (
        f' (videos: {", ".join(summary.videos)})' if summary.videos else ''))
    print(f'  predictions: {osp.join(args.out_dir, "preds")}/ (one JSON per image'
          + (', label maps as PNG)' if task == 'seg' else ', masks as COCO RLE)'))
    if summary.skipped:
        print(f'  skipped {len(summary.skipped)} unreadable: {", ".join(summary.skipped)}')
    return summary


if __name__ == '__main__':
    main_entry(main)
