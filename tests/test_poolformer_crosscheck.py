"""Independent cross-check: our PoolFormer Semantic FPN configs against MMSegmentation's own.

mmseg 1.x ships ``configs/poolformer/`` built on mmpretrain's ``PoolFormer`` (a separate
implementation of the same network). For every variant, the segmentor built from our config
(``iformer_mm.TimmBackbone`` over timm's ``poolformer_*``) must have the same parameter count
(trainable and total), and, given mmpretrain's weights in an mmseg checkpoint, the same backbone
features and the same logits. Skipped only when mmpretrain is not installed
(``bash tools/install.sh --tests`` installs it: ``mmpretrain==1.2.0 --no-deps`` plus the
small packages its import needs).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmseg')
pytest.importorskip('mmpretrain', reason='mmpretrain not installed: the cross-check needs its PoolFormer')

REPO = Path(__file__).resolve().parents[1]
MMSEG_CONFIGS = {
    's12': 'fpn_poolformer_s12_8xb4-40k_ade20k-512x512.py',
    's24': 'fpn_poolformer_s24_8xb4-40k_ade20k-512x512.py',
    's36': 'fpn_poolformer_s36_8x4_512x512_40k_ade20k.py',
    'm36': 'fpn_poolformer_m36_8xb4-40k_ade20k-512x512.py',
    'm48': 'fpn_poolformer_m48_8xb4-40k_ade20k-512x512.py',
}


def _build(cfg_path: str):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(cfg_path)
    cfg.model.backbone.init_cfg = None
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a process group
    return MODELS.build(cfg.model), cfg


def _count(model, trainable=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


@pytest.mark.parametrize('arch', list(MMSEG_CONFIGS))
def test_same_params_features_and_logits_as_mmseg_poolformer(arch, tmp_path):
    import mmseg
    mmseg_cfg = Path(mmseg.__file__).parent / '.mim' / 'configs' / 'poolformer' / MMSEG_CONFIGS[arch]
    if not mmseg_cfg.exists():
        pytest.skip(f'{mmseg_cfg} not shipped with this mmseg install')
    torch.manual_seed(0)
    theirs, _ = _build(str(mmseg_cfg))
    ours, cfg = _build(str(REPO / 'configs' / 'segmentation' / f'fpn_poolformer_{arch}_ade20k_40k.py'))
    theirs.init_weights()
    assert type(theirs.backbone).__name__ == 'PoolFormer' and type(ours.backbone).__name__ == 'TimmBackbone'

    # the same architecture: parameter counts, total and trainable (frozen_stages=0 freezes the stem)
    assert _count(ours) == _count(theirs)
    assert _count(ours.backbone) == _count(theirs.backbone)
    assert _count(ours, trainable=True) == _count(theirs, trainable=True)

    # mmpretrain's weights, as the mmseg checkpoint a run of their config writes, through our loader.
    # The only renaming done here: their per-output norms are named after the network index
    # (norm0/2/4/6), ours after the output (norm0..3); everything else goes through timm's filter.
    out_norm = re.compile(r'^norm(\d)\.')
    sd = {'backbone.' + out_norm.sub(lambda m: f'norm{int(m.group(1)) // 2}.', k): v
          for k, v in theirs.backbone.state_dict().items()}
    path = tmp_path / 'mmseg_poolformer.pth'
    torch.save({'meta': {'iter': 40000}, 'state_dict': {
        **sd, **{k: v for k, v in theirs.state_dict().items() if not k.startswith('backbone.')}}}, path)
    ours.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    ours.backbone.init_weights()
    rep = ours.backbone._pretrained_report
    assert not rep.missing and not rep.unexpected and len(rep.loaded) == len(ours.backbone.state_dict())
    ours.neck.load_state_dict(theirs.neck.state_dict())
    ours.decode_head.load_state_dict(theirs.decode_head.state_dict())

    ours.eval(), theirs.eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        fo, ft = ours.backbone(x), theirs.backbone(x)
        lo, lt = ours._forward(x), theirs._forward(x)
    for a, b in zip(fo, ft):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lo, lt, rtol=1e-5, atol=1e-5)
    print(f'poolformer_{arch}: params {_count(ours)} (backbone {_count(ours.backbone)}), '
          f'max |feature diff| {max((a - b).abs().max().item() for a, b in zip(fo, ft)):.2e}, '
          f'max |logit diff| {(lo - lt).abs().max().item():.2e}')
