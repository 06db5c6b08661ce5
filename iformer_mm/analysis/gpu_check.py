"""The GPU check: one command, time-boxed phases, one JSON and one markdown table.

``tools/analysis/gpu_check.py`` is its command line. Phases, in order (each has a time box;
the JSON is rewritten after every phase, so a phase that runs out of time is recorded as
``timeout`` and the others are still reported):

* ``environment`` — torch, CUDA, cuDNN, GPU, timm, the OpenMMLab packages present;
* ``sdpa`` — for the attention shapes iFormer-S makes (800x1344 batch 2, 224 batch 64), which
  SDPA backends can run each (flash, memory-efficient, math, cuDNN: enabled one at a time)
  and which one the default call takes (the ATen op it dispatches to), per dtype;
* ``golden`` — the spec's golden cases through the timm model and the mm backbone on the
  device: fp32 (TF32 off) within 1e-4 of the record, bf16/fp16 autocast within 1 % relative
  L2 of fp32, and ``impl='auto'`` runs the kernels of :mod:`iformer_mm.ops` only where
  :data:`~iformer_mm.ops.dispatch.MEASURED_WINS` says (on CUDA: never), counted by call;
* ``benchmark``, ``with_cp``, ``compile`` — cases of the one benchmark harness
  (:mod:`iformer_mm.analysis.bench`): see :func:`benchmark_cases`;
* ``maskrcnn`` — only with an mmcv sdist (``--stretch``): see :func:`maskrcnn_after_build`.

:func:`prepare_carry` downloads what the device lacks and :func:`run_call` gives the device
tool's exact ``run`` call (docs/performance.md, GPU section).

``--device cpu --quick`` runs the same code on tiny shapes (fp32 and bf16; fp16 is skipped
with the reason recorded), which is how CI tests this module.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from . import golden as gold
from .bench import load_avg
from .bench.workloads import autocast

__all__ = ['PHASES', 'SCHEMA', 'PhaseTimeout', 'benchmark_cases', 'check_device', 'default_budget', 'environment',
           'format_run_call', 'golden_exactness', 'kernel_calls', 'maskrcnn_after_build', 'prepare_carry',
           'render_markdown', 'run_benchmark', 'run_call', 'run_check', 'sdpa_backends', 'time_box']

SCHEMA = 'iformer_mm.gpu_check/1'
DTYPES = ('fp32', 'bf16', 'fp16')
_TORCH_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
LOWP_TOL = 0.01  # relative L2 of the fp32 output, bf16/fp16 autocast
# Seconds per phase on CUDA (full run) and on CPU (--quick: most of it is starting a fresh process per
# case, several times slower on a shared machine); a phase also stops at the budget's end.
BOXES = {'environment': (20, 60), 'sdpa': (30, 120), 'golden': (60, 180), 'benchmark': (210, 600),
         'with_cp': (40, 180), 'compile': (150, 300), 'maskrcnn': (600, 600)}  # maskrcnn: what is left
BUDGET = {'cuda': 450.0, 'cpu': 1200.0}  # all phases; on CUDA inside the device run call's timeout_s
PHASES = tuple(BOXES)
# The shapes the backbone benchmark uses (name, h, w, batch): iFormer's attention shapes come from these.
SHAPES = {False: (('800x1344_b2', 800, 1344, 2), ('224_b64', 224, 224, 64)),
          True: (('256x384_b2', 256, 384, 2), ('224_b4', 224, 224, 4))}


class PhaseTimeout(Exception):
    """A phase ran past its time box."""


@contextlib.contextmanager
def time_box(seconds: float) -> Iterator[None]:
    """Raise :class:`PhaseTimeout` in this (main) thread after ``seconds`` (SIGALRM).

    Python code is interrupted between bytecodes; a subprocess waited on is killed by
    ``subprocess.run``'s own clean-up when the exception reaches it.
    """
    def expire(signum: int, frame: Any) -> None:
        raise PhaseTimeout(f'ran past its {seconds:.0f} s time box')
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def default_budget(device: str) -> float:
    """Seconds for all phases together on ``device``."""
    return BUDGET['cuda' if device == 'cuda' else 'cpu']


def check_device(device: str) -> None:
    """One line and exit when ``device`` is ``cuda`` and torch sees no GPU."""
    if device == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(f'gpu_check: --device cuda needs a CUDA GPU, and torch {torch.__version__} sees none '
                         '(CPU build or no driver); run it on a GPU machine, or use --device cpu --quick')


def dtypes_for(device: str) -> Tuple[List[str], Dict[str, str]]:
    """The dtypes checked on ``device`` and, for the others, why not."""
    if device == 'cuda':
        return list(DTYPES), {}
    return ['fp32', 'bf16'], {'fp16': 'CPU autocast computes in bf16; fp16 is checked on CUDA only'}


def _sync(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """fp32 matmuls and convolutions in full fp32 (the golden tolerance is fp32's)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# ============================================================================ environment
def _version(name: str) -> Optional[str]:
    """The installed version of distribution ``name`` if its module imports from here, else None."""
    import importlib.util
    module = {'mmsegmentation': 'mmseg'}.get(name, name)
    try:
        from importlib.metadata import version
        return version(name) if importlib.util.find_spec(module) is not None else None
    except Exception:  # noqa: BLE001  (not installed, or installed without metadata)
        return None


def environment(device: str) -> Dict[str, Any]:
    """What the numbers were measured on."""
    env: Dict[str, Any] = dict(
        python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        cpu_count=os.cpu_count(), threads=torch.get_num_threads(), load_avg=load_avg(),
        sdpa_toggle=_sdpa_toggle_api(),
        packages={n: _version(n) for n in ('timm', 'numpy', 'mmengine', 'mmcv', 'mmdet', 'mmsegmentation')})
    if device == 'cuda':
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, capability=f'{p.major}.{p.minor}', gpu_memory_gb=round(p.total_memory / 2 ** 30, 1),
                   multiprocessors=p.multi_processor_count, tf32_matmul_default=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn_default=torch.backends.cudnn.allow_tf32)
    else:
        env.update(gpu=None, cpu=platform.processor() or platform.machine())
    return env


