"""Speed, memory, ATen ops and FLOPs of iFormer and the backbones it is compared with.

Every case runs in a fresh process (its peak memory is its own). Suites (the logic and what
each measures: :mod:`iformer_mm.analysis.bench`):

* ``perf`` (default): iFormer-S against the authors' data flow (``authors_naive``,
  ``authors_sdpa``: the ``/base`` of every ratio), our ``reference`` and ``ours`` (the kernels of
  :mod:`iformer_mm.ops`), mmdet's Swin-T and the attention floor ``sdpa_only``; backbones,
  whole Mask R-CNN / Semantic FPN models and a training step (docs/performance.md);
* ``compare``: backbones as their Mask R-CNN configs build them, FLOPs both ways, time and
  memory at 800x1344 fwd+bwd and 32x224 forward (docs/comparison.md);
* ``latency``: backbone forward latency of mm configs at 512x512, batch 1 (docs/mobile_iformer.md);
* ``deploy``: ONNX Runtime against PyTorch eager fp32 and ``--amp bf16``, segmentors at 512x512 and
  classifiers at 224 (docs/deploy.md).

Usage::

    python tools/analysis/benchmark.py                 # the perf suite (~55 min idle, 1 thread)
    python tools/analysis/benchmark.py --quick         # small shapes, 1 repeat: a smoke test
    python tools/analysis/benchmark.py --dtype fp32 bf16 --only backbone_224/fwd/ours
    python tools/analysis/benchmark.py --device cuda --dtype fp32 bf16 fp16   # on a GPU
    python tools/analysis/benchmark.py --variants --only ours+   # with_cp / windowed / compile
    python tools/analysis/benchmark.py --suite compare --repeats 2 --json cmp.json
    python tools/analysis/benchmark.py --suite latency --configs CONFIG [CONFIG ...] --shape 512 512
    python tools/analysis/benchmark.py --markdown cmp.json       # the table of an earlier run

Threads: ``--threads`` (default 1: reproducible on a shared machine; several counts run side by
side: ``--threads 1 2``). Reduced precision (``--dtype bf16``, fp16 on CUDA) runs as
``tools/train.py --amp`` trains and ``tools/test.py --amp`` infers.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from iformer_mm.analysis.bench import SUITES, Options, PlanArgs, report, run_cases, summarise
from iformer_mm.analysis.bench.core import DEVICES, DTYPES
from iformer_mm.cli import main_entry


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--suite', choices=sorted(SUITES), default='perf', help='what to measure (default perf)')
    p.add_argument('--quick', action='store_true', help='small shapes, 1 repeat (smoke test)')
    p.add_argument('--only', nargs='+', default=None,
                   help='run only cases whose id (name/mode/impl) contains one of these')
    p.add_argument('--skip', nargs='+', default=None, help='skip cases whose id contains these')
    p.add_argument('--configs', nargs='+', default=(),
                   help='compare/latency: these configs (paths, mmdet:: names or the suite\'s keys)')
    p.add_argument('--shape', type=int, nargs=2, default=None, metavar=('H', 'W'), help='latency: input size')
    p.add_argument('--repeats', type=int, default=None, help='timed runs after warm-up (default 3, quick 1)')
    p.add_argument('--budget', type=float, default=90.0,
                   help='seconds of timed runs per case; slow cases get fewer repeats (>= 1)')
    p.add_argument('--threads', type=int, nargs='+', default=[1], help='torch threads per case (default 1)')
    p.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                   help="CPU: 'cpu' times with the process's CPU time (1 thread: robust to other jobs)")
    p.add_argument('--device', choices=DEVICES, default='cpu',
                   help='cuda: the GPU cases, CUDA-event timing, CUDA peak memory and kernel counts')
    p.add_argument('--dtype', nargs='+', choices=DTYPES, default=['fp32'],
                   help='fp32 (default), bf16, fp16 (CUDA only), side by side')
    p.add_argument('--timeout', type=float, default=1800.0, help='seconds per case before giving up')
    p.add_argument('--json', default=None, help='write all results (and machine info) here')
    p.add_argument('--variants', action='store_true',
                   help='perf: also ours+cp, ours+cp12, ours+win14, ours+compile at the largest size')
    p.add_argument('--no-ops', action='store_true', help='skip counting ATen ops (and CUDA kernels) per step')
    p.add_argument('--breakdown', action='store_true',
                   help="CPU: one profiled run per case: the share of attention, conv, GEMM, copies, "
                        "other, and each fp32 row's bf16 ceiling")
    p.add_argument('--list', action='store_true', help='print the case ids and exit')
    p.add_argument('--markdown', metavar='JSON', default=None,
                   help='print the table of an earlier --json run as markdown and exit')
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            run = json.load(f)
        print(report(run['info'].get('suite', 'perf'), run['results'], markdown=True))
        return 0
    if 'fp16' in args.dtype and args.device != 'cuda':
        print('benchmark: --dtype fp16 runs on CUDA only (CPU autocast is bf16); use --dtype bf16 '
              'on CPU or add --device cuda.', file=sys.stderr)
        return 2
    cases = SUITES[args.suite].plan(PlanArgs(
        quick=args.quick, variants=args.variants, device=args.device, dtypes=tuple(args.dtype),
        threads=tuple(args.threads), clock=args.clock, configs=tuple(args.configs),
        shape=tuple(args.shape) if args.shape else None))
    if args.only:
        cases = [c for c in cases if any(s in c.id for s in args.only)]
    if args.skip:
        cases = [c for c in cases if not any(s in c.id for s in args.skip)]
    if args.list:
        print('\n'.join(c.id for c in cases))
        return 0
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        print(f'benchmark: --device cuda needs a visible CUDA GPU, and torch {torch.__version__} sees '
              'none (CPU build or no driver); run on a GPU machine or use --device cpu.', file=sys.stderr)
        return 2
    opts = Options(repeats=args.repeats, budget=args.budget, count_ops=not args.no_ops,
                   breakdown=args.breakdown, timeout=args.timeout)
    info, results = run_cases(cases, opts, log=lambda line: print(line, flush=True))
    info['suite'] = args.suite
    print()
    print(report(args.suite, results, markdown=args.suite != 'perf'))
    print(f"\nload average start {info['load_start']} end {info['load_end']}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(info=info, results=summarise(results)), f, indent=1)
        print(f'[benchmark] wrote {args.json}')
    return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
    main_entry(main)
