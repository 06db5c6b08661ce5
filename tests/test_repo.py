"""The repository keeps its promises: README's commands are the ones CI runs, layout is as documented."""
import re


def test_readme_test_command_is_what_ci_runs(repo_root):
    readme = (repo_root / 'README.md').read_text()
    ci = (repo_root / '.ci' / 'run').read_text()
    blocks = re.findall(r'```(?:bash|sh)\n(.*?)```', readme, flags=re.S)
    quick = [line.strip() for line in blocks[0].splitlines() if line.strip() and not line.startswith('#')]
    assert len(quick) == 2, 'the quick start is exactly two commands'
    assert quick[1] in ci, f'.ci/run must run README\'s test command: {quick[1]!r}'
    assert quick[0].startswith('bash tools/install.sh')


def test_layout(repo_root):
    for path in ('iformer_mm', 'configs/detection', 'configs/segmentation', 'tools', 'tests', 'setup.py',
                 'README.md', 'tools/train.py', 'tools/test.py', 'tools/dist_train.sh', 'tools/dist_test.sh'):
        assert (repo_root / path).exists(), path


def _setup_kwargs(repo_root):
    """What setup.py passes to ``setuptools.setup`` (run for real, with ``setup`` captured)."""
    import runpy
    from unittest import mock
    seen = {}
    with mock.patch('setuptools.setup', lambda **kw: seen.update(kw)):
        runpy.run_path(str(repo_root / 'setup.py'), run_name='__main__')
    return seen


def test_package_metadata_is_true(repo_root):
    """The license, the Python floor (torch 2.13 needs 3.10), every subpackage shipped, the
    start-up shim a module that exists, the test tools only in the `tests` extra, the ONNX tools in `deploy` (and `tests`)."""
    import importlib.util
    kw = _setup_kwargs(repo_root)
    assert kw['license'] == 'Apache-2.0' and 'Apache License' in (repo_root / 'LICENSE').read_text()
    assert kw['python_requires'] == '>=3.10'
    readme = (repo_root / 'README.md').read_text()
    assert 'Python 3.10+' in readme and 'Python 3.8' not in readme
    on_disk = {str(p.parent.relative_to(repo_root)).replace('/', '.')
               for p in (repo_root / 'iformer_mm').rglob('__init__.py')}
    assert on_disk <= set(kw['packages']) and {'iformer_mm.analysis.bench', 'iformer_mm.classification'} <= on_disk
    for mod in kw['py_modules']:
        spec = importlib.util.spec_from_file_location(mod, repo_root / f'{mod}.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert callable(module.install_import_hook)
    assert {'pytest', 'pytest-timeout', 'onnx', 'onnxruntime', 'onnxscript'} <= set(kw['extras_require']['tests'])
    assert kw['extras_require']['deploy'] == ['onnx', 'onnxruntime', 'onnxscript']  # `.[deploy]`
    assert not any(r.startswith(('pytest', 'onnx')) for r in kw['install_requires'])


FAKE_PYTHON = """#!/bin/sh
# records every call install.sh makes; 'import torchvision' alone fails (a CPU torch with the
# registry's CUDA torchvision), everything else succeeds
echo "$*" >> "$CALLS"
case "$*" in
  "-V") echo "Python $FAKE_VERSION" ;;
  *sysconfig*) echo "$SITE" ;;
  "-c import torchvision") exit 1 ;;
  *"sys.version_info < (3, 10)"*) [ "$FAKE_VERSION" = 3.8.10 ] && exit 1 ;;
esac
exit 0
"""


def _install(repo_root, folder, *args, version='3.11.7'):
    """Run install.sh with an interpreter that records its calls: (result, the calls)."""
    import os
    import stat
    import subprocess
    folder.mkdir(exist_ok=True)
    fake = folder / 'python'
    fake.write_text(FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    (folder / 'site').mkdir(exist_ok=True)
    env = dict(os.environ, PYTHON=str(fake), CALLS=str(folder / 'calls'), SITE=str(folder / 'site'),
               FAKE_VERSION=version, IFORMER_WHEELS=str(folder / 'no_wheels'))
    res = subprocess.run(['bash', str(repo_root / 'tools' / 'install.sh'), *args], env=env,
                         capture_output=True, text=True, timeout=120)
    calls = (folder / 'calls').read_text().splitlines() if (folder / 'calls').exists() else []
    return res, calls


def test_install_script_pins_the_stack_and_takes_test_tools_from_the_extra(repo_root, tmp_path):
    """The pinned stack, the package with its `tests` extra only with --tests, torch pinned
    wherever pip could pull a newer one, and the torchvision start-up hook where torchvision
    cannot import."""
    res, calls = _install(repo_root, tmp_path / 'tests', '--tests')
    assert res.returncode == 0, res.stderr
    pips = [c for c in calls if c.startswith('-m pip install')]
    assert any('timm>=1.0.30,<1.1' in c and 'mmdet==3.3.0' in c and 'mmsegmentation==1.2.2' in c for c in pips)
    assert any(f'-e {repo_root}[tests]' in c for c in pips)
    for c in pips:
        if '--no-deps' not in c and 'modelindex' not in c:  # the rest could resolve a newer torch
            assert 'torch==2.13.0' in c, c
        assert 'pytest' not in c and 'onnx' not in c  # test tools only through the extra
    pth = list((tmp_path / 'tests' / 'site').glob('*.pth'))
    assert [p.name for p in pth] == ['iformer_mm_torchvision_shim.pth']
    assert "__import__('iformer_mm_torchvision_shim').install_import_hook()" in pth[0].read_text()
    res, calls = _install(repo_root, tmp_path / 'plain')
    assert res.returncode == 0 and not any('[tests]' in c for c in calls)


def test_install_script_refuses_an_old_python(repo_root, tmp_path):
    res, calls = _install(repo_root, tmp_path / 'old', version='3.8.10')
    assert res.returncode == 1
    assert 'Python 3.8.10: iformer_mm needs Python >= 3.10' in res.stderr
    assert not any('pip' in c for c in calls)


def test_docs_link_to_files_that_exist_and_hold_no_draft_markers(repo_root):
    """Every relative link in README and docs/ points at a file of the repository, and no page
    still carries a placeholder a draft left behind."""
    import re
    pages = [repo_root / 'README.md', *sorted((repo_root / 'docs').rglob('*.md')),
             *sorted((repo_root / 'configs').rglob('README.md'))]
    for page in pages:
        text = page.read_text()
        assert '@@' not in text and 'TODO' not in text, page
        for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text):
            if '://' in target or target.startswith('mailto:'):
                continue
            assert (page.parent / target).exists(), f'{page.relative_to(repo_root)} links to missing {target}'
