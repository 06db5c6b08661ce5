"""Run a trained detector or segmentor on your own images, a folder or a video (``tools/infer.py``).

The work is mmdet's ``DetInferencer`` and mmseg's ``MMSegInferencer``: their pipelines, model
building, drawing and prediction-to-dict code run unchanged. What this module adds around them:

* **the checkpoint must fit the config**: before mmengine's non-strict load, every model weight
  must be in the checkpoint with its shape, or the run stops with one line saying so (mmengine
  would warn and predict with random heads); our own training checkpoints load with the
  allow-list of :mod:`iformer_mm.engine.trusted_runs`, still ``weights_only``;
* **class names**: the checkpoint's ``dataset_meta`` when it has one, else the config's test
  dataset, or ``--classes-from`` (a COCO json or another config) — never COCO's or Cityscapes'
  names silently put on a 3-class model;
* **inputs**: image files, folders (an image that does not decode is skipped with a warning),
  videos (frame by frame, painted video out), behind a tqdm progress bar;
* **outputs**, per image: ``vis/<name>.jpg`` (boxes, masks, labels and scores; or the label map
  blended over the image with a legend of the classes present) and ``preds/<name>.json``
  (mmdet's ``labels``/``scores``/``bboxes`` and COCO RLE ``masks``, plus the class names; or, for
  segmentation, the label map as ``preds/<name>.png`` and the classes present);
* ``--amp bf16`` (:func:`iformer_mm.engine.amp.autocast_features`, as ``tools/test.py --amp``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import os.path as osp
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['IMAGE_EXTENSIONS', 'VIDEO_EXTENSIONS', 'InferenceError', 'InferenceSummary', 'Inputs', 'build_inferencer',
           'classes_from', 'check_checkpoint_fits', 'collect_inputs', 'infer']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')


class InferenceError(ValueError):
    """Bad input for inference; the message names the problem and the fix (one line)."""


# ----------------------------------------------------------------------------- config and classes
def _coco_categories(path: str) -> Tuple[List[str], Optional[List]]:
    try:
        with open(path) as f:
            cats = json.load(f)['categories']
        return [c['name'] for c in sorted(cats, key=lambda c: c['id'])], None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InferenceError(f'--classes-from {path}: not a COCO annotation file with "categories" '
                             f'({type(e).__name__}: {e}); give a COCO json or a config') from None


def _dataset_meta_of_config(cfg: Any) -> Tuple[Optional[List[str]], Optional[List]]:
    """Classes and palette of a config's test dataset: its ``metainfo``, else its class's ``METAINFO``."""
    from mmengine.registry import DATASETS
    ds = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    while 'dataset' in ds and 'metainfo' not in ds:  # wrappers (RepeatDataset, ...)
        ds = ds['dataset']
    meta = dict(ds.get('metainfo') or {})
    if 'classes' not in meta and isinstance(ds.get('type'), str):
        with DATASETS.switch_scope_and_registry(cfg.get('default_scope')) as registry:  # as build() does
            cls = registry.get(ds['type'])
        meta = {**dict(getattr(cls, 'METAINFO', {}) or {}), **meta}
    classes = meta.get('classes')
    return (list(classes) if classes else None), (list(meta['palette']) if meta.get('palette') else None)


def classes_from(path: str) -> Tuple[List[str], Optional[List]]:
    """Class names (and palette, if given) from a COCO json or a config whose dataset has them."""
    if not osp.isfile(path):
        raise InferenceError(f'--classes-from {path}: no such file (give a COCO annotation json or a config)')
    if path.endswith('.json'):
        return _coco_categories(path)
    from .build import ConfigError, load_config
    try:
        cfg = load_config(path)
    except ConfigError as e:
        raise InferenceError(f'--classes-from {path}: {e}') from None
    classes, palette = _dataset_meta_of_config(cfg)
    if not classes:
        raise InferenceError(f'--classes-from {path}: its test dataset names no classes; give a COCO json '
                             'or a config whose dataset has metainfo=dict(classes=...)')
    return classes, palette


def _num_classes(model: Any) -> Optional[int]:
    """Classes the model predicts: its (last) box/decode head's ``num_classes``."""
    for path in ('roi_head.bbox_head', 'bbox_head', 'decode_head'):
        m = model
        for attr in path.split('.'):
            m = getattr(m, attr, None)
        if isinstance(m, (list, tuple)) or m.__class__.__name__ == 'ModuleList':
            m = m[-1]
        if getattr(m, 'num_classes', None) is not None:
            return int(m.num_classes)
    return None


