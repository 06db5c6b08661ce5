"""Speed, memory and ATen-op count of iFormer against the authors' data flow and mmdet's Swin-T.

Every configuration runs in a fresh subprocess (so peak RSS of one never leaks into
another), on the same deterministic weights for all iFormer implementations:

* ``authors_naive`` — the released code's data flow and attention, ``softmax((QK^T) * scale) V``
  materialised (:class:`iformer_mm.analysis.baselines.AuthorsIFormer`, rebuilt op for op);
* ``authors_sdpa`` — the same data flow with ``scaled_dot_product_attention`` swapped in: the
  baseline of every ``/base`` ratio (what "just call the fused kernel" gives);
* ``reference`` — our model with ``impl='reference'``: the modules only, the path GPUs take;
* ``ours`` — ``impl='fast'``: the kernels of :mod:`iformer_mm.ops` wherever they can run (see below);
* ``swin_t`` — mmdet's Swin-T (same FLOPs class as iFormer-S), the peer;
* ``sdpa_only`` — only the attention calls ours makes for that input (same shapes, fused
  kernel, forward and backward): the floor any exact implementation on PyTorch's kernel pays.

Whole Mask R-CNN / Semantic FPN models compare ``naive`` (our reference modules with the
released attention), ``reference``, ``ours`` and Swin-T.

Measured: forward (eval, no grad) and forward+backward (train mode, sum of outputs)
median wall time after one warm-up, peak RSS of the process, achieved GFLOP/s (MACs
counted with attention, fvcore rules; x2 for FLOPs; backward taken as 2x forward) next to
a plain large fp32 matmul on the same threads; whole Mask R-CNN / Semantic FPN models; and
s/iter of a full training step (forward, backward, AdamW step) for Mask R-CNN iFormer-S
and mmdet's Swin-T Mask R-CNN at 800x1333, batch 1.

Devices and precisions: ``--device cpu|cuda`` and ``--dtype fp32 [bf16 fp16]`` (several
dtypes run side by side, fp16 only on CUDA; a ``t/fp32`` column compares each row with the
same row in fp32). Reduced precision runs under ``torch.autocast``: training rows (fwd+bwd,
train step) on fp32 weights, as ``tools/train.py --amp`` trains; forward rows as
``tools/test.py --amp`` infers: on CPU with conv/linear weights stored in the dtype
(:func:`iformer_mm.engine.amp.cast_matmul_weights`), for every model alike, baselines included.
``--threads 1 2`` runs every case with each thread count, side by side.
``--breakdown`` profiles one more run per case: the share of attention, convolutions, GEMMs,
copies and the rest, and for fp32 rows the most bf16 could gain on this machine
(:func:`bf16_ceiling`, Amdahl with the measured matmul and attention-kernel speed-ups). ``ours`` is
built with ``impl='fast'``: the kernels of :mod:`iformer_mm.ops` run wherever they are
structurally allowed, also on (device, dtype) pairs where ``impl='auto'`` would not pick them
yet, so the benchmark is what decides :data:`iformer_mm.ops.dispatch.MEASURED_WINS`.
On CUDA the cases are those a GPU needs (backbone 800x1344 batch 2, 224 inference batch 64,
the Mask R-CNN train step at 800x1333), timed with CUDA events, and the memory column is
``torch.cuda.max_memory_allocated`` (reset per case) instead of the process's peak RSS.

Usage::

    python tools/analysis/benchmark.py                 # everything (~55 min idle, 1 thread)
    python tools/analysis/benchmark.py --dtype fp32 bf16 --only backbone_224/fwd/ours
    python tools/analysis/benchmark.py --device cuda --dtype fp32 bf16 fp16   # on a GPU
    python tools/analysis/benchmark.py --quick         # small shapes, ~2 min: a smoke test
    python tools/analysis/benchmark.py --only backbone_800x1344 --json out.json
    python tools/analysis/benchmark.py --variants --only ours+   # with_cp / windowed / compile

Threads: ``--threads`` (default 1: reproducible on a shared machine; use the number of
physical cores on an idle one, or several counts side by side: ``--threads 1 2``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DET_CFG = os.path.join(REPO, 'configs', 'detection', 'mask_rcnn_iformer_s_1x.py')
SEG_CFG = os.path.join(REPO, 'configs', 'segmentation', 'fpn_iformer_s_ade20k_80k.py')
SWIN_DET_CFG = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
SWIN_T = dict(embed_dims=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
              mlp_ratio=4, qkv_bias=True, drop_path_rate=0.2, patch_norm=True,
              out_indices=(0, 1, 2, 3), convert_weights=False)


DEVICES = ('cpu', 'cuda')
DTYPES = ('fp32', 'bf16', 'fp16')
_TORCH_DTYPE = {'bf16': 'bfloat16', 'fp16': 'float16'}


# ============================================================================ the cases
def plan(quick: bool, variants: bool = False, device: str = 'cpu',
         dtypes: Sequence[str] = ('fp32',), threads: Sequence[int] = (1,)) -> List[Dict[str, Any]]:
    """Every measured configuration, in run order (acceptance cases first).

    Each timed case is repeated for every entry of ``dtypes`` and of ``threads`` (FLOP counts
    once); every case carries its ``device``, ``dtype`` and ``threads``.
    """
    if device == 'cuda':
        cases = _plan_cuda(quick)
    else:
        cases = _plan_cpu(quick, variants)
    out: List[Dict[str, Any]] = []
    for n in threads:
        for c in cases:
            if c['kind'] == 'flops':
                if n == threads[0]:
                    out.append(dict(c, device=device, dtype='fp32', threads=n))
                continue
            for dt in dtypes:
                name = f'matmul_{dt}' if c['kind'] == 'matmul' else c['name']
                out.append(dict(c, name=name, device=device, dtype=dt, threads=n))
    return out


def _plan_cuda(quick: bool) -> List[Dict[str, Any]]:
    """The GPU table: backbone 800x1344 batch 2 (fwd+bwd and fwd), 224 inference batch 64,
    and the Mask R-CNN training step, against the same baselines as on CPU."""
    if quick:
        bb = [('backbone_256x384_b2', 256, 384, 2, ('fwdbwd', 'fwd')), ('backbone_224_b8', 224, 224, 8, ('fwd',))]
        step_shape = (256, 384)
    else:
        bb = [('backbone_800x1344_b2', 800, 1344, 2, ('fwdbwd', 'fwd')),
              ('backbone_224_b64', 224, 224, 64, ('fwd',))]
        step_shape = (800, 1333)
    cases: List[Dict[str, Any]] = [dict(kind='matmul', name='matmul', impl='-', mode='fwd')]
    for name, h, w, b, modes in bb:
        for impl in ('ours', 'swin_t'):
            cases.append(dict(kind='flops', name=name, impl=impl, mode='count', shape=[h, w], batch=b))
        for mode in modes:
            for impl in BACKBONE_IMPLS:
                cases.append(dict(kind='backbone', name=name, impl=impl, mode=mode, shape=[h, w], batch=b))
    for impl in ('reference', 'ours', 'swin_t'):
        cases.append(dict(kind='maskrcnn', name='maskrcnn_train_step_%dx%d' % step_shape, impl=impl,
                          mode='step', shape=list(step_shape), batch=1))
    return cases


def _plan_cpu(quick: bool, variants: bool) -> List[Dict[str, Any]]:
    if quick:
        bb = [('backbone_224', 224, 224, 4), ('backbone_256x384', 256, 384, 1)]
        det_shape, seg_shape, step_shape = (256, 384), (256, 256), (256, 384)
    else:
        bb = [('backbone_800x1344', 800, 1344, 1), ('backbone_224', 224, 224, 32),
              ('backbone_224_b8', 224, 224, 8), ('backbone_512', 512, 512, 2)]
        det_shape, seg_shape, step_shape = (800, 1344), (512, 512), (800, 1333)
    cases: List[Dict[str, Any]] = [dict(kind='matmul', name='matmul', impl='-', mode='fwd')]
    for name, h, w, b in bb:
        # FLOPs in their own processes: tracing must not inflate a timed case's peak RSS.
        for impl in ('ours', 'swin_t'):
            cases.append(dict(kind='flops', name=name, impl=impl, mode='count', shape=[h, w], batch=b))
        for mode in ('fwdbwd', 'fwd'):
            for impl in BACKBONE_IMPLS:
                cases.append(dict(kind='backbone', name=name, impl=impl, mode=mode, shape=[h, w],
                                  batch=b))
            cases.append(dict(kind='attention', name=name, impl='sdpa_only', mode=mode, shape=[h, w],
                              batch=b))
    if variants:
        name, h, w, b = bb[0]
        for impl in VARIANTS:
            for mode in (('fwdbwd',) if '+cp' in impl else ('fwdbwd', 'fwd')):  # cp acts in training only
                cases.append(dict(kind='backbone', name=name, impl=impl, mode=mode, shape=[h, w],
                                  batch=b))
    for mode in ('fwd', 'fwdbwd'):
        for impl in ('naive', 'reference', 'ours', 'swin_t'):
            cases.append(dict(kind='maskrcnn', name='maskrcnn_%dx%d' % det_shape, impl=impl,
                              mode=mode, shape=list(det_shape), batch=1))
        for impl in ('naive', 'reference', 'ours'):
            cases.append(dict(kind='semfpn', name='semfpn_%dx%d' % seg_shape, impl=impl, mode=mode,
                              shape=list(seg_shape), batch=2))
    for impl in ('ours', 'swin_t'):
        cases.append(dict(kind='maskrcnn', name='maskrcnn_train_step_%dx%d' % step_shape, impl=impl,
                          mode='step', shape=list(step_shape), batch=1))
    return cases


def case_id(c: Dict[str, Any]) -> str:
    """``name/mode/impl``, with ``@dtype`` for every dtype but fp32 and ``#Nt`` for N > 1 threads."""
    dt, n = c.get('dtype', 'fp32'), c.get('threads', 1)
    return (f"{c['name']}/{c['mode']}/{c['impl']}" + ('' if dt == 'fp32' else f'@{dt}')
            + ('' if n == 1 else f'#{n}t'))


