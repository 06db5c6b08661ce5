"""The ``deploy`` suite: ONNX Runtime against PyTorch eager fp32 and ``--amp bf16``.

Case kinds ``segmentor`` (an mmseg config's whole network as exported: normalised image ->
logits at the input size, :class:`iformer_mm.deploy.onnx.SegmentorGraph`) and ``classifier``
(a timm model name). Runners: ``eager`` (fp32, or bf16 as ``tools/test.py --amp`` infers:
:func:`iformer_mm.engine.amp.autocast_features` for segmentors, autocast with bf16 conv/linear
weights for classifiers) and ``onnxruntime`` (the same module exported by
:func:`iformer_mm.deploy.onnx.export_onnx`, static shape, default opset; CPU provider with the
default graph optimisations and ``case.threads`` intra-op threads; with ``--clock cpu`` idle
threads do not spin, so the CPU time is work done). The export is cached
under ``work_dirs/bench_onnx`` and is not timed.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, Dict, List, Tuple

from .core import Case, Runner, Step, register_runner
from .suites import PlanArgs, Suite, register_suite
from .workloads import REPO, WORKLOADS, n_params

__all__ = ['DEPLOY_SEGMENTORS', 'DEPLOY_CLASSIFIERS', 'deploy_module', 'plan_deploy', 'deploy_table']

DEPLOY_SEGMENTORS = {
    'fpn_iformer_s': os.path.join(REPO, 'configs/segmentation/fpn_iformer_s_ade20k_80k.py'),
    'fpn_mobile_iformer_m': os.path.join(REPO, 'configs/segmentation/fpn_mobile_iformer_m_ade20k_40k.py'),
    'fpn_poolformer_s12': os.path.join(REPO, 'configs/segmentation/fpn_poolformer_s12_ade20k_40k.py'),
}
DEPLOY_CLASSIFIERS = ('iformer_small', 'iformer_t', 'iformer_m')
CACHE = os.path.join('work_dirs', 'bench_onnx')


def deploy_module(case: Case) -> Tuple[Any, Dict[str, Any]]:
    """The eval-mode module a deploy case runs, seeded weights, and its info for the row."""
    import torch
    torch.manual_seed(0)
    if case.kind == 'segmentor':
        from ...deploy.onnx import SegmentorGraph, load_for_export
        seg = load_for_export(case.config)
        return SegmentorGraph(seg).eval(), dict(params=n_params(seg), model_type=type(seg.backbone).__name__)
    import timm
    model = timm.create_model(case.impl, pretrained=False).eval()
    return model, dict(params=n_params(model), model_type=type(model).__name__)


def deploy_step(case: Case) -> Step:
    """PyTorch eager forward of a deploy case (fp32, or bf16 as ``tools/test.py --amp``)."""
    import torch
    module, info = deploy_module(case)
    ctx = nullcontext
    if case.dtype != 'fp32':
        from ...engine.amp import autocast_features, cast_matmul_weights
        if case.kind == 'segmentor':
            autocast_features(module.segmentor, case.dtype, case.device, inference=True)
        else:
            cast_matmul_weights(module, case.dtype)
            ctx = lambda: torch.autocast(case.device, torch.bfloat16)  # noqa: E731
    x = torch.randn(case.batch, 3, *case.shape)

    def fn() -> Any:
        with torch.no_grad(), ctx():
            return module(x)
    return Step(fn, info=dict(info, engine=f'pytorch {case.dtype}'))


WORKLOADS['segmentor'] = WORKLOADS['classifier'] = deploy_step


@register_runner('onnxruntime')
class OrtRunner(Runner):
    """The case's module exported to ONNX (cached), run by an ONNX Runtime CPU session."""
    countable = False

    def prepare(self, case: Case) -> Step:
        import numpy as np
        import onnxruntime as ort
        from ...deploy.onnx import DEFAULT_OPSET, build_export_module, export_onnx, onnx_session
        module, info = deploy_module(case)
        key = f'{case.impl}_{case.batch}x{case.shape[0]}x{case.shape[1]}_op{DEFAULT_OPSET}.onnx'
        path = os.path.join(CACHE, key)
        if not os.path.isfile(path):
            export_onnx(module, path, (case.batch, 3, *case.shape), kind=case.kind)
        session = onnx_session(path, threads=case.threads, spin=case.clock != 'cpu')
        x = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(
            (case.batch, 3, *case.shape), dtype=np.float32)}
        info.update(engine=f'onnxruntime {ort.__version__}', onnx=path)
        return Step(lambda: session.run(None, x), info=info, countable=False)


