"""What the benchmark runs: the models of each case kind, their inputs and steps, and the two
built-in runners (``eager``: PyTorch eager in the case's dtype; ``flops``: parameters and
MACs counted instead of timed).

Models (the same deterministic weights, ``torch.manual_seed(0)``, for every implementation):

* ``authors_naive`` / ``authors_sdpa`` — the released iFormer data flow
  (:class:`iformer_mm.analysis.baselines.AuthorsIFormer`) with the materialised
  ``softmax(QK^T * scale) V`` / with ``scaled_dot_product_attention``;
* ``reference`` — our model with ``impl='reference'`` (the modules only, the path GPUs take);
* ``ours`` — ``impl='fast'``: the kernels of :mod:`iformer_mm.ops` wherever they can run, also on
  (device, dtype) pairs where ``impl='auto'`` would not pick them yet;
* ``ours+cp`` / ``ours+cp12`` / ``ours+win14`` / ``ours+compile`` — variants of ``ours``;
* ``swin_t`` — mmdet's Swin-T as its Mask R-CNN config builds it;
* a ``Case.config`` — the backbone that config builds (drop path off, no pretrained weights);
* ``sdpa_only`` — only the attention calls ours makes for that input (kind ``attention``).

Reduced precision runs as the tools run it: training rows under ``torch.autocast`` on fp32
weights (``tools/train.py --amp``); forward rows on CPU with conv/linear weights stored in the
dtype (:func:`iformer_mm.engine.amp.cast_matmul_weights`, ``tools/test.py --amp``), for every
model alike; whole detectors/segmentors through :func:`iformer_mm.engine.amp.autocast_features`.
"""
from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Tuple

from .core import TORCH_DTYPE, Case, Options, Runner, Step, register_runner

__all__ = ['DET_CFG', 'SEG_CFG', 'SWIN_DET_CFG', 'VARIANTS', 'build_mm_model', 'det_sample',
           'iformer_backbone', 'config_backbone', 'seg_sample']

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
DET_CFG = os.path.join(REPO, 'configs', 'detection', 'mask_rcnn_iformer_s_1x.py')
SEG_CFG = os.path.join(REPO, 'configs', 'segmentation', 'fpn_iformer_s_ade20k_80k.py')
SWIN_DET_CFG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

# Variants of ours: gradient checkpointing of every stage / of the two high-resolution stages,
# windowed attention (14 pooled tokens) in stages 1-2, torch.compile (inductor; the warm-up
# run includes compilation).
VARIANTS: Dict[str, Dict[str, Any]] = {
    'ours+cp': dict(with_cp=True),
    'ours+cp12': dict(with_cp=[True, True, False, False]),
    'ours+win14': dict(window_size=[14, 14, None, None]),
    'ours+compile': {},
}


# ============================================================================ models
def iformer_backbone(impl: str) -> Any:
    """iFormer-S backbone of implementation ``impl`` (see the module doc), seeded weights."""
    import torch
    from ...models.backbone import IFormer
    from ..baselines import AuthorsIFormer
    torch.manual_seed(0)
    ours = IFormer('small', drop_path_rate=0.0, out_norm=False,
                   impl='reference' if impl == 'reference' else 'fast', **VARIANTS.get(impl, {}))
    if not impl.startswith('authors_'):
        return ours
    authors = AuthorsIFormer('small', attn=impl[len('authors_'):])
    authors.load_state_dict(ours.state_dict(), strict=True)
    return authors


def config_backbone(config: str) -> Any:
    """The backbone ``config`` builds: no pretrained weights, drop path off, seeded weights."""
    import torch
    from ...build import build_from_config, load_config
    cfg = load_config(config)
    bb = cfg.model.backbone
    if 'drop_path_rate' in bb:
        bb.drop_path_rate = 0.0
    if bb.get('convert_weights'):
        bb.convert_weights = False  # Swin: only meaningful when loading a checkpoint
    torch.manual_seed(0)
    return build_from_config(cfg, part='backbone')[0]


def build_mm_model(cfg_path: str, impl: str, device: str = 'cpu') -> Any:
    """The detector/segmentor of ``cfg_path`` with its backbone as ``impl`` (``naive``: our
    reference modules with the released attention; ``reference``; ``ours``; anything else:
    as configured), no checkpointing or drop path, seeded weights."""
    import torch
    from ...build import build_from_config, load_config
    cfg = load_config(cfg_path)
    bb = cfg.model.backbone
    if bb.get('with_cp'):
        bb.with_cp = False
    if 'drop_path_rate' in bb:
        bb.drop_path_rate = 0.0
    if impl in ('naive', 'reference'):
        bb.impl = 'reference'
        bb.attn_impl = 'naive' if impl == 'naive' else 'sdpa'
    elif impl == 'ours' and 'impl' in bb:
        bb.impl = 'fast'  # the kernels wherever they run (see iformer_backbone)
    torch.manual_seed(0)
    return build_from_config(cfg, revert_sync_bn=True)[0].to(device)