# ============================================================================ worker side
def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux


def _current_rss_gb() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e9


BACKBONE_IMPLS = ('authors_naive', 'authors_sdpa', 'reference', 'ours', 'swin_t')
# Variants of ours (``--variants``): gradient checkpointing of every stage / of the two
# high-resolution stages, windowed attention (14 pooled tokens) in stages 1-2, and
# torch.compile with the default (inductor) backend.
VARIANTS = {
    'ours+cp': dict(with_cp=True),
    'ours+cp12': dict(with_cp=[True, True, False, False]),
    'ours+win14': dict(window_size=[14, 14, None, None]),
    'ours+compile': {},  # torch.compile (inductor); the warm-up run includes compilation
}


def _iformer_backbone(impl: str) -> Any:
    """iFormer-S backbone of the given implementation, on the same deterministic weights.

    ``ours`` is built with ``impl='fast'``: the kernels run on any device and dtype (that
    is what this tool measures before a pair joins ``MEASURED_WINS``).
    """
    import torch
    from iformer_mm.analysis.baselines import AuthorsIFormer
    from iformer_mm.models.backbone import IFormer
    torch.manual_seed(0)
    ours = IFormer('small', drop_path_rate=0.0, out_norm=False,
                   impl='reference' if impl == 'reference' else 'fast', **VARIANTS.get(impl, {}))
    if not impl.startswith('authors_'):
        return ours
    authors = AuthorsIFormer('small', attn=impl[len('authors_'):])
    authors.load_state_dict(ours.state_dict(), strict=True)
    return authors


