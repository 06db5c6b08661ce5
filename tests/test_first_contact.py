"""What a new user meets in the first hour, through the commands they type.

* the demo: a progress bar with ETA, fewer than 60 lines, the config in the work dir (slow);
* the demo's generated data is a valid input to every tool that takes COCO data;
* a converter fed a training checkpoint prints one line naming ``--trust-pickle``;
* ``pretrained=True`` offline ends in one line saying how to pass a local file;
* ``tools/classification/train.py --epochs 1`` trains exactly one epoch (slow);
* the golden tensors shipped in ``tests/assets`` are the spec's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iformer_mm.pretrained import CheckpointError, explain_download_failure

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, timeout=900, cwd=REPO):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- the demo
@pytest.mark.slow
def test_demo_prints_progress_bar_and_few_lines(tmp_path):
    """README's first command, shortened: bars with ETA, < 60 lines, everything else in the work dir."""
    work = tmp_path / 'demo'
    res = _run([sys.executable, 'tools/demo.py', '--work-dir', work, '--iters', '3', '--num-train', '8',
                '--num-val', '4', '--show', '2', '--threads', '1'])
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    lines = out.splitlines()
    assert len(lines) < 60, f'{len(lines)} lines:\n' + '\n'.join(lines)
    assert 'train: 100%' in out and '3/3 [' in out and '<' in out  # tqdm: done/total [elapsed<ETA]
    assert 'Config:' not in out and 'model = dict(' not in out  # the config is not printed ...
    assert "type='iformer_mm.IFormer'" in (work / 'demo_config.py').read_text()  # ... it is in the work dir
    assert 'pkg_resources' not in out
    for key in ('box AP', 'mask AP', 'wall time'):
        assert key in out
    pic = Image.open(work / 'demo_predictions.jpg')
    assert pic.width >= 2 * 2 * 128 * 3 - 1  # 2 panels per row, ground truth | prediction, 3x enlarged
    ckpt = torch.load(work / 'demo_model.pth', weights_only=True)  # tensors only
    assert any(k.startswith('backbone.') for k in ckpt['state_dict'])
    assert not list(work.glob('iter_*.pth'))  # no 471 MB optimizer-state checkpoint left behind


# --------------------------------------------------------------------------- item 5: the demo's data
def test_demo_data_is_input_for_every_coco_tool(tmp_path):
    from iformer_mm.datagen.ade_from_coco import build_ade_from_coco
    from iformer_mm.datagen.demo_data import CLASSES, make_demo_dataset
    from iformer_mm.datagen.imagefolder_from_coco import build_imagefolder_from_coco

    data = Path(make_demo_dataset(tmp_path / 'data', num_train=12, num_val=4, size=160, seed=1)['root'])
    # the layout the detection configs and tools expect
    for split in ('train2017', 'val2017'):
        assert (data / 'annotations' / f'instances_{split}.json').is_file()
        assert any((data / 'images' / split).glob('*.jpg'))

    # segmentation: painted labels 1..3 in the demo's category order
    res = _run([sys.executable, 'tools/dataset_converters/ade_from_coco.py', data, tmp_path / 'ade'], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f'classes={tuple(CLASSES)!r}' in res.stdout and 'num_classes=3' in res.stdout
    labels = np.unique(np.concatenate([np.unique(np.asarray(Image.open(p)))
                                       for p in (tmp_path / 'ade' / 'annotations').rglob('*.png')]))
    assert set(labels) <= {0, 1, 2, 3} and {1, 2, 3} <= set(labels)
    assert build_ade_from_coco(data, tmp_path / 'ade2') == {'training': 12, 'validation': 4}

    # classification: one ImageFolder class per demo category
    counts = build_imagefolder_from_coco(data, tmp_path / 'folder', size=32, min_size=16, val_every=3)
    assert set(counts['train']) == set(CLASSES) and all(counts['val'].values())

    # detection: mmdet's CocoDataset with the demo's classes reads every annotation
    pytest.importorskip('mmdet')
    from mmdet.datasets import CocoDataset
    ds = CocoDataset(data_root=str(data) + '/', ann_file='annotations/instances_train2017.json',
                     data_prefix=dict(img='images/train2017/'), metainfo=dict(classes=CLASSES), pipeline=[])
    n_ann = len(json.loads((data / 'annotations/instances_train2017.json').read_text())['annotations'])
    assert len(ds) == 12 and sum(len(ds.get_data_info(i)['instances']) for i in range(len(ds))) == n_ann


# --------------------------------------------------------------------------- item 6: one line, the flag
@pytest.fixture(scope='module')
def training_checkpoint(tmp_path_factory) -> Path:
    """What tools/train.py writes: weights plus mmengine's logger state (refused by weights_only)."""
    from mmengine.logging import HistoryBuffer
    path = tmp_path_factory.mktemp('run') / 'epoch_12.pth'
    buf = HistoryBuffer()
    buf.update(np.float64(0.5))
    torch.save({'state_dict': {'backbone.pos_embed1': torch.zeros(1, 56, 56, 96)},
                'message_hub': {'log_scalars': {'loss': buf}}, 'meta': {'epoch': 12}}, path)
    return path


@pytest.mark.parametrize('tool', ['mm_to_iformer.py', 'iformer_to_mm.py'])
def test_converter_on_training_checkpoint_prints_one_line_naming_the_flag(tool, training_checkpoint, tmp_path):
    res = _run([sys.executable, REPO / 'tools' / 'model_converters' / tool, training_checkpoint,
                tmp_path / 'out.pth'], timeout=300)
    assert res.returncode == 1
    err = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith('error: '), res.stderr
    assert '--trust-pickle' in err[0] and 'mmengine.logging.history_buffer.HistoryBuffer' in err[0]
    assert 'Traceback' not in res.stderr and not (tmp_path / 'out.pth').exists()


# --------------------------------------------------------------------------- item 7: offline weights
@pytest.fixture
def offline(monkeypatch):
    """No network: torch.hub's download fails the way urllib does without a route to the host."""
    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, 'Temporary failure in name resolution'))
    monkeypatch.setattr(torch.hub, 'download_url_to_file', refuse)
    monkeypatch.setenv('TORCH_HOME', str(Path(os.environ.get('TMPDIR', '/tmp')) / 'iformer_no_hub_cache'))


