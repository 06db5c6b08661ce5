"""Parameters and FLOPs of a model (iFormer or any mmdet/mmseg/timm model), counted two ways.

The logic of ``tools/analysis/get_flops.py`` (a thin command-line wrapper).

``paper``  — module hooks with the rules of mmcv 1.x ``get_flops`` (what the 2022 papers,
             iFormer's included, quote): convolutions, linears, norms, pools, upsampling and
             ReLUs are counted from module inputs/outputs; the attention products
             ``q @ k^T`` and ``attn @ v`` are functional, so they are *not* counted.
             A detector runs mmdet 2.x's ``forward_dummy`` (RPN on every level, 1000 boxes
             through the box head, the first 100 through the mask head); a segmentor runs
             the decode head only (no auxiliary head), as mmseg 0.x did.
``full``   — mmengine's ``FlopAnalyzer`` (fvcore rules: matmul/conv/linear MACs, norms,
             upsampling) on the same forward, with a handler for
             ``scaled_dot_product_attention``: the true cost including attention.

Both are multiply-accumulates ("FLOPs" as the papers use the word).

Usage::

    python tools/analysis/get_flops.py configs/detection/mask_rcnn_iformer_s_1x.py --shape 1280 800
    python tools/analysis/get_flops.py configs/segmentation/upernet_iformer_s_ade20k_160k.py --shape 2048 512
    python tools/analysis/get_flops.py iformer_small            # timm classifier, 224x224
    python tools/analysis/get_flops.py iformer_small --backbone-only --shape 1280 800

``--shape H W`` follows the mm tools: ``--shape 1280 800`` is a 1280-high, 800-wide input
(every count here is symmetric in H and W).
"""
from __future__ import annotations

import argparse
import json
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn



# ----------------------------------------------------------------------------- paper rules
def _numel(t: torch.Tensor) -> int:
    return int(t.numel())


