"""tools/analysis/gpu_check.py: the one GPU check runs its code paths on CPU (--device cpu --quick),
writes the same JSON schema and table, keeps a timed-out phase's rows, says in one line when
--device cuda has no GPU, and prints a device run call that fits the device's limits."""
import json
import subprocess
import sys
import time

import pytest
import torch

from _subprocess import REPO, env_with_repo
from iformer_mm.analysis import gpu_check

TOOL = str(REPO / 'tools' / 'analysis' / 'gpu_check.py')


def _schema_ok(report, phases):
    assert report['schema'] == gpu_check.SCHEMA
    assert set(report['phases']) == set(gpu_check.PHASES)
    for p, e in report['phases'].items():
        assert e['status'] in (('ok', 'skipped') if p in phases else ('not selected',)), (p, e)
    assert report['seconds'] >= 0 and report['started'] and report['finished']


def test_quick_cpu_run_checks_golden_and_sdpa_and_writes_json_and_table(tmp_path):
    """The device-independent phases on CPU: every golden row within tolerance, impl='auto' runs
    the CPU kernels (CPU is in MEASURED_WINS), fp16 skipped with its reason, the SDPA table
    names the backend the default call takes; the JSON on disk is the returned report."""
    report = gpu_check.run_check('cpu', str(tmp_path), quick=True, only=['environment', 'sdpa', 'golden'],
                                 log=lambda s: None)
    _schema_ok(report, ('environment', 'sdpa', 'golden'))
    assert report['ok']
    assert json.loads((tmp_path / 'gpu_check.json').read_text()) == json.loads(json.dumps(report, default=str))
    env = report['phases']['environment']['result']
    assert env['torch'] == torch.__version__ and env['gpu'] is None
    golden = report['phases']['golden']['result']
    measured = [r for r in golden['rows'] if r['ok'] is not None]
    assert {(r['model'], r['dtype']) for r in measured} >= {('timm', 'fp32'), ('timm', 'bf16')}
    assert all(r['ok'] and r['kernel_calls'] > 0 for r in measured)
    assert all(r['error'] <= gpu_check.gold.TOL for r in measured if r['dtype'] == 'fp32')
    assert 'fp16' in golden['skipped_dtypes']
    sdpa = report['phases']['sdpa']['result']['rows']
    assert sdpa and all(r['selected'] in ('flash', 'efficient', 'math', 'cudnn') and r['math'] == 'yes' for r in sdpa)
    md = (tmp_path / 'gpu_check.md').read_text()
    for header in ('| phase | status |', '## golden', '| case | model | dtype |', '## sdpa', 'default takes'):
        assert header in md
    assert '- fp16 skipped: CPU autocast' in md


def test_golden_counts_kernel_calls_where_the_rule_forbids_them(tmp_path, monkeypatch):
    """With no measured win (what CUDA has today) impl='auto' must run the reference modules:
    the check counts 0 kernel calls and passes; a kernel that ran anyway fails its row."""
    from iformer_mm.ops import dispatch
    monkeypatch.setattr(dispatch, 'MEASURED_WINS', frozenset())
    res = gpu_check.golden_exactness('cpu', quick=True)
    rows = [r for r in res['rows'] if r['ok'] is not None]
    assert res['ok'] and rows and all(r['kernel_calls'] == 0 and not r['kernels_expected'] for r in rows)
    from iformer_mm.models import iformer
    monkeypatch.setattr(iformer, 'kernel_allowed', lambda impl, x, parts: impl != 'reference')
    res = gpu_check.golden_exactness('cpu', quick=True)
    assert not res['ok']
    assert all(r['ok'] is False for r in res['rows'] if r['ok'] is not None and r['kernel_calls'])