def _swin_backbone() -> Any:
    import torch
    from mmdet.models.backbones import SwinTransformer
    torch.manual_seed(0)
    return SwinTransformer(**{**SWIN_T, 'drop_path_rate': 0.0})


def _build_mm(cfg_path: str, impl: str, scope: str, device: str = 'cpu') -> Any:
    import torch
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    if cfg_path.startswith(('mmdet::', 'mmseg::')):
        from mmengine.hub import get_config
        cfg = get_config(cfg_path)
    else:
        cfg = Config.fromfile(cfg_path)
    bb = cfg.model.backbone
    bb.init_cfg = None
    if bb.get('with_cp'):
        bb.with_cp = False
    if 'drop_path_rate' in bb:
        bb.drop_path_rate = 0.0
    if impl in ('naive', 'reference'):
        bb.impl = 'reference'
        bb.attn_impl = 'naive' if impl == 'naive' else 'sdpa'
    elif impl == 'ours' and 'impl' in bb:
        bb.impl = 'fast'  # the kernels wherever they run (see _iformer_backbone)
    if cfg.model.get('pretrained'):
        cfg.model.pretrained = None
    init_default_scope(scope)
    if scope == 'mmdet':
        import mmdet.models  # noqa: F401
        from mmdet.registry import MODELS
    else:
        import mmseg.models  # noqa: F401
        from mmseg.registry import MODELS
    import iformer_mm  # noqa: F401
    torch.manual_seed(0)
    return revert_sync_batchnorm(MODELS.build(cfg.model)).to(device)


def _det_sample(h: int, w: int, seed: int = 0) -> Any:
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


def _seg_sample(h: int, w: int, seed: int = 0) -> Any:
    import torch
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    g = torch.Generator().manual_seed(seed)
    s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
    s.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w), generator=g))
    return s


def _attention_only(batch: int, h: int, w: int, train: bool,
                    dtype: Any = None) -> Tuple[Callable[[], Any], int]:
    """A callable running just the attention calls ours makes on a ``batch x 3 x h x w``
    input (shapes recorded from one forward), with backward when ``train``; and the
    matmul FLOPs it does (forward 2 matmuls; backward 5, as the kernel recomputes QK^T)."""
    import torch
    import torch.nn.functional as F
    shapes: List[Tuple[int, ...]] = []
    sdpa = F.scaled_dot_product_attention

    def record(q: Any, *args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(q.shape))
        return sdpa(q, *args, **kwargs)
    model = _iformer_backbone('ours').eval()
    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad():
            model(torch.zeros(batch, 3, h, w))
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
    return fn, int(fwd * (3.5 if train else 1))


