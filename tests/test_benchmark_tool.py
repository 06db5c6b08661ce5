"""tools/analysis/benchmark.py: the ratios and rates it reports are computed right, and a real
(small) run produces every column. Timings themselves are never asserted."""
import json
import subprocess
import sys

import pytest

from tools.analysis import benchmark as bench


def _row(impl, t, mem, kind='backbone', mode='fwdbwd', **kw):
    return dict(kind=kind, name='bb', impl=impl, mode=mode, median_s=t, peak_rss_gb=mem, batch=1, **kw)


def test_ratios_and_rates():
    results = [
        dict(kind='matmul', name='matmul_fp32', impl='-', mode='fwd', median_s=1.0, gflops=100.0),
        dict(kind='flops', name='bb', impl='ours', mode='count', flops=10e9),
        dict(kind='flops', name='bb', impl='swin_t', mode='count', flops=5e9),
        _row('authors_naive', 10.0, 10.0, aten_ops=3000), _row('authors_sdpa', 4.0, 4.0, aten_ops=2000),
        _row('ours', 3.0, 2.0, aten_ops=4000), _row('swin_t', 1.5, 2.5),
        _row('sdpa_only', 2.0, 0.5, kind='attention', attn_flops=int(70e9)),
    ]
    rows = {r['impl']: r for r in bench.summarise(results) if r['kind'] != 'flops'}
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
    assert md[0].startswith('| case | mode | impl | median s | peak RSS GB | t/base')
    assert any('| ours | 3.000 | 2.00 | 0.750 | 0.500 | 0.300 | 2.00 | 4000 | 2.00 | 20.0 | 20% |' in line
               for line in md)
    assert 'ATen ops' in bench.format_table(bench.summarise(results))


def test_every_case_id_is_unique_and_acceptance_rows_are_planned():
    ids = [bench.case_id(c) for c in bench.plan(quick=False, variants=True)]
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
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r['impl']: r for r in json.loads(out.read_text())['results'] if r['kind'] != 'flops'}
    assert rows['authors_sdpa']['time_vs_base'] == 1.0
    for impl in ('ours', 'reference'):
        r = rows[impl]
        assert r['median_s'] > 0 and r['peak_rss_gb'] > 0 and 0 < r['time_vs_base']
        assert 0 < r['frac_of_matmul'] < 1.5
        assert r['aten_ops'] > 100
    # the path GPUs take issues about as many ops as the released data flow
    assert rows['reference']['ops_vs_base'] <= 1.1
    assert 't/base' in res.stdout and 'ATen ops' in res.stdout
