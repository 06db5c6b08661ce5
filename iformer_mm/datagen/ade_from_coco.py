"""A small ADE20K-layout semantic-segmentation dataset painted from COCO instance annotations.

Every instance's category is painted into a per-pixel label map, with ADE20K's conventions so
mmseg's ADE20K pipelines (``reduce_zero_label=True``) read it unchanged::

    OUT/images/training/<stem>.jpg       OUT/annotations/training/<stem>.png
    OUT/images/validation/<stem>.jpg     OUT/annotations/validation/<stem>.png

Label maps are single-channel 8-bit PNGs of the image's size: ``0`` = no annotated object
("other", ignored after ``reduce_zero_label``), ``1..80`` = the COCO categories in
:data:`COCO_CLASSES` order (another category set, such as the demo's generated shapes, is
numbered ``1..K`` in category-id order). Instances are painted largest first, so small objects lying on
large ones stay visible; crowd regions are painted with their category too (semantic labels
do not separate instances). Images are copied byte for byte (real photos, mixed sizes and
orientations). Only numpy and PIL are needed; compressed-RLE annotations (not in COCO's
instance files, which store crowds as uncompressed RLE) additionally need pycocotools.

Command line::

    python tools/dataset_converters/ade_from_coco.py ../shared/data/tiny_coco OUT
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw

__all__ = ['COCO_CLASSES', 'SPLITS', 'build_ade_from_coco', 'category_labels', 'paint_label_map']

# The 80 COCO "thing" categories, in COCO id order; label value = index + 1.
COCO_CLASSES = (
    'person', 'bicycle', 'car', 'motorcycle', 'airplane', 'bus', 'train', 'truck', 'boat',
    'traffic light', 'fire hydrant', 'stop sign', 'parking meter', 'bench', 'bird', 'cat', 'dog',
    'horse', 'sheep', 'cow', 'elephant', 'bear', 'zebra', 'giraffe', 'backpack', 'umbrella',
    'handbag', 'tie', 'suitcase', 'frisbee', 'skis', 'snowboard', 'sports ball', 'kite',
    'baseball bat', 'baseball glove', 'skateboard', 'surfboard', 'tennis racket', 'bottle',
    'wine glass', 'cup', 'fork', 'knife', 'spoon', 'bowl', 'banana', 'apple', 'sandwich', 'orange',
    'broccoli', 'carrot', 'hot dog', 'pizza', 'donut', 'cake', 'chair', 'couch', 'potted plant',
    'bed', 'dining table', 'toilet', 'tv', 'laptop', 'mouse', 'remote', 'keyboard', 'cell phone',
    'microwave', 'oven', 'toaster', 'sink', 'refrigerator', 'book', 'clock', 'vase', 'scissors',
    'teddy bear', 'hair drier', 'toothbrush')

# COCO split folder -> ADE20K split folder.
SPLITS = {'train2017': 'training', 'val2017': 'validation'}


def _decode_rle(rle: Mapping, height: int, width: int) -> np.ndarray:
    """Boolean mask of a COCO RLE (uncompressed ``counts`` list, or compressed via pycocotools)."""
    counts = rle['counts']
    if isinstance(counts, (str, bytes)):
        try:
            from pycocotools import mask as mask_utils
        except ImportError as e:  # only compressed RLE needs it
            raise ImportError('this annotation file stores compressed RLE masks; '
                              'decoding them needs pycocotools: pip install pycocotools') from e
        return mask_utils.decode(dict(rle, counts=counts if isinstance(counts, bytes)
                                      else counts.encode())).astype(bool)
    h, w = rle.get('size', (height, width))
    flat = np.zeros(h * w, dtype=bool)
    pos, value = 0, False
    for run in counts:  # runs alternate background/foreground, column-major order
        if value:
            flat[pos:pos + run] = True
        pos += run
        value = not value
    return flat.reshape(w, h).T


def _instance_mask(ann: Mapping, height: int, width: int) -> np.ndarray:
    seg = ann.get('segmentation')
    if isinstance(seg, dict):
        return _decode_rle(seg, height, width)
    canvas = Image.new('1', (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in seg or []:
        if len(poly) >= 6:  # at least three points
            draw.polygon([float(v) for v in poly], outline=1, fill=1)
    return np.asarray(canvas, dtype=bool)


def paint_label_map(anns: Sequence[Mapping], height: int, width: int,
                    cat_to_label: Mapping[int, int]) -> np.ndarray:
    """Paint instance categories into a ``(height, width)`` uint8 map, 0 where nothing is.

    Args:
        anns: COCO annotations of one image (polygons or RLE; crowd ones included).
        height: image height.
        width: image width.
        cat_to_label: COCO category id -> label value (1..255).

    Returns:
        The label map; larger instances are painted first so smaller ones stay on top.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    for ann in sorted(anns, key=lambda a: (-float(a.get('area', 0)), a.get('id', 0))):
        label[_instance_mask(ann, height, width)] = cat_to_label[ann['category_id']]
    return label


