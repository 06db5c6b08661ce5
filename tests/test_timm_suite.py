"""timm's own model tests (``tests/test_models.py`` from the sdist of the installed timm) on the
models we register (``iformer_*`` and ``identityformer_*``): forward/backward, default configs (meta device, dtype changes,
classifier resets), features, fx tracing (forward, backward, scripted) and TorchScript scripting.

The sdist is fetched once with pip (cached in ``$IFORMER_TIMM_SDIST_DIR`` or
``~/.cache/iformer_mm``); the suite runs in a subprocess with ``-p iformer_mm`` so the names
are registered before timm lists its models. Left out: the hub tests (``*pretrained*``
download weights). To keep CI short every test runs on one model of each family and the config
test on every variant; all of them passed every non-hub test on 2026-12-02 (iFormer: 6 models;
IdentityFormer: 5 models, 40 tests).
"""
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from _subprocess import env_with_repo

timm = pytest.importorskip('timm')
pytest.importorskip('pytest_timeout', reason="timm's test_models.py needs pytest-timeout")

# Test kinds timm runs on every model (its forward_intermediates tests select timm's own
# modules only; ours are in test_model_contract.py and test_timm_backbone.py).
KINDS = ('test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_features',
         'test_model_forward_torchscript', 'test_model_forward_fx', 'test_model_backward_fx',
         'test_model_forward_fx_torchscript')
# family: (-k expression, the model every kind runs on, number of registered variants)
FAMILIES = {
    'iformer': ('(iformer_small or iformer_base or iformer_large) and not pretrained '
                'and (iformer_small and not 384 or default_cfgs)', 'iformer_small', 6),
    'identityformer': ('identityformer and not pretrained and (identityformer_s12 or default_cfgs)',
                       'identityformer_s12', 5),
}


def timm_test_dir() -> Path:
    """The installed timm's own tests folder, from its sdist (downloaded once)."""
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


def run_timm_suite(select: str) -> str:
    """Run timm's test_models.py on ``select`` (a ``-k`` expression); returns the output."""
    root = timm_test_dir()
    env = env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    res = subprocess.run([sys.executable, '-m', 'pytest', '-v', '-p', 'iformer_mm', '-p', 'no:cacheprovider',
                          'tests/test_models.py', '-k', select],
                         cwd=root, env=env, capture_output=True, text=True, timeout=1500)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_timm_test_models_pass(family):
    select, model, variants = FAMILIES[family]
    out = run_timm_suite(select)
    passed = set(re.findall(rf'::(test_\w+)\[[^\]]*{model}[^\]]*\] PASSED', out))
    for kind in KINDS:
        assert kind in passed, (kind, sorted(passed))
    cfgs = re.findall(r'test_model_default_cfgs\[[^\]]*-(\w+)\.\w+\] PASSED', out)
    assert len(set(cfgs)) == variants, cfgs
    assert ' FAILED' not in out and ' ERROR' not in out, out[-2000:]