def det_sample(h: int, w: int, seed: int = 0) -> Any:
    """A DetDataSample with 4 boxes and their masks (enough for every loss to be live)."""
    import numpy as np
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    n = 4
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 32
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w - 1.0, h - 1.0]))], 1)
    masks = np.zeros((n, h, w), dtype=np.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                    batch_input_shape=(h, w), scale_factor=(1.0, 1.0), img_id=0))
    s.gt_instances = InstanceData(bboxes=boxes, labels=torch.arange(n) % 80,
                                  masks=BitmapMasks(masks, h, w))
    return s


def seg_sample(h: int, w: int, seed: int = 0) -> Any:
    """A SegDataSample with a random 150-class ADE-style label map."""
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
    s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w), generator=g))
    return s


def case_backbone(case: Case) -> Any:
    """The backbone module of a ``backbone`` case."""
    if case.config:
        return config_backbone(case.config)
    if case.impl == 'swin_t':
        return config_backbone(SWIN_DET_CFG)
    return iformer_backbone(case.impl)


def n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# ============================================================================ steps
def autocast(device: str, dtype: str) -> Any:
    """``torch.autocast`` for bf16/fp16 (the fp32 weights stay fp32), nothing for fp32."""
    import torch
    if dtype == 'fp32':
        return nullcontext()
    return torch.autocast(device, getattr(torch, TORCH_DTYPE[dtype]))


def amp_optim_wrapper(optimizer: Any, device: str, dtype: str) -> Any:
    """The optimizer wrapper ``tools/train.py --amp`` gives a training step in ``dtype``:
    mmengine's ``AmpOptimWrapper`` on CUDA; on CPU the plain one (the features are autocast
    instead, :func:`iformer_mm.engine.amp.autocast_features`)."""
    from mmengine.optim import OptimWrapper
    if dtype != 'fp32' and device == 'cuda':
        from mmengine.optim import AmpOptimWrapper
        return AmpOptimWrapper(optimizer=optimizer, dtype=TORCH_DTYPE[dtype])
    return OptimWrapper(optimizer)


def matmul_step(case: Case) -> Step:
    """A plain 4096² GEMM in the case's dtype (fp32: 137 GFLOP): the machine's reference rate."""
    import torch
    n = 4096
    tdt = torch.float32 if case.dtype == 'fp32' else getattr(torch, TORCH_DTYPE[case.dtype])
    a, b = (torch.randn(n, n).to(case.device, tdt) for _ in range(2))
    return Step(lambda: a @ b, info=dict(matmul_flop=2 * n ** 3), countable=False)


def attention_step(case: Case) -> Step:
    """Just the attention calls ours makes on the case's input (shapes recorded from one
    forward), with backward in ``fwdbwd``; ``attn_flops``: forward 2 matmuls, backward 5 (the
    kernel recomputes QK^T)."""
    import torch
    import torch.nn.functional as F
    train = case.mode == 'fwdbwd'
    dtype = None if case.dtype == 'fp32' else getattr(torch, TORCH_DTYPE[case.dtype])
    shapes: List[Tuple[int, ...]] = []
    sdpa = F.scaled_dot_product_attention

    def record(q: Any, *args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(q.shape))
        return sdpa(q, *args, **kwargs)
    model = iformer_backbone('ours').eval()
    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad():
            model(torch.zeros(case.batch, 3, *case.shape))
    finally:
        F.scaled_dot_product_attention = sdpa
    del model
    g = torch.Generator().manual_seed(0)
    qkv = [[torch.randn(s, generator=g).to(dtype).requires_grad_(train) for _ in range(3)] for s in shapes]

    def fn() -> Any:
        for q, k, v in qkv:
            if train:
                sdpa(q, k, v).sum().backward()
            else:
                with torch.no_grad():
                    sdpa(q, k, v)
    fwd = sum(2 * 2 * s[0] * s[1] * s[2] * s[2] * s[3] for s in shapes)  # QK^T and PV
    return Step(fn, info=dict(attn_flops=int(fwd * (3.5 if train else 1))))


def backbone_step(case: Case) -> Step:
    import torch
    model = case_backbone(case).to(case.device)
    info: Dict[str, Any] = dict(params=n_params(model), model_type=type(model).__name__)
    call = torch.compile(model) if case.impl.endswith('+compile') else model
    x = torch.randn(case.batch, 3, *case.shape).to(case.device)
    amp = lambda: autocast(case.device, case.dtype)  # noqa: E731  (a fresh context per call)
    if case.mode == 'fwd':
        model.eval()
        if case.dtype != 'fp32' and case.device == 'cpu':  # as tools/test.py --amp infers
            from ...engine.amp import cast_matmul_weights
            info['weights'] = case.dtype if cast_matmul_weights(model, case.dtype) else 'fp32'

        def fn() -> Any:
            with torch.no_grad(), amp():
                return call(x)
    else:
        model.train()

        def fn() -> Any:
            with amp():
                out = call(x)
            sum(o.float().sum() for o in out).backward()
            model.zero_grad(set_to_none=True)
    return Step(fn, info=info, countable=not case.impl.endswith('+compile'))


