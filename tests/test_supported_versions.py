"""The supported range (torch 2.1 to the newest) is honoured and told truthfully.

* :mod:`iformer_mm.compat`: the feature probes work on the installed torch, and a feature the
  installed torch lacks (the ``weights_only`` allow-list before torch 2.4) ends in one line
  naming the torch needed, never an ``AttributeError``;
* ``python -m iformer_mm.env``: OK inside the tested range, a warning outside it, an error
  where it is known to break, and an mmcv compiled for another torch named with its fix.
"""
import argparse
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

from _subprocess import env_with_repo
from conftest import SHARED
from iformer_mm import compat
from iformer_mm.engine.stack_check import MMCV_REBUILD, check_versions, format_report, installed_versions
from iformer_mm.pretrained import CheckpointError, load_checkpoint_file

GOOD = {'python': '3.11.7', 'torch': '2.13.0+cpu', 'torchvision': '0.28.0', 'timm': '1.0.31',
        'numpy': '2.4.6', 'mmengine': '0.10.7', 'mmcv': '2.1.0', 'mmdet': '3.3.0',
        'mmsegmentation': '1.2.2', 'pycocotools': '2.0', 'ftfy': '6.0', 'regex': '2024.1'}


# --------------------------------------------------------------------------- the env check
@pytest.mark.parametrize('changes, component, level, says', [
    # inside the tested range: OK
    ({'torch': '2.1.2', 'torchvision': '0.16.2', 'numpy': '1.26.4'}, None, 'ok', ''),
    ({'torch': '2.14.1', 'torchvision': '0.29.1'}, None, 'ok', ''),
    ({'python': '3.10.12', 'timm': '1.0.30'}, None, 'ok', ''),
    # outside it: a warning that blocks nothing
    ({'torch': '2.15.0', 'torchvision': '0.30.0'}, 'torch', 'warn', 'newer than the tested range'),
    ({'timm': '1.1.0'}, 'timm', 'warn', 'outside the tested range'),
    ({'python': '3.14.0'}, 'python', 'warn', 'newer than the tested'),
    ({'numpy': '3.0.0'}, 'numpy', 'warn', 'outside the tested'),
    # known to break: an error with the fix
    ({'torch': '2.0.1', 'torchvision': '0.15.2', 'numpy': '1.26.4'}, 'torch', 'error', 'older than 2.1'),
    ({'torch': '1.13.1', 'numpy': '1.26.4'}, 'torch', 'error', 'older than 2.1'),
    ({'timm': '1.0.29'}, 'timm', 'error', 'older than 1.0.30'),
    ({'torch': '2.1.2', 'torchvision': '0.16.2', 'numpy': '2.0.2'}, 'numpy', 'error', 'built against NumPy 1'),
    ({'numpy': '1.24.4'}, 'numpy', 'error', 'older than 1.25'),
    ({'python': '3.9.18'}, 'python', 'error', 'older than 3.10'),
])
def test_env_judges_the_tested_range(changes, component, level, says):
    found = check_versions(dict(GOOD, **changes))
    flagged = [f for f in found if f.level != 'ok']
    if component is None:
        assert not flagged, flagged
        return
    assert [(f.component, f.level) for f in flagged] == [(component, level)], flagged
    assert says in flagged[0].message
    if level == 'error':
        assert flagged[0].fix and 'pip install' in flagged[0].fix or 'Python' in flagged[0].fix
    else:  # an untested version is reported, but no tool refuses to run over it
        assert flagged[0].tasks == ()
    report = format_report(dict(GOOD, **changes), found)
    assert report.splitlines()[-1].startswith({'warn': 'VERDICT: OK with 1 warning', 'error': 'VERDICT: BROKEN'}[level])


def test_numpy2_fix_keeps_torch_pinned():
    bad = [f for f in check_versions(dict(GOOD, torch='2.1.2', torchvision='0.16.2', numpy='2.1.0'))
           if f.level == 'error']
    assert bad[0].fix == 'pip install "numpy<2" torch==2.1.2'


def _wrong_mmcv_ext(tmp_path):
    """mmcv's C++ extension from the shared wheel built for the *other* torch of the two stacks."""
    other = 'wheels' if torch.__version__.startswith('2.1.') else 'wheels/torch2.1'
    wheel = SHARED.joinpath(*other.split('/'), 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl')
    if not wheel.is_file():  # a 1.4 MB compiled wheel per stack: CI's ../shared has them, a clone does not
        pytest.skip(f'{wheel} not found (set IFORMER_SHARED to the shared/ folder)')
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.startswith('mmcv/_ext') and n.endswith('.so'))
        return z.extract(name, tmp_path)


