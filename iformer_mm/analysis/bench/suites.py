"""The benchmark's suites: which cases a run measures, and the tables it prints.

* ``perf`` (default) — iFormer-S against the authors' data flow and Swin-T: backbones at
  several sizes, the attention floor, whole Mask R-CNN / Semantic FPN models and a training
  step; ratios to the baselines, ATen ops, achieved GFLOP/s (docs/performance.md).
* ``compare`` — backbones as their Mask R-CNN configs build them: parameters, FLOPs counted
  both ways at 800x1344 and 224, time and peak memory of 800x1344 fwd+bwd and 32x224 forward
  (docs/comparison.md).
* ``latency`` — forward latency of the backbones of mm configs at one size (default 512x512,
  batch 1), the Mobile iFormer authors' dense measure (docs/mobile_iformer.md).

**Adding a suite** is one :func:`register_suite` call with a ``plan(args) -> [Case]`` and a
``table(rows) -> str`` (markdown); the cases may name any registered runner.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .core import Case, peak_gb
from .workloads import DET_CFG, REPO, SWIN_DET_CFG

__all__ = ['PlanArgs', 'SUITES', 'Suite', 'register_suite', 'report', 'summarise', 'format_table',
           'format_markdown', 'format_breakdown', 'bf16_ceiling']


@dataclass(frozen=True)
class PlanArgs:
    """What a suite's plan may take from the command line."""
    quick: bool = False
    variants: bool = False
    device: str = 'cpu'
    dtypes: Sequence[str] = ('fp32',)
    threads: Sequence[int] = (1,)
    clock: str = 'wall'
    configs: Sequence[str] = ()  # compare/latency: configs instead of the default list
    shape: Optional[Tuple[int, int]] = None  # latency: the input size


@dataclass(frozen=True)
class Suite:
    name: str
    plan: Callable[[PlanArgs], List[Case]]
    table: Callable[[List[Dict[str, Any]]], str]
    doc: str = ''
    extra: Tuple[Callable[[List[Dict[str, Any]]], str], ...] = field(default_factory=tuple)


SUITES: Dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    SUITES[suite.name] = suite
    return suite


def expand(cases: List[Case], args: PlanArgs) -> List[Case]:
    """Every timed case once per dtype and thread count (FLOP counts once, in fp32)."""
    out: List[Case] = []
    for n in args.threads:
        for c in cases:
            if c.runner == 'flops':
                if n == args.threads[0]:
                    out.append(replace(c, device=args.device, threads=n))
                continue
            for dt in args.dtypes:
                name = f'matmul_{dt}' if c.kind == 'matmul' else c.name
                out.append(replace(c, name=name, device=args.device, dtype=dt, threads=n, clock=args.clock))
    return out


# ============================================================================ perf
BACKBONE_IMPLS = ('authors_naive', 'authors_sdpa', 'reference', 'ours', 'swin_t')
VARIANT_IMPLS = ('ours+cp', 'ours+cp12', 'ours+win14', 'ours+compile')


def _flops(name: str, impl: str, h: int, w: int, b: int) -> Case:
    # FLOPs in their own processes: tracing must not inflate a timed case's peak RSS.
    return Case('backbone', name, impl, 'count', (h, w), b, runner='flops')