def category_labels(categories: Sequence[Mapping]) -> Dict[int, int]:
    """COCO category id -> label value.

    COCO's own categories get their :data:`COCO_CLASSES` position + 1 (what
    ``ADEFromCOCODataset`` expects); any other category set (e.g. the demo's generated shapes)
    is numbered 1..K in category-id order, to be read with ``metainfo=dict(classes=...)`` in
    that order and ``num_classes=K``.
    """
    index = {name: i + 1 for i, name in enumerate(COCO_CLASSES)}
    if all(c['name'] in index for c in categories):
        return {c['id']: index[c['name']] for c in categories}
    ordered = sorted(categories, key=lambda c: c['id'])
    if len(ordered) > 255:
        raise ValueError(f'{len(ordered)} categories do not fit 8-bit label maps (at most 255)')
    return {c['id']: i + 1 for i, c in enumerate(ordered)}


def build_ade_from_coco(coco_root: Union[str, Path], out_dir: Union[str, Path],
                        max_images: Optional[int] = None, overwrite: bool = False) -> Dict[str, int]:
    """Write the ADE20K-layout dataset painted from a COCO-layout folder.

    Args:
        coco_root: folder with ``annotations/instances_{train,val}2017.json`` and
            ``images/{train,val}2017/``.
        out_dir: output root (the ``data_root`` of an mmseg config).
        max_images: keep at most this many images per split (first by image id).
        overwrite: replace an existing non-empty ``out_dir``.

    Returns:
        Number of images written per ADE20K split, e.g. ``{'training': 32, 'validation': 6}``.

    Raises:
        FileNotFoundError: no annotation file or a listed image is missing.
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    coco_root, out_dir = Path(coco_root), Path(out_dir)
    ann_files = {s: coco_root / 'annotations' / f'instances_{s}.json' for s in SPLITS}
    if not any(f.is_file() for f in ann_files.values()):
        raise FileNotFoundError(f'no {" or ".join(str(f) for f in ann_files.values())}: '
                                'coco_root must be a COCO-layout folder')
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f'{out_dir} is not empty; pass overwrite=True (--overwrite)')
        shutil.rmtree(out_dir)
    counts: Dict[str, int] = {}
    for split, ade_split in SPLITS.items():
        if not ann_files[split].is_file():
            continue
        data = json.loads(ann_files[split].read_text())
        cat_to_label = category_labels(data['categories'])
        by_image: Dict[int, List[Mapping]] = {}
        for ann in data['annotations']:
            by_image.setdefault(ann['image_id'], []).append(ann)
        images = sorted(data['images'], key=lambda im: im['id'])[:max_images]
        img_dir = out_dir / 'images' / ade_split
        ann_dir = out_dir / 'annotations' / ade_split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for im in images:
            src = coco_root / 'images' / split / im['file_name']
            if not src.is_file():
                raise FileNotFoundError(f'{src} is listed in {ann_files[split]} but missing')
            with Image.open(src) as pil:
                # The label map must match the pixels loaders decode: COCO's own width/height
                # can disagree with the file, the file is what counts.
                width, height = pil.size
            stem = Path(im['file_name']).stem
            shutil.copyfile(src, img_dir / f'{stem}.jpg')
            label = paint_label_map(by_image.get(im['id'], []), height, width, cat_to_label)
            Image.fromarray(label, mode='L').save(ann_dir / f'{stem}.png')
        counts[ade_split] = len(images)
    return counts


def _class_names(coco_root: Path) -> Optional[List[str]]:
    """The category names of a non-COCO category set, in label order (``None`` for COCO's)."""
    for split in SPLITS:
        ann = coco_root / 'annotations' / f'instances_{split}.json'
        if ann.is_file():
            cats = json.loads(ann.read_text())['categories']
            if all(c['name'] in COCO_CLASSES for c in cats):
                return None
            return [c['name'] for c in sorted(cats, key=lambda c: c['id'])]
    return None


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        description='Paint COCO instance annotations into an ADE20K-layout semantic '
                    'segmentation dataset (label 0 = other, 1..80 = COCO classes).')
    parser.add_argument('coco_root', help='COCO-layout folder, e.g. ../shared/data/tiny_coco')
    parser.add_argument('out_dir', help='output data_root')
    parser.add_argument('--max-images', type=int, default=None, help='images per split')
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty out_dir')
    args = parser.parse_args(argv)
    counts = build_ade_from_coco(args.coco_root, args.out_dir, args.max_images, args.overwrite)
    for split, n in counts.items():
        print(f'{split}: {n} images -> {Path(args.out_dir) / "images" / split}')
    names = _class_names(Path(args.coco_root))
    if names is not None:
        print(f'labels 1..{len(names)} = {names} (not COCO\'s 80 classes): train with '
              f'metainfo=dict(classes={tuple(names)!r}) and num_classes={len(names)}')


if __name__ == '__main__':
    main()
