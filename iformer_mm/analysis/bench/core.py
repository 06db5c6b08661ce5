"""The measuring loop of the benchmark: a case, runners, timers, memory, op and kernel counts.

A :class:`Case` is one measured configuration. :func:`run_case_in_subprocess` hands it, once,
to a fresh Python process (so one case's peak memory never leaks into another's), where
:func:`measure` asks the case's :class:`Runner` for a :class:`Step` and times it.

**Adding a runner** (another way to execute the same workload: ONNX Runtime, ``torch.compile``,
a GPU-only mode) is one class::

    @register_runner('onnxruntime')
    class OrtRunner(Runner):
        countable = False          # ATen ops / CUDA kernels do not apply to this engine

        def prepare(self, case: Case) -> Step:
            model, x = ...         # e.g. workloads.backbone_model(case) and an input
            sess = ...             # export + InferenceSession
            return Step(lambda: sess.run(None, {'x': x}), info={'engine': 'ort'})

and cases that name it (``Case(runner='onnxruntime', ...)``, listed by a suite in
:mod:`.suites`). Timing, memory, repeats, the table and the JSON come from here unchanged.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

__all__ = ['Case', 'Options', 'RUNNERS', 'Runner', 'Step', 'count_cuda_kernels', 'current_rss_gb',
           'load_avg', 'measure', 'peak_gb', 'peak_rss_gb', 'register_runner', 'run_case', 'run_cases',
           'run_case_in_subprocess',
           'time_runs', 'timer']

DEVICES = ('cpu', 'cuda')
DTYPES = ('fp32', 'bf16', 'fp16')
TORCH_DTYPE = {'bf16': 'bfloat16', 'fp16': 'float16'}
RESULT_TAG = '@@RESULT '


@dataclass(frozen=True)
class Case:
    """One measured configuration.

    Attributes:
        kind: the workload (:data:`iformer_mm.analysis.bench.workloads.WORKLOADS` key):
            ``matmul``, ``backbone``, ``attention``, ``maskrcnn``, ``semfpn``.
        name: the row's name (the input size and batch, or the backbone).
        impl: the model variant (``ours``, ``authors_sdpa``, ``swin_t``...), or a config name.
        mode: ``fwd`` (eval, no grad), ``fwdbwd`` (train mode, backward of the summed
            outputs), ``step`` (a whole training step with the optimizer) or ``count`` (FLOPs).
        runner: how the step runs (:data:`RUNNERS`): ``eager`` or ``flops``.
        config: the mm config a ``backbone`` of a config is built from (``impl`` is then its label).
    """
    kind: str
    name: str
    impl: str
    mode: str
    shape: Tuple[int, int] = (224, 224)
    batch: int = 1
    device: str = 'cpu'
    dtype: str = 'fp32'
    threads: int = 1
    clock: str = 'wall'
    runner: str = 'eager'
    config: Optional[str] = None
    suite: str = 'perf'

    @property
    def id(self) -> str:
        """``name/mode/impl``, with ``@dtype`` for every dtype but fp32 and ``#Nt`` for N > 1 threads."""
        return (f'{self.name}/{self.mode}/{self.impl}' + ('' if self.dtype == 'fp32' else f'@{self.dtype}')
                + ('' if self.threads == 1 else f'#{self.threads}t'))

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d['shape'] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'Case':
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw['shape'] = tuple(kw.get('shape', (224, 224)))
        return cls(**kw)


@dataclass(frozen=True)
class Options:
    """How every case of a run is measured."""
    repeats: int = 3
    budget: float = 90.0  # seconds of timed runs per case; slow cases get fewer repeats (>= 1)
    count_ops: bool = True  # ATen ops of one step (CPU and CUDA), CUDA kernels of one step on CUDA
    breakdown: bool = False  # CPU: profiler self time per op group
    timeout: float = 1800.0


@dataclass
class Step:
    """What a runner prepared: ``fn`` runs one step; ``info`` goes into the result row."""
    fn: Callable[[], Any]
    info: Dict[str, Any] = field(default_factory=dict)
    countable: bool = True  # ATen ops / CUDA kernels / breakdown make sense for it


