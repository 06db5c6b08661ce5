"""The benchmark harness (iformer_mm/analysis/bench, tools/analysis/benchmark.py): the plans of
its suites, the ratios and rates it reports, a runner plugged in, and real (small) runs that
produce every column. Timings themselves are never asserted."""
import json
import subprocess
import sys

import pytest

from _subprocess import env_with_repo

from iformer_mm.analysis import bench
from iformer_mm.analysis.bench import SUITES, Case, Options, PlanArgs, Runner, Step, register_runner
from iformer_mm.analysis.bench.workloads import iformer_backbone


def plan(suite='perf', **kw):
    return SUITES[suite].plan(PlanArgs(**kw))


def _row(impl, t, mem, kind='backbone', mode='fwdbwd', **kw):
    return dict(kind=kind, name='bb', impl=impl, mode=mode, median_s=t, peak_rss_gb=mem, batch=1, **kw)


def test_ratios_and_rates():
    results = [
        dict(kind='matmul', name='matmul_fp32', impl='-', mode='fwd', median_s=1.0, gflops=100.0),
        dict(kind='backbone', runner='flops', name='bb', impl='ours', mode='count', flops=10e9),
        dict(kind='backbone', runner='flops', name='bb', impl='swin_t', mode='count', flops=5e9),
        _row('authors_naive', 10.0, 10.0, aten_ops=3000), _row('authors_sdpa', 4.0, 4.0, aten_ops=2000),
        _row('ours', 3.0, 2.0, aten_ops=4000), _row('swin_t', 1.5, 2.5),
        _row('sdpa_only', 2.0, 0.5, kind='attention', attn_flops=int(70e9)),
    ]
    rows = {r['impl']: r for r in bench.summarise(results) if r.get('runner') != 'flops'}
    assert rows['ours']['time_vs_naive'] == pytest.approx(0.3)
    assert rows['ours']['mem_vs_naive'] == pytest.approx(0.2)
    assert rows['ours']['time_vs_base'] == pytest.approx(0.75)
    assert rows['ours']['mem_vs_base'] == pytest.approx(0.5)
    assert rows['ours']['ops_vs_base'] == pytest.approx(2.0)
    assert rows['ours']['time_vs_swin'] == pytest.approx(2.0)
    # fwd+bwd work = 3 x forward; FLOPs = 2 x MACs
    assert rows['ours']['gflops'] == pytest.approx(2 * 10 * 3 / 3.0)
    assert rows['ours']['frac_of_matmul'] == pytest.approx(0.2)
    assert rows['swin_t']['gflops'] == pytest.approx(2 * 5 * 3 / 1.5)
    assert rows['sdpa_only']['gflops'] == pytest.approx(35.0)  # its own attention FLOPs
    md = bench.format_markdown(bench.summarise(results)).splitlines()
    assert md[0].startswith('| case | mode | impl | dtype | threads | median s | peak GB | t/base')
    assert any('| ours | fp32 | 1 | 3.000 | 2.00 | 0.750 | 0.500 | 0.300 | 2.00 |  |  | 4000 | 2.00 | 20.0 | 20% |  |'
               in line for line in md)
    assert 'ATen ops' in bench.format_table(bench.summarise(results))


def test_threads_run_side_by_side_and_the_bf16_ceiling_follows_amdahl():
    """--threads 1 2: every timed case once per thread count (FLOPs once), ratios only within
    a thread count; an fp32 row with a breakdown gets its bf16 ceiling from the matmul's and
    the attention kernel's measured bf16 speed-ups."""
    cases = plan(quick=True, dtypes=('fp32', 'bf16'), threads=(1, 2))
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    assert 'backbone_224/fwd/ours@bf16#2t' in ids and 'backbone_224/fwd/ours' in ids
    assert sum(c.runner == 'flops' for c in cases) == sum(c.runner == 'flops' for c in plan(quick=True))
    bd = dict(attention=1.0, conv=1.0, gemm=2.0, copy=0.0, other=0.0)  # 25 % attention
    results = []
    for n in (1, 2):
        results += [
            dict(kind='matmul', name='matmul_fp32', impl='-', mode='fwd', dtype='fp32', threads=n, median_s=2.4 / n, gflops=1.0),
            dict(kind='matmul', name='matmul_bf16', impl='-', mode='fwd', dtype='bf16', threads=n, median_s=1.0 / n, gflops=2.4),
            _row('sdpa_only', 1.0, 1.0, kind='attention', dtype='fp32', threads=n),
            _row('sdpa_only', 1.0, 1.0, kind='attention', dtype='bf16', threads=n),
            _row('ours', 4.0 / n, 2.0, dtype='fp32', threads=n, breakdown=bd),
            _row('ours', 2.0 / n, 2.0, dtype='bf16', threads=n)]
    rows = [r for r in bench.summarise(results) if r['impl'] == 'ours']
    for r in rows:
        if r['dtype'] == 'bf16':
            assert r['time_vs_fp32'] == pytest.approx(0.5)  # never across thread counts
        else:
            assert r['bf16_ceiling'] == pytest.approx(1 / (0.25 / 1.0 + 0.75 / 2.4))
    table = bench.format_breakdown(bench.summarise(results))
    assert '| bb b1 | fwdbwd | ours | fp32 | 2 | 4.000 | 25% | 25% | 50% | 0% | 0% |' in table