def test_mmcv_built_for_another_torch_is_named_with_its_fix(tmp_path):
    """What a pip cache (or --find-links) from another stack installs: mmcv._ext compiled for
    another torch. The env check names it in one line, with the rebuild that fixes it."""
    pytest.importorskip('mmcv')
    so = _wrong_mmcv_ext(tmp_path)
    code = ("import importlib.machinery as m, importlib.util as u, sys\n"
            f"loader = m.ExtensionFileLoader('mmcv._ext', {so!r})\n"
            f"spec = u.spec_from_file_location('mmcv._ext', {so!r}, loader=loader)\n"
            "class WrongExt:  # mmcv._ext comes from the other stack's wheel\n"
            "    find_spec = staticmethod(lambda name, path=None, target=None: spec if name == 'mmcv._ext' else None)\n"
            "sys.meta_path.insert(0, WrongExt)\n"
            "from iformer_mm.env import main\n"
            "sys.exit(main(['--quick']))\n")
    res = subprocess.run([sys.executable, '-c', code], env=env_with_repo(OMP_NUM_THREADS='1'),
                         capture_output=True, text=True, timeout=300)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert 'Traceback' not in out + res.stderr
    lines = out.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith('  [FAIL] mmcv ops:'))
    assert f'mmcv._ext was compiled for another torch, not torch {installed_versions()["torch"]}' in lines[i]
    assert 'undefined symbol' in lines[i]
    assert lines[i + 1].strip() == f'fix: {MMCV_REBUILD}'
    assert '--no-cache-dir --force-reinstall' in MMCV_REBUILD
    assert [line for line in lines if line.startswith('  [FAIL]')] == [lines[i]]


# --------------------------------------------------------------------------- compat probes
def test_graph_capture_probe_sees_fx_jit_and_plain_calls():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(compat.is_graph_capture())
            return x + 1

    Probe()(torch.zeros(1))
    torch.fx.symbolic_trace(Probe())
    torch.jit.trace(Probe(), torch.zeros(1), check_trace=False)
    assert seen == [False, True, True]
    assert compat.is_fx_tracing() is False and compat.is_compiling() is False


def test_autocast_dtype_probe():
    assert compat.autocast_dtype('cpu') is None
    with torch.autocast('cpu', torch.bfloat16):
        assert compat.autocast_dtype('cpu') is torch.bfloat16
        assert compat.autocast_dtype('cuda') is None


def _namespace_file(tmp_path):
    path = tmp_path / 'authors.pth'
    torch.save({'model': {'w': torch.ones(2)}, 'args': argparse.Namespace(lr=1e-3)}, path)
    return path


def test_allow_list_reads_what_it_allows(tmp_path):
    """On a torch with the allow-list, the listed object loads and nothing else is needed."""
    if not compat.HAS_SAFE_GLOBALS:
        pytest.skip(f'torch {torch.__version__} has no weights_only allow-list '
                    '(the next test covers what it says instead)')
    path = _namespace_file(tmp_path)
    with compat.safe_globals([argparse.Namespace], what=str(path), error=CheckpointError):
        ck = load_checkpoint_file(path)
    assert ck['args'].lr == 1e-3
    with pytest.raises(CheckpointError, match='argparse.Namespace'):
        load_checkpoint_file(path)  # the allow-list ends with the block


@pytest.mark.parametrize('has_allow_list', [False, None])
def test_torch_without_allow_list_names_the_torch_needed(tmp_path, monkeypatch, has_allow_list):
    """torch < 2.4 (simulated on a newer torch with ``False``; ``None``: the installed torch as it
    is, which on torch 2.1 really lacks it): plain tensor files still load inside the block, and
    a file that needs the allow-list is refused with one line naming torch >= 2.4."""
    if has_allow_list is None and compat.HAS_SAFE_GLOBALS:
        pytest.skip(f'torch {torch.__version__} has the allow-list (the simulated case covers this)')
    if has_allow_list is False:
        if not compat.load_defaults_to_weights_only() and not compat.HAS_SAFE_GLOBALS:
            pytest.skip('the real case runs on this torch')
        monkeypatch.setattr(compat, 'HAS_SAFE_GLOBALS', False)
    plain = tmp_path / 'plain.pth'
    torch.save({'w': torch.ones(2)}, plain)
    path = _namespace_file(tmp_path)
    with compat.safe_globals([argparse.Namespace], what=str(plain), error=CheckpointError):
        assert load_checkpoint_file(plain)['w'].sum() == 2
    with pytest.raises(CheckpointError) as e:
        with compat.safe_globals([argparse.Namespace], what=str(path), error=CheckpointError):
            load_checkpoint_file(path)
    msg = str(e.value)
    assert msg.startswith(f'{path} holds Python objects besides tensors (argparse.Namespace)')
    assert 'needs torch >= 2.4' in msg and f'this is torch {torch.__version__}' in msg
    assert '\n' not in msg and 'weights_only=False' not in msg
    with pytest.raises(compat.TorchFeatureError, match='needs torch >= 2.4'):
        compat.require_safe_globals(str(path))


def test_newer_torch_apis_are_called_through_compat_only(repo_root):
    """The APIs torch 2.1 lacks are called in iformer_mm/compat.py only (its probes), so no
    other module can end in an AttributeError on an older supported torch."""
    newer = ('torch.compiler.is_compiling(', 'get_autocast_dtype(', 'is_fx_symbolic_tracing(',
             'serialization.safe_globals(', 'add_safe_globals(', 'get_unsafe_globals_in_checkpoint(')
    files = [*(repo_root / 'iformer_mm').rglob('*.py'), *(repo_root / 'tools').rglob('*.py'),
             repo_root / 'iformer_mm_torchvision_shim.py']
    calls = [f'{f.relative_to(repo_root)}: {api}' for f in files if f.name != 'compat.py'
             for api in newer if api in f.read_text()]
    assert not calls, calls