class Runner:
    """Executes a case's workload. Subclasses implement :meth:`prepare`; :func:`measure` times
    what it returns. ``countable = False`` for engines the PyTorch dispatcher does not see."""
    countable = True

    def prepare(self, case: Case) -> Step:
        raise NotImplementedError

    def measure(self, case: Case, opts: Options) -> Dict[str, Any]:
        return measure(self.prepare(case), case, opts, countable=self.countable)


RUNNERS: Dict[str, Type[Runner]] = {}


def register_runner(name: str) -> Callable[[Type[Runner]], Type[Runner]]:
    """Class decorator: make a :class:`Runner` available as ``Case(runner=name)``."""
    def add(cls: Type[Runner]) -> Type[Runner]:
        RUNNERS[name] = cls
        return cls
    return add


# ============================================================================ primitives
def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB, 1e9 bytes): the CPU memory figure."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


def current_rss_gb() -> float:
    """Resident memory of this process now (GB): the base the activations are counted from."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e9


def peak_gb(r: Dict[str, Any]) -> Optional[float]:
    """The one memory figure of a result: CUDA peak allocation on a GPU, else the peak RSS."""
    return r['peak_cuda_gb'] if r.get('peak_cuda_gb') is not None else r.get('peak_rss_gb')


def load_avg() -> List[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def timer(device: str, clock: str = 'wall') -> Callable[[Callable[[], Any]], float]:
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


def time_runs(fn: Callable[[], Any], repeats: int, budget: float, device: str = 'cpu',
              clock: str = 'wall') -> Tuple[List[float], float]:
    """One warm-up, then up to ``repeats`` timed runs within ``budget`` seconds (>= 1)."""
    timed = timer(device, clock)
    warm = timed(fn)
    n = max(1, min(repeats, int(budget // max(warm, 1e-6))))
    return [timed(fn) for _ in range(n)], warm


def count_cuda_kernels(fn: Callable[[], Any]) -> int:
    """CUDA kernels launched by one run of ``fn`` (the profiler's CUDA activity)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if getattr(e, 'device_type', None) == torch.autograd.DeviceType.CUDA)


# Where a step's CPU time goes (``--breakdown``): ATen ops by self time, in these groups.
OP_GROUPS = (('attention', ('attention',)), ('conv', ('conv',)),
             ('gemm', ('addmm', 'aten::mm', 'bmm', 'matmul', 'linear')),
             ('copy', ('copy_', '_to_copy', 'clone', 'contiguous', 'cat')))
BREAKDOWN = tuple(g for g, _ in OP_GROUPS) + ('other',)


def op_breakdown(fn: Callable[[], Any]) -> Dict[str, float]:
    """Self CPU seconds of one run of ``fn`` per op group (:data:`BREAKDOWN`), from the profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    out = dict.fromkeys(BREAKDOWN, 0.0)
    for ev in prof.key_averages():
        if not ev.key.startswith('aten::'):
            continue  # Python-level and autograd wrappers: their ops are counted themselves
        group = next((g for g, keys in OP_GROUPS if any(k in ev.key for k in keys)), 'other')
        out[group] += ev.self_cpu_time_total / 1e6
    return out


# ============================================================================ measuring
def measure(step: Step, case: Case, opts: Options, countable: bool = True) -> Dict[str, Any]:
    """Time ``step`` (warm-up, then repeats), its peak memory, then one counted run each of
    ATen ops (and CUDA kernels on a GPU) and, with ``opts.breakdown``, the profiler's groups."""
    import torch
    res: Dict[str, Any] = case.to_dict()
    res.update(step.info)
    res['base_rss_gb'] = current_rss_gb()
    times, warm = time_runs(step.fn, opts.repeats, opts.budget, case.device, case.clock)
    res.update(times=times, warmup_s=warm, median_s=statistics.median(times), peak_rss_gb=peak_rss_gb())
    res['peak_minus_base_gb'] = res['peak_rss_gb'] - res['base_rss_gb']
    if case.device == 'cuda':  # allocated by tensors since this case began (warm-up included)
        res['peak_cuda_gb'] = torch.cuda.max_memory_allocated() / 1e9
    countable = countable and step.countable
    if opts.count_ops and countable:
        from ..opcount import count_ops
        res['aten_ops'] = count_ops(step.fn).total  # after timing: the counting mode is slow
        if case.device == 'cuda':
            res['cuda_kernels'] = count_cuda_kernels(step.fn)
    if opts.breakdown and countable and case.device == 'cpu':
        res['breakdown'] = op_breakdown(step.fn)
    return res


def run_case(case: Case, opts: Options) -> Dict[str, Any]:
    """Measure ``case`` in this process (call it in a fresh one: :func:`run_case_in_subprocess`)."""
    import torch
    import iformer_mm  # noqa: F401  (registers the models)
    from . import deploy, workloads  # noqa: F401  (register the runners)
    torch.set_num_threads(case.threads)
    if case.device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    if case.runner not in RUNNERS:
        raise ValueError(f'unknown runner {case.runner!r}; registered: {sorted(RUNNERS)}')
    return RUNNERS[case.runner]().measure(case, opts)


def worker_main() -> None:
    """The fresh process's side: one ``{case, options}`` JSON on stdin, one result line out."""
    msg = json.loads(sys.stdin.read())
    res = run_case(Case.from_dict(msg['case']), Options(**msg['options']))
    print(RESULT_TAG + json.dumps(res), flush=True)


def run_case_in_subprocess(case: Case, opts: Options) -> Dict[str, Any]:
    """Measure ``case`` in a fresh Python process on ``case.threads`` threads.

    Returns:
        The result row, or the case with ``error`` (the last lines of the worker's stderr).
    """
    n = str(case.threads)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    path = os.pathsep.join([root] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, PYTHONPATH=path)
    code = 'from iformer_mm.analysis.bench.core import worker_main; worker_main()'
    msg = json.dumps(dict(case=case.to_dict(), options=dataclasses.asdict(opts)))
    t0 = time.time()
    try:
        p = subprocess.run([sys.executable, '-c', code], input=msg, env=env, capture_output=True,
                           text=True, timeout=opts.timeout)
    except subprocess.TimeoutExpired:
        return dict(case.to_dict(), error=f'timed out after {opts.timeout:.0f} s')
    for line in p.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            r = json.loads(line[len(RESULT_TAG):])
            r['wall_s'] = time.time() - t0
            return r
    err = (p.stderr or '').strip().splitlines()[-3:]
    return dict(case.to_dict(), error=f'exit {p.returncode}: ' + ' | '.join(err))


def run_cases(cases: List[Case], opts: Options, log: Callable[[str], Any] = print) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Measure every case in its own process, logging one line each.

    Returns:
        ``(info, results)``: the machine and load before/after, and one result row per case.
    """
    import torch
    info = dict(torch=torch.__version__, threads=sorted({c.threads for c in cases}), cpu_count=os.cpu_count(),
                device=cases[0].device if cases else 'cpu', load_start=load_avg(),
                started=time.strftime('%Y-%m-%d %H:%M:%S'))
    if info['device'] == 'cuda':
        info['gpu'] = torch.cuda.get_device_name()
    log(f"[benchmark] {len(cases)} cases, load average at start {info['load_start']}")
    results = []
    for c in cases:
        r = run_case_in_subprocess(c, opts)
        r['load_after'] = load_avg()
        results.append(r)
        if 'error' in r:
            msg = r['error']
        elif c.runner == 'flops':
            msg = f"{(r['flops'] or 0) / 1e9:.2f} GMACs forward (with attention)"
        else:
            msg = (f"{r['median_s']:.3f} s (runs {['%.2f' % t for t in r['times']]}), "
                   f"peak {peak_gb(r):.2f} GB")
        log(f'[benchmark] {c.id:<45} {msg}  load {r["load_after"]}')
    info['load_end'] = load_avg()
    return info, results
