"""End-to-end segmentation runs on the ADE20K-layout dataset painted from tiny_coco.

The real configs (configs/segmentation/*.py) are inherited by a small test config that only
swaps the data (80 COCO classes, crop 128, test scale 128) and the schedule; the runs go
through tools/train.py, tools/test.py and tools/dist_train.sh exactly as a user would.
Marked slow (run with --runslow); together a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import torch
from PIL import Image

from iformer_mm.datagen.ade_from_coco import COCO_CLASSES, build_ade_from_coco
from _configs import seg_config
from _subprocess import free_port

pytestmark = pytest.mark.slow

METRICS_RE = re.compile(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+mAcc: ([\d.]+)')

# The real ADE20K training augmentations at 128 px, and the test's part of the tiny config
# (tests/_configs.py writes the data part)
TRAIN_TRANSFORMS = """dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),"""
TINY_REST = '''
tta_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(512 * r), int(128 * r)), keep_ratio=True)
         for r in (0.75, 1.0, 1.25)],
        [dict(type='RandomFlip', prob=0., direction='horizontal'),
         dict(type='RandomFlip', prob=1., direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')]]),
]
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),  # no ImageNet weights on CI
    decode_head=dict(num_classes=80){aux})
train_cfg = dict(max_iters={iters}, val_interval={val_interval})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={iters}))
'''


@pytest.fixture(scope='module')
def ade_dir(tiny_coco_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('ade_from_coco')
    build_ade_from_coco(tiny_coco_dir, out, overwrite=True)
    return out


def write_tiny_config(path: Path, repo_root: Path, base: str, data_root: Path, iters: int,
                      val_interval: Optional[int] = None, batch_size: int = 2) -> Path:
    rest = TINY_REST.format(iters=iters, val_interval=val_interval or 10 * iters,
                            aux=(',\n    auxiliary_head=dict(num_classes=80)' if base.startswith('upernet') else ''))
    text = seg_config(repo_root / 'configs' / 'segmentation' / base, data_root, train_transforms=TRAIN_TRANSFORMS,
                      batch_size=batch_size, rest=rest)
    path.write_text(text)
    return path


def run_tool(repo_root: Path, args: List[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    res = subprocess.run(args, cwd=repo_root, env=env, capture_output=True, text=True,
                         timeout=timeout)
    res.log = res.stdout + res.stderr  # mmengine logs to stdout, tracebacks to stderr
    return res


def python_tool(repo_root: Path, tool: str, *args: str) -> subprocess.CompletedProcess:
    return run_tool(repo_root, [sys.executable, str(repo_root / 'tools' / tool), *args])


def metrics(log: str) -> tuple:
    found = METRICS_RE.findall(log)
    if not found:  # say which lines came closest, not just the tail (a 2-rank log interleaves)
        near = [ln for ln in log.splitlines() if 'aAcc' in ln or 'mIoU' in ln or 'Iter(val)' in ln]
        raise AssertionError('no aAcc/mIoU/mAcc line in the output; lines naming them:\n'
                             + '\n'.join(near[-10:]) + f'\n--- tail:\n{log[-3000:]}')
    values = tuple(float(v) for v in found[-1])
    assert all(0.0 <= v <= 100.0 for v in values)
    return values



def test_fpn_trains_then_tests_in_whole_and_slide_mode(repo_root, ade_dir, tmp_path):
    """tools/train.py then tools/test.py: whole-mode mIoU with --out label maps at the original
    image size and --show-dir pictures; slide mode over 128x128 windows."""
    cfg = write_tiny_config(tmp_path / 'fpn_tiny.py', repo_root, 'fpn_iformer_s_ade20k_80k.py',
                            ade_dir, iters=4)
    work = tmp_path / 'work'
    res = python_tool(repo_root, 'train.py', str(cfg), '--work-dir', str(work))
    assert res.returncode == 0, res.log[-4000:]
    assert 'Iter(train) [4/4]' in res.log
    ckpt = work / 'iter_4.pth'
    assert ckpt.is_file()

    out_dir, show_dir = tmp_path / 'pred', tmp_path / 'show'
    res = python_tool(repo_root, 'test.py', str(cfg), str(ckpt), '--work-dir', str(work),
                      '--out', str(out_dir), '--show-dir', str(show_dir),
                      # mmseg draws every 50th image by default
                      '--cfg-options', 'default_hooks.visualization.interval=1')
    assert res.returncode == 0, res.log[-4000:]
    metrics(res.log)
    assert 'per class results' in res.log
    table_rows = [c for c in COCO_CLASSES if re.search(rf'\|\s+{re.escape(c)}\s+\|', res.log)]
    assert len(table_rows) == 80
    # one predicted label map per validation image, at the image's own (non-square) size
    val_imgs = sorted((ade_dir / 'images' / 'validation').glob('*.jpg'))
    for img in val_imgs:
        pred = out_dir / f'{img.stem}.png'
        with Image.open(img) as a, Image.open(pred) as b:
            assert a.size == b.size
            assert np.asarray(b).max() <= 80  # label space of the dataset (1..80, 0 = other)
    assert len(list(show_dir.rglob('*.png'))) == len(val_imgs)

    res = python_tool(repo_root, 'test.py', str(cfg), str(ckpt), '--work-dir', str(work),
                      '--cfg-options', 'model.test_cfg.mode=slide',
                      'model.test_cfg.crop_size=(128,128)', 'model.test_cfg.stride=(85,85)')
    assert res.returncode == 0, res.log[-4000:]
    metrics(res.log)


def test_upernet_trains_validates_and_tests_with_tta(repo_root, ade_dir, tmp_path):
    """UperNet + auxiliary head trains, validates (whole mode) in the run, and
    tools/test.py --tta runs multi-scale + flip inference and prints mIoU."""
    cfg = write_tiny_config(tmp_path / 'upernet_tiny.py', repo_root,
                            'upernet_iformer_s_ade20k_160k.py', ade_dir, iters=3, val_interval=3)
    work = tmp_path / 'work'
    res = python_tool(repo_root, 'train.py', str(cfg), '--work-dir', str(work))
    assert res.returncode == 0, res.log[-4000:]
    assert 'aux.loss_ce' in res.log and 'decode.loss_ce' in res.log
    metrics(res.log)  # the in-training validation
    res = python_tool(repo_root, 'test.py', str(cfg), str(work / 'iter_3.pth'), '--tta',
                      '--work-dir', str(work), '--cfg-options', 'test_dataloader.dataset.indices=2')
    assert res.returncode == 0, res.log[-4000:]
    assert 'Iter(test) [2/2]' in res.log
    metrics(res.log)


def test_loss_goes_down_and_gradients_reach_every_backbone_stage(repo_root, ade_dir, tmp_path):
    """Overfit two fixed images: the loss must fall well below its start, with every
    backbone parameter receiving a gradient (stem to stage 4)."""
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.model import revert_sync_batchnorm
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    import iformer_mm.datasets  # noqa: F401
    from mmseg.registry import DATASETS, MODELS

    init_default_scope('mmseg')
    cfg = Config.fromfile(write_tiny_config(tmp_path / 'fpn_tiny.py', repo_root,
                                            'fpn_iformer_s_ade20k_80k.py', ade_dir, iters=1))
    cfg.model.backbone.drop_path_rate = 0.0
    torch.manual_seed(0)
    model = revert_sync_batchnorm(MODELS.build(cfg.model)).train()
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                       dict(type='Resize', scale=(128, 128), keep_ratio=False),
                       dict(type='PackSegInputs')]
    ds = DATASETS.build(ds_cfg)
    # two photos where objects cover most pixels, so the loss is not dominated by ignore
    names = ('000000143931', '000000458054')
    idx = [i for i in range(len(ds)) if Path(ds.get_data_info(i)['img_path']).stem in names]
    if not idx:  # the generated fallback set (no ../shared): its two most covered images
        cover = [(np.asarray(Image.open(ds.get_data_info(i)['seg_map_path'])) > 0).mean() for i in range(len(ds))]
        idx = sorted(range(len(ds)), key=cover.__getitem__)[-2:]
    batch = pseudo_collate([ds[i] for i in idx])
    cfg.optim_wrapper.optimizer.lr = 1e-3
    optim = build_optim_wrapper(model, cfg.optim_wrapper)

    # one backward by hand (train_step zeroes the gradients after its update)
    data = model.data_preprocessor(batch, True)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    loss.backward()
    no_grad = [n for n, p in model.backbone.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not no_grad, f'backbone parameters without gradient: {no_grad[:10]}'
    optim.zero_grad()

    losses = []
    for _ in range(10):
        losses.append(float(model.train_step(batch, optim)['loss'].detach()))
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    print('overfit losses:', np.round(losses, 3).tolist())
    assert last < 0.5 * first, f'loss did not go down: {np.round(losses, 3).tolist()}'


@pytest.mark.dist
def test_two_process_gloo_training_and_evaluation(repo_root, ade_dir, tmp_path):
    """tools/dist_train.sh CONFIG 2 on CPU: two gloo ranks train FPN iFormer-S (SyncBN in the
    config) and evaluate mIoU over the validation set split between them."""
    cfg = write_tiny_config(tmp_path / 'fpn_tiny.py', repo_root, 'fpn_iformer_s_ade20k_80k.py',
                            ade_dir, iters=3, val_interval=3, batch_size=1)
    work = tmp_path / 'work'
    env_port = dict(os.environ, PORT=str(free_port()))
    res = subprocess.run(['bash', str(repo_root / 'tools' / 'dist_train.sh'), str(cfg), '2',
                          '--work-dir', str(work)],
                         cwd=repo_root, capture_output=True, text=True, timeout=600,
                         env=dict(env_port, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore'))
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-4000:]
    assert 'Distributed training: True' in log and 'GPU number: 2' in log, log[-3000:]
    assert 'Iter(train) [3/3]' in log
    assert 'Iter(val) [3/3]' in log  # 6 validation images split over the 2 ranks
    metrics(log)
    assert (work / 'iter_3.pth').is_file()


def test_train_cli_names_a_missing_annotation(repo_root, ade_dir, tmp_path):
    """A dataset folder with an image but no label map stops tools/train.py with the file
    names and the fix, before any training step."""
    broken = tmp_path / 'broken'
    shutil.copytree(ade_dir, broken)
    victim = sorted((broken / 'annotations' / 'training').glob('*.png'))[3]
    victim.unlink()
    cfg = write_tiny_config(tmp_path / 'fpn_tiny.py', repo_root, 'fpn_iformer_s_ade20k_80k.py',
                            broken, iters=2)
    res = python_tool(repo_root, 'train.py', str(cfg), '--work-dir', str(tmp_path / 'work'))
    assert res.returncode != 0
    assert 'SegDatasetError' in res.log and victim.name in res.log and 'Fix:' in res.log, \
        res.log[-3000:]
    assert 'Iter(train)' not in res.log
