"""timm's own model tests (``tests/test_models.py`` from the sdist of the installed timm) on the
models we register (``iformer_*`` and ``identityformer_*``), as timm would test a model of its
own: forward/backward, default configs (meta device, dtype changes, classifier resets),
features, fx tracing (forward, backward, scripted), TorchScript scripting, and the
``forward_intermediates`` / ``prune_intermediate_layers`` contract.

timm picks the models of its ``forward_intermediates`` tests from a list of timm module names
(``FEAT_INTER_FILTERS``) that does not name ours; the harness writes a copy of timm's file next
to it with our modules added to that list (and nothing else changed), then runs the copy.

The sdist is fetched once with pip (cached in ``$IFORMER_TIMM_SDIST_DIR`` or
``~/.cache/iformer_mm``); the suite runs in a subprocess with ``-p iformer_mm`` so the names
are registered before timm lists its models. Left out: the hub tests (``*pretrained*``
download weights). To keep CI short the heavy kinds (forward at full size, backward,
TorchScript, fx) run on one model of each family and the cheap kinds (configs on the meta
device, intermediates and pruning at 96 px) on every variant; the runtimes, and the date every
kind last passed on every variant, are in docs/architecture.md ("timm's own test suite").
"""
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Tuple

import pytest
from _subprocess import env_with_repo

timm = pytest.importorskip('timm')
pytest.importorskip('pytest_timeout', reason="timm's test_models.py needs pytest-timeout")

# Run on one model per family (full-size forward, backward, scripting, fx).
HEAVY_KINDS = ('test_model_forward', 'test_model_backward', 'test_model_forward_features',
               'test_model_forward_torchscript', 'test_model_forward_fx', 'test_model_backward_fx',
               'test_model_forward_fx_torchscript')
# Run on every variant: meta-device configs, and the forward_intermediates tests that need our
# modules in FEAT_INTER_FILTERS (96 px inputs).
CHEAP_KINDS = ('test_model_default_cfgs', 'test_model_forward_intermediates_features',
               'test_model_forward_intermediates', 'test_prune_intermediate_layers_contract')
# family: (every registered variant, the model the heavy kinds run on)
FAMILIES = {
    'iformer': (('iformer_small', 'iformer_base', 'iformer_large',
                 'iformer_small_384', 'iformer_base_384', 'iformer_large_384'), 'iformer_small'),
    'identityformer': (('identityformer_s12', 'identityformer_s24', 'identityformer_s36',
                        'identityformer_m36', 'identityformer_m48'), 'identityformer_s12'),
}
# What the harness derives the copy from: the line that starts timm's module list.
FEAT_INTER_LIST = 'FEAT_INTER_FILTERS = ['
SUITE_COPY = 'test_models_with_iformer_mm.py'


def our_timm_modules() -> Tuple[str, ...]:
    """timm's names for the modules that register our models (timm takes the last dotted part)."""
    from iformer_mm.models import metaformer, timm_models
    return tuple(m.__name__.rsplit('.', 1)[-1] for m in (timm_models, metaformer))


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


def suite_with_our_modules(root: Path) -> Path:
    """Write timm's test_models.py, with our modules added to ``FEAT_INTER_FILTERS``, beside it."""
    src = (root / 'tests' / 'test_models.py').read_text()
    assert src.count(FEAT_INTER_LIST) == 1, f"timm's test_models.py no longer has one {FEAT_INTER_LIST!r}"
    names = ''.join(f'{m!r}, ' for m in our_timm_modules())
    out = root / 'tests' / SUITE_COPY
    out.write_text(src.replace(FEAT_INTER_LIST, FEAT_INTER_LIST + names, 1))
    return out


def selection(family: str) -> str:
    """``-k`` expression: the cheap kinds on every variant, all kinds on the family's model."""
    variants, model = FAMILIES[family]
    # ids hold "<model>]", "<model>-..." or "<model>.<tag>]"; "iformer_small]" is not iformer_small_384
    any_variant = ' or '.join(f'{v}{end}' for v in variants for end in (']', '-', '.'))
    cheap = ' or '.join(CHEAP_KINDS)
    return f'({any_variant}) and not pretrained and ({cheap} or {model}] or {model}- or {model}.)'


def run_timm_suite(select: str) -> str:
    """Run timm's suite (with our modules listed) on ``select`` (a ``-k`` expression)."""
    suite = suite_with_our_modules(timm_test_dir())
    env = env_with_repo(OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    res = subprocess.run([sys.executable, '-m', 'pytest', '-v', '-p', 'iformer_mm', '-p', 'no:cacheprovider',
                          f'tests/{suite.name}', '-k', select],
                         cwd=suite.parents[1], env=env, capture_output=True, text=True, timeout=2400)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def passed_kinds(out: str, model: str) -> set:
    """The test kinds that PASSED for exactly ``model`` (not a longer name it prefixes)."""
    return set(re.findall(rf'::(test_\w+)\[(?:[^\]]*-)?{model}(?:\.\w+)?(?:-[^\]]*)?\] PASSED', out))


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_timm_test_models_pass(family):
    """Every selected test passes; each heavy kind ran on the family's model, each cheap kind
    on every registered variant (so a variant missing from timm's lists fails here)."""
    variants, model = FAMILIES[family]
    out = run_timm_suite(selection(family))
    assert ' FAILED' not in out and ' ERROR' not in out, out[-2000:]
    missing = [k for k in HEAVY_KINDS + CHEAP_KINDS if k not in passed_kinds(out, model)]
    for v in variants:
        missing += [f'{k}[{v}]' for k in CHEAP_KINDS if k not in passed_kinds(out, v)]
    assert not missing, (missing, out[-2000:])