def _flops(module: Any, inputs: Tuple[Any, ...]) -> Optional[int]:
    """Forward MACs with attention (fvcore rules), or None if the model cannot be traced."""
    try:
        from iformer_mm.analysis.flops import count_full
        return count_full(module, inputs)[0]
    except Exception as e:  # the timing is still valid without a FLOP figure
        print(f'[benchmark] FLOP count failed: {e}', file=sys.stderr)
        return None


def _timer(device: str, clock: str = 'wall') -> Callable[[Callable[[], Any]], float]:
    """Seconds one call takes: on CPU the wall clock, or with ``clock='cpu'`` the process's CPU
    time (with 1 thread, what the run costs whatever else shares the machine); CUDA events
    around it on a GPU (the kernels run asynchronously, so wall time would measure the launch only)."""
    if device != 'cuda':
        now = time.process_time if clock == 'cpu' else time.perf_counter

        def cpu(fn: Callable[[], Any]) -> float:
            t0 = now()
            fn()
            return now() - t0
        return cpu
    import torch

    def cuda(fn: Callable[[], Any]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    return cuda


def _time(fn: Callable[[], Any], repeats: int, budget: float,
          device: str = 'cpu', clock: str = 'wall') -> Tuple[List[float], float]:
    """One warm-up, then up to ``repeats`` timed runs within ``budget`` seconds (>= 1)."""
    timed = _timer(device, clock)
    warm = timed(fn)
    n = max(1, min(repeats, int(budget // max(warm, 1e-6))))
    return [timed(fn) for _ in range(n)], warm


def _autocast(device: str, dtype: str) -> Any:
    """``torch.autocast`` for bf16/fp16 (the fp32 weights stay fp32), nothing for fp32."""
    import torch
    if dtype == 'fp32':
        return nullcontext()
    return torch.autocast(device, getattr(torch, _TORCH_DTYPE[dtype]))


def _amp_optim_wrapper(optimizer: Any, device: str, dtype: str) -> Any:
    """The optimizer wrapper ``tools/train.py --amp`` gives a training step in ``dtype``:
    mmengine's ``AmpOptimWrapper`` on CUDA; on CPU the plain one (the model's features are
    autocast instead, :func:`iformer_mm.engine.amp.autocast_features`)."""
    from mmengine.optim import OptimWrapper
    if dtype != 'fp32' and device == 'cuda':
        from mmengine.optim import AmpOptimWrapper
        return AmpOptimWrapper(optimizer=optimizer, dtype=_TORCH_DTYPE[dtype])
    return OptimWrapper(optimizer)


# Where a step's CPU time goes (``--breakdown``): ATen ops by self time, in these groups.
_OP_GROUPS = (('attention', ('attention',)), ('conv', ('conv',)),
              ('gemm', ('addmm', 'aten::mm', 'bmm', 'matmul', 'linear')),
              ('copy', ('copy_', '_to_copy', 'clone', 'contiguous', 'cat')))
BREAKDOWN = tuple(g for g, _ in _OP_GROUPS) + ('other',)


def op_breakdown(fn: Callable[[], Any]) -> Dict[str, float]:
    """Self CPU seconds of one run of ``fn`` per op group (:data:`BREAKDOWN`), from the profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = dict.fromkeys(BREAKDOWN, 0.0)
    for ev in prof.key_averages():
        if not ev.key.startswith('aten::'):
            continue  # Python-level and autograd wrappers: their ops are counted themselves
        group = next((g for g, keys in _OP_GROUPS if any(k in ev.key for k in keys)), 'other')
        out[group] += ev.self_cpu_time_total / 1e6
    return out


def run_case(c: Dict[str, Any], repeats: int, budget: float, count_ops: bool = True,
             breakdown: bool = False) -> Dict[str, Any]:
    """Measure one configuration in this process (time, peak RSS, then ATen ops of one step,
    and with ``breakdown`` the profiler's self time per op group)."""
    import torch
    import iformer_mm  # noqa: F401
    res: Dict[str, Any] = dict(c)
    device, dtype = c.get('device', 'cpu'), c.get('dtype', 'fp32')
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    amp = lambda: _autocast(device, dtype)  # noqa: E731  (a fresh context per call)
    if c['kind'] == 'matmul':
        n = 4096  # a plain GEMM in the case's dtype (fp32: 137 GFLOP)
        tdt = torch.float32 if dtype == 'fp32' else getattr(torch, _TORCH_DTYPE[dtype])
        a, b = (torch.randn(n, n).to(device, tdt) for _ in range(2))
        times, _ = _time(lambda: a @ b, max(repeats, 5), budget, device, c.get('clock', 'wall'))
        t = statistics.median(times)
        # the fastest run is the best this machine did: the reference for "% of matmul"
        res.update(times=times, median_s=t, gflops=2 * n ** 3 / min(times) / 1e9,
                   gflops_median=2 * n ** 3 / t / 1e9, peak_rss_gb=_rss_gb())
        if device == 'cuda':
            res['peak_cuda_gb'] = torch.cuda.max_memory_allocated() / 1e9
        return res

    h, w = c['shape']
    B = c['batch']
    train = c['mode'] in ('fwdbwd', 'step')
    flops = None
    if c['kind'] == 'flops':
        from iformer_mm.analysis.flops import BackboneOnly
        model = _swin_backbone() if c['impl'] == 'swin_t' else _iformer_backbone(c['impl'])
        model.eval()  # not chained: mmdet's Swin train() returns None
        f1 = _flops(BackboneOnly(model), (torch.randn(1, 3, h, w),))
        res.update(flops=None if f1 is None else f1 * B)
        return res
    if c['kind'] == 'attention':
        fn, res['attn_flops'] = _attention_only(
            B, h, w, train, None if dtype == 'fp32' else getattr(torch, _TORCH_DTYPE[dtype]))
    elif c['kind'] == 'backbone':
        model = _swin_backbone() if c['impl'] == 'swin_t' else _iformer_backbone(c['impl'])
        model.to(device)
        call = torch.compile(model) if c['impl'].endswith('+compile') else model
        x = torch.randn(B, 3, h, w).to(device)
        if c['mode'] == 'fwd':
            model.eval()
            if dtype != 'fp32' and device == 'cpu':  # as tools/test.py --amp infers, every model
                from iformer_mm.engine.amp import cast_matmul_weights
                res['weights'] = dtype if cast_matmul_weights(model, dtype) else 'fp32'

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
    elif c['kind'] in ('maskrcnn', 'semfpn'):
        det = c['kind'] == 'maskrcnn'
        if det:
            model = _build_mm(SWIN_DET_CFG if c['impl'] == 'swin_t' else DET_CFG, c['impl'], 'mmdet', device)
        else:
            model = _build_mm(SEG_CFG, c['impl'], 'mmseg', device)
        if dtype != 'fp32' and not (c['mode'] == 'step' and device == 'cuda'):
            # what tools/train.py / tools/test.py --amp do: backbone + neck in the dtype, heads
            # in fp32 (mmcv's CPU nms takes fp32 only); amp() is then a no-op for this model
            from iformer_mm.engine.amp import autocast_features
            autocast_features(model, dtype, device, inference=c['mode'] == 'fwd')
            amp = lambda: nullcontext()  # noqa: E731
        if c['mode'] == 'step':
            model.train()
            optim = _amp_optim_wrapper(torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05),
                                       device, dtype)
            g = torch.Generator().manual_seed(0)
            img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
            data = dict(inputs=[img], data_samples=[_det_sample(h, w)])
            res['padded_shape'] = list(model.data_preprocessor(dict(inputs=[img], data_samples=[
                _det_sample(h, w)]), True)['inputs'].shape[-2:])

            def fn() -> Any:
                return model.train_step(data, optim)
        else:
            inputs = torch.randn(B, 3, h, w).to(device)
            make = _det_sample if det else _seg_sample
            samples = [make(h, w, i).to(device) for i in range(B)]
            if train:
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
    else:
        raise ValueError(f"unknown case kind {c['kind']!r}")
    res['base_rss_gb'] = _current_rss_gb()
    times, warm = _time(fn, repeats, budget, device, c.get('clock', 'wall'))
    res.update(times=times, warmup_s=warm, median_s=statistics.median(times), peak_rss_gb=_rss_gb(),
               flops=flops)
    if device == 'cuda':  # allocated by tensors since this case began (warm-up included)
        res['peak_cuda_gb'] = torch.cuda.max_memory_allocated() / 1e9
    if count_ops and not c['impl'].endswith('+compile'):
        from iformer_mm.analysis.opcount import count_ops as run_counted
        res['aten_ops'] = run_counted(fn).total  # after timing: the counting mode is slow
    if breakdown and device == 'cpu' and not c['impl'].endswith('+compile'):
        res['breakdown'] = op_breakdown(fn)
    return res


def worker_main(spec: str, repeats: int, budget: float, count_ops: bool, breakdown: bool) -> None:
    import torch
    c = json.loads(spec)
    torch.set_num_threads(c.get('threads', 1))
    print('@@RESULT ' + json.dumps(run_case(c, repeats, budget, count_ops, breakdown)), flush=True)


# ============================================================================ driver
def run_in_subprocess(c: Dict[str, Any], args: argparse.Namespace) -> Dict[str, Any]:
    n = str(c.get('threads', 1))
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', json.dumps(c),
           '--repeats', str(args.repeats), '--budget', str(args.budget)]
    if args.no_ops:
        cmd.append('--no-ops')
    if args.breakdown:
        cmd.append('--breakdown')
    t0 = time.time()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    for line in p.stdout.splitlines():
        if line.startswith('@@RESULT '):
            r = json.loads(line[len('@@RESULT '):])
            r['wall_s'] = time.time() - t0
            return r
    err = (p.stderr or '').strip().splitlines()[-3:]
    return dict(c, error=f'exit {p.returncode}: ' + ' | '.join(err))


def load_avg() -> List[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# Baselines of the ratio columns, per case kind: the released data flow with the fused
# kernel (``base``) and with the released attention (``naive``).
_BASE = {'backbone': 'authors_sdpa', 'maskrcnn': 'reference', 'semfpn': 'reference'}
_NAIVE = {'backbone': 'authors_naive', 'maskrcnn': 'naive', 'semfpn': 'naive'}


def _peak_gb(r: Dict[str, Any]) -> Optional[float]:
    """The memory a case is judged by: CUDA peak allocation on a GPU, else peak RSS."""
    return r['peak_cuda_gb'] if r.get('peak_cuda_gb') is not None else r.get('peak_rss_gb')


def bf16_ceiling(fp32_row: Dict[str, Any], mm_speedup: float, attn_speedup: float) -> Optional[float]:
    """The most bf16 can speed up an fp32 case on this machine, from its op breakdown.

    Generous on purpose: every op but attention is granted the plain matmul's bf16 speed-up
    (memory-bound ops can gain at most 2x from halving their bytes, convs and GEMMs at most
    the matmul's), attention the speed-up PyTorch's fused kernel measured on the same shapes
    (``sdpa_only``), both from their fastest runs. Amdahl:
    ``1 / (f_attn / attn_speedup + (1 - f_attn) / mm_speedup)``.
    """
    bd = fp32_row.get('breakdown')
    if not bd or not mm_speedup or not attn_speedup:
        return None
    total = sum(bd.values())
    f_attn = bd.get('attention', 0.0) / total if total else 0.0
    return 1.0 / (f_attn / attn_speedup + (1.0 - f_attn) / mm_speedup)


def _best(r: Dict[str, Any]) -> float:
    """The fastest timed run of a case (its median if the runs are not recorded)."""
    return min(r.get('times') or [r['median_s']])


def summarise(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Add ratios against the baselines, Swin-T and fp32 of the same (name, mode, dtype,
    threads), GFLOP/s (against the plain matmul of the same dtype and threads) and, for fp32
    rows with a breakdown, the bf16 ceiling (:func:`bf16_ceiling`)."""
    def dt(r: Dict[str, Any]) -> str:
        return r.get('dtype', 'fp32')

    def th(r: Dict[str, Any]) -> int:
        return r.get('threads', 1)
    by = {(r['name'], r['mode'], r['impl'], dt(r), th(r)): r for r in results if 'median_s' in r}
    counted = {(r['name'], r['impl']): r.get('flops') for r in results if r['kind'] == 'flops'}
    mms = {(dt(r), th(r)): r for r in results if r['kind'] == 'matmul' and 'gflops' in r}
    rows = []
    for r in results:
        row = dict(r)
        if 'median_s' in r:
            row['peak_gb'] = _peak_gb(r)
        if 'median_s' in r and r['kind'] != 'matmul':
            for tag, impls in (('base', _BASE), ('naive', _NAIVE)):
                ref = by.get((r['name'], r['mode'], impls.get(r['kind'], ''), dt(r), th(r)))
                if ref is not None:
                    row[f'time_vs_{tag}'] = r['median_s'] / ref['median_s']
                    row[f'mem_vs_{tag}'] = _peak_gb(r) / _peak_gb(ref)
                    if r.get('aten_ops') and ref.get('aten_ops'):
                        row[f'ops_vs_{tag}'] = r['aten_ops'] / ref['aten_ops']
            fp32 = by.get((r['name'], r['mode'], r['impl'], 'fp32', th(r)))
            if fp32 is not None and dt(r) != 'fp32':
                row['time_vs_fp32'] = r['median_s'] / fp32['median_s']
                row['mem_vs_fp32'] = _peak_gb(r) / _peak_gb(fp32)
            if dt(r) == 'fp32' and r.get('breakdown'):
                mm32, mm16 = mms.get(('fp32', th(r))), mms.get(('bf16', th(r)))
                a32 = by.get((r['name'], r['mode'], 'sdpa_only', 'fp32', th(r)))
                a16 = by.get((r['name'], r['mode'], 'sdpa_only', 'bf16', th(r)))
                if mm32 and mm16 and a32 and a16:  # best runs: the most this machine gave bf16
                    row['bf16_ceiling'] = bf16_ceiling(r, _best(mm32) / _best(mm16), _best(a32) / _best(a16))
            swin = by.get((r['name'], r['mode'], 'swin_t', dt(r), th(r)))
            if swin is not None:
                row['time_vs_swin'] = r['median_s'] / swin['median_s']
            # Achieved rate: every iFormer implementation does the same work (attention
            # included), counted once on ours; FLOPs = 2 x MACs, backward = 2 x forward.
            fl = None
            if r['kind'] == 'backbone':
                fl = counted.get((r['name'], 'swin_t' if r['impl'] == 'swin_t' else 'ours'))
            work = r.get('attn_flops')
            if fl:
                work = 2 * fl * (3 if r['mode'] == 'fwdbwd' else 1)
            if work:
                row['gflops'] = work / r['median_s'] / 1e9
                mm = mms.get((dt(r), th(r)))
                if mm is not None:
                    row['frac_of_matmul'] = row['gflops'] / mm['gflops']
        rows.append(row)
    return rows


# (header, key, format) of the table columns after case/mode/impl.
# ``peak GB``: peak RSS of the process on CPU, torch.cuda.max_memory_allocated on CUDA.
COLUMNS = [('median s', 'median_s', '.3f'), ('peak GB', 'peak_gb', '.2f'),
           ('t/base', 'time_vs_base', '.3f'), ('mem/base', 'mem_vs_base', '.3f'),
           ('t/naive', 'time_vs_naive', '.3f'), ('t/swin', 'time_vs_swin', '.2f'),
           ('t/fp32', 'time_vs_fp32', '.3f'), ('mem/fp32', 'mem_vs_fp32', '.3f'),
           ('ATen ops', 'aten_ops', 'd'), ('ops/base', 'ops_vs_base', '.2f'),
           ('GFLOP/s', 'gflops', '.1f'), ('%mm', 'frac_of_matmul', '.0%'),
           ('bf16 max', 'bf16_ceiling', '.2f')]


def _cells(r: Dict[str, Any]) -> List[str]:
    return [format(r[key], fmt) if r.get(key) is not None else '' for _, key, fmt in COLUMNS]


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Fixed-width text table of a run (every row but the FLOP counts)."""
    widths = [max(len(h), 9) + 1 for h, _, _ in COLUMNS]
    head = (f"{'case':<28}{'mode':<8}{'impl':<14}{'dtype':<6}{'thr':>4}"
            + ''.join(f'{h:>{w}}' for (h, _, _), w in zip(COLUMNS, widths)))
    out = [head, '-' * len(head)]
    for r in rows:
        if r['kind'] == 'flops':
            continue
        label = 'matmul 4096^2' if r['kind'] == 'matmul' else r['name']
        lead = f"{label:<28}{r['mode']:<8}{r['impl']:<14}{r.get('dtype', 'fp32'):<6}{r.get('threads', 1):>4}"
        if 'error' in r:
            out.append(f"{lead}  ERROR {r['error'][:80]}")
            continue
        out.append(lead
                   + ''.join(f'{c or "-":>{w}}' for c, w in zip(_cells(r), widths)))
    return '\n'.join(out)


def format_markdown(rows: List[Dict[str, Any]]) -> str:
    """The same table as :func:`format_table`, as GitHub markdown (for docs)."""
    out = ['| case | mode | impl | dtype | threads | ' + ' | '.join(h for h, _, _ in COLUMNS) + ' |',
           '|---|---|---|---|---|' + '---|' * len(COLUMNS)]
    for r in rows:
        if r['kind'] == 'flops' or 'error' in r:
            continue
        label = 'matmul 4096²' if r['kind'] == 'matmul' else f"{r['name']} b{r.get('batch', 1)}"
        out.append(f"| {label} | {r['mode']} | {r['impl']} | {r.get('dtype', 'fp32')} | {r.get('threads', 1)} | "
                   + ' | '.join(_cells(r)) + ' |')
    return '\n'.join(out)


def format_breakdown(rows: List[Dict[str, Any]]) -> str:
    """Markdown: the share of each op group in the profiled step of every case that has one."""
    out = ['| case | mode | impl | dtype | threads | profiled s | '
           + ' | '.join(BREAKDOWN) + ' |', '|---|---|---|---|---|---|' + '---|' * len(BREAKDOWN)]
    for r in rows:
        bd = r.get('breakdown')
        if not bd:
            continue
        total = sum(bd.values()) or 1.0
        out.append(f"| {r['name']} b{r.get('batch', 1)} | {r['mode']} | {r['impl']} | {r.get('dtype', 'fp32')} | "
                   f"{r.get('threads', 1)} | {total:.3f} | " + ' | '.join(f'{bd[g] / total:.0%}' for g in BREAKDOWN) + ' |')
    return '\n'.join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--quick', action='store_true', help='small shapes, 1 repeat (smoke test)')
    parser.add_argument('--only', nargs='+', default=None,
                        help='run only cases whose id (name/mode/impl) contains one of these')
    parser.add_argument('--skip', nargs='+', default=None, help='skip cases whose id contains these')
    parser.add_argument('--repeats', type=int, default=None, help='timed runs after warm-up (default 3, quick 1)')
    parser.add_argument('--budget', type=float, default=90.0,
                        help='seconds of timed runs per case; slow cases get fewer repeats (>= 1)')
    parser.add_argument('--threads', type=int, nargs='+', default=[1],
                        help='torch threads per worker (default 1); several (e.g. 1 2) run every case '
                             'with each, side by side')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help="CPU runs: 'cpu' times with the process's CPU time (1 thread: robust to other "
                             'jobs on a shared machine); default wall clock')
    parser.add_argument('--device', choices=DEVICES, default='cpu',
                        help='cpu (default) or cuda: the GPU table, CUDA-event timing, CUDA peak memory')
    parser.add_argument('--dtype', nargs='+', choices=DTYPES, default=['fp32'],
                        help='one or more of fp32 (default), bf16, fp16 (CUDA only); bf16/fp16 run '
                             'under torch.autocast, side by side with fp32 when it is listed')
    parser.add_argument('--timeout', type=float, default=1800.0, help='seconds per case before giving up')
    parser.add_argument('--json', default=None, help='write all results (and machine info) here')
    parser.add_argument('--variants', action='store_true',
                        help='also measure variants of ours (ours+cp, ours+cp12, ours+win14, ours+compile) '
                             'at the largest size')
    parser.add_argument('--no-ops', action='store_true',
                        help='skip counting ATen ops per step (one extra, slower run per case)')
    parser.add_argument('--breakdown', action='store_true',
                        help="CPU: one extra profiled run per case; where the time goes (attention, conv, "
                             "GEMM, copies, other) and each fp32 row's bf16 ceiling (needs the matmul and "
                             'sdpa_only rows in fp32 and bf16)')
    parser.add_argument('--list', action='store_true', help='print the case ids and exit')
    parser.add_argument('--markdown', metavar='JSON', default=None,
                        help='print the table of an earlier --json run as markdown and exit')
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.worker:
        worker_main(args.worker, args.repeats, args.budget, not args.no_ops, args.breakdown)
        return 0
    if args.markdown:
        with open(args.markdown) as f:
            rows = summarise(json.load(f)['results'])
        print(format_markdown(rows))
        if any(r.get('breakdown') for r in rows):
            print()
            print(format_breakdown(rows))
        return 0
    if 'fp16' in args.dtype and args.device != 'cuda':
        print('benchmark: --dtype fp16 runs on CUDA only (CPU autocast is bf16); use --dtype bf16 '
              'on CPU or add --device cuda.', file=sys.stderr)
        return 2
    cases = plan(args.quick, args.variants, args.device, args.dtype, args.threads)
    for c in cases:
        c['clock'] = args.clock
    if args.only:
        cases = [c for c in cases if any(s in case_id(c) for s in args.only)]
    if args.skip:
        cases = [c for c in cases if not any(s in case_id(c) for s in args.skip)]
    if args.list:
        print('\n'.join(case_id(c) for c in cases))
        return 0
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        print(f'benchmark: --device cuda needs a visible CUDA GPU, and torch {torch.__version__} sees '
              'none (CPU build or no driver); run on a GPU machine or use --device cpu.', file=sys.stderr)
        return 2
    info = dict(torch=torch.__version__, threads=args.threads, cpu_count=os.cpu_count(), device=args.device,
                gpu=torch.cuda.get_device_name() if args.device == 'cuda' else None,
                load_start=load_avg(), started=time.strftime('%Y-%m-%d %H:%M:%S'))
    print(f"[benchmark] {len(cases)} cases, {args.threads} thread(s), load average at start "
          f"{info['load_start']}", flush=True)
    results = []
    for c in cases:
        r = run_in_subprocess(c, args)
        r['load_after'] = load_avg()
        results.append(r)
        if r['kind'] == 'flops' and 'error' not in r:
            msg = f"{(r['flops'] or 0) / 1e9:.2f} GMACs forward (with attention)"
        else:
            msg = r.get('error') or (f"{r['median_s']:.3f} s (runs {['%.2f' % t for t in r['times']]}), "
                                     f"peak {_peak_gb(r):.2f} GB")
        print(f'[benchmark] {case_id(c):<45} {msg}  load {r["load_after"]}', flush=True)
    info['load_end'] = load_avg()
    rows = summarise(results)
    print()
    print(format_table(rows))
    if args.breakdown:
        print()
        print(format_breakdown(rows))
    print(f"\nload average start {info['load_start']} end {info['load_end']} (2 cores shared)")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(info=info, results=rows), f, indent=1)
        print(f'[benchmark] wrote {args.json}')
    return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
    sys.exit(main())