def _check_offline_message(text: str) -> None:
    assert '\n' not in text
    assert 'iformer_small.pth' in text and 'huggingface.co/sail/dl2' in text
    assert "pretrained_cfg_overlay=dict(file='/path/to/iformer_small.pth')" in text
    assert 'URLError' in text


def test_offline_pretrained_error_says_how_to_pass_a_local_file(offline):
    """The guard around timm's real download path (torch.hub), as timm_models.py uses it."""
    import timm

    import iformer_mm  # noqa: F401
    url = 'https://huggingface.co/sail/dl2/resolve/main/iformer/iformer_small.pth'
    with pytest.raises(CheckpointError) as e:
        with explain_download_failure('iformer_small', url):
            timm.create_model('iformer_small', pretrained=True)
    _check_offline_message(str(e.value))
    with pytest.raises(CheckpointError, match="file not found: '/nowhere/iformer_small.pth'"):
        with explain_download_failure('iformer_small', url, local_file='/nowhere/iformer_small.pth'):
            timm.create_model('iformer_small', pretrained=True,
                              pretrained_cfg_overlay=dict(file='/nowhere/iformer_small.pth'))


def test_timm_create_model_offline_raises_the_one_line_error(offline):
    """``timm.create_model('iformer_small', pretrained=True)`` itself, offline (needs the guard
    in iformer_mm/models/timm_models.py)."""
    import timm

    import iformer_mm  # noqa: F401
    with pytest.raises(CheckpointError) as e:
        timm.create_model('iformer_small', pretrained=True)
    _check_offline_message(str(e.value))


# --------------------------------------------------------------------------- item 10: --epochs 1
@pytest.mark.slow
def test_classification_train_epochs_1_trains_one_epoch(tiny_coco_dir, tmp_path):
    from iformer_mm.datagen.imagefolder_from_coco import build_imagefolder_from_coco
    build_imagefolder_from_coco(tiny_coco_dir, tmp_path / 'folder', size=64)
    res = _run([sys.executable, 'tools/classification/train.py', tmp_path / 'folder', '--model', 'iformer_small',
                '--img-size', '64', '-b', '8', '--epochs', '1', '--max-updates-per-epoch', '2', '-j', '0',
                '--output', tmp_path / 'out'])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert 'Training 1 epochs (1 + 0 cool-down)' in res.stdout + res.stderr
    history = (tmp_path / 'out' / 'iformer_small' / 'log.jsonl').read_text().splitlines()
    assert [json.loads(line)['epoch'] for line in history] == [0]
    assert torch.load(tmp_path / 'out' / 'iformer_small' / 'last.pth', weights_only=True)['epoch'] == 0


# --------------------------------------------------------------------------- item 4: shipped golden data
def test_shipped_golden_assets_are_the_specs(repo_root):
    """tests/assets/golden is what a clean clone tests against; it must be the spec's files."""
    shared = Path(os.environ.get('IFORMER_SHARED', repo_root.parent / 'shared')) / 'spec' / 'golden'
    shipped = repo_root / 'tests' / 'assets' / 'golden'
    names = ('iformer_golden.pt', 'official_state_dict_shapes.json', 'weights.py')
    assert all((shipped / n).is_file() for n in names)
    if not shared.is_dir():
        pytest.skip(f'{shared} not found: nothing to compare the shipped copy with')
    for n in names:
        assert (shipped / n).read_bytes() == (shared / n).read_bytes(), n
