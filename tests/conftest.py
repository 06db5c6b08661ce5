"""Shared pytest setup: single-threaded torch, --runslow, paths to ../shared assets."""
import os
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('IFORMER_SHARED', REPO.parent / 'shared'))


def pytest_addoption(parser):
    parser.addoption('--runslow', action='store_true', default=False,
                     help='also run end-to-end tests marked slow (CI does)')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--runslow'):
        return
    skip = pytest.mark.skip(reason='end-to-end test: run with --runslow')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


def _shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f'{path} not found (set IFORMER_SHARED to the shared/ folder)')
    return path


@pytest.fixture(scope='session')
def golden_dir() -> Path:
    return _shared('spec', 'golden')


@pytest.fixture(scope='session')
def tiny_coco_dir() -> Path:
    return _shared('data', 'tiny_coco')
