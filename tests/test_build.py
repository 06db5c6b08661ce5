"""The one config -> model builder (:mod:`iformer_mm.build`): its weight-stripping rule, its
detector/segmentor rule, and models built from real configs without any file present."""
import pytest
from mmengine.config import Config

from iformer_mm.build import ConfigError, build_from_config, load_config, strip_pretrained, task_of


def test_strip_pretrained_removes_every_weight_source_and_keeps_other_inits():
    cfg = dict(
        type='EncoderDecoder', pretrained='open-mmlab://resnet50_v1c',
        backbone=dict(type='iformer_mm.TimmBackbone', pretrained=True,
                      init_cfg=dict(type='Pretrained', checkpoint='missing.pth')),
        neck=dict(init_cfg=[dict(type='Xavier', layer='Conv2d'),
                            dict(type='Pretrained', checkpoint='x.pth')]),
        heads=[dict(init_cfg=[dict(type='Pretrained', checkpoint='y.pth')], pretrained=False)])
    strip_pretrained(cfg)
    assert cfg['pretrained'] is None
    assert cfg['backbone']['pretrained'] is None and cfg['backbone']['init_cfg'] is None
    assert cfg['neck']['init_cfg'] == [dict(type='Xavier', layer='Conv2d')]
    assert cfg['heads'][0] == dict(init_cfg=None, pretrained=False)


def test_task_from_default_scope_else_from_the_model_registry():
    assert task_of(Config(dict(default_scope='mmseg', model=dict(type='MaskRCNN')))) == 'seg'
    assert task_of(Config(dict(model=dict(type='MaskRCNN')))) == 'det'
    assert task_of(Config(dict(model=dict(type='EncoderDecoder')))) == 'seg'
    assert task_of(Config(dict(default_scope='iformer_mm', model=dict(type='mmseg.EncoderDecoder')))) == 'seg'
    with pytest.raises(ConfigError, match="set default_scope='mmdet' or 'mmseg'"):
        task_of(Config(dict(model=dict(type='NoSuchModel'))))


def test_missing_config_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match='config file not found'):
        load_config(str(tmp_path / 'nope.py'))
    with pytest.raises(ConfigError, match='no model'):
        (tmp_path / 'empty.py').write_text('x = 1\n')
        load_config(str(tmp_path / 'empty.py'))


def test_builds_a_config_whose_checkpoint_is_absent(repo_root):
    """The repository's Mask R-CNN config names an ImageNet file that is not there: the backbone
    builds (and initialises) without it, and the caller's Config is left as it was."""
    cfg = load_config(str(repo_root / 'configs/detection/mask_rcnn_iformer_s_1x.py'))
    before = cfg.model.backbone.init_cfg.copy()
    backbone, task = build_from_config(cfg, part='backbone', init_weights=True,
                                       cfg_options={'model.backbone.out_indices': (3,)})
    assert task == 'det' and type(backbone).__name__ == 'IFormer' and not backbone.training
    assert backbone.out_indices == (3,)
    assert cfg.model.backbone.init_cfg == before and cfg.model.backbone.out_indices == (0, 1, 2, 3)
