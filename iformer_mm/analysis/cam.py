"""Grad-CAM / Grad-CAM++ / EigenCAM maps of any backbone layer, via the ``grad-cam`` package.

What is explained depends on the model:

* a classifier (timm, or any module returning ``(B, classes)`` logits): the score of the
  predicted class, or of ``target_class``;
* a two-stage mmdet detector (Faster/Mask R-CNN): the R-CNN classification logit of its top
  predicted box (the box is fixed first, then the box head is re-run on it with gradients);
* an mmseg segmentor: the summed logits of the most frequent predicted class over the pixels
  predicted as that class (``grad-cam``'s ``SemanticSegmentationTarget``).

The CAM itself (hooks, weights, ReLU, upsampling, min-max scaling) is ``grad-cam``'s; this
module only builds the score function, the target and the layout transform of the layer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .features import AnalysisError, LoadedModel, find_layers, resolve_layouts, to_nchw


def _methods() -> Dict[str, Any]:
    try:
        from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
    except ImportError as e:
        raise AnalysisError('the CAM tool needs the grad-cam package: pip install grad-cam '
                            'torch==2.13.0 (pin torch so pip does not pull another build)') from e
    return {'gradcam': GradCAM, 'gradcam++': GradCAMPlusPlus, 'eigencam': EigenCAM}


METHODS = ('gradcam', 'gradcam++', 'eigencam')


@dataclass
class CamResult:
    """CAMs of one model on a set of images.

    Attributes:
        maps: ``(N, H, W)`` in [0, 1] at the image size (grad-cam's min-max scaling).
        targets: what was explained, one line per image.
        boxes: per image, the explained box ``(x1, y1, x2, y2)`` (detectors) or ``None``.
    """

    label: str
    layer: str
    method: str
    maps: np.ndarray
    targets: List[str] = field(default_factory=list)
    boxes: List[Optional[Tuple[float, float, float, float]]] = field(default_factory=list)


class _DetBoxScore(nn.Module):
    """Detector as a classifier of fixed boxes: image -> R-CNN logits ``(1, classes + 1)``."""

    def __init__(self, detector: nn.Module, box: torch.Tensor) -> None:
        super().__init__()
        self.detector = detector
        self.register_buffer('box', box.view(1, 4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from mmdet.structures.bbox import bbox2roi
        det = self.detector
        feats = det.extract_feat(x)
        roi_head = det.roi_head
        rois = bbox2roi([self.box])
        bbox_feats = roi_head.bbox_roi_extractor(feats[:roi_head.bbox_roi_extractor.num_inputs], rois)
        cls_score, _ = roi_head.bbox_head(bbox_feats)
        return cls_score


class _SegLogits(nn.Module):
    """Segmentor as ``image -> (B, classes, H, W)`` logits."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        metas = [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w))] * x.shape[0]
        return self.segmentor.encode_decode(x, metas)


def _det_top_box(detector: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, int, float]:
    """The highest-scoring box of one image (score threshold lifted so a random model has one)."""
    from mmdet.structures import DetDataSample
    if not hasattr(detector, 'roi_head') or not hasattr(detector.roi_head, 'bbox_head'):
        raise AnalysisError(f'{type(detector).__name__} has no R-CNN box head: detector CAMs need a '
                            'two-stage detector (Faster/Mask R-CNN); use --method eigencam on a '
                            'classifier, or a two-stage config')
    h, w = x.shape[-2:]
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                scale_factor=(1.0, 1.0))
    cfg = detector.roi_head.test_cfg
    saved = cfg.get('score_thr')
    cfg['score_thr'] = 0.0
    try:
        with torch.no_grad():
            pred = detector.predict(x, [DetDataSample(metainfo=meta)], rescale=False)[0].pred_instances
    finally:
        cfg['score_thr'] = saved
    if len(pred.scores) == 0:
        raise AnalysisError('the detector predicted no box on this image, so there is no box score to explain')
    i = int(pred.scores.argmax())
    return pred.bboxes[i].detach(), int(pred.labels[i]), float(pred.scores[i])


def default_cam_layer(model: LoadedModel) -> str:
    """The last block of the backbone (full module name in ``model.model``)."""
    name = find_layers(model.backbone, None, model.label)[-1][0]
    return f'backbone.{name}' if model.backbone is not model.model else name