def plan_perf(args: PlanArgs) -> List[Case]:
    """CPU: backbones at 800x1344 (b1), 224 (b32, b8), 512 (b2); Mask R-CNN / Semantic FPN;
    the train step. CUDA: backbone 800x1344 b2, 224 inference b64, the Mask R-CNN train step."""
    cuda = args.device == 'cuda'
    if cuda:
        bb = ([('backbone_256x384_b2', 256, 384, 2, ('fwdbwd', 'fwd')), ('backbone_224_b8', 224, 224, 8, ('fwd',))]
              if args.quick else [('backbone_800x1344_b2', 800, 1344, 2, ('fwdbwd', 'fwd')),
                                  ('backbone_224_b64', 224, 224, 64, ('fwd',))])
        step_shape = (256, 384) if args.quick else (800, 1333)
    elif args.quick:
        bb = [('backbone_224', 224, 224, 4, ('fwdbwd', 'fwd')), ('backbone_256x384', 256, 384, 1, ('fwdbwd', 'fwd'))]
        det_shape, seg_shape, step_shape = (256, 384), (256, 256), (256, 384)
    else:
        bb = [(n, h, w, b, ('fwdbwd', 'fwd')) for n, h, w, b in (
            ('backbone_800x1344', 800, 1344, 1), ('backbone_224', 224, 224, 32),
            ('backbone_224_b8', 224, 224, 8), ('backbone_512', 512, 512, 2))]
        det_shape, seg_shape, step_shape = (800, 1344), (512, 512), (800, 1333)
    cases = [Case('matmul', 'matmul', '-', 'fwd')]
    for name, h, w, b, modes in bb:
        cases += [_flops(name, impl, h, w, b) for impl in ('ours', 'swin_t')]
        for mode in modes:
            cases += [Case('backbone', name, impl, mode, (h, w), b) for impl in BACKBONE_IMPLS]
            if not cuda:
                cases.append(Case('attention', name, 'sdpa_only', mode, (h, w), b))
    if args.variants and not cuda:
        name, h, w, b, _ = bb[0]
        for impl in VARIANT_IMPLS:
            for mode in (('fwdbwd',) if '+cp' in impl else ('fwdbwd', 'fwd')):  # cp acts in training only
                cases.append(Case('backbone', name, impl, mode, (h, w), b))
    if not cuda:
        for mode in ('fwd', 'fwdbwd'):
            cases += [Case('maskrcnn', 'maskrcnn_%dx%d' % det_shape, impl, mode, det_shape)
                      for impl in ('naive', 'reference', 'ours', 'swin_t')]
            cases += [Case('semfpn', 'semfpn_%dx%d' % seg_shape, impl, mode, seg_shape, 2)
                      for impl in ('naive', 'reference', 'ours')]
    step_impls = ('reference', 'ours', 'swin_t') if cuda else ('ours', 'swin_t')
    cases += [Case('maskrcnn', 'maskrcnn_train_step_%dx%d' % step_shape, impl, 'step', step_shape)
              for impl in step_impls]
    return expand(cases, args)


# Baselines of the ratio columns, per case kind: the released data flow with the fused
# kernel (``base``) and with the released attention (``naive``).
_BASE = {'backbone': 'authors_sdpa', 'maskrcnn': 'reference', 'semfpn': 'reference'}
_NAIVE = {'backbone': 'authors_naive', 'maskrcnn': 'naive', 'semfpn': 'naive'}


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


def _is_count(r: Dict[str, Any]) -> bool:
    return r.get('runner') == 'flops' or r['kind'] == 'flops'  # (older JSON: kind 'flops')


