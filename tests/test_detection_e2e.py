"""End-to-end detection runs on tiny COCO (../shared/data/tiny_coco, real COCO images; without it
the demo's generated set, see conftest.py): run with --runslow.

Everything goes through the real config (configs/detection/mask_rcnn_iformer_s_1x.py), only
shrunk to 256 px and a few iterations, and through the user-facing tools.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet')

from _configs import det_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
S_CONFIG = REPO / 'configs' / 'detection' / 'mask_rcnn_iformer_s_1x.py'
SCALE = 256

# The test's part of the tiny config (tests/_configs.py writes the data part)
TINY_REST = '''
model = dict(backbone=dict(init_cfg=None),  # no pretrained weights offline
             roi_head=dict(bbox_head=dict(num_classes=len(classes)), mask_head=dict(num_classes=len(classes))),
             # score_thr 0 so the barely trained model has detections to evaluate
             test_cfg=dict(rcnn=dict(score_thr=0.0, max_per_img=20)))
# 1 epoch = 2 iterations (4 images, batch 2); no evaluation inside training unless asked
train_cfg = dict(max_epochs=1, val_begin=99)
default_hooks = dict(logger=dict(interval=1), visualization=dict(draw=False))
log_processor = dict(window_size=1)
'''


def _write_cfg(path: Path, tiny_coco_dir: Path, nval: int = 3, base: Path = S_CONFIG) -> Path:
    """The tiny training config over ``base`` (any detection config) on ``tiny_coco_dir``."""
    cats = json.loads((tiny_coco_dir / 'annotations' / 'instances_train2017.json').read_text())['categories']
    classes = tuple(c['name'] for c in sorted(cats, key=lambda c: c['id']))
    path.write_text(det_config(base, tiny_coco_dir, classes, train_images=4, val_images=nval, scale=SCALE,
                               flip=True, rest=TINY_REST))
    return path


def _run(cmd, cwd, timeout=600, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    env.update(env_extra or {})
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def _ckpt_meta(path: Path) -> dict:
    from iformer_mm.engine import trusted_run_checkpoints
    with trusted_run_checkpoints():
        return torch.load(path, map_location='cpu')['meta']


@pytest.mark.slow
def test_train_test_resume(tiny_coco_dir, tmp_path):
    """tools/train.py trains; tools/test.py prints COCO bbox+segm tables; --resume continues."""
    cfg = _write_cfg(tmp_path / 'tiny.py', tiny_coco_dir)
    wd = tmp_path / 'wd'
    out = _run([sys.executable, REPO / 'tools' / 'train.py', cfg, '--work-dir', wd], REPO)
    assert 'Epoch(train) [1][2/2]' in out
    assert re.search(r'loss: \d+\.\d+', out)
    ckpt = wd / 'epoch_1.pth'
    assert ckpt.is_file() and _ckpt_meta(ckpt)['iter'] == 2

    out = _run([sys.executable, REPO / 'tools' / 'test.py', cfg, ckpt, '--work-dir', tmp_path / 'test',
                '--out', tmp_path / 'preds.pkl'], REPO)
    for kind in ('bbox', 'segm'):
        assert f'Evaluate annotation type *{kind}*' in out
        # six AP figures; -1.000 where the val set has no object of that size (generated data)
        assert re.search(rf'{kind}_mAP_copypaste: (-?\d\.\d{{3}} ){{5}}-?\d\.\d{{3}}', out), kind
    assert out.count('Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]') == 2
    assert (tmp_path / 'preds.pkl').stat().st_size > 0

    # resume from the latest checkpoint of the work dir and train one more epoch
    out = _run([sys.executable, REPO / 'tools' / 'train.py', cfg, '--work-dir', wd, '--resume',
                '--cfg-options', 'train_cfg.max_epochs=2'], REPO)
    assert 'resumed epoch: 1, iter: 2' in out
    assert 'Epoch(train) [2][2/2]' in out and 'Epoch(train) [1]' not in out
    meta = _ckpt_meta(wd / 'epoch_2.pth')
    assert (meta['epoch'], meta['iter']) == (2, 4)


@pytest.mark.slow
def test_dist_train_two_gloo_processes(tiny_coco_dir, tmp_path):
    """The documented command line, tools/dist_train.sh CONFIG 2, trains and evaluates on CPU."""
    cfg = _write_cfg(tmp_path / 'tiny.py', tiny_coco_dir, nval=2)
    wd = tmp_path / 'wd'
    out = _run(['bash', REPO / 'tools' / 'dist_train.sh', cfg, '2', '--work-dir', wd,
                '--cfg-options', 'train_dataloader.batch_size=1', 'train_cfg.val_begin=1'],
               REPO, env_extra=dict(PORT=str(29500 + os.getpid() % 2000)))
    assert "distributed backend 'nccl' -> 'gloo'" in out
    assert 'Distributed training: True' in out
    # 4 images over 2 processes x batch 1 = 2 iterations per epoch
    assert 'Epoch(train) [1][2/2]' in out
    assert re.search(r'bbox_mAP_copypaste: (-?\d\.\d{3} ){5}-?\d\.\d{3}', out)
    assert re.search(r'segm_mAP_copypaste: (-?\d\.\d{3} ){5}-?\d\.\d{3}', out)
    assert _ckpt_meta(wd / 'epoch_1.pth')['iter'] == 2


@pytest.mark.slow
def test_overfit_loss_goes_down_through_backbone(tiny_coco_dir, tiny_coco_classes):
    """A few steps on two real images with the config's optimizer: the loss drops and the
    backbone (first stage included) receives gradients and changes."""
    import iformer_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmdet.registry import DATASETS, MODELS

    init_default_scope('mmdet')
    torch.manual_seed(0)
    tmp = Path(tiny_coco_dir)
    cfg = Config.fromfile(str(S_CONFIG))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.drop_path_rate = 0.0
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
        dict(type='Resize', scale=(SCALE, SCALE), keep_ratio=True),
        dict(type='PackDetInputs'),
    ]
    ds = DATASETS.build(dict(type='CocoDataset', data_root=str(tmp) + '/',
                             ann_file='annotations/instances_train2017.json',
                             metainfo=dict(classes=tiny_coco_classes),
                             data_prefix=dict(img='images/train2017/'), pipeline=pipeline, indices=2))
    batch = pseudo_collate([ds[0], ds[1]])
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    for g in optim.optimizer.param_groups:  # overfit: a larger step than the warm-up would give
        g['lr'] = 2e-4
    watched = {n: p.detach().clone() for n, p in model.backbone.named_parameters()
               if n in ('patch_embed.conv1.weight', 'pos_embed1', 'blocks1.0.attn.low_mixer.qkv.weight',
                        'blocks4.2.mlp.fc2.weight')}
    losses = []
    for step in range(12):
        data = model.data_preprocessor(batch, True)
        loss, log_vars = model.parse_losses(model(**data, mode='loss'))
        optim.zero_grad()
        loss.backward()
        if step == 0:
            grads = {n: p.grad for n, p in model.backbone.named_parameters() if n in watched}
            assert all(g is not None and g.abs().sum() > 0 for g in grads.values()), \
                [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
        optim.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses
    for n, before in watched.items():
        assert not torch.equal(before, dict(model.backbone.named_parameters())[n]), n


@pytest.mark.slow
def test_cascade_mask_rcnn_example_builds_and_runs():
    """The README's example of iFormer in another detector: builds and predicts masks."""
    import iformer_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample

    init_default_scope('mmdet')
    cfg = Config.fromfile(str(REPO / 'configs' / 'detection' / 'cascade_mask_rcnn_iformer_s_1x.py'))
    assert cfg.custom_imports['imports'] == ['iformer_mm']
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()
    assert type(model).__name__ == 'CascadeRCNN' and type(model.backbone).__name__ == 'IFormer'
    img = torch.randint(0, 255, (3, 200, 256), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(200, 256), ori_shape=(200, 256), scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
        feats = model.extract_feat(data['inputs'])
        assert [f.shape[1] for f in feats] == [256] * 5  # FPN over the 4 iFormer stages (+1 extra)
        (pred,) = model(**data, mode='predict')
    inst = pred.pred_instances
    assert inst.bboxes.shape[1] == 4 and len(inst.masks) == len(inst.bboxes)