def test_a_phase_past_its_time_box_is_recorded_and_the_next_still_runs(tmp_path, monkeypatch):
    def slow_sdpa(device, quick, rows=None):
        rows.append(dict(input='x', shape=[1], dtype='fp32', selected='math'))
        time.sleep(30)
    monkeypatch.setattr(gpu_check, 'sdpa_backends', slow_sdpa)
    monkeypatch.setitem(gpu_check.BOXES, 'sdpa', (1, 1))
    t0 = time.monotonic()
    report = gpu_check.run_check('cpu', str(tmp_path), quick=True, only=['sdpa', 'environment'], log=lambda s: None)
    assert time.monotonic() - t0 < 20
    sdpa = report['phases']['sdpa']
    assert sdpa['status'] == 'timeout' and 'time box' in sdpa['error']
    assert sdpa['result']['partial'] and sdpa['result']['rows'][0]['input'] == 'x'  # rows so far are kept
    assert report['phases']['environment']['status'] == 'ok' and not report['ok']
    assert '| sdpa | timeout |' in (tmp_path / 'gpu_check.md').read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason='needs a machine without CUDA')
def test_device_cuda_without_a_gpu_exits_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, TOOL, '--device', 'cuda', '--out', str(tmp_path / 'o')],
                       env=env_with_repo(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and '--device cuda' in lines[0] and 'Traceback' not in p.stderr
    assert not (tmp_path / 'o').exists()


def test_the_device_run_call_fits_the_device_limits():
    """One run call: the carried wheels installed, then the check writing into $OUT; within the
    run tool's 2000 characters; a timeout that leaves one rerun inside 15 minutes of device time."""
    call = gpu_check.run_call('.device_carry')
    assert len(call['command']) <= 2000 and call['carry'] == ['.device_carry']
    assert '.device_carry/wheels/*.whl' in call['command']
    assert 'tools/analysis/gpu_check.py --device cuda --out $OUT' in call['command']
    assert gpu_check.default_budget('cuda') + 30 <= call['timeout_s'] <= 8.5 * 60
    assert call['timeout_s'] + gpu_check.RERUN_TIMEOUT_S + 90 <= 15 * 60  # 90 s: the machine's start
    ignored = subprocess.run(['git', 'check-ignore', '-q', '.device_carry/wheels/x.whl'], cwd=REPO)
    assert ignored.returncode == 0  # the wheels never get committed


@pytest.mark.slow
def test_quick_cpu_run_of_every_phase(tmp_path):
    """``--device cpu --quick`` end to end, as CI runs it: every phase ok or skipped with its
    reason, the benchmark rows measured through the harness with their ratios in the table."""
    p = subprocess.run([sys.executable, TOOL, '--device', 'cpu', '--quick', '--out', str(tmp_path)],
                       env=env_with_repo(OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = json.loads((tmp_path / 'gpu_check.json').read_text())
    _schema_ok(report, [p for p in gpu_check.PHASES if p != 'maskrcnn'])  # maskrcnn: only with --stretch
    assert report['phases']['compile']['status'] == 'skipped'
    rows = report['phases']['benchmark']['result']['rows']
    impls = {(r['impl'], r['dtype']) for r in rows if 'median_s' in r}
    assert {('reference', 'bf16'), ('authors_sdpa', 'bf16'), (gpu_check.SWIN, 'bf16'), ('reference', 'fp32')} <= impls
    assert all(r['aten_ops'] > 0 for r in rows if 'median_s' in r)
    md = (tmp_path / 'gpu_check.md').read_text()
    assert '| input | mode | impl | dtype | ms/step | peak GB |' in md and '| reference+cp | bf16 |' in md
    line = next(x for x in md.splitlines() if x.startswith(f'| {gpu_check.BENCH_SHAPES[True][0][0]} | fwdbwd | reference | bf16 |'))
    assert line.split('|')[9].strip() not in ('', '-')  # t/authors


def test_stretch_build_still_running_at_the_deadline_is_stopped_and_recorded(tmp_path):
    """The mmcv build of the stretch runs in its own session: at the phase's deadline it is
    stopped (not left behind) and the report says it did not finish, with its log's tail."""
    log = tmp_path / 'build.log'
    log.write_text('building mmcv._ext\n')
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)
    build = dict(proc=proc, log=str(log), target=str(tmp_path / 'site'), t0=time.monotonic())
    res = gpu_check.maskrcnn_after_build(build, 'cpu', 33, [], log=lambda s: None)
    assert proc.wait(timeout=10) is not None  # stopped
    assert res['ok'] is False and res['build']['finished'] is False and res['rows'] == []
    assert res['build']['log_tail'] == ['building mmcv._ext'] and 'had not finished' in res['notes'][0]
    assert gpu_check.maskrcnn_after_build(None, 'cuda', 10, [])['skipped']


def test_harness_rows_get_kernel_and_swin_ratios_and_timm_swin_gives_four_maps():
    """What the GPU table adds to the harness: CUDA kernels over the authors' and memory over
    Swin-T (timm's where mmdet's cannot be built); timm's Swin-T at a detection-like size that
    is no multiple of the window returns the four stage maps of a dense backbone."""
    from iformer_mm.analysis.bench import summarise
    from iformer_mm.analysis.bench.workloads import timm_swin_t

    def row(impl, t, mem, kernels):
        return dict(kind='backbone', name='bb', impl=impl, mode='fwdbwd', dtype='bf16', median_s=t,
                    peak_cuda_gb=mem, cuda_kernels=kernels)
    rows = {r['impl']: r for r in summarise([row('authors_sdpa', 2.0, 4.0, 1000), row('reference', 1.0, 2.0, 1050),
                                              row(gpu_check.SWIN, 0.5, 1.0, 800)])}
    assert rows['reference']['kernels_vs_base'] == pytest.approx(1.05)
    assert rows['reference']['time_vs_swin'] == pytest.approx(2.0)
    assert rows['reference']['mem_vs_swin'] == pytest.approx(2.0)
    swin = timm_swin_t((96, 160)).eval()
    with torch.no_grad():
        maps = swin(torch.randn(1, 3, 96, 160))
    assert [tuple(m.shape) for m in maps] == [(1, 96, 24, 40), (1, 192, 12, 20), (1, 384, 6, 10), (1, 768, 3, 5)]


def test_the_table_reports_the_targets_from_the_bf16_training_rows():
    """A CUDA-like report: the ratios table, with_cp and compile against eager, and the issue's
    targets read off the bf16 800x1344 fwd+bwd rows (met / NO), not asserted on the run."""
    name = gpu_check.BENCH_SHAPES[False][0][0]

    def row(impl, t, mem, kernels, **kw):
        return dict(kind='backbone', name=name, impl=impl, mode='fwdbwd', dtype='bf16', median_s=t, times=[t],
                    warmup_s=t, peak_cuda_gb=mem, aten_ops=1000, cuda_kernels=kernels, **kw)
    phases = {'benchmark': dict(result=dict(rows=[row('authors_sdpa', 0.2, 10.0, 1000), row('reference', 0.18, 7.0, 1200),
                                                  row(gpu_check.SWIN, 0.1, 5.0, 900)])),
              'with_cp': dict(result=dict(rows=[row('reference+cp', 0.27, 3.5, 1500)])),
              'compile': dict(result=dict(rows=[dict(row('ours+compile', 0.12, 6.0, None), warmup_s=60.12)]))}
    md = '\n'.join(gpu_check._md_measured(gpu_check._measured(phases)))
    assert '| time_vs_base | <= 1.0 | 0.900 | yes |' in md
    assert '| mem_vs_base | <= 0.8 | 0.700 | yes |' in md
    assert '| kernels_vs_base | <= 1.1 | 1.200 | NO |' in md
    assert '| reference+cp | bf16 | 270.0 | 180.0 | 1.50 | 0.50 | - |' in md
    assert '| ours+compile | bf16 | 120.0 | 180.0 | 0.67 | 0.86 | 60.0 |' in md