# ============================================================================ SDPA backends
_BACKENDS = ('flash', 'efficient', 'math', 'cudnn')
# The ATen op ``scaled_dot_product_attention`` dispatches to, per backend (math decomposes).
_BACKEND_OPS = {'_scaled_dot_product_flash_attention': 'flash',
                '_scaled_dot_product_flash_attention_for_cpu': 'flash',
                '_scaled_dot_product_efficient_attention': 'efficient',
                '_scaled_dot_product_cudnn_attention': 'cudnn',
                '_scaled_dot_product_fused_attention_overrideable': 'overrideable'}


def _sdpa_toggle_api() -> str:
    """The feature probe: how this torch enables one SDPA backend at a time."""
    try:
        from torch.nn.attention import sdpa_kernel  # noqa: F401  (torch >= 2.3)
        return 'torch.nn.attention.sdpa_kernel'
    except ImportError:
        return 'torch.backends.cuda.sdp_kernel'


def _only_backend(name: str) -> Optional[Any]:
    """A context enabling only SDPA backend ``name``, or None where this torch has no such backend."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        if name == 'cudnn':
            return None
        return torch.backends.cuda.sdp_kernel(enable_flash=name == 'flash', enable_math=name == 'math',
                                              enable_mem_efficient=name == 'efficient')
    member = {'flash': 'FLASH_ATTENTION', 'efficient': 'EFFICIENT_ATTENTION', 'math': 'MATH',
              'cudnn': 'CUDNN_ATTENTION'}[name]
    return sdpa_kernel([getattr(SDPBackend, member)]) if hasattr(SDPBackend, member) else None


def attention_shapes(h: int, w: int, batch: int, device: str) -> List[Tuple[int, ...]]:
    """The ``(B, heads, N, head_dim)`` query shapes of one iFormer-S forward at ``batch x 3 x h x w``."""
    import torch.nn.functional as F

    from ..models.iformer import InceptionTransformer
    shapes: List[Tuple[int, ...]] = []
    sdpa = F.scaled_dot_product_attention

    def record(q: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        shapes.append(tuple(q.shape))
        return sdpa(q, *args, **kwargs)
    model = InceptionTransformer('small', impl='reference').to(device).eval()
    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad():
            model.forward_features(torch.zeros(batch, 3, h, w, device=device))
    finally:
        F.scaled_dot_product_attention = sdpa
    return list(dict.fromkeys(shapes))


def _selected_backend(q: torch.Tensor) -> str:
    """Which backend the default SDPA call takes for ``q = k = v`` (forward and backward)."""
    import torch.nn.functional as F

    from .opcount import count_ops
    counter = count_ops(lambda: F.scaled_dot_product_attention(q, q, q).sum().backward())
    found = [_BACKEND_OPS[op] for op in counter.by_op if op in _BACKEND_OPS]
    return found[0] if found else 'math'


def sdpa_backends(device: str, quick: bool, rows: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Per attention shape and dtype: the backends that run it, and the one the default call takes.

    ``rows``: a list to append to as rows are measured (a timed-out phase keeps them).
    """
    dtypes, skipped = dtypes_for(device)
    rows = [] if rows is None else rows
    for shape_name, h, w, b in SHAPES[quick]:
        for shape in attention_shapes(h, w, b, device):
            for dt in dtypes:
                g = torch.Generator(device=device).manual_seed(0)
                q = torch.randn(shape, generator=g, device=device).to(_TORCH_DTYPES[dt]).requires_grad_()
                row: Dict[str, Any] = dict(input=shape_name, shape=list(shape), dtype=dt)
                for name in _BACKENDS:
                    ctx = _only_backend(name)
                    if ctx is None:
                        row[name] = 'absent'
                        continue
                    try:
                        with ctx, warnings.catch_warnings():
                            warnings.simplefilter('ignore')  # each refusing backend warns why; the row says it
                            torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
                        _sync(device)
                        row[name] = 'yes'
                    except RuntimeError as e:  # no kernel of that backend for these inputs
                        row[name] = 'no: ' + str(e).strip().splitlines()[0][:120]
                row['selected'] = _selected_backend(q)
                rows.append(row)
    return dict(rows=rows, skipped_dtypes=skipped, toggle=_sdpa_toggle_api())


