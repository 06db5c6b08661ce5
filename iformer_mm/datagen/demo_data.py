"""A small instance-segmentation dataset generated on the fly (no download) for ``tools/demo.py``.

Backgrounds are crops of a real photograph that ships with matplotlib (a dependency of
mmengine, so always installed): ``grace_hopper.jpg``, the US Navy portrait of Rear Admiral
Grace Hopper (public domain). Objects are filled shapes of three classes — ``disc``,
``square``, ``triangle`` — in random colours, sizes and positions, with exact polygon masks.
The output is COCO's own layout and split names, so mmdet's ``CocoDataset`` and every tool
of this repository that takes a COCO folder read it unchanged (``tools/dataset_converters/
ade_from_coco.py``, :mod:`iformer_mm.datagen.imagefolder_from_coco`, the detection configs with
``data_root`` pointed at it)::

    ROOT/annotations/instances_{train,val}2017.json
    ROOT/images/{train,val}2017/000000.jpg ...

Train and val images come from disjoint random streams (different seeds), so the val score is
measured on images the model never saw. Generation is deterministic for a given seed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES: Tuple[str, ...] = ('disc', 'square', 'triangle')
PALETTE: Tuple[Tuple[int, int, int], ...] = ((220, 20, 60), (0, 130, 255), (255, 190, 0))


def sample_photo() -> Image.Image:
    """The real photo used for backgrounds (RGB, 512x600), from matplotlib's sample data."""
    import matplotlib.cbook
    path = matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=False)
    return Image.open(path).convert('RGB')


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    """Vertices of a shape of circum-radius ``r`` centred at (cx, cy)."""
    n = {'disc': 32, 'square': 4, 'triangle': 3}[kind]
    start = angle + (math.pi / 4 if kind == 'square' else 0.0)
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)]


def _background(photo: Image.Image, size: int, rng: np.random.Generator,
                aspect: float = 1.0) -> Image.Image:
    """A random crop of the photo (random scale, position, mirror), resized to ``size`` wide and
    ``size / aspect`` high."""
    w, h = photo.size
    out_w, out_h = size, max(int(round(size / aspect)), 1)
    side = rng.uniform(0.35, 1.0) * min(w, h)  # the crop's shorter side
    cw, ch = (side * aspect, side) if aspect >= 1 else (side, side / aspect)
    cw, ch = int(min(cw, w)), int(min(ch, h))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((out_w, out_h), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return img


def render_sample(photo: Image.Image, size: int, rng: np.random.Generator,
                  max_objects: int = 3, background: Optional[Image.Image] = None,
                  aspect: float = 1.0) -> Tuple[Image.Image, List[dict]]:
    """One image with 1..max_objects non-overlapping shapes; returns (image, COCO-style objects)."""
    img = background.copy() if background is not None else _background(photo, size, rng, aspect)
    w, h = img.size
    draw = ImageDraw.Draw(img)
    objects: List[dict] = []
    placed: List[Tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):  # find a spot that does not overlap earlier shapes
            r = rng.uniform(0.09, 0.2) * min(w, h)
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            if all(math.hypot(cx - px, cy - py) > r + pr + 2 for px, py, pr in placed):
                break
        else:
            continue
        placed.append((cx, cy, r))
        label = int(rng.integers(len(CLASSES)))
        poly = _polygon(CLASSES[label], cx, cy, r, rng.uniform(0, 2 * math.pi))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(poly, fill=colour, outline=(255, 255, 255) if rng.random() < 0.5 else None)
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
        x1, y1 = min(max(xs), float(w)), min(max(ys), float(h))
        area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs))))
        objects.append(dict(category_id=label + 1, bbox=[x0, y0, x1 - x0, y1 - y0], area=area,
                            segmentation=[[round(v, 2) for p in poly for v in p]], iscrowd=0))
    return img, objects


def _write_split(root: Path, split: str, num: int, size: int, seed: int, photo: Image.Image,
                 aspect_ratios: Sequence[float] = (1.0,)) -> str:
    rng = np.random.default_rng(seed)
    img_dir = root / 'images' / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num):
        img, objects = render_sample(photo, size, rng, aspect=aspect_ratios[i % len(aspect_ratios)])
        name = f'{i:06d}.jpg'
        img.save(img_dir / name, quality=95)
        images.append(dict(id=i + 1, file_name=name, width=img.width, height=img.height))
        for obj in objects:
            annotations.append(dict(id=len(annotations) + 1, image_id=i + 1, **obj))
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=k + 1, name=c, supercategory='shape') for k, c in enumerate(CLASSES)])
    ann = root / 'annotations' / f'instances_{split}.json'
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(coco))
    return str(ann)


def make_demo_dataset(root: os.PathLike, num_train: int = 96, num_val: int = 24, size: int = 160,
                      seed: int = 0, aspect_ratios: Sequence[float] = (1.0,)) -> Dict[str, str]:
    """Write the demo dataset under ``root`` (deterministic; rewrites existing files).

    Images are ``size`` pixels wide and ``size / aspect`` high, the aspect ratios taken in turn
    from ``aspect_ratios`` (the demo's are square; tests also want landscape and portrait).

    Returns:
        paths: ``root``, ``train_ann``, ``val_ann``.
    """
    root = Path(root)
    photo = sample_photo()
    train = _write_split(root, 'train2017', num_train, size, seed, photo, aspect_ratios)
    val = _write_split(root, 'val2017', num_val, size, seed + 10_000, photo, aspect_ratios)
    return dict(root=str(root), train_ann=train, val_ann=val)


def make_showcase_image(size: Sequence[int] = (300, 256), seed: int = 123) -> Tuple[np.ndarray, List[dict]]:
    """The whole photo (resized, not cropped) with a few shapes: the picture the demo paints.

    Returns:
        (RGB uint8 array, objects).
    """
    photo = sample_photo()
    rng = np.random.default_rng(seed)
    bg = photo.resize(tuple(size), Image.BILINEAR)
    img, objects = render_sample(photo, max(size), rng, max_objects=4, background=bg)
    return np.asarray(img), objects