def test_bf16_inference_rows_store_bf16_weights_and_the_breakdown_accounts_for_the_step():
    """A bf16 forward row is inference as tools/test.py --amp bf16 runs it (conv/linear weights
    stored in bf16, for every model); the profiled breakdown covers the step, attention included."""
    c = Case('backbone', 'bb', 'ours', 'fwd', (64, 96), 1, dtype='bf16', clock='cpu')
    res = bench.run_case(c, Options(repeats=1, budget=1, count_ops=False, breakdown=True))
    assert res['weights'] == 'bf16'
    bd = res['breakdown']
    assert set(bd) == set(bench.core.BREAKDOWN) and bd['attention'] > 0 and bd['gemm'] > 0
    assert 0.2 * res['median_s'] < sum(bd.values()) < 5 * res['median_s']
    res = bench.run_case(Case('backbone', 'bb', 'swin_t', 'fwd', (64, 96), 1, dtype='bf16', clock='cpu'),
                         Options(repeats=1, budget=1, count_ops=False))
    assert res['weights'] == 'bf16'


def test_every_case_id_is_unique_and_acceptance_rows_are_planned():
    ids = [c.id for c in plan(quick=False, variants=True)]
    assert len(ids) == len(set(ids))
    for need in ('backbone_800x1344/fwdbwd/authors_sdpa', 'backbone_800x1344/fwdbwd/ours',
                 'backbone_800x1344/fwdbwd/reference', 'backbone_800x1344/fwdbwd/authors_naive',
                 'backbone_800x1344/fwdbwd/swin_t', 'backbone_800x1344/fwdbwd/sdpa_only',
                 'backbone_224/fwd/authors_sdpa', 'backbone_224/fwd/ours', 'backbone_224_b8/fwd/ours',
                 'backbone_512/fwdbwd/ours', 'backbone_800x1344/fwdbwd/ours+compile'):
        assert need in ids, need
    assert any(i.startswith('maskrcnn_') for i in ids) and any(i.startswith('semfpn_') for i in ids)


@pytest.mark.slow
def test_small_real_run_writes_every_column(repo_root, tmp_path):
    out = tmp_path / 'b.json'
    res = subprocess.run([sys.executable, str(repo_root / 'tools/analysis/benchmark.py'), '--quick',
                          '--only', 'matmul', 'backbone_224/count/ours', 'backbone_224/fwd/authors_sdpa',
                          'backbone_224/fwd/ours', 'backbone_224/fwd/reference', 'backbone_224/fwd/sdpa_only',
                          '--json', str(out)],
                         capture_output=True, text=True, timeout=900, env=env_with_repo())
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r['impl']: r for r in json.loads(out.read_text())['results'] if r['runner'] != 'flops'}
    assert rows['authors_sdpa']['time_vs_base'] == 1.0
    for impl in ('ours', 'reference'):
        r = rows[impl]
        assert r['median_s'] > 0 and r['peak_rss_gb'] > 0 and 0 < r['time_vs_base']
        assert 0 < r['frac_of_matmul'] < 1.5
        assert r['aten_ops'] > 100
    # the path GPUs take issues about as many ops as the released data flow
    assert rows['reference']['ops_vs_base'] <= 1.1
    assert 't/base' in res.stdout and 'ATen ops' in res.stdout