# ============================================================================ golden exactness
@contextlib.contextmanager
def kernel_calls() -> Iterator[Counter]:
    """Count the calls of :mod:`iformer_mm.ops`'s kernels made by the model while inside."""
    from ..models import iformer as core
    counts: Counter = Counter()
    originals = {name: getattr(core, name) for name in ('inception_mixer_cl', 'fused_mlp')}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)
        return call
    for name, fn in originals.items():
        setattr(core, name, counted(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(core, name, fn)


def _golden_models(golden_dir: Path, variant: str, ckpt: Path, device: str) -> Dict[str, Any]:
    """The timm model (``impl='auto'``) and, where mmengine is installed, the mm backbone."""
    from ..models.iformer import InceptionTransformer
    from ..pretrained import load_pretrained
    models: Dict[str, Any] = {}
    if variant == 'tiny':  # the test-only arch has no timm name
        core = InceptionTransformer(gold.TINY_ARCH, img_size=64, num_classes=10)
        load_pretrained(core, str(ckpt))
    else:
        import timm
        core = timm.create_model('iformer_small', pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(ckpt)))
    models['timm'] = core
    try:
        from ..models.backbone import IFormer
    except ImportError as e:
        models['mm_backbone'] = f'skipped: {e} (carry the wheels that --prepare downloads)'
        return models
    arch, size = (gold.TINY_ARCH, 64) if variant == 'tiny' else ('small', 224)
    bb = IFormer(arch=arch, img_size=size, out_norm=False, drop_path_rate=0.0,
                 init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)))
    bb.init_weights()
    models['mm_backbone'] = bb
    return models


def _outputs(model: Any, kind: str, x: torch.Tensor) -> List[torch.Tensor]:
    """Stage maps (and logits for the timm model), fp32 on the CPU."""
    if kind == 'timm':
        final, stages = model.forward_intermediates(x)
        outs = list(stages) + [model.forward_head(final)]
    else:
        outs = list(model(x))
    return [o.detach().float().cpu() for o in outs]