def _palette(n: int) -> List[Tuple[int, int, int]]:
    """Distinct, reproducible colours for classes that come without a palette."""
    rng = np.random.RandomState(42)
    return [tuple(int(v) for v in c) for c in rng.randint(0, 255, size=(n, 3))]


# ----------------------------------------------------------------------------- checkpoint
def check_checkpoint_fits(model: Any, checkpoint: Dict[str, Any], weights: str, config: str) -> None:
    """Every weight of ``model`` is in ``checkpoint`` with the same shape, or :class:`InferenceError`."""
    sd = checkpoint.get('state_dict', checkpoint)
    if not isinstance(sd, dict) or not any(hasattr(v, 'shape') for v in sd.values()):
        raise InferenceError(f'{weights} holds no weights (no state_dict of tensors): give the .pth that '
                             'tools/train.py or tools/demo.py wrote')
    sd = {k[7:] if k.startswith('module.') else k: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    wrong = [f'{k} {list(sd[k].shape)} vs {list(v.shape)}' for k, v in own.items()
             if k in sd and hasattr(sd[k], 'shape') and tuple(sd[k].shape) != tuple(v.shape)]
    if not missing and not wrong:
        return
    what = []
    if missing:
        what.append(f'{len(missing)} of the model\'s {len(own)} weights are missing (e.g. {missing[0]})')
    if wrong:
        what.append(f'{len(wrong)} have another shape (e.g. {wrong[0]}, checkpoint vs model)')
    backbone_only = missing and all(not k.startswith('backbone.') for k in missing) and len(sd) < len(own)
    hint = ('it looks like backbone weights only: train a model with it first (init_cfg) and give that '
            'run\'s checkpoint' if backbone_only else
            'give the config this checkpoint was trained with (tools/train.py copies it into the work dir; '
            'the demo writes work_dirs/demo/demo_config.py)')
    raise InferenceError(f'{weights} is not a checkpoint of the model in {config}: {"; ".join(what)}. Fix: {hint}.')


def _inferencer_classes():
    """DetInferencer / MMSegInferencer with the checkpoint check and our class-name rule."""
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer

    class _Checked:
        def __init__(self, cfg: Any, weights: str, device: Optional[str], config_name: str) -> None:
            self._weights_name, self._config_name = weights, config_name
            with warnings.catch_warnings():  # mmdet: no palette in the config -> set below
                warnings.filterwarnings('ignore', message='palette does not exist')
                warnings.filterwarnings('ignore', message='Failed to add <class')  # no save_dir: none needed
                super().__init__(model=cfg, weights=weights, device=device)

        def _load_weights_to_model(self, model, checkpoint, cfg) -> None:
            self.checkpoint_meta = None
            if checkpoint is not None:
                check_checkpoint_fits(model, checkpoint, self._weights_name, self._config_name)
                meta = (checkpoint.get('meta') or {}).get('dataset_meta') or {}
                self.checkpoint_meta = meta if meta.get('classes') else None
            with warnings.catch_warnings():  # no default class names: set below from the config
                warnings.filterwarnings('ignore', message='dataset_meta or class names are not saved')
                super()._load_weights_to_model(model, checkpoint, cfg)

    class CheckedDetInferencer(_Checked, DetInferencer):
        pass

    class CheckedSegInferencer(_Checked, MMSegInferencer):
        pass
    return {'det': CheckedDetInferencer, 'seg': CheckedSegInferencer}


def build_inferencer(config: str, weights: str, device: Optional[str] = None,
                     classes_file: Optional[str] = None, amp: Optional[str] = None) -> Tuple[Any, str]:
    """The mmdet/mmseg inferencer for ``config`` with ``weights`` checked and loaded.

    Returns:
        ``(inferencer, task)`` with ``task`` ``'det'`` or ``'seg'``; ``inferencer.model.dataset_meta``
        holds the class names in use.

    Raises:
        InferenceError: a missing file, a config that is neither detector nor segmentor, a
            checkpoint of another model, class names that do not fit the model.
        SystemExit: a checkpoint that cannot be read (corrupt, refused by safe loading).
    """
    from .build import ConfigError, load_config, strip_pretrained, task_of
    from .engine.trusted_runs import run_trusted
    for what, path in (('config', config), ('checkpoint', weights)):
        if not osp.isfile(path):
            raise InferenceError(f'{what} {path!r} not found (tools/demo.py writes work_dirs/demo/demo_config.py '
                                 'and demo_model.pth; tools/train.py writes <work_dir>/<config>.py and *.pth)')
    if device and device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            raise InferenceError(f'--device {device}: no CUDA GPU is available here; use --device cpu')
    try:
        cfg = load_config(config)
        task = task_of(cfg)
    except ConfigError as e:
        raise InferenceError(f'{config} is neither an MMDetection detector nor an MMSegmentation segmentor '
                             f'config ({e}); give the config the checkpoint was trained with (configs/detection/, '
                             'configs/segmentation/, or the copy in the run\'s work dir)') from None
    strip_pretrained(cfg.model)  # the checkpoint has every weight; a backbone file is not needed
    cls = _inferencer_classes()[task]

    # our training checkpoints hold mmengine/numpy objects: the allow-list, still weights_only
    with _without_function_registry_notice():
        inferencer = run_trusted(lambda: cls(cfg, weights, device, config), weights)
    inferencer.show_progress = False  # one tqdm bar over all inputs instead (infer)
    _set_classes(inferencer, task, cfg, config, classes_file)
    if amp:
        _apply_amp(inferencer.model, amp)
    return inferencer, task


@contextlib.contextmanager
def _without_function_registry_notice() -> Iterator[None]:
    """mmdet and mmseg have no "function" registry, so building their inferencers' collate
    function logs mmengine's fallback notice as a WARNING; the fallback (mmengine's own
    ``pseudo_collate``) is the intended function. Only that record is dropped."""
    from mmengine.logging import MMLogger

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return 'registry tree' not in record.getMessage() or '"function"' not in record.getMessage()
    logger, drop = MMLogger.get_current_instance(), _Drop()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _set_classes(inf: Any, task: str, cfg: Any, config: str, classes_file: Optional[str]) -> None:
    if classes_file:
        classes, palette, source = *classes_from(classes_file), f'--classes-from {classes_file}'
    elif inf.checkpoint_meta:
        meta = inf.checkpoint_meta
        classes, palette, source = list(meta['classes']), meta.get('palette'), 'checkpoint'
    else:
        (classes, palette), source = _dataset_meta_of_config(cfg), config
    n = _num_classes(inf.model)
    if not classes or (n is not None and len(classes) != n):
        raise InferenceError(
            f'the model predicts {n} classes but {source} names {len(classes or [])}: pass --classes-from '
            'with the data it was trained on (its COCO annotation json, or a config whose dataset has '
            'metainfo=dict(classes=...))')
    if not palette or len(palette) != len(classes):
        palette = _palette(len(classes))
    meta = {'classes': tuple(classes), 'palette': [tuple(c) for c in palette]}
    inf.model.dataset_meta = meta
    if task == 'det':
        inf.visualizer.dataset_meta = meta
    else:
        inf.visualizer.set_dataset_meta(list(classes), meta['palette'])


def _apply_amp(model: Any, amp: str) -> None:
    import torch

    from .engine.amp import AMP_CHOICES, autocast_features
    if amp not in AMP_CHOICES:
        raise InferenceError(f'--amp: choose one of {AMP_CHOICES}, got {amp!r}')
    device = next(model.parameters()).device.type
    if amp == 'fp16' and device == 'cpu':
        raise InferenceError('--amp fp16 needs a CUDA GPU (CPU autocast computes in bf16 only); on CPU use --amp bf16')
    with torch.no_grad():
        autocast_features(model, amp, inference=True)


# ----------------------------------------------------------------------------- inputs
@dataclass
class Item:
    """One picture to predict: a path, or a decoded video frame (BGR) with its output name."""

    name: str
    path: Optional[str] = None
    frame: Optional[np.ndarray] = None
    video: Optional[str] = None


def _decodes(path: str) -> bool:
    import mmcv
    try:
        return mmcv.imread(path) is not None
    except Exception:  # noqa: BLE001  (any decoder error: not a readable image)
        return False


@dataclass
class Inputs:
    """The command line's inputs, checked: readable images, videos, skipped folder images."""

    images: List[str] = field(default_factory=list)
    videos: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def collect_inputs(paths: Sequence[str]) -> Inputs:
    """Check every input before a model is built: images decode, videos open.

    An image of a folder that does not decode is skipped with a warning; anything else wrong
    raises.

    Raises:
        InferenceError: a path that does not exist, a folder without images, a single file that
            is neither a readable image nor a readable video.
    """
    out = Inputs()
    for p in paths:
        if osp.isdir(p):
            found = sorted(osp.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise InferenceError(f'folder {p} has no images ({", ".join(IMAGE_EXTENSIONS)})')
            for f in found:
                if _decodes(f):
                    out.images.append(f)
                else:
                    warnings.warn(f'skipping {f}: it cannot be decoded as an image (corrupt or not an image)',
                                  stacklevel=2)
                    out.skipped.append(f)
        elif not osp.exists(p):
            raise InferenceError(f'input {p!r} not found: give image files, a folder of images or a video')
        elif p.lower().endswith(VIDEO_EXTENSIONS):
            _video_info(p)
            out.videos.append(p)
        elif _decodes(p):
            out.images.append(p)
        else:
            raise InferenceError(f'cannot decode {p} as an image (corrupt, or not an image; videos must end in '
                                 f'{", ".join(VIDEO_EXTENSIONS)})')
    return out


def _video_info(path: str) -> Tuple[int, float]:
    """Frame count and frame rate, or :class:`InferenceError` for a video OpenCV cannot read."""
    import cv2
    cap = cv2.VideoCapture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        ok = n > 0 and cap.read()[0]
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0) or 25.0
    finally:
        cap.release()
    if not ok:
        raise InferenceError(f'cannot read video {path} (corrupt, or a codec OpenCV lacks): convert it, e.g. '
                             'ffmpeg -i IN -c:v libx264 OUT.mp4, or extract its frames into a folder')
    return n, fps


def _items(images: List[str], videos: List[str]) -> Iterator[Item]:
    import cv2
    used: Dict[str, int] = {}

    def unique(stem: str) -> str:
        used[stem] = used.get(stem, -1) + 1
        return stem if used[stem] == 0 else f'{stem}_{used[stem]}'
    for p in images:
        yield Item(unique(osp.splitext(osp.basename(p))[0]), path=p)
    for v in videos:
        cap, stem, i = cv2.VideoCapture(v), unique(osp.splitext(osp.basename(v))[0]), 0
        try:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                yield Item(f'{stem}_{i:06d}', frame=frame, video=v)
                i += 1
        finally:
            cap.release()


# ----------------------------------------------------------------------------- outputs
def _legend(vis: np.ndarray, label_map: np.ndarray, classes: Sequence[str], palette: Sequence) -> np.ndarray:
    """The blended picture with a legend strip below: colour and name of each class present, by area."""
    import cv2
    labels, counts = np.unique(label_map[label_map < len(classes)], return_counts=True)
    order = [int(labels[i]) for i in np.argsort(-counts)]
    row, w = 22, vis.shape[1]
    per_row = max(1, w // 160)
    strip = np.full((row * max(1, -(-len(order) // per_row)) + 6, w, 3), 255, np.uint8)
    for j, lab in enumerate(order):
        x, y = 6 + (j % per_row) * 160, 4 + (j // per_row) * row
        cv2.rectangle(strip, (x, y), (x + 14, y + 14), tuple(int(c) for c in palette[lab]), -1)
        cv2.putText(strip, str(classes[lab])[:18], (x + 20, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return np.concatenate([vis, strip], axis=0)


@dataclass
class InferenceSummary:
    """What :func:`infer` wrote."""

    out_dir: str
    images: int = 0
    frames: int = 0
    pictures: List[str] = field(default_factory=list)
    predictions: List[str] = field(default_factory=list)
    videos: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)


def _predict(inf: Any, task: str, item: Item, score_thr: float) -> Tuple[dict, np.ndarray, Optional[np.ndarray]]:
    """One input through the inferencer: (prediction dict, RGB picture, label map or None).

    The model reads a path, or a frame in BGR as the pipeline expects; the inferencer's own
    ``visualize`` draws on the RGB image (it takes an array as RGB).
    """
    import mmcv
    bgr = item.frame if item.frame is not None else mmcv.imread(item.path)
    sample = inf(item.path if item.path is not None else bgr, return_datasamples=True)
    if task == 'det':
        sample = sample['predictions'][0]
        vis = inf.visualize([bgr[:, :, ::-1].copy()], [sample], return_vis=True, pred_score_thr=score_thr)[0]
        return inf.pred2dict(sample), vis, None
    vis = inf.visualize([bgr[:, :, ::-1].copy()], [sample], return_vis=True, with_labels=False)[0]
    return {}, vis, sample.pred_sem_seg.data[0].cpu().numpy()


def _fit(bgr: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A frame padded (white) or cropped at the bottom to the video's (width, height): the legend
    strip below a segmentation frame grows with the classes present."""
    w, h = size
    if bgr.shape[0] < h:
        bgr = np.concatenate([bgr, np.full((h - bgr.shape[0], w, 3), 255, np.uint8)], axis=0)
    return np.ascontiguousarray(bgr[:h, :w])


def infer(inferencer: Any, task: str, inputs: Inputs, out_dir: str, score_thr: float = 0.3,
          progress: bool = True) -> InferenceSummary:
    """Predict every input (:func:`collect_inputs`), write pictures to ``out_dir/vis`` and
    predictions to ``out_dir/preds``."""
    import cv2
    import mmcv
    from tqdm import tqdm
    images, videos = inputs.images, inputs.videos
    infos = {v: _video_info(v) for v in videos}
    total = len(images) + sum(n for n, _ in infos.values())
    out = InferenceSummary(out_dir, skipped=list(inputs.skipped))
    os.makedirs(osp.join(out_dir, 'vis'), exist_ok=True)
    os.makedirs(osp.join(out_dir, 'preds'), exist_ok=True)
    meta = inferencer.model.dataset_meta
    classes, palette = list(meta['classes']), meta['palette']
    writers: Dict[str, Tuple[Any, Tuple[int, int]]] = {}
    try:
        for item in tqdm(_items(images, videos), total=total, desc='infer', unit='img', disable=not progress):
            pred, vis, label_map = _predict(inferencer, task, item, score_thr)
            source = item.path if item.video is None else f'{item.video}#frame={int(item.name.rsplit("_", 1)[1])}'
            record: Dict[str, Any] = {'image': source, 'height': int(vis.shape[0]), 'width': int(vis.shape[1]),
                                      'classes': classes}
            if task == 'det':
                keep = [i for i, s in enumerate(pred['scores']) if s >= score_thr]
                record['score_thr'] = score_thr
                for k in ('labels', 'scores', 'bboxes', 'masks'):
                    if k in pred:
                        record[k] = [pred[k][i] for i in keep]
                record['label_names'] = [classes[i] for i in record['labels']]
            else:
                png = osp.join('preds', f'{item.name}.png')
                mmcv.imwrite(label_map.astype(np.uint8 if len(classes) < 256 else np.uint16), osp.join(out_dir, png))
                labels, counts = np.unique(label_map, return_counts=True)
                record['label_map'] = png  # relative to out_dir
                record['present'] = [{'label': int(lab), 'class': classes[int(lab)] if lab < len(classes) else None,
                                      'pixels': int(c)} for lab, c in zip(labels, counts)]
                vis = _legend(vis, label_map, classes, palette)
            json_path = osp.join(out_dir, 'preds', f'{item.name}.json')
            with open(json_path, 'w') as f:
                json.dump(record, f)
            out.predictions.append(json_path)
            bgr = np.ascontiguousarray(vis[:, :, ::-1])
            if item.video is None:
                out.images += 1
                pic = osp.join(out_dir, 'vis', f'{item.name}.jpg')
                mmcv.imwrite(bgr, pic)
                out.pictures.append(pic)
                continue
            out.frames += 1
            if item.video not in writers:
                path = osp.join(out_dir, 'vis', osp.splitext(osp.basename(item.video))[0] + '.mp4')
                size = (bgr.shape[1], bgr.shape[0])
                writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), infos[item.video][1], size)
                if not writer.isOpened():
                    raise InferenceError(f'OpenCV cannot write {path} (no mp4v encoder in this build): '
                                         'give the frames as a folder of images instead')
                writers[item.video] = (writer, size)
                out.videos.append(path)
            writer, size = writers[item.video]
            writer.write(_fit(bgr, size))
    finally:
        for writer, _ in writers.values():
            writer.release()
    return out