def test_dtype_rows_compare_with_fp32_and_cuda_peak_memory_is_the_memory_column():
    """bf16 rows get t/fp32 and mem/fp32 against the same impl in fp32, their base ratio
    against the baseline *in bf16*, their %mm against the bf16 matmul; on CUDA the memory
    column is max_memory_allocated, not the process RSS."""
    results = [
        dict(kind='matmul', name='matmul_fp32', impl='-', mode='fwd', median_s=1.0, gflops=100.0, dtype='fp32'),
        dict(kind='matmul', name='matmul_bf16', impl='-', mode='fwd', median_s=1.0, gflops=400.0, dtype='bf16'),
        dict(kind='backbone', runner='flops', name='bb', impl='ours', mode='count', flops=10e9),
        _row('authors_sdpa', 4.0, 4.0, dtype='fp32'), _row('ours', 3.0, 2.0, dtype='fp32'),
        _row('authors_sdpa', 2.0, 3.0, dtype='bf16'), _row('ours', 1.0, 2.0, dtype='bf16'),
        _row('swin_t', 0.5, 1.0, dtype='bf16', peak_cuda_gb=0.25),
    ]
    rows = {(r['impl'], r.get('dtype')): r for r in bench.summarise(results)
            if r['kind'] == 'backbone' and r.get('runner') != 'flops'}
    ours16 = rows[('ours', 'bf16')]
    assert ours16['time_vs_fp32'] == pytest.approx(1 / 3)
    assert ours16['mem_vs_fp32'] == pytest.approx(1.0)
    assert ours16['time_vs_base'] == pytest.approx(0.5)  # against authors_sdpa in bf16, not fp32
    assert ours16['time_vs_swin'] == pytest.approx(2.0)
    assert ours16['frac_of_matmul'] == pytest.approx(2 * 10 * 3 / 1.0 / 400.0)
    assert 'time_vs_fp32' not in rows[('ours', 'fp32')]
    assert rows[('swin_t', 'bf16')]['peak_gb'] == 0.25 and rows[('ours', 'bf16')]['peak_gb'] == 2.0
    table = bench.format_table(bench.summarise(results))
    assert 't/fp32' in table and 'ATen ops' in table and 'bf16' in table


def test_cuda_plan_has_the_gpu_cases_baselines_and_dtypes(repo_root):
    cases = plan(quick=False, device='cuda', dtypes=('fp32', 'bf16', 'fp16'))
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    assert all(c.device == 'cuda' for c in cases)
    for dt in ('', '@bf16', '@fp16'):
        for impl in ('authors_naive', 'authors_sdpa', 'reference', 'ours', 'swin_t'):
            assert f'backbone_800x1344_b2/fwdbwd/{impl}{dt}' in ids
            assert f'backbone_224_b64/fwd/{impl}{dt}' in ids
        assert f'maskrcnn_train_step_800x1333/step/ours{dt}' in ids
        assert f'maskrcnn_train_step_800x1333/step/swin_t{dt}' in ids
    by = {c.id: c for c in cases}
    assert by['backbone_800x1344_b2/fwdbwd/ours'].batch == 2
    assert by['backbone_224_b64/fwd/ours@bf16'].batch == 64
    assert by['backbone_800x1344_b2/fwdbwd/ours'].shape == (800, 1344)
    # FLOP counts once per shape, not per dtype
    assert ids.count('backbone_224_b64/count/ours') == 1
    # the command line reaches the same plan, and --list needs no GPU
    res = subprocess.run([sys.executable, str(repo_root / 'tools/analysis/benchmark.py'), '--device', 'cuda',
                          '--dtype', 'fp32', 'fp16', '--only', 'b64/fwd/ours', '--list'],
                         capture_output=True, text=True, timeout=300, env=env_with_repo())
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ['backbone_224_b64/fwd/ours', 'backbone_224_b64/fwd/ours@fp16']


def test_ours_is_built_with_the_kernels_enabled_everywhere():
    """``ours`` must measure the kernels on any device/dtype (impl='fast'), ``reference``
    the modules only: otherwise a bf16 or CUDA row would silently time the reference twice."""
    impls = {m.impl for m in iformer_backbone('ours').modules() if hasattr(m, 'impl')}
    assert impls == {'fast'}
    impls = {m.impl for m in iformer_backbone('reference').modules() if hasattr(m, 'impl')}
    assert impls == {'reference'}


