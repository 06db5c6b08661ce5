"""A tiny ImageFolder of real pixels, cut from COCO instance boxes (for end-to-end tests).

Each kept instance becomes one square image (its box, padded to a square with some context,
resized); images are grouped by category into the ImageFolder layout timm and torchvision read::

    OUT/train/<class>/<image_id>_<ann_id>.jpg
    OUT/val/<class>/<image_id>_<ann_id>.jpg

Only PIL and the COCO json are needed (no pycocotools). The result is deterministic: instances
are sorted by id and split per class, every ``val_every``-th crop going to ``val/``.

Command line::

    python -m iformer_mm.datagen.imagefolder_from_coco ../shared/data/tiny_coco OUT --size 64
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from PIL import Image

__all__ = ['DEFAULT_CLASSES', 'build_imagefolder_from_coco']

# Six categories of tiny_coco with at least 9 instances of >= 32x32 px (so top-5 means something).
DEFAULT_CLASSES = ('person', 'car', 'wine glass', 'toilet', 'sheep', 'cup')
_SPLITS = ('train2017', 'val2017')


def _load_instances(coco_root: Path, min_size: int) -> Tuple[Dict[str, list], Dict[int, Path], List[str]]:
    """Non-crowd instances of at least ``min_size`` px per side, grouped by category name; and all
    category names of the files, in id order."""
    by_class: Dict[str, list] = defaultdict(list)
    categories: Dict[int, str] = {}
    files: Dict[int, Path] = {}
    found = False
    for split in _SPLITS:
        ann_file = coco_root / 'annotations' / f'instances_{split}.json'
        if not ann_file.is_file():
            continue
        found = True
        data = json.loads(ann_file.read_text())
        names = {c['id']: c['name'] for c in data['categories']}
        categories.update(names)
        for img in data['images']:
            files[img['id']] = coco_root / 'images' / split / img['file_name']
        for ann in data['annotations']:
            w, h = ann['bbox'][2:]
            if ann.get('iscrowd') or min(w, h) < min_size:
                continue
            by_class[names[ann['category_id']]].append(ann)
    if not found:
        raise FileNotFoundError(
            f'no COCO annotations under {coco_root}/annotations (expected instances_train2017.json '
            'and/or instances_val2017.json); pass the folder that holds annotations/ and images/')
    return by_class, files, [categories[k] for k in sorted(categories)]


def _square_box(bbox: Sequence[float], img_w: int, img_h: int, context: float) -> Tuple[int, int, int, int]:
    """A square around the box centre, ``1 + context`` times its longer side, clipped to the image."""
    x, y, w, h = bbox
    side = max(w, h) * (1.0 + context)
    cx, cy = x + w / 2, y + h / 2
    left, top = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
    right, bottom = min(img_w, int(round(cx + side / 2))), min(img_h, int(round(cy + side / 2)))
    return left, top, right, bottom


def build_imagefolder_from_coco(
        coco_root: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        classes: Optional[Sequence[str]] = None,
        size: int = 64,
        min_size: int = 32,
        max_per_class: Optional[int] = 10,
        val_every: int = 4,
        context: float = 0.1,
) -> Dict[str, Dict[str, int]]:
    """Write the crops of ``classes`` as an ImageFolder under ``out_dir``.

    Args:
        coco_root: folder with ``annotations/instances_{train,val}2017.json`` and ``images/``.
        out_dir: output folder (``train/`` and ``val/`` are created in it).
        classes: category names, one ImageFolder class each. Default: :data:`DEFAULT_CLASSES`
            for COCO data, every category for another category set (e.g. the demo's shapes).
        size: side of the saved square images, in px.
        min_size: skip instances whose box is smaller than this on either side.
        max_per_class: keep at most this many instances per class (``None`` or 0: all).
        val_every: every ``val_every``-th instance of a class goes to ``val/``.
        context: extra margin around the box, as a fraction of its longer side.

    Returns:
        ``{'train': {class: count}, 'val': {class: count}}``.

    Raises:
        ValueError: a class has no instance large enough, or would get no train/val image.
    """
    coco_root, out_dir = Path(coco_root), Path(out_dir)
    if val_every < 2:
        raise ValueError(f'val_every must be >= 2 (got {val_every}); 1 would leave train/ empty')
    by_class, files, all_classes = _load_instances(coco_root, min_size)
    if classes is None:
        classes = DEFAULT_CLASSES if set(DEFAULT_CLASSES) <= set(all_classes) else all_classes
    counts: Dict[str, Dict[str, int]] = {'train': {}, 'val': {}}
    for name in classes:
        anns = sorted(by_class.get(name, []), key=lambda a: a['id'])[:max_per_class or None]
        if len(anns) < val_every:
            raise ValueError(
                f'class {name!r} has {len(anns)} instances of >= {min_size}px in {coco_root}; need at '
                f'least {val_every} (one val image). Choose other classes or lower min_size.')
        per_split: Dict[str, List[dict]] = {'train': [], 'val': []}
        for i, ann in enumerate(anns):
            per_split['val' if i % val_every == val_every - 1 else 'train'].append(ann)
        for split, items in per_split.items():
            folder = out_dir / split / name.replace(' ', '_')
            folder.mkdir(parents=True, exist_ok=True)
            for ann in items:
                with Image.open(files[ann['image_id']]) as img:
                    img = img.convert('RGB')
                    crop = img.crop(_square_box(ann['bbox'], *img.size, context))
                    crop.resize((size, size), Image.BICUBIC).save(
                        folder / f"{ann['image_id']:012d}_{ann['id']}.jpg", quality=95)
            counts[split][name] = len(items)
    return counts


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('coco_root', help='folder with annotations/ and images/ (e.g. tiny_coco)')
    parser.add_argument('out_dir', help='output ImageFolder root')
    parser.add_argument('--classes', nargs='+', default=None,
                        help=f'default: {" ".join(DEFAULT_CLASSES)} for COCO, else every category')
    parser.add_argument('--size', type=int, default=64)
    parser.add_argument('--min-size', type=int, default=32)
    parser.add_argument('--max-per-class', type=int, default=10, help='0: all')
    parser.add_argument('--val-every', type=int, default=4)
    args = parser.parse_args(argv)
    counts = build_imagefolder_from_coco(args.coco_root, args.out_dir, args.classes, args.size,
                                         args.min_size, args.max_per_class, args.val_every)
    for split, per_class in counts.items():
        print(f'{split}: {sum(per_class.values())} images, {per_class}')


if __name__ == '__main__':
    main()