def mm_model_step(case: Case) -> Step:
    """A Mask R-CNN (``maskrcnn``) or Semantic FPN (``semfpn``) forward, forward+backward of the
    losses, or (``step``) a whole training step with AdamW."""
    import torch
    det = case.kind == 'maskrcnn'
    cfg = (SWIN_DET_CFG if case.impl == 'swin_t' else DET_CFG) if det else SEG_CFG
    model = build_mm_model(cfg, case.impl, case.device)
    h, w = case.shape
    info: Dict[str, Any] = {}
    amp = lambda: autocast(case.device, case.dtype)  # noqa: E731
    if case.dtype != 'fp32' and not (case.mode == 'step' and case.device == 'cuda'):
        # what tools/train.py / tools/test.py --amp do: backbone + neck in the dtype, heads in
        # fp32 (mmcv's CPU nms takes fp32 only); amp() is then a no-op for this model
        from ...engine.amp import autocast_features
        autocast_features(model, case.dtype, case.device, inference=case.mode == 'fwd')
        amp = lambda: nullcontext()  # noqa: E731
    if case.mode == 'step':
        model.train()
        optim = amp_optim_wrapper(torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05),
                                  case.device, case.dtype)
        img = torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
        data = dict(inputs=[img], data_samples=[det_sample(h, w)])
        info['padded_shape'] = list(model.data_preprocessor(
            dict(inputs=[img], data_samples=[det_sample(h, w)]), True)['inputs'].shape[-2:])
        return Step(lambda: model.train_step(data, optim), info=info)
    inputs = torch.randn(case.batch, 3, h, w).to(case.device)
    make = det_sample if det else seg_sample
    samples = [make(h, w, i).to(case.device) for i in range(case.batch)]
    if case.mode == 'fwdbwd':
        model.train()

        def fn() -> Any:
            with amp():
                losses = model(inputs, samples, mode='loss')
            loss, _ = model.parse_losses(losses)
            loss.backward()
            model.zero_grad(set_to_none=True)
    else:
        model.eval()

        def fn() -> Any:
            with torch.no_grad(), amp():
                return model(inputs, [s.clone() for s in samples], mode='predict')
    return Step(fn, info=info)


#: case kind -> the function preparing its step for the eager runner.
WORKLOADS: Dict[str, Callable[[Case], Step]] = {
    'matmul': matmul_step, 'attention': attention_step, 'backbone': backbone_step,
    'maskrcnn': mm_model_step, 'semfpn': mm_model_step,
}


# ============================================================================ runners
@register_runner('eager')
class EagerRunner(Runner):
    """PyTorch eager (``ours+compile``: ``torch.compile``), autocast/bf16 weights as the tools do."""

    def prepare(self, case: Case) -> Step:
        if case.kind not in WORKLOADS:
            raise ValueError(f'unknown case kind {case.kind!r}; known: {sorted(WORKLOADS)}')
        return WORKLOADS[case.kind](case)

    def measure(self, case: Case, opts: Options) -> Dict[str, Any]:
        if case.kind != 'matmul':
            return super().measure(case, opts)
        # the fastest of >= 5 runs is the best this machine did: the reference for "% of matmul"
        res = super().measure(case, Options(**{**opts.__dict__, 'repeats': max(opts.repeats, 5)}))
        flop = res.pop('matmul_flop')
        res.update(gflops=flop / min(res['times']) / 1e9, gflops_median=flop / res['median_s'] / 1e9)
        return res


@register_runner('flops')
class FlopsRunner(Runner):
    """Not timed: parameters and forward MACs of one image, the papers' way and with attention
    (:mod:`iformer_mm.analysis.flops`); ``flops`` is the full count times the batch."""

    def measure(self, case: Case, opts: Options) -> Dict[str, Any]:
        from ..flops import count_backbone
        res: Dict[str, Any] = dict(case.to_dict(), params=None, flops=None)
        model = case_backbone(case)
        try:
            counts = count_backbone(model, case.shape)
        except Exception as e:  # noqa: BLE001  (a row without FLOPs; the timings stay valid)
            print(f'[benchmark] FLOP count failed: {e}', file=sys.stderr)
            return dict(res, params=n_params(model))
        res.update(counts, flops=counts['full_flops'] * case.batch)
        return res
