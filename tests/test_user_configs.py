"""A user's own config, written exactly as README's "Use the backbone in your own config" shows.

Each README snippet is copied verbatim into a config file (its ``_base_`` is a stock mmdet or
mmseg config, which still carries that toolbox's ResNet weights and, for mmseg, the segmentor's
``pretrained='open-mmlab://resnet50_v1c'``), built through the toolbox's registry, given the
deterministic iFormer-S weights in place of ``checkpoints/iformer_small.pth``, and run forward.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from _golden import make_state_dict

REPO = Path(__file__).resolve().parents[1]


def readme_snippet(toolbox: str) -> str:
    """The README's python block whose ``_base_`` is an ``mmdet::``/``mmseg::`` config."""
    blocks = re.findall(r'```python\n(.*?)```', (REPO / 'README.md').read_text(), flags=re.S)
    found = [b for b in blocks if f"_base_ = '{toolbox}::" in b and "type='iformer_mm.IFormer'" in b]
    assert len(found) == 1, f'README has {len(found)} {toolbox} snippets using iformer_mm.IFormer'
    return found[0]


@pytest.fixture(scope='module')
def small_ckpt(golden_dir, tmp_path_factory) -> Path:
    """Stands in for the authors' iformer_small.pth (their key layout, with classifier)."""
    path = tmp_path_factory.mktemp('ckpt') / 'iformer_small.pth'
    torch.save(make_state_dict(golden_dir, 'iformer_small'), path)
    return path


def build_user_model(toolbox: str, tmp_path: Path, ckpt: Path):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    snippet = readme_snippet(toolbox)
    assert "checkpoint='checkpoints/iformer_small.pth'" in snippet
    cfg_file = tmp_path / f'my_{toolbox}_config.py'
    cfg_file.write_text(snippet)
    cfg = Config.fromfile(str(cfg_file))  # runs custom_imports, as the tools do
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)  # the file the user downloaded
    init_default_scope(toolbox)
    registry = __import__(f'{toolbox}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)
    model.init_weights()
    model.eval()
    assert type(model.backbone).__name__ == 'IFormer'
    # the checkpoint's weights are in the backbone (not left at init)
    sd = torch.load(ckpt, weights_only=True)
    assert torch.equal(model.backbone.state_dict()['blocks2.0.attn.low_mixer.qkv.weight'],
                       sd['blocks2.0.attn.low_mixer.qkv.weight'])
    return cfg, model


def test_mmseg_upernet_user_config_builds_loads_and_predicts(tmp_path, small_ckpt):
    """mmseg's UperNet R50 base (segmentor ``pretrained='open-mmlab://resnet50_v1c'``) + README's snippet."""
    pytest.importorskip('mmseg')
    from mmseg.structures import SegDataSample

    cfg, model = build_user_model('mmseg', tmp_path, small_ckpt)
    assert cfg.model.get('pretrained') == 'open-mmlab://resnet50_v1c'  # inherited, must not break the build
    img = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(128, 160), ori_shape=(128, 160)))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
        feats = model.extract_feat(data['inputs'])
        assert [tuple(f.shape[1:]) for f in feats] == [(96, 32, 40), (192, 16, 20), (320, 8, 10), (384, 4, 5)]
        (pred,) = model(**data, mode='predict')
    assert pred.pred_sem_seg.data.shape == (1, 128, 160)
    assert int(pred.pred_sem_seg.data.max()) < 150  # ADE20K's classes, from the base


def test_mmdet_mask_rcnn_user_config_builds_loads_and_predicts(tmp_path, small_ckpt):
    """mmdet's Mask R-CNN R50 base (backbone ``torchvision://resnet50``) + README's snippet."""
    pytest.importorskip('mmdet')
    from mmdet.structures import DetDataSample

    _, model = build_user_model('mmdet', tmp_path, small_ckpt)
    img = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(128, 160), ori_shape=(128, 160), scale_factor=(1.0, 1.0)))
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
        feats = model.extract_feat(data['inputs'])
        assert [f.shape[1] for f in feats] == [256] * 5  # FPN over the four iFormer stages (+ max-pool level)
        (pred,) = model(**data, mode='predict')
    inst = pred.pred_instances
    assert inst.bboxes.shape[1] == 4 and len(inst.masks) == len(inst.bboxes) == len(inst.scores)