def summarise(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Add ratios against the baselines, Swin-T and fp32 of the same (name, mode, dtype,
    threads), GFLOP/s (against the plain matmul of the same dtype and threads) and, for fp32
    rows with a breakdown, the bf16 ceiling (:func:`bf16_ceiling`)."""
    def dt(r: Dict[str, Any]) -> str:
        return r.get('dtype', 'fp32')

    def th(r: Dict[str, Any]) -> int:
        return r.get('threads', 1)
    by = {(r['name'], r['mode'], r['impl'], dt(r), th(r)): r for r in results if 'median_s' in r}
    counted = {(r['name'], r['impl']): r.get('flops') for r in results if _is_count(r)}
    mms = {(dt(r), th(r)): r for r in results if r['kind'] == 'matmul' and 'gflops' in r}
    rows = []
    for r in results:
        row = dict(r)
        if 'median_s' in r:
            row['peak_gb'] = peak_gb(r)
        if 'median_s' in r and r['kind'] != 'matmul':
            for tag, impls in (('base', _BASE), ('naive', _NAIVE)):
                ref = by.get((r['name'], r['mode'], impls.get(r['kind'], ''), dt(r), th(r)))
                if ref is not None:
                    row[f'time_vs_{tag}'] = r['median_s'] / ref['median_s']
                    row[f'mem_vs_{tag}'] = peak_gb(r) / peak_gb(ref)
                    if r.get('aten_ops') and ref.get('aten_ops'):
                        row[f'ops_vs_{tag}'] = r['aten_ops'] / ref['aten_ops']
            fp32 = by.get((r['name'], r['mode'], r['impl'], 'fp32', th(r)))
            if fp32 is not None and dt(r) != 'fp32':
                row['time_vs_fp32'] = r['median_s'] / fp32['median_s']
                row['mem_vs_fp32'] = peak_gb(r) / peak_gb(fp32)
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
CUDA_COLUMNS = [('CUDA kernels', 'cuda_kernels', 'd')]


def _columns(rows: List[Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    return COLUMNS + (CUDA_COLUMNS if any(r.get('cuda_kernels') is not None for r in rows) else [])


def _cells(r: Dict[str, Any], cols: List[Tuple[str, str, str]]) -> List[str]:
    return [format(r[key], fmt) if r.get(key) is not None else '' for _, key, fmt in cols]


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Fixed-width text table of a run (every row but the FLOP counts)."""
    cols = _columns(rows)
    widths = [max(len(h), 9) + 1 for h, _, _ in cols]
    head = (f"{'case':<28}{'mode':<8}{'impl':<14}{'dtype':<6}{'thr':>4}"
            + ''.join(f'{h:>{w}}' for (h, _, _), w in zip(cols, widths)))
    out = [head, '-' * len(head)]
    for r in rows:
        if _is_count(r):
            continue
        label = 'matmul 4096^2' if r['kind'] == 'matmul' else r['name']
        lead = f"{label:<28}{r['mode']:<8}{r['impl']:<14}{r.get('dtype', 'fp32'):<6}{r.get('threads', 1):>4}"
        if 'error' in r:
            out.append(f"{lead}  ERROR {r['error'][:80]}")
            continue
        out.append(lead + ''.join(f'{c or "-":>{w}}' for c, w in zip(_cells(r, cols), widths)))
    return '\n'.join(out)


def format_markdown(rows: List[Dict[str, Any]]) -> str:
    """The same table as :func:`format_table`, as GitHub markdown (for docs)."""
    cols = _columns(rows)
    out = ['| case | mode | impl | dtype | threads | ' + ' | '.join(h for h, _, _ in cols) + ' |',
           '|---|---|---|---|---|' + '---|' * len(cols)]
    for r in rows:
        if _is_count(r) or 'error' in r:
            continue
        label = 'matmul 4096²' if r['kind'] == 'matmul' else f"{r['name']} b{r.get('batch', 1)}"
        out.append(f"| {label} | {r['mode']} | {r['impl']} | {r.get('dtype', 'fp32')} | {r.get('threads', 1)} | "
                   + ' | '.join(_cells(r, cols)) + ' |')
    return '\n'.join(out)


def format_breakdown(rows: List[Dict[str, Any]]) -> str:
    """Markdown: the share of each op group in the profiled step of every case that has one."""
    from .core import BREAKDOWN
    if not any(r.get('breakdown') for r in rows):
        return ''
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


register_suite(Suite('perf', plan_perf, format_markdown, doc='iFormer-S vs the authors and Swin-T',
                     extra=(format_breakdown,)))


# ============================================================================ compare
#: key -> (label, config) of the compare suite's backbones.
COMPARE_BACKBONES = {
    'iformer_s': ('iFormer-S', DET_CFG),
    'caformer_s18': ('CAFormer-S18', os.path.join(REPO, 'configs/detection/mask_rcnn_caformer_s18_1x.py')),
    'convformer_s18': ('ConvFormer-S18', os.path.join(REPO, 'configs/detection/mask_rcnn_convformer_s18_1x.py')),
    'poolformer_s24': ('PoolFormer-S24', os.path.join(REPO, 'configs/detection/mask_rcnn_poolformer_s24_1x.py')),
    'swin_t': ('Swin-T (mmdet)', SWIN_DET_CFG),
}


def _config_list(args: PlanArgs, default: Dict[str, Tuple[str, str]]) -> List[Tuple[str, str]]:
    """``(key, config)`` pairs: the suite's defaults, or ``args.configs`` (keys of the defaults
    or config paths / mmdet:: names)."""
    if not args.configs:
        return [(k, cfg) for k, (_, cfg) in default.items()]
    out = []
    for c in args.configs:
        if c in default:
            out.append((c, default[c][1]))
        else:
            out.append((os.path.splitext(os.path.basename(c.split('::')[-1]))[0], c))
    return out


def plan_compare(args: PlanArgs) -> List[Case]:
    """Per backbone: FLOPs at the detection size and at 224, then the detection-size fwd+bwd
    (batch 1) and the 224 forward (batch 32). ``quick``: 256x384 and 224 batch 2."""
    det, cls, b = ((256, 384), (224, 224), 2) if args.quick else ((800, 1344), (224, 224), 32)
    det_name, cls_name = 'det_%dx%d' % det, 'cls_%d_b%d' % (cls[0], b)
    cases = []
    for key, cfg in _config_list(args, COMPARE_BACKBONES):
        common = dict(config=cfg, suite='compare')
        cases += [Case('backbone', det_name, key, 'count', det, 1, runner='flops', **common),
                  Case('backbone', cls_name, key, 'count', cls, 1, runner='flops', **common),
                  Case('backbone', det_name, key, 'fwdbwd', det, 1, **common),
                  Case('backbone', cls_name, key, 'fwd', cls, b, **common)]
    return expand(cases, args)


def compare_table(rows: List[Dict[str, Any]]) -> str:
    """docs/comparison.md's table: one line per backbone."""
    by: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r['impl'], {})[r['mode'] + ('_det' if r['name'].startswith('det_') else '_cls')] = r
    det_shape = next((r['shape'] for r in rows if r['name'].startswith('det_')), (800, 1344))
    cls_r = next((r for r in rows if r['name'].startswith('cls_') and r['mode'] == 'fwd'), dict(batch=32, shape=(224, 224)))
    hw = f'{det_shape[0]}×{det_shape[1]}'
    out = [f'| backbone | params | FLOPs {hw}, paper counting | FLOPs {hw} incl. attention | '
           f'FLOPs {cls_r["shape"][0]}, paper | FLOPs {cls_r["shape"][0]} incl. attention | {hw} fwd+bwd, s | '
           f'peak RSS GB (Δ) | {cls_r["shape"][0]} ×{cls_r["batch"]} fwd, s | peak RSS GB (Δ) |',
           '|---|---|---|---|---|---|---|---|---|---|']

    def g(r: Optional[Dict[str, Any]], key: str, scale: float, fmt: str) -> str:
        return format(r[key] / scale, fmt) if r and r.get(key) is not None else '-'

    def mem(r: Optional[Dict[str, Any]]) -> str:
        return f"{g(r, 'peak_rss_gb', 1, '.2f')} ({g(r, 'peak_minus_base_gb', 1, '.2f')})"
    for impl, rs in by.items():
        fd, fc, d, c = rs.get('count_det'), rs.get('count_cls'), rs.get('fwdbwd_det'), rs.get('fwd_cls')
        label = COMPARE_BACKBONES.get(impl, (impl,))[0]
        out.append(f"| {label} | {g(fd, 'params', 1e6, '.2f')} M | {g(fd, 'paper_flops', 1e9, '.1f')} G | "
                   f"{g(fd, 'full_flops', 1e9, '.1f')} G | {g(fc, 'paper_flops', 1e9, '.2f')} G | "
                   f"{g(fc, 'full_flops', 1e9, '.2f')} G | {g(d, 'median_s', 1, '.2f')} | {mem(d)} | "
                   f"{g(c, 'median_s', 1, '.2f')} | {mem(c)} |")
    return '\n'.join(out)


