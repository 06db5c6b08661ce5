"""The one benchmark harness (``tools/analysis/benchmark.py`` is its command line).

* :mod:`.core` — :class:`Case` (one measured configuration), :class:`Runner` and
  :func:`register_runner`, the fresh-process worker, timers (wall / CPU clock, CUDA events),
  peak memory (one definition: :func:`peak_gb`), ATen-op and CUDA-kernel counts;
* :mod:`.workloads` — the models, inputs and steps of each case kind, and the built-in
  runners ``eager`` and ``flops``;
* :mod:`.suites` — the suites (``perf``, ``compare``, ``latency``: which cases, which table)
  and :func:`register_suite`;
* :mod:`.deploy` — the ``deploy`` suite and the ``onnxruntime`` runner (ONNX Runtime against
  PyTorch eager fp32 and ``--amp bf16``; needs the ``deploy`` extra to run).

A run: ``cases = SUITES[name].plan(PlanArgs(...))``, then :func:`run_case_in_subprocess` per
case, then the suite's ``table`` (the ``perf`` suite's rows through :func:`summarise` first).
How to add a runner or a suite: the docstrings of :mod:`.core` and :mod:`.suites`.
"""
from .core import (RUNNERS, Case, Options, Runner, Step, count_cuda_kernels, load_avg, peak_gb,
                   register_runner, run_case, run_case_in_subprocess, run_cases)
from .suites import (SUITES, PlanArgs, Suite, format_breakdown, format_markdown, format_table, register_suite,
                     report, summarise)
from . import workloads  # noqa: F401  (registers the built-in runners)
from . import deploy  # noqa: F401,E402  (the deploy suite and the onnxruntime runner)

__all__ = ['Case', 'Options', 'PlanArgs', 'RUNNERS', 'Runner', 'SUITES', 'Step', 'Suite',
           'count_cuda_kernels', 'format_breakdown', 'format_markdown', 'format_table', 'load_avg',
           'peak_gb', 'register_runner', 'register_suite', 'report', 'run_case', 'run_case_in_subprocess', 'run_cases',
           'summarise']
