"""The tiny configs the end-to-end tests write over the repository's real ones.

Each is a real config (``_base_``: the model, optimizer and schedule a user trains) with the data
part replaced here once: tiny COCO (or the demo's generated set) for Mask R-CNN, tiny COCO painted
in the ADE20K layout for the segmentors, at 128 px. What a test changes beyond that (the model's
size, the schedule, the hooks) is its own ``rest`` text, appended after the data part, where it may
use ``classes``, ``metainfo``, ``data_root`` and ``crop_size``.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

PathLike = Union[str, 'os.PathLike[str]']

#: The segmentation tests' default training transforms (between loading and packing).
SEG_CROP = "dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),"


def det_config(base: PathLike, data_root: PathLike, classes: Sequence[str], *, train_images: int,
               val_images: int, batch_size: int = 2, scale: int = 128, flip: bool = False,
               infinite_sampler: bool = False, rest: str = '') -> str:
    """A Mask R-CNN config over ``base`` on a COCO-layout folder, as config text.

    Args:
        base: the detection config to shrink (a path).
        data_root: a folder with ``annotations/instances_{train,val}2017.json`` and
            ``images/{train,val}2017/``.
        classes: the dataset's class names, in category-id order.
        train_images, val_images: how many images of each split the loaders take.
        batch_size: training batch size (validation runs one image a batch).
        scale: the longest side images are resized to.
        flip: add ``RandomFlip(0.5)`` to the training pipeline.
        infinite_sampler: train with an unshuffled ``InfiniteSampler`` (iteration-based loops).
        rest: the test's own config text (model, schedule, hooks).
    """
    flip_step = "\n    dict(type='RandomFlip', prob=0.5)," if flip else ''
    sampler = "\n    sampler=dict(type='InfiniteSampler', shuffle=False)," if infinite_sampler else ''
    return f'''_base_ = {os.fspath(base)!r}
data_root = {os.fspath(data_root)!r} + '/'
classes = {tuple(classes)!r}
metainfo = dict(classes=classes)
scale = ({scale}, {scale})
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=scale, keep_ratio=True),{flip_step}
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(batch_size={batch_size}, num_workers=0, persistent_workers=False,{sampler}
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json', metainfo=metainfo,
                 data_prefix=dict(img='images/train2017/'), pipeline=train_pipeline, indices={train_images}))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_val2017.json', metainfo=metainfo,
                 data_prefix=dict(img='images/val2017/'), pipeline=test_pipeline, indices={val_images}))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
''' + rest


def seg_config(base: PathLike, data_root: PathLike, *, train_transforms: str = SEG_CROP,
               batch_size: int = 1, train_images: Optional[int] = None, rest: str = '') -> str:
    """A segmentor config over ``base`` on an ``ADEFromCOCODataset`` folder, as config text.

    Args:
        base: the segmentation config to shrink (a path).
        data_root: a folder written by ``tools/dataset_converters/ade_from_coco.py``.
        train_transforms: the training transforms between loading and packing (config text;
            ``crop_size`` is 128x128).
        batch_size: training batch size.
        train_images: how many training images the loader takes (``None``: all).
        rest: the test's own config text (model with ``data_preprocessor``, schedule, hooks).
    """
    indices = '' if train_images is None else f', indices={train_images}'
    return f'''_base_ = {os.fspath(base)!r}
data_root = {os.fspath(data_root)!r}
crop_size = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    {train_transforms}
    dict(type='PackSegInputs'),
]
# keep-ratio to a short side of 128: 4:3 photos become 128x171, as ADE20K's become 512x683
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size={batch_size}, num_workers=0, persistent_workers=False,
    dataset=dict(type='ADEFromCOCODataset', data_root=data_root, pipeline=train_pipeline{indices}))
val_dataloader = dict(num_workers=0, persistent_workers=False,
    dataset=dict(type='ADEFromCOCODataset', data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
''' + rest
