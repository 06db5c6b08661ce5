"""The dense-backbone base both OpenMMLab backbones share (iformer_mm/models/dense.py): one
behaviour for ``pretrained=`` with ``init_cfg`` (mmdet's: not both), for every backbone."""
import warnings

import pytest
from _golden import TINY_ARCH

from iformer_mm.models import IFormer, TimmBackbone
from iformer_mm.models.dense import DenseBackbone, resolve_pretrained

BACKBONES = {
    'IFormer': lambda **kw: IFormer(TINY_ARCH, **kw),
    'TimmBackbone': lambda **kw: TimmBackbone('poolformer_s12', **kw),
}
CKPT = dict(type='Pretrained', checkpoint='weights.pth')


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_pretrained_and_init_cfg_together_is_an_error_as_in_mmdet(name):
    build = BACKBONES[name]
    assert isinstance(build(), DenseBackbone)
    with pytest.raises(ValueError, match='either pretrained=.* or init_cfg, not both'):
        build(pretrained='weights.pth', init_cfg=CKPT)
    with pytest.warns(DeprecationWarning, match="use init_cfg=dict\\(type='Pretrained'"):
        bb = build(pretrained='weights.pth')
    assert bb.init_cfg == CKPT


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_another_zoos_url_from_an_mmseg_base_is_ignored_with_a_warning(name):
    """mmseg's EncoderDecoder copies ``pretrained='open-mmlab://resnet50_v1c'`` of its base
    configs into the backbone: not this backbone's weights, so the init_cfg stays."""
    with pytest.warns(UserWarning, match="ignoring pretrained='open-mmlab://resnet50_v1c'"):
        bb = BACKBONES[name](pretrained='open-mmlab://resnet50_v1c', init_cfg=CKPT)
    assert bb.init_cfg == CKPT


def test_resolve_pretrained_rejects_other_types_and_passes_init_cfg_through():
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # nothing to warn about
        assert resolve_pretrained('X', None, CKPT) == CKPT and resolve_pretrained('X', None, CKPT) is not CKPT
    with pytest.raises(TypeError, match='X: pretrained must be a checkpoint path or None'):
        resolve_pretrained('X', 3, None)


@pytest.mark.parametrize('name', sorted(BACKBONES))
def test_out_indices_and_frozen_stages_are_checked_the_same_way(name):
    build = BACKBONES[name]
    with pytest.raises(ValueError, match=r'out_indices \(4,\) out of range: .* has outputs 0\.\.3'):
        build(out_indices=(4,))
    with pytest.raises(ValueError, match='frozen_stages must be in -1..4, got 5'):
        build(frozen_stages=5)
    bb = build(out_indices=(-1, 1), frozen_stages=1)
    assert bb.out_indices == (1, 3)
    depth, total = bb.get_layer_depth('backbone.norm3.weight', prefix='backbone.') if hasattr(bb, 'norm3') \
        else bb.get_layer_depth('backbone.no_such.weight', prefix='backbone.')
    assert depth == total - 1
    bb.train()
    frozen = [m for parts in (bb.stage_parts(-1)[0], bb.stage_parts(0)[0]) for m in parts]
    assert frozen and all(not m.training for m in frozen)
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