def golden_exactness(device: str, quick: bool, golden_dir: Optional[str] = None,
                     rows: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Every golden case through both models on ``device``: rows of (case, model, dtype, error, tol,
    ops-kernel calls, ok), appended to ``rows`` if given. ``quick``: the tiny-arch cases only."""
    import tempfile

    from ..ops.dispatch import MEASURED_WINS
    folder = gold.find_dir(golden_dir)
    cases = {c['name']: c for c in gold.load_cases(folder)}
    names = [n for n in gold.CASES if not quick or n.startswith('tiny')]
    dtypes, skipped = dtypes_for(device)
    rows = [] if rows is None else rows
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = {}
        for variant in {gold.variant_of(n) for n in names}:
            ckpts[variant] = Path(tmp) / f'{variant}.pth'
            torch.save(gold.make_state_dict(folder, variant), ckpts[variant])
        for name in names:
            case, variant = cases[name], gold.variant_of(name)
            x = gold.case_input(case).to(device)
            for kind, model in _golden_models(folder, variant, ckpts[variant], device).items():
                if isinstance(model, str):
                    rows.append(dict(case=name, model=kind, dtype='all', ok=None, note=model))
                    continue
                model = model.to(device).eval()
                ref: List[torch.Tensor] = []
                for dt in dtypes:
                    expect_kernels = (torch.device(device).type, _TORCH_DTYPES[dt]) in MEASURED_WINS
                    with torch.no_grad(), kernel_calls() as calls, autocast(device, dt), tf32_off():
                        outs = _outputs(model, kind, x)
                    ran = sum(calls.values())
                    if dt == 'fp32':
                        ref = outs
                        errs = gold.stage_errors(outs[:4], case)
                        if kind == 'timm':
                            errs.append(gold.rel_err(outs[4], case['logits']))
                        metric, tol = 'max rel err vs golden', gold.TOL
                    else:
                        errs = [gold.rel_l2(o, r) for o, r in zip(outs, ref)]
                        metric, tol = 'rel L2 vs fp32', LOWP_TOL
                    err = max(errs)
                    rows.append(dict(case=name, model=kind, dtype=dt, metric=metric, error=err, tol=tol,
                                     kernel_calls=ran, kernels_expected=expect_kernels,
                                     ok=bool(err <= tol and (ran > 0) == expect_kernels)))
    ok = all(r['ok'] for r in rows)  # a skipped model (no mmengine) leaves the check incomplete
    return dict(rows=rows, ok=ok, skipped_dtypes=skipped, golden_dir=str(folder),
                rule='impl=auto runs the ops kernels only on (device, dtype) in MEASURED_WINS: '
                     + ', '.join(f'{d}/{str(t).replace("torch.", "")}' for d, t in sorted(MEASURED_WINS, key=str)))


# ============================================================================ the driver
def _phase_fns(device: str, quick: bool, golden_dir: Optional[str], log: Callable[[str], None],
               build: Optional[Dict[str, Any]] = None) -> Dict[str, Callable[[float, List[Dict[str, Any]]], Dict[str, Any]]]:
    """Each phase as ``fn(seconds, rows) -> result``, appending its rows to ``rows`` as it goes."""
    return {
        'environment': lambda left, rows: environment(device),
        'sdpa': lambda left, rows: sdpa_backends(device, quick, rows),
        'golden': lambda left, rows: golden_exactness(device, quick, golden_dir, rows),
        'benchmark': lambda left, rows: run_benchmark('benchmark', device, quick, left, rows, log),
        'with_cp': lambda left, rows: run_benchmark('with_cp', device, quick, left, rows, log),
        'compile': lambda left, rows: run_benchmark('compile', device, quick, left, rows, log),
        'maskrcnn': lambda left, rows: maskrcnn_after_build(build, device, left, rows, log),
    }


def _write(report: Dict[str, Any], out_dir: Path) -> None:
    """Rewrite the JSON and the markdown (atomically: a killed run leaves the last complete pair)."""
    for name, text in (('gpu_check.json', json.dumps(report, indent=1, default=str)),
                       ('gpu_check.md', render_markdown(report))):
        tmp = out_dir / (name + '.tmp')
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)


def run_check(device: str, out_dir: str, quick: bool = False, budget_s: Optional[float] = None,
              only: Optional[Sequence[str]] = None, golden_dir: Optional[str] = None,
              log: Callable[[str], None] = print, mmcv_sdist: Optional[str] = None) -> Dict[str, Any]:
    """Run the phases in order within ``budget_s`` seconds; write ``gpu_check.{json,md}`` after each.

    With ``mmcv_sdist`` (the stretch), mmcv is built with its CUDA ops in the background from
    the start (the benchmark then shares the CPU with the compiler: its timings say so), and the
    last phase, ``maskrcnn``, gets the rest of the budget (:func:`maskrcnn_after_build`).

    Returns:
        The report (also in ``out_dir/gpu_check.json``); ``report['ok']`` is False if a phase
        failed, ran out of time or a golden row missed its tolerance.
    """
    check_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = budget_s if budget_s is not None else default_budget(device)
    selected = [p for p in PHASES if (not only or p in only) and (p != 'maskrcnn' or mmcv_sdist)]
    report: Dict[str, Any] = dict(schema=SCHEMA, device=device, quick=quick, budget_s=budget,
                                  started=time.strftime('%Y-%m-%d %H:%M:%S %Z'), phases={},
                                  mmcv_build_alongside=bool(mmcv_sdist))
    for p in PHASES:
        report['phases'][p] = dict(status='pending' if p in selected else 'not selected')
    _write(report, out)
    t_start = time.monotonic()
    build = start_mmcv_build(mmcv_sdist) if mmcv_sdist else None
    try:
        _run_phases(report, selected, _phase_fns(device, quick, golden_dir, log, build), budget,
                    1 if device == 'cpu' else 0, out, log)
    finally:  # the build runs in its own session: it would outlive this process
        if build is not None and build['proc'].poll() is None:
            os.killpg(build['proc'].pid, signal.SIGTERM)
    report.update(finished=time.strftime('%Y-%m-%d %H:%M:%S %Z'), seconds=round(time.monotonic() - t_start, 1),
                  ok=all(report['phases'][p]['status'] in ('ok', 'skipped') for p in selected))
    _write(report, out)
    return report


def _run_phases(report: Dict[str, Any], selected: Sequence[str], fns: Dict[str, Callable[..., Dict[str, Any]]],
                budget: float, box_col: int, out: Path, log: Callable[[str], None]) -> None:
    """Each selected phase in its time box (and what is left of ``budget``), the files rewritten after each."""
    t_start = time.monotonic()
    for p in selected:
        left = budget - (time.monotonic() - t_start)
        box = min(BOXES[p][box_col], left)
        entry = report['phases'][p] = dict(status='running', box_s=round(box, 1))
        if box < 1:
            entry.update(status='not run', reason=f'the {budget:.0f} s budget was spent')
            continue
        log(f'[gpu_check] {p}: up to {box:.0f} s')
        t0 = time.monotonic()
        rows: List[Dict[str, Any]] = []
        try:
            with time_box(box):
                result = fns[p](box, rows)
            status = ('skipped' if result.get('skipped') else 'timeout' if result.get('out_of_time')
                      else 'ok' if result.get('ok', True) else 'failed')
            entry.update(status=status, result=result)
        except PhaseTimeout as e:
            entry.update(status='timeout', error=str(e), result=dict(rows=rows, partial=True) if rows else None)
        except Exception as e:  # noqa: BLE001  (recorded; the next phases still run)
            entry.update(status='error', error=f'{type(e).__name__}: {str(e).strip()[:500]}')
        entry['seconds'] = round(time.monotonic() - t0, 1)
        log(f"[gpu_check] {p}: {entry['status']} in {entry['seconds']} s")
        _write(report, out)


# ============================================================================ stretch: mmcv + Mask R-CNN
MMCV_TARGET = '/tmp/mmcv_site'


def start_mmcv_build(sdist: str, target: str = MMCV_TARGET) -> Dict[str, Any]:
    """Start ``pip install`` of the mmcv sdist with its CUDA ops (Hopper only, all cores but two)
    in the background, into ``target``; its log goes to a temporary file."""
    import subprocess
    import tempfile
    log = tempfile.NamedTemporaryFile('w', prefix='mmcv_build_', suffix='.log', delete=False)
    env = dict(os.environ, MMCV_WITH_OPS='1', FORCE_CUDA='1', TORCH_CUDA_ARCH_LIST='9.0',
               MAX_JOBS=str(max(1, (os.cpu_count() or 2) - 2)))
    cmd = [sys.executable, '-m', 'pip', 'install', '-q', '--no-build-isolation', '--no-deps', '--no-index',
           '--target', target, sdist]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return dict(proc=proc, log=log.name, target=target, t0=time.monotonic())


def _log_tail(path: str, n: int = 8) -> List[str]:
    with open(path, errors='replace') as f:
        return [line.rstrip()[:200] for line in f.readlines()[-n:]]


def maskrcnn_after_build(build: Optional[Dict[str, Any]], device: str, seconds: float,
                         rows: List[Dict[str, Any]], log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Wait for the mmcv build within ``seconds``; if it finished, time the harness's Mask R-CNN
    iFormer-S training step (800x1333, batch 1, AdamW through mmengine's AmpOptimWrapper) 20 times
    under fp16 and bf16. A build still running at the deadline is stopped and recorded."""
    if build is None:
        return dict(rows=[], skipped='no mmcv sdist given (--stretch)')
    proc, t_end = build['proc'], time.monotonic() + seconds - 2
    while proc.poll() is None and time.monotonic() < t_end - 30:  # 30 s: the least a step case needs
        time.sleep(2)
    info = dict(build_seconds=round(time.monotonic() - build['t0'], 1), returncode=proc.poll(),
                log_tail=_log_tail(build['log']))
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        return dict(rows=[], build=dict(info, finished=False), ok=False, out_of_time=True,
                    notes=[f"mmcv's CUDA build had not finished after {info['build_seconds']} s: stopped"])
    if proc.returncode != 0:
        return dict(rows=[], build=dict(info, finished=True), ok=False, notes=['the mmcv build failed (log_tail)'])
    os.environ['PYTHONPATH'] = os.pathsep.join([build['target'], os.environ.get('PYTHONPATH', '')])
    from .bench import Case, Options, run_case_in_subprocess
    for dt in ('fp16', 'bf16'):
        left = t_end - time.monotonic()
        c = Case('maskrcnn', 'maskrcnn_train_step_800x1333', 'reference', 'step', (800, 1333), 1, device=device,
                 dtype=dt, suite='gpu')
        r = (run_case_in_subprocess(c, Options(repeats=20, budget=max(left - 20, 1), timeout=left)) if left > 30
             else dict(c.to_dict(), error='not run: the phase ran out of time'))
        rows.append(r)
        log(f"[gpu_check]   {c.id:<48} " + (r.get('error') or f"{_ms(r):.1f} ms/iter over {len(r['times'])} iters"))
    return dict(rows=rows, build=dict(info, finished=True), ok=not any('error' in r for r in rows))

# ============================================================================ the table
def _fmt(v: Any, spec: str = '') -> str:
    if v is None:
        return '-'
    if isinstance(v, float):
        return format(v, spec or '.3g')
    return str(v)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    return (['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
            + ['| ' + ' | '.join(_fmt(c) for c in r) + ' |' for r in rows])


def _md_environment(res: Dict[str, Any]) -> List[str]:
    pk = res.get('packages', {})
    keys = ('gpu', 'capability', 'gpu_memory_gb', 'torch', 'cuda', 'cudnn', 'python', 'sdpa_toggle', 'cpu_count',
            'load_avg')
    return _table(('what', 'value'), [(k, res.get(k)) for k in keys if k in res]
                  + [(n, v or 'absent') for n, v in pk.items()])


def _md_sdpa(res: Dict[str, Any]) -> List[str]:
    rows = [(r['input'], 'x'.join(map(str, r['shape'])), r['dtype'],
             *[r.get(b, '-') if r.get(b, '-') in ('yes', 'absent', '-') else 'no' for b in _BACKENDS], r['selected'])
            for r in res['rows']]
    return _table(('input', 'q shape (B,heads,N,d)', 'dtype', *_BACKENDS, 'default takes'), rows)


def _md_golden(res: Dict[str, Any]) -> List[str]:
    rows = [(r['case'], r['model'], r['dtype'], r.get('metric', r.get('note')), _fmt(r.get('error'), '.2e'),
             r.get('tol'), r.get('kernel_calls'), {True: 'yes', False: 'NO', None: 'skipped'}[r['ok']])
            for r in res['rows']]
    return _table(('case', 'model', 'dtype', 'metric', 'error', 'tol', 'ops kernel calls', 'ok'), rows)


_RENDER = {'environment': _md_environment, 'sdpa': _md_sdpa, 'golden': _md_golden}


def render_markdown(report: Dict[str, Any]) -> str:
    """The report as markdown: a phase table, then one table per phase that has a result."""
    lines = [f"# GPU check ({report['device']}{', quick' if report.get('quick') else ''}), "
             f"started {report['started']}", '']
    lines += _table(('phase', 'status', 'seconds', 'time box s', 'note'),
                    [(p, e['status'], e.get('seconds'), e.get('box_s'),
                      e.get('error') or e.get('reason') or (e.get('result') or {}).get('skipped') or '')
                     for p, e in report['phases'].items()])
    for p, e in report['phases'].items():
        res = e.get('result')
        if not res or not res.get('rows', True):
            continue
        lines += ['', f'## {p}', '']
        lines += _RENDER.get(p, _md_benchmark)(res)
        if res.get('skipped_dtypes'):
            lines += [''] + [f'- {d} skipped: {why}' for d, why in res['skipped_dtypes'].items()]
        if res.get('notes'):
            lines += [''] + [f'- {n}' for n in res['notes']]
    rows = _measured(report['phases'])
    if rows:
        lines += ['', '## benchmark, with_cp, compile: ratios', ''] + _md_measured(rows) + ['', f'- {SWIN_NOTE}']
    return '\n'.join(lines) + '\n'


# ============================================================================ what travels
# Pure-Python wheels the device lacks (its image has torch, timm, numpy, pyyaml, rich, matplotlib,
# opencv): mmengine and its requirements, for the mm backbone's golden rows and the harness.
DEVICE_WHEELS = ('mmengine==0.10.7', 'addict==2.4.0', 'termcolor==3.3.0', 'yapf==0.43.0', 'platformdirs==4.14.9')
# The stretch (Mask R-CNN on the device): mmdet and what it imports that the image lacks, and
# the mmcv sdist to build there with its CUDA ops.
# setuptools < 81: mmcv's setup.py imports pkg_resources.
STRETCH_WHEELS = ('mmdet==3.3.0', 'terminaltables==3.1.10', 'pycocotools==2.0.11', 'shapely==2.2.0',
                  'setuptools==80.9.0')
MMCV_SDIST = 'mmcv==2.1.0'
DEVICE_PYTHON = '3.12'
_PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_17_x86_64', 'manylinux2014_x86_64',
              'manylinux1_x86_64')
RUN_TIMEOUT_S = 510  # the full run (~8 min); of 15 min device time, ~5 min remain for one --only rerun
RERUN_TIMEOUT_S = 240
STRETCH_BUDGET_S, STRETCH_TIMEOUT_S = 540.0, 600  # one call, no rerun


def _pip(args: Sequence[str]) -> None:
    import subprocess
    p = subprocess.run([sys.executable, '-m', 'pip', *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f'gpu_check --prepare: pip {args[0]} failed: {(p.stderr or p.stdout).strip().splitlines()[-1]}')


def prepare_carry(folder: str, stretch: bool = False) -> Dict[str, Any]:
    """Download the wheels the device lacks, for its Python, into ``folder/wheels`` (with
    ``stretch`` also ``folder/stretch`` and the mmcv sdist into ``folder/sdist``).

    ``folder`` must be a git-ignored folder of the repository root (``.device_carry`` is in
    ``.gitignore``): the device run call names it in ``carry``.

    Returns:
        The run call: ``command``, ``carry`` and ``timeout_s`` (:func:`format_run_call`).
    """
    root = Path(folder)
    plats = [a for plat in _PLATFORMS for a in ('--platform', plat)]
    binary = ['download', '--no-deps', '--only-binary=:all:', '--python-version', DEVICE_PYTHON,
              '--implementation', 'cp', *plats]
    _pip([*binary, '-d', str(root / 'wheels'), *DEVICE_WHEELS])
    if stretch:
        _pip([*binary, '-d', str(root / 'stretch'), *STRETCH_WHEELS])
        _pip(['download', '--no-deps', '--no-binary=:all:', '--no-build-isolation', '-d', str(root / 'sdist'),
              MMCV_SDIST])
    files = sorted(f for f in root.rglob('*') if f.is_file())
    return dict(run_call(folder, stretch), files=[str(f.relative_to(root)) for f in files],
                carry_mib=round(sum(f.stat().st_size for f in files) / 2 ** 20, 2))


def run_call(folder: str = '.device_carry', stretch: bool = False) -> Dict[str, Any]:
    """The device tool's ``run`` arguments for the full check (the carried wheels installed first).

    With ``stretch``: the same check with mmcv's CUDA build in the background and Mask R-CNN
    after it, in one longer call (no rerun fits after it).
    """
    wheels = f'{folder}/wheels/*.whl' + (f' {folder}/stretch/*.whl' if stretch else '')
    extra = (f' --stretch {folder}/sdist/mmcv-{MMCV_SDIST.split("==")[1]}.tar.gz --budget {STRETCH_BUDGET_S:.0f}'
             if stretch else '')
    command = ('set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir '
               f'--upgrade --target /tmp/site {wheels} && export PYTHONPATH=$PWD:/tmp/site || exit; '
               f'PYTHONUNBUFFERED=1 python3 tools/analysis/gpu_check.py --device cuda --out $OUT{extra} 2>&1 '
               '| tee $OUT/gpu_check.log')
    return dict(command=command, carry=[folder], timeout_s=STRETCH_TIMEOUT_S if stretch else RUN_TIMEOUT_S)


def format_run_call(call: Dict[str, Any]) -> str:
    """The run call as a reader copies it, with the rerun for phases that did not finish."""
    lines = [f"carried ({call.get('carry_mib', '?')} MiB): {', '.join(call.get('files', []))}", '',
             'device run call:', f"  command: {call['command']}", f"  carry: {json.dumps(call['carry'])}",
             f"  timeout_s: {call['timeout_s']}", '',
             'rerun (only if a phase timed out or failed; the machine is still warm for 30 s): the same command '
             'with "--only PHASE ..." after "--device cuda", '
             f'timeout_s {RERUN_TIMEOUT_S}; then give_back.']
    if '--stretch' in call['command']:
        lines[-1] = 'the stretch call leaves no device time for a rerun; give_back after it.'
    return '\n'.join(lines)


# ============================================================================ benchmark phases
# Through the one harness (:mod:`iformer_mm.analysis.bench`): its cases, fresh-process runner,
# CUDA-event timer, peak memory and ATen-op / CUDA-kernel counts; its ``summarise`` ratios.
SWIN = 'swin_t_timm'  # timm's Swin-T: mmdet's needs mmcv's compiled ops, which the device lacks
GPU_IMPLS = ('reference', 'authors_sdpa', SWIN)
# (name, h, w, batch): the training shape (fwd+bwd) and the inference shape (fwd).
BENCH_SHAPES = {False: (('backbone_800x1344_b2', 800, 1344, 2), ('backbone_224_b64', 224, 224, 64)),
                True: (('backbone_128x192_b1', 128, 192, 1), ('backbone_64_b2', 64, 64, 2))}
BENCH_REPEATS = {False: 10, True: 1}
CASE_TIMEOUT_S = {False: 120.0, True: 240.0}
TARGETS = dict(time_vs_base=1.0, mem_vs_base=0.8, kernels_vs_base=1.1)  # bf16 800x1344 fwd+bwd, reported only


def benchmark_cases(phase: str, device: str, quick: bool) -> List[Any]:
    """The harness cases of ``phase``, most important first (bf16 training shape first).

    * ``benchmark``: iFormer-S with ``impl='reference'`` (what ``impl='auto'`` runs on a GPU),
      the authors' data flow with SDPA and Swin-T, training shape fwd+bwd and inference shape
      fwd, in every dtype; then ``ours`` (``impl='fast'``: do the CPU kernels pay on this device?);
    * ``with_cp``: ``reference+cp`` (gradient checkpointing of every stage), fwd+bwd;
    * ``compile``: ``ours+compile`` (inductor; under compile the reference modules run), fwd+bwd
      in bf16 on CUDA (fp32 on CPU); the warm-up includes compiling.
    """
    from .bench import Case
    dtypes, _ = dtypes_for(device)
    order = sorted(dtypes, key=lambda d: d != 'bf16')
    (n1, h1, w1, b1), (n2, h2, w2, b2) = BENCH_SHAPES[quick]

    def case(impl: str, dt: str, train: bool = True) -> Any:
        name, h, w, b = (n1, h1, w1, b1) if train else (n2, h2, w2, b2)
        return Case('backbone', name, impl, 'fwdbwd' if train else 'fwd', (h, w), b, device=device, dtype=dt,
                    suite='gpu')
    if phase == 'benchmark':
        return ([case(i, dt) for dt in order for i in GPU_IMPLS] + [case(i, dt, False) for dt in order for i in GPU_IMPLS]
                + [case('ours', dt) for dt in (['fp32'] if quick else order)])
    if phase == 'with_cp':
        return [case('reference+cp', dt) for dt in order]
    return [case('ours+compile', 'bf16' if device == 'cuda' else 'fp32')]


def run_benchmark(phase: str, device: str, quick: bool, seconds: float,
                  results: Optional[List[Dict[str, Any]]] = None,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Measure the phase's cases, each in a fresh process, within ``seconds`` (a case that no
    longer fits is recorded as not run); rows are appended to ``results`` if given."""
    if phase == 'compile' and device == 'cpu' and quick:
        return dict(rows=[], skipped='inductor compiles iFormer-S for minutes on a CPU; run without --quick, '
                                     'or on CUDA')
    from .bench import Options, peak_gb, run_case_in_subprocess
    t_end = time.monotonic() + seconds - 2  # end before the phase's time box fires
    results = [] if results is None else results
    for c in benchmark_cases(phase, device, quick):
        left = t_end - time.monotonic()
        if left < 5:
            results.append(dict(c.to_dict(), error='not run: the phase ran out of time'))
            continue
        opts = Options(repeats=BENCH_REPEATS[quick], budget=min(10.0, left / 4),
                       timeout=min(CASE_TIMEOUT_S[quick], left))
        r = run_case_in_subprocess(c, opts)
        results.append(r)
        kernels = f", {r['cuda_kernels']} CUDA kernels" if r.get('cuda_kernels') is not None else ''
        log(f"[gpu_check]   {c.id:<48} " + (r.get('error') or f"{_ms(r):.1f} ms, peak {peak_gb(r):.3f} GB, "
                                                     f"{r.get('aten_ops')} ATen ops{kernels}"))
    return dict(rows=results, swin=SWIN_NOTE, ok=not any('error' in r for r in results),
                out_of_time=any(r.get('error', '').startswith('not run') for r in results))


SWIN_NOTE = ("Swin-T is timm's swin_tiny_patch4_window7_224 built for the input size "
             "(forward_intermediates, NCHW; attention through SDPA with the shift mask); mmdet's Swin-T "
             'has the same layers but needs mmcv with compiled ops, which the device lacks')


def _measured(phases: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every benchmark row of the report, with the harness's ratios against the authors' and Swin-T."""
    rows = [r for p in ('benchmark', 'with_cp', 'compile') for r in (phases.get(p, {}).get('result') or {}).get('rows', [])]
    if not rows:
        return []
    from .bench import summarise
    return summarise(rows)



def _ms(r: Dict[str, Any], key: str = 'median_s') -> Optional[float]:
    return None if r.get(key) is None else 1e3 * r[key]


def _md_benchmark(res: Dict[str, Any]) -> List[str]:
    """A phase's own rows (errors and time-outs included); the ratios are in :func:`_md_measured`."""
    return _table(('case', 'status'), [(f"{r['name']}/{r['mode']}/{r['impl']}@{r['dtype']}",
                                        r.get('error') or f"{_ms(r):.1f} ms") for r in res['rows']])


def _md_measured(rows: List[Dict[str, Any]]) -> List[str]:
    """The benchmark table, then with_cp and torch.compile against eager, then the targets."""
    by = {(r['name'], r['mode'], r['impl'], r['dtype']): r for r in rows if 'median_s' in r}
    lines = _table(('input', 'mode', 'impl', 'dtype', 'ms/step', 'peak GB', 'ATen ops', 'CUDA kernels', 't/authors',
                    'mem/authors', 'kernels/authors', 't/Swin-T', 'mem/Swin-T'),
                   [(f"{r['name']}", r['mode'], r['impl'], r['dtype'], _fmt(_ms(r), '.1f'), _fmt(r.get('peak_gb'), '.3f'),
                     r.get('aten_ops'), r.get('cuda_kernels'),
                     *[_fmt(r.get(k), '.2f') for k in ('time_vs_base', 'mem_vs_base', 'kernels_vs_base',
                                                       'time_vs_swin', 'mem_vs_swin')])
                    for r in rows if 'median_s' in r and '+' not in r['impl']])
    variants = []
    for r in rows:
        if 'median_s' not in r or '+' not in r['impl']:
            continue
        eager = by.get((r['name'], r['mode'], 'reference', r['dtype']))
        compiled = r['impl'].endswith('+compile')
        variants.append((r['impl'], r['dtype'], _fmt(_ms(r), '.1f'), _fmt(_ms(eager) if eager else None, '.1f'),
                         _fmt(r['median_s'] / eager['median_s'] if eager else None, '.2f'),
                         _fmt(r['peak_gb'] / eager['peak_gb'] if eager else None, '.2f'),
                         _fmt(r['warmup_s'] - r['median_s'], '.1f') if compiled else '-'))
    if variants:
        lines += ['', 'Against eager `reference` at the training shape (same dtype):', '']
        lines += _table(('variant', 'dtype', 'ms/step', 'eager ms/step', 't/eager', 'mem/eager', 'compile s'), variants)
    lines += ['', f'Targets (bf16, {BENCH_SHAPES[False][0][0]} fwd+bwd, reference vs the authors + SDPA; reported, '
                  'not tuned on one run):', '']
    lines += _table(('ratio', 'target', 'measured', 'met'), _targets(by))
    return lines


def _targets(by: Dict[Tuple[str, str, str, str], Dict[str, Any]]) -> List[Tuple[Any, ...]]:
    name = BENCH_SHAPES[False][0][0]
    r = by.get((name, 'fwdbwd', 'reference', 'bf16'), {})
    out = []
    for key, target in TARGETS.items():
        v = r.get(key)
        out.append((key, f'<= {target}', _fmt(v, '.3f'), '-' if v is None else ('yes' if v <= target else 'NO')))
    return out