register_suite(Suite('compare', plan_compare, compare_table, doc='backbones of the Mask R-CNN configs side by side'))


# ============================================================================ latency
LATENCY_CONFIGS = {
    'mobile_iformer_m': ('Mobile iFormer-M', os.path.join(REPO, 'configs/detection/mask_rcnn_mobile_iformer_m_1x.py')),
    'mobile_iformer_l': ('Mobile iFormer-L', os.path.join(REPO, 'configs/detection/mask_rcnn_mobile_iformer_l_1x.py')),
    'mobile_iformer_l2': ('Mobile iFormer-L2', os.path.join(REPO, 'configs/detection/mask_rcnn_mobile_iformer_l2_1x.py')),
    'iformer_s': ('iFormer-S', DET_CFG),
    'swin_t': ('Swin-T (mmdet)', SWIN_DET_CFG),
}


def plan_latency(args: PlanArgs) -> List[Case]:
    """Each config's backbone, eval forward of one ``shape`` image (default 512x512; quick 128x128)."""
    h, w = args.shape or ((128, 128) if args.quick else (512, 512))
    return expand([Case('backbone', f'latency_{h}x{w}', key, 'fwd', (h, w), 1, config=cfg, suite='latency')
                   for key, cfg in _config_list(args, LATENCY_CONFIGS)], args)


def latency_table(rows: List[Dict[str, Any]]) -> str:
    """docs/mobile_iformer.md's table: params, median and minimum ms per backbone."""
    out = ['| backbone (config) | params (M) | median ms | min ms |', '|---|---|---|---|']
    timed = [r for r in rows if 'median_s' in r]
    for r in timed:
        cfg = os.path.basename(str(r.get('config', '')).split('::')[-1])
        out.append(f"| {r.get('model_type', r['impl'])} ({cfg}) | {r['params'] / 1e6:.2f} | "
                   f"{1e3 * r['median_s']:.0f} | {1e3 * min(r['times']):.0f} |")
    if timed:
        r = timed[0]
        out.append(f"\n{r['shape'][0]}x{r['shape'][1]}, batch {r['batch']}, {r['threads']} thread(s), median of "
                   f"{len(r['times'])} run(s) after a warm-up, {r.get('clock', 'wall')} clock")
    return '\n'.join(out)


register_suite(Suite('latency', plan_latency, latency_table, doc='backbone forward latency of mm configs'))


def report(suite: str, results: List[Dict[str, Any]], markdown: bool = False) -> str:
    """The table(s) of a run of ``suite``: text for the ``perf`` suite's terminal output
    (``markdown=False``), markdown otherwise; rows get their ratios first (:func:`summarise`)."""
    rows = summarise(results)
    s = SUITES[suite]
    parts = [format_table(rows) if suite == 'perf' and not markdown else s.table(rows)]
    parts += [t for t in (extra(rows) for extra in s.extra) if t]
    return '\n\n'.join(parts)