def plan_deploy(args: PlanArgs) -> List[Case]:
    """Segmentors at ``args.shape`` (default 512x512; quick 128x128) and classifiers at 224, batch
    1: PyTorch eager in each ``--dtype`` (fp32, bf16) and ONNX Runtime (fp32)."""
    h, w = args.shape or ((128, 128) if args.quick else (512, 512))
    items = [('segmentor', k, cfg, (h, w)) for k, cfg in DEPLOY_SEGMENTORS.items()]
    items += [('classifier', n, None, (224, 224)) for n in DEPLOY_CLASSIFIERS]
    if args.configs:
        items = [it for it in items if it[1] in args.configs]
    cases: List[Case] = []
    for n in args.threads:  # per model: eager in each dtype, then ONNX Runtime (same threads)
        for kind, key, cfg, shape in items:
            name = f'{kind}_{shape[0]}x{shape[1]}'
            common = dict(config=cfg, suite='deploy', device=args.device, threads=n, clock=args.clock)
            cases += [Case(kind, name, key, 'fwd', shape, 1, dtype=dt, **common) for dt in args.dtypes]
            cases.append(Case(kind, name + '@ort', key, 'fwd', shape, 1, runner='onnxruntime', **common))
    return cases


def deploy_table(rows: List[Dict[str, Any]]) -> str:
    """docs/deploy.md's table: ms per image for each model, engine and thread count."""
    timed = [r for r in rows if 'median_s' in r]
    threads = sorted({r['threads'] for r in timed})
    engines = [('pytorch fp32', 'eager', 'fp32'), ('pytorch --amp bf16', 'eager', 'bf16'),
               ('onnxruntime fp32', 'onnxruntime', 'fp32')]
    head = ' | '.join(f'{e} {t}t' for t in threads for e, _, _ in engines)
    out = [f'| model | input | {head} | ORT / PyTorch fp32 |', '|---|---|' + '---|' * (len(threads) * 3 + 1)]
    by = {(r['impl'], r['runner'], r['dtype'], r['threads']): r for r in timed}
    for impl in dict.fromkeys(r['impl'] for r in timed):
        r0 = next(r for r in timed if r['impl'] == impl)
        cells, ratios = [], []
        for t in threads:
            for _, runner, dt in engines:
                r = by.get((impl, runner, dt, t))
                cells.append(f"{1e3 * r['median_s']:.0f}" if r else '-')
            a, b = by.get((impl, 'onnxruntime', 'fp32', t)), by.get((impl, 'eager', 'fp32', t))
            if a and b:
                ratios.append(f"{a['median_s'] / b['median_s']:.2f} ({t}t)")
        out.append(f"| {impl} | {r0['shape'][0]}×{r0['shape'][1]} | {' | '.join(cells)} | {', '.join(ratios)} |")
    if timed:
        out.append(f"\nms per image, median of {len(timed[0]['times'])} run(s) after a warm-up, "
                   f"{timed[0].get('clock', 'wall')} clock (process CPU time: with 2 threads it sums both)")
    return '\n'.join(out)


register_suite(Suite('deploy', plan_deploy, deploy_table,
                     doc='ONNX Runtime vs PyTorch eager fp32 and --amp bf16 (segmentors, classifiers)'))
