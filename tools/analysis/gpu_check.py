"""The GPU check: environment, SDPA backends, golden exactness and the benchmark on CUDA, in one run.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out`` after every phase (each phase is
time-boxed; the whole stays within ``--budget`` seconds). Logic:
:mod:`iformer_mm.analysis.gpu_check`.

Usage::

    python tools/analysis/gpu_check.py --device cuda --out $OUT            # on a GPU, <= 8 min
    python tools/analysis/gpu_check.py --device cpu --quick --out /tmp/gc  # the same code on CPU
    python tools/analysis/gpu_check.py --prepare .device_carry             # wheels the device lacks,
                                                                           # and the exact run call
    python tools/analysis/gpu_check.py --prepare .device_carry --stretch   # + mmdet, the mmcv sdist

On a lent device machine (no network, no OpenMMLab packages) the command that ``--prepare``
prints installs the carried wheels first; docs/performance.md's GPU section has it.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional, Sequence

from iformer_mm.analysis import gpu_check
from iformer_mm.cli import main_entry


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=('cuda', 'cpu'), default='cuda',
                        help='cuda (default): the full check; cpu: the same code paths (with --quick in CI)')
    parser.add_argument('--quick', action='store_true', help='tiny shapes and fewer repeats (a smoke test)')
    parser.add_argument('--out', default=os.environ.get('OUT') or 'work_dirs/gpu_check',
                        help='folder for gpu_check.json and gpu_check.md (default $OUT, else work_dirs/gpu_check)')
    parser.add_argument('--budget', type=float, default=None,
                        help=f'seconds for all phases together (default {gpu_check.default_budget("cuda"):.0f} on '
                             f'CUDA, {gpu_check.default_budget("cpu"):.0f} on CPU; each phase has its own time box too)')
    parser.add_argument('--only', nargs='+', choices=gpu_check.PHASES, default=None,
                        help='run only these phases (e.g. to rerun the ones that timed out)')
    parser.add_argument('--golden', default=None,
                        help='folder of the golden cases (default: tests/assets/golden of this checkout)')
    parser.add_argument('--prepare', metavar='DIR', default=None,
                        help='download the wheels the device lacks into DIR (git-ignored) and print the '
                             'exact device run call; runs nothing else')
    parser.add_argument('--stretch', nargs='?', const='', default=None, metavar='MMCV_SDIST',
                        help='with --prepare: also mmdet\'s wheels and the mmcv sdist; in a run: build that '
                             'sdist with CUDA ops in the background, then time Mask R-CNN steps (phase maskrcnn)')
    args = parser.parse_args(argv)
    if args.prepare:
        call = gpu_check.prepare_carry(args.prepare, stretch=args.stretch is not None)
        print(gpu_check.format_run_call(call))
        return 0
    if args.stretch == '':
        raise SystemExit('gpu_check: --stretch needs the mmcv sdist to build (e.g. .device_carry/sdist/mmcv-2.1.0.tar.gz) '
                         'when it is not used with --prepare')
    report = gpu_check.run_check(args.device, args.out, quick=args.quick, budget_s=args.budget,
                                 only=args.only, golden_dir=args.golden, mmcv_sdist=args.stretch or None)
    print(Path(args.out, 'gpu_check.md').read_text())
    print(f"[gpu_check] {'all phases ok' if report['ok'] else 'NOT all phases ok'} in {report['seconds']} s; "
          f'wrote {args.out}/gpu_check.json and gpu_check.md')
    return 0 if report['ok'] else 1


if __name__ == '__main__':
    main_entry(main)
