"""timm's own model tests (tests/test_models.py of the installed timm's sdist) on identityformer_*.

The sdist of exactly the installed timm version is fetched once with pip (cached in
``$IFORMER_TIMM_SDIST_DIR`` or ``~/.cache/iformer_mm``) and its test_models.py runs in a
subprocess with ``-p iformer_mm`` (so the names are registered before timm's tests list the
models). Hub tests (``*pretrained*``: they download weights) are left out. To keep CI short,
every test of the suite runs on identityformer_s12 and the default-config test on all five
variants; all five passed every non-hub test once (2026-12-02, 40 tests, 4 min 52 s).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

timm = pytest.importorskip('timm')
pytest.importorskip('pytest_timeout', reason="timm's test_models.py needs pytest-timeout")

SELECT = 'identityformer and not pretrained and (identityformer_s12 or default_cfgs)'


def _timm_tests() -> Path:
    cache = Path(os.environ.get('IFORMER_TIMM_SDIST_DIR', Path.home() / '.cache' / 'iformer_mm'))
    root = cache / f'timm-{timm.__version__}'
    if not (root / 'tests' / 'test_models.py').is_file():
        cache.mkdir(parents=True, exist_ok=True)
        res = subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-binary', ':all:', '--no-deps',
                              f'timm=={timm.__version__}', '-d', str(cache)],
                             capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            pytest.skip(f'cannot fetch the timm {timm.__version__} sdist from PyPI: {res.stderr[-300:]}')
        with tarfile.open(cache / f'timm-{timm.__version__}.tar.gz') as tar:
            tar.extractall(cache, filter='data')
    return root


def test_timm_test_models_pass_for_identityformer():
    root = _timm_tests()
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore',
               PYTHONPATH=os.pathsep.join([str(repo), os.environ.get('PYTHONPATH', '')]))
    res = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'iformer_mm', '-p', 'no:cacheprovider',
                          'tests/test_models.py', '-k', SELECT],
                         cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    passed = int(re.search(r'(\d+) passed', out).group(1))
    # 8 test kinds on identityformer_s12 (forward, backward, fx, torchscript, features, cfgs...)
    # + the default-config test on the 4 other variants
    assert passed >= 12 and ' failed' not in out and ' error' not in out, out[-2000:]
