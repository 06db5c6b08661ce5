"""Shared pytest setup: single-threaded torch, --runslow, test data with or without ../shared.

Test data comes from ``$IFORMER_SHARED`` (default ``../shared`` beside the repository) when it
is there, as in CI; otherwise from what ships with the repository, so a clean clone runs the
same tests:

* golden tensors and deterministic weights: ``tests/assets/golden`` (a copy of
  ``shared/spec/golden``; ``tests/test_first_contact.py`` checks the two agree when both exist);
* the mobile iFormer's golden cases: ``tests/assets/golden/mobile_iformer`` (the spec's cases
  with every stage map reduced to corner crops, mean and std, 0.4 MB instead of 8.3 MB, and
  the spec's key-shape JSON; ``tests/test_first_contact.py`` regenerates the reduced file from
  ``shared/spec/mobile_iformer`` when it exists and checks it equals the shipped one);
* tiny COCO: the demo's generated COCO-layout set (:mod:`iformer_mm.datagen.demo_data`), written
  once per session into a temporary folder.
"""
import json
import os
from pathlib import Path
from typing import Tuple

os.environ.setdefault('OMP_NUM_THREADS', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('IFORMER_SHARED', REPO.parent / 'shared'))
SHIPPED_GOLDEN = REPO / 'tests' / 'assets' / 'golden'
SHIPPED_MOBILE_GOLDEN = SHIPPED_GOLDEN / 'mobile_iformer'
MOBILE_GOLDEN_REDUCED = 'mobile_iformer_golden_reduced.pt'


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


def pytest_report_header(config):
    golden = SHARED / 'spec' / 'golden'
    coco = SHARED / 'data' / 'tiny_coco'
    return [f'golden tensors: {golden if golden.is_dir() else SHIPPED_GOLDEN}',
            f'mobile iFormer golden: {mobile_golden_files()[0]}',
            f'tiny COCO: {coco if coco.is_dir() else "generated demo set (no " + str(coco) + ")"}']


def golden_weights_dir() -> Path:
    """Where ``weights.py`` (the spec's deterministic weights) is read from."""
    shared = SHARED / 'spec' / 'golden'
    return shared if shared.is_dir() else SHIPPED_GOLDEN


def mobile_golden_files() -> Tuple[Path, Path]:
    """The mobile iFormer's golden cases and the authors' key shapes (``..._state_dict_shapes.json``).

    ``$IFORMER_SHARED/spec/mobile_iformer`` (full stage maps) when present; otherwise the reduced
    copy shipped in ``tests/assets/golden/mobile_iformer`` (same cases, same tolerances).
    """
    spec = SHARED / 'spec' / 'mobile_iformer'
    if (spec / 'mobile_iformer_golden.pt').is_file():
        return spec / 'mobile_iformer_golden.pt', spec / 'mobile_iformer_state_dict_shapes.json'
    shipped = SHIPPED_MOBILE_GOLDEN
    return shipped / MOBILE_GOLDEN_REDUCED, shipped / 'mobile_iformer_state_dict_shapes.json'


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope='session')
def golden_dir() -> Path:
    """The spec's golden cases: ``$IFORMER_SHARED/spec/golden``, else the copy in ``tests/assets``."""
    shared = SHARED / 'spec' / 'golden'
    return shared if shared.is_dir() else SHIPPED_GOLDEN


@pytest.fixture(scope='session')
def tiny_coco_dir(tmp_path_factory) -> Path:
    """A small COCO-layout folder (``annotations/instances_{train,val}2017.json``, ``images/``).

    The 32 + 6 real COCO images of ``$IFORMER_SHARED/data/tiny_coco`` when present; otherwise
    the demo's generated set (shapes on a real photo, 3 classes) at the same size, with
    landscape, portrait and square images as COCO has.
    """
    shared = SHARED / 'data' / 'tiny_coco'
    if shared.is_dir():
        return shared
    from iformer_mm.datagen.demo_data import make_demo_dataset
    root = tmp_path_factory.mktemp('tiny_coco_generated')
    make_demo_dataset(root, num_train=32, num_val=6, size=192, seed=0, aspect_ratios=(4 / 3, 3 / 4, 1.0))
    return root


@pytest.fixture(scope='session')
def tiny_coco_classes(tiny_coco_dir) -> Tuple[str, ...]:
    """Category names of :func:`tiny_coco_dir`, in id order (COCO's 80, or the demo's 3)."""
    cats = json.loads((tiny_coco_dir / 'annotations' / 'instances_train2017.json').read_text())['categories']
    return tuple(c['name'] for c in sorted(cats, key=lambda c: c['id']))
