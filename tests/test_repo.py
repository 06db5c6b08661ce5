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


def test_test_tools_come_from_the_tests_extra(repo_root):
    """README's test command installs `.[tests]` (install.sh --tests); the demo's install does not."""
    readme = (repo_root / 'README.md').read_text()
    quick = re.findall(r'```(?:bash|sh)\n(.*?)```', readme, flags=re.S)[0].splitlines()
    assert quick[0].startswith('bash tools/install.sh &&') and '--tests' not in quick[0]
    assert quick[1].startswith('bash tools/install.sh --tests &&')
    install = (repo_root / 'tools' / 'install.sh').read_text()
    assert '-e "$here[tests]"' in install
    assert 'pytest' not in install and 'onnx' not in install  # test tools only through the extra
    setup = (repo_root / 'setup.py').read_text()
    deploy = re.search(r"DEPLOY = \[(.*?)\]", setup).group(1)
    for tool in ('onnx', 'onnxruntime', 'onnxscript'):  # the deploy extra, also in tests
        assert f"'{tool}'" in deploy, tool
    assert "extras_require={'deploy': DEPLOY, 'tests': ['pytest', 'pytest-timeout'] + DEPLOY}" in setup
    assert 'onnx' not in re.search(r'install_requires=\[(.*?)\]', setup).group(1)


def test_license_and_python_floor_are_true(repo_root):
    license_text = (repo_root / 'LICENSE').read_text()
    assert 'Apache License' in license_text and 'Version 2.0, January 2004' in license_text
    assert "license='Apache-2.0'" in (repo_root / 'setup.py').read_text()
    # torch 2.13 needs Python >= 3.10: setup.py, the README and install.sh's check agree
    assert "python_requires='>=3.10'" in (repo_root / 'setup.py').read_text()
    readme = (repo_root / 'README.md').read_text()
    assert 'Python 3.10+' in readme and 'Python 3.8' not in readme
    assert 'sys.version_info < (3, 10)' in (repo_root / 'tools' / 'install.sh').read_text()
    # mobile iFormer models need timm >= 1.0.30
    assert '"timm>=1.0.30,<1.1"' in (repo_root / 'tools' / 'install.sh').read_text()
    assert 'docs/INSTALL.md' not in (repo_root / 'tools' / 'install.sh').read_text()


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