def compute_cam(model: LoadedModel, images: torch.Tensor, layer: Optional[str] = None,
                method: str = 'gradcam', target_class: Optional[int] = None,
                layout: str = 'auto', progress: bool = True) -> CamResult:
    """CAMs of ``layer`` for every image.

    Args:
        model: from :func:`~iformer_mm.analysis.load_model`.
        images: ``(N, 3, H, W)`` normalised images.
        layer: module name in ``model.model`` (e.g. ``backbone.blocks4.2``); default: the
            backbone's last block.
        method: ``'gradcam'``, ``'gradcam++'`` or ``'eigencam'``.
        target_class: class to explain for classifiers/segmentors (default: the predicted one).
        layout: the layer's output layout (``'auto'`` detects NCHW / NHWC / tokens).
        progress: progress bar over images.

    Raises:
        AnalysisError: unknown method or layer, or a model without a usable score.
    """
    from tqdm import tqdm
    methods = _methods()
    if method not in methods:
        raise AnalysisError(f'unknown CAM method {method!r}; choose one of {", ".join(METHODS)}')
    name = layer or default_cam_layer(model)
    ((_, target_layer),) = find_layers(model.model, [name], model.label)
    image_hw = (images.shape[-2], images.shape[-1])
    probe_net = model.backbone if name.startswith('backbone.') else model.model
    sub = name[len('backbone.'):] if probe_net is not model.model else name
    layout = resolve_layouts(probe_net, images[:1], [(sub, target_layer)], layout)[sub]

    def reshape(t: torch.Tensor) -> torch.Tensor:
        return to_nchw(t, image_hw, layout, name)

    class_names = model.class_names

    def named(c: int) -> str:
        return class_names[c] if class_names and 0 <= c < len(class_names) else f'class {c}'

    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget
    maps, targets, boxes = [], [], []
    for i in tqdm(range(images.shape[0]), desc=f'{method} {model.label}', unit='img', disable=not progress):
        x = images[i:i + 1]
        box = None
        if model.kind == 'mmdet':
            box, label, score = _det_top_box(model.model, x)
            net: nn.Module = _DetBoxScore(model.model, box)
            cam_targets = [ClassifierOutputTarget(label)]
            what = f'box score: {named(label)} ({score:.2f})'
        elif model.kind == 'mmseg':
            net = _SegLogits(model.model)
            with torch.no_grad():
                pred = net(x)[0].argmax(0)
            cls = target_class if target_class is not None else int(pred.flatten().mode().values)
            mask = (pred == cls).float().cpu().numpy()
            cam_targets = [SemanticSegmentationTarget(cls, mask)]
            what = f'region of {named(cls)} ({mask.mean():.0%} of pixels)'
        else:
            net = model.model
            if target_class is None:
                with torch.no_grad():
                    logits = net(x)
                if logits.ndim != 2:
                    raise AnalysisError(f'{model.label} returns shape {tuple(logits.shape)}, not '
                                        '(B, classes) logits; CAM needs a classifier, detector or segmentor')
                cls = int(logits.argmax(-1))
            else:
                cls = target_class
            cam_targets = [ClassifierOutputTarget(cls)]
            what = f'{named(cls)}' + (' (predicted)' if target_class is None else '')
        with methods[method](model=net, target_layers=[target_layer], reshape_transform=reshape) as cam:
            maps.append(cam(input_tensor=x, targets=cam_targets)[0])
        targets.append(what)
        boxes.append(tuple(float(v) for v in box) if box is not None else None)
    return CamResult(label=model.label, layer=name, method=method, maps=np.stack(maps),
                     targets=targets, boxes=boxes)


def cam_mass_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the CAM's total mass inside ``mask`` (boolean, same size)."""
    total = float(cam.sum())
    return float(cam[mask].sum()) / total if total > 0 else 0.0


def plot_side_by_side(rgb: np.ndarray, results: Sequence[CamResult], path: str,
                      names: Optional[Sequence[str]] = None) -> str:
    """Fig. 5: one row per image; the image, then each model's CAM over it."""
    from .figures import subplots
    from matplotlib.patches import Rectangle
    from pytorch_grad_cam.utils.image import show_cam_on_image
    n, cols = rgb.shape[0], 1 + len(results)
    fig, axes = subplots(n, cols, figsize=(2.4 * cols, 2.4 * n + 0.3), squeeze=False,
                             constrained_layout=True)
    for i in range(n):
        axes[i][0].imshow(rgb[i])
        axes[i][0].set_ylabel(os.path.basename(names[i])[:24] if names else f'image {i}', fontsize=8)
        for j, res in enumerate(results, start=1):
            ax = axes[i][j]
            ax.imshow(show_cam_on_image(rgb[i].astype(np.float32) / 255.0, res.maps[i], use_rgb=True))
            if res.boxes and res.boxes[i] is not None:
                x1, y1, x2, y2 = res.boxes[i]
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec='white', lw=1.2, ls='--'))
            ax.set_xlabel(res.targets[i], fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title('image', fontsize=9)
    for j, res in enumerate(results, start=1):
        axes[0][j].set_title(f'{res.label}\n{res.method} @ {res.layer}', fontsize=8)
    fig.savefig(path, dpi=100)
    # Photos make large true-colour PNGs; a 256-colour adaptive palette is ~3x smaller and
    # looks the same at this size.
    from PIL import Image
    with Image.open(path) as im:
        im.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path