@pytest.mark.skipif(__import__('torch').cuda.is_available(), reason='checks the message shown without CUDA')
def test_cuda_without_a_gpu_and_fp16_on_cpu_exit_2_with_one_clear_line(repo_root):
    tool = [sys.executable, str(repo_root / 'tools/analysis/benchmark.py')]
    res = subprocess.run(tool + ['--device', 'cuda', '--quick'], capture_output=True, text=True, timeout=300,
                         env=env_with_repo())
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and '--device cuda' in lines[0] and '--device cpu' in lines[0], res.stderr
    assert res.stdout == ''
    res = subprocess.run(tool + ['--dtype', 'fp32', 'fp16'], capture_output=True, text=True, timeout=300,
                         env=env_with_repo())
    assert res.returncode == 2
    assert 'fp16' in res.stderr and '--dtype bf16' in res.stderr and 'Traceback' not in res.stderr


def test_a_new_runner_plugs_into_the_loop():
    """Adding a runner is one registered class: the harness times what it prepares, records its
    info, and skips op counting for an engine the dispatcher cannot see."""
    calls = []

    @register_runner('toy')
    class ToyRunner(Runner):
        countable = False

        def prepare(self, case):
            return Step(lambda: calls.append(case.id), info=dict(engine='toy'))
    try:
        res = bench.run_case(Case('backbone', 'bb', 'x', 'fwd', runner='toy'), Options(repeats=2, budget=10))
    finally:
        bench.RUNNERS.pop('toy')
    assert res['engine'] == 'toy' and res['runner'] == 'toy' and len(res['times']) == 2
    assert len(calls) == 3  # warm-up + 2 timed, nothing counted
    assert 'aten_ops' not in res and res['peak_rss_gb'] >= res['base_rss_gb'] > 0


def test_compare_and_latency_suites_plan_the_docs_tables():
    ids = [c.id for c in plan('compare')]
    for key in ('iformer_s', 'caformer_s18', 'convformer_s18', 'poolformer_s24', 'swin_t'):
        for need in (f'det_800x1344/count/{key}', f'cls_224_b32/count/{key}', f'det_800x1344/fwdbwd/{key}',
                     f'cls_224_b32/fwd/{key}'):
            assert need in ids, need
    lat = plan('latency', configs=('iformer_s', 'configs/detection/mask_rcnn_mobile_iformer_m_1x.py'),
               shape=(64, 96))
    assert [c.id for c in lat] == ['latency_64x96/fwd/iformer_s', 'latency_64x96/fwd/mask_rcnn_mobile_iformer_m_1x']
    assert lat[0].config.endswith('mask_rcnn_iformer_s_1x.py') and lat[0].batch == 1
    assert {c.id.split('/')[-1] for c in plan('latency')} == {
        'mobile_iformer_m', 'mobile_iformer_l', 'mobile_iformer_l2', 'iformer_s', 'swin_t'}


def test_compare_table_has_one_line_per_backbone():
    common = dict(kind='backbone', impl='iformer_s', batch=1)
    rows = [dict(common, name='det_800x1344', mode='count', runner='flops', shape=[800, 1344], params=19.48e6,
                 paper_flops=96.8e9, full_flops=246.1e9),
            dict(common, name='cls_224_b32', mode='count', runner='flops', shape=[224, 224], params=19.48e6,
                 paper_flops=4.52e9, full_flops=4.85e9),
            dict(common, name='det_800x1344', mode='fwdbwd', shape=[800, 1344], median_s=18.59, times=[18.59],
                 peak_rss_gb=2.92, base_rss_gb=0.63, peak_minus_base_gb=2.29),
            dict(common, name='cls_224_b32', mode='fwd', shape=[224, 224], median_s=5.09, times=[5.09],
                 peak_rss_gb=1.08, base_rss_gb=0.64, peak_minus_base_gb=0.44, batch=32)]
    lines = SUITES['compare'].table(rows).splitlines()
    assert lines[0].startswith('| backbone | params | FLOPs 800×1344, paper counting |') and '224 ×32 fwd, s' in lines[0]
    assert lines[2] == ('| iFormer-S | 19.48 M | 96.8 G | 246.1 G | 4.52 G | 4.85 G | 18.59 | 2.92 (2.29) | '
                        '5.09 | 1.08 (0.44) |')