def _conv(m: nn.Conv2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    k = m.kernel_size[0] * m.kernel_size[1]
    per_position = k * m.in_channels * (m.out_channels // m.groups)
    positions = out.shape[0] * out.shape[2] * out.shape[3]
    return per_position * positions + (m.out_channels * positions if m.bias is not None else 0)


def _deconv(m: nn.ConvTranspose2d, inp: torch.Tensor, out: torch.Tensor) -> int:
    k = m.kernel_size[0] * m.kernel_size[1]
    per_position = k * m.in_channels * (m.out_channels // m.groups)
    flops = per_position * inp.shape[0] * inp.shape[2] * inp.shape[3]
    if m.bias is not None:
        flops += m.out_channels * out.shape[0] * out.shape[2] * out.shape[3]
    return flops


def _linear(m: nn.Linear, inp: torch.Tensor, out: torch.Tensor) -> int:
    # mmcv 1.x adds the bias once per output feature, not once per token.
    return _numel(inp) * out.shape[-1] + (out.shape[-1] if m.bias is not None else 0)


def _norm(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    affine = getattr(m, 'affine', False) or getattr(m, 'elementwise_affine', False)
    return _numel(inp) * (2 if affine else 1)


def _upsample(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> int:
    return _numel(out[0])  # mmcv 1.x counts one sample's output elements


# Exact module types, as mmcv 1.x matched them (type(m) in mapping): SyncBatchNorm and
# functional ops (F.relu, F.interpolate, F.max_pool2d) are not counted.
PAPER_RULES: Dict[type, Callable[[nn.Module, torch.Tensor, torch.Tensor], int]] = {
    nn.Conv1d: _conv, nn.Conv2d: _conv, nn.ConvTranspose2d: _deconv, nn.Linear: _linear,
    nn.BatchNorm1d: _norm, nn.BatchNorm2d: _norm, nn.GroupNorm: _norm, nn.LayerNorm: _norm,
    nn.InstanceNorm2d: _norm,
    nn.ReLU: lambda m, i, o: _numel(o), nn.ReLU6: lambda m, i, o: _numel(o),
    nn.LeakyReLU: lambda m, i, o: _numel(o), nn.PReLU: lambda m, i, o: _numel(o),
    nn.ELU: lambda m, i, o: _numel(o),
    nn.MaxPool2d: lambda m, i, o: _numel(i), nn.AvgPool2d: lambda m, i, o: _numel(i),
    nn.AdaptiveAvgPool2d: lambda m, i, o: _numel(i), nn.AdaptiveMaxPool2d: lambda m, i, o: _numel(i),
    nn.Upsample: _upsample,
}
try:  # mmcv's wrapper layers were listed by type in mmcv 1.x too (the mask head's deconv is one)
    from mmcv.cnn.bricks import wrappers as _w
    PAPER_RULES.update({_w.Conv2d: _conv, _w.ConvTranspose2d: _deconv, _w.Linear: _linear,
                        _w.MaxPool2d: lambda m, i, o: _numel(i)})
except ImportError:  # pragma: no cover - mmcv is part of the supported stack
    pass


def count_paper(model: nn.Module, run: Callable[[], Any]) -> int:
    """MACs counted as mmcv 1.x ``get_flops`` did: module hooks, attention products excluded."""
    total = [0]
    rules = PAPER_RULES
    handles = []
    for m in model.modules():
        rule = rules.get(type(m))
        if rule is None:
            continue

        def hook(mod: nn.Module, args: tuple, out: Any, rule: Callable = rule) -> None:
            if args and isinstance(args[0], torch.Tensor):
                o = out[0] if isinstance(out, (tuple, list)) else out
                total[0] += int(rule(mod, args[0], o))

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():  # hooks send iFormer to its reference modules (iformer_mm.ops.dispatch)
            run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


# ----------------------------------------------------------------------------- full count
def _sdpa_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of softmax(q k^T) v: 2 * B * heads * Nq * Nk * d."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(inputs[i]) for i in range(3))
    lead = 1
    for s in q[:-2]:
        lead *= s
    return lead * q[-2] * k[-2] * (q[-1] + v[-1])


def count_full(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Tuple[int, Dict[str, int]]:
    """fvcore-rule MACs (mmengine ``FlopAnalyzer``) with the attention products included.

    Returns:
        (total, per-operator totals).
    """
    from mmengine.analysis import FlopAnalyzer
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with torch.no_grad():  # jit tracing runs iFormer's reference modules
            fa = FlopAnalyzer(module, inputs)
            fa.set_op_handle('aten::scaled_dot_product_attention', _sdpa_handle)
            fa.unsupported_ops_warnings(False)
            fa.uncalled_modules_warnings(False)
            fa.tracer_warnings('none')
            return int(fa.total()), {k: int(v) for k, v in fa.by_operator().items()}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- models
class DetDummy(nn.Module):
    """mmdet 2.x ``forward_dummy`` of a two-stage detector, on mmdet 3.x modules.

    Backbone + neck + RPN head on every level, then ``num_boxes`` fixed boxes through the
    box head and the first 100 through the mask head (mmdet 2.x used random boxes; the
    count only depends on their number).
    """

    def __init__(self, detector: nn.Module, num_boxes: int = 1000) -> None:
        super().__init__()
        self.detector = detector
        self.num_boxes = num_boxes

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        det = self.detector
        x = det.extract_feat(img)
        outs: List[torch.Tensor] = []
        if getattr(det, 'with_rpn', False):
            cls, reg = det.rpn_head(x)
            outs += list(cls) + list(reg)
        roi_head = getattr(det, 'roi_head', None)
        if roi_head is None:
            return tuple(outs) or tuple(x)
        H, W = img.shape[-2:]
        g = torch.Generator().manual_seed(0)
        xy = torch.rand(self.num_boxes, 2, generator=g) * torch.tensor([W * 0.5, H * 0.5])
        wh = torch.rand(self.num_boxes, 2, generator=g) * torch.tensor([W * 0.5, H * 0.5]) + 8
        rois = torch.cat([torch.zeros(self.num_boxes, 1), xy, xy + wh], dim=1).to(img)
        if getattr(roi_head, 'with_bbox', False):
            res = roi_head._bbox_forward(x, rois)
            outs += [res['cls_score'], res['bbox_pred']]
        if getattr(roi_head, 'with_mask', False):
            outs.append(roi_head._mask_forward(x, rois[:100])['mask_preds'])
        return tuple(outs)


class SegDummy(nn.Module):
    """mmseg ``forward_dummy``: backbone (+ neck) + decode head; no auxiliary head."""

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.segmentor.decode_head(self.segmentor.extract_feat(img))


class BackboneOnly(nn.Module):
    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, img: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.backbone(img)
        if isinstance(out, torch.Tensor):
            return (out,)
        return tuple(out)


def build_classifier(name: str) -> nn.Module:
    import iformer_mm  # noqa: F401  (registers the timm models)
    import timm
    return timm.create_model(name, pretrained=False).eval()


def analyse(target: str, shape: Optional[Sequence[int]] = None, backbone_only: bool = False,
            sync_bn_to_bn: bool = False) -> Dict[str, Any]:
    """Count parameters and both FLOPs figures for a config path or timm model name.

    Args:
        target: mm config file or ``mmdet::``/``mmseg::`` name, or a timm model name (``iformer_small`` ...).
        shape: ``(H, W)``; default 1280x800 for detectors, 2048x512 for segmentors, the
            model's own size for classifiers.
        backbone_only: count the backbone alone.
        sync_bn_to_bn: convert SyncBN to BN before counting. mmcv 1.x did not count
            SyncBN layers (exact-type matching), so the default keeps them, as the paper.
    """
    if target.endswith('.py') or os.path.sep in target or '::' in target:
        from ..build import build_from_config
        model, kind = build_from_config(target, revert_sync_bn=sync_bn_to_bn)
        default = (1280, 800) if kind == 'det' else (2048, 512)
    else:
        model, kind = build_classifier(target), 'cls'
        default = tuple(getattr(model, 'img_size', (224, 224)))
    H, W = tuple(shape) if shape else default
    params_all = count_params(model)
    if backbone_only:
        base = model.backbone if kind != 'cls' else model
        wrapped: nn.Module = BackboneOnly(base)
        params = count_params(base)
    elif kind == 'det':
        wrapped, params = DetDummy(model), params_all
    elif kind == 'seg':
        wrapped, params = SegDummy(model), params_all
    else:
        wrapped, params = model, params_all
    counts = _count(wrapped, (H, W))
    return dict(target=target, kind=kind, backbone_only=backbone_only, shape=[H, W],
                params=params, **counts)


def _count(wrapped: nn.Module, shape: Sequence[int]) -> Dict[str, Any]:
    """Both counts of one ``1 x 3 x H x W`` forward of ``wrapped``."""
    wrapped.eval()  # (some mm backbones' train() returns None: never chain it)
    img = torch.randn(1, 3, *shape)
    paper = count_paper(wrapped, lambda: wrapped(img))
    full, by_op = count_full(wrapped, (img,))
    return dict(paper_flops=paper, full_flops=full, attention_flops=by_op.get('scaled_dot_product_attention', 0),
                full_by_operator=by_op)


def count_backbone(backbone: nn.Module, shape: Sequence[int]) -> Dict[str, Any]:
    """Parameters and both counts of a backbone alone on one ``1 x 3 x H x W`` image
    (what ``analyse(..., backbone_only=True)`` reports for a config's backbone)."""
    return dict(params=count_params(backbone), **_count(BackboneOnly(backbone), shape))


def _fmt(n: float, unit: float, suffix: str) -> str:
    return f'{n / unit:.2f} {suffix}'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('target', help='mmdet/mmseg config file, or a timm model name (iformer_small)')
    parser.add_argument('--shape', type=int, nargs='+', default=None,
                        help='input H W (one number: square). Default: 1280 800 detection, '
                             '2048 512 segmentation, the model size for classifiers')
    parser.add_argument('--backbone-only', action='store_true', help='count the backbone alone')
    parser.add_argument('--sync-bn-to-bn', action='store_true',
                        help='count SyncBN layers as BN (mmcv 1.x skipped them)')
    parser.add_argument('--json', action='store_true', help='print one JSON object')
    args = parser.parse_args(argv)
    if args.shape is not None and len(args.shape) not in (1, 2):
        parser.error('--shape takes H W or a single size')
    shape = None if args.shape is None else (args.shape * 2 if len(args.shape) == 1 else args.shape)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    res = analyse(args.target, shape, args.backbone_only, args.sync_bn_to_bn)
    if args.json:
        print(json.dumps(res))
        return 0
    H, W = res['shape']
    line = '=' * 66
    print(line)
    print(f"{res['target']}  ({'backbone' if args.backbone_only else res['kind']}, input 1x3x{H}x{W})")
    print(f"Params:                                   {_fmt(res['params'], 1e6, 'M')}")
    print(f"FLOPs, paper's way (mmcv 1.x hooks, no attention products): "
          f"{_fmt(res['paper_flops'], 1e9, 'G')}")
    print(f"FLOPs, with attention products (fvcore/mmengine rules):      "
          f"{_fmt(res['full_flops'], 1e9, 'G')}")
    print(f"   of which q@k^T and attn@v:                                "
          f"{_fmt(res['attention_flops'], 1e9, 'G')}")
    print('FLOPs here are multiply-accumulates, as in the papers.')
    print(line)
    return 0


