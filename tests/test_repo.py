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
