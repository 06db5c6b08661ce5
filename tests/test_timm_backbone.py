"""iformer_mm.TimmBackbone over the MetaFormer families, its loader and its configs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

timm = pytest.importorskip('timm')
pytest.importorskip('mmengine')

import iformer_mm  # noqa: E402,F401  (registers identityformer_* and the backbone)
from iformer_mm import CheckpointError, TimmBackbone  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ['caformer_s18', 'convformer_s18', 'poolformerv2_s12', 'poolformer_s12', 'identityformer_s12']


def _timm(name: str, **kw) -> torch.nn.Module:
    return timm.create_model(name, **kw).eval()


# ----------------------------------------------------------------------------- authors' layouts
def to_authors_layout(sd: dict, v1: bool) -> dict:
    """timm keys -> the sail-sg release's keys (the inverse of timm's checkpoint_filter_fn).

    MetaFormer v2 (caformer, convformer, poolformerv2, identityformer): ``downsample_layers.i``,
    ``stages.i.j``, Linear MLPs (2-D weights), ``norm``/``head``. PoolFormer v1: ``patch_embed``,
    ``network.{2i}`` (blocks) / ``network.{2i-1}`` (downsampling), ``layer_scale_1`` tensors.
    """
    out = {}
    for k, v in sd.items():
        if v.ndim == 4 and v.shape[-2:] == (1, 1) and not v1:
            v = v.flatten(1)  # the authors' nn.Linear
        k = re.sub(r'^head\.norm\.', 'norm.', k)
        k = re.sub(r'^head\.fc\.', 'head.', k)
        if v1:
            k = k.replace('stem.conv.', 'patch_embed.proj.')
            k = re.sub(r'^stages\.(\d+)\.downsample\.conv\.',
                       lambda m: f'network.{2 * int(m.group(1)) - 1}.proj.', k)
            k = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.',
                       lambda m: f'network.{2 * int(m.group(1))}.{m.group(2)}.', k)
            k = re.sub(r'layer_scale(\d)\.scale$', r'layer_scale_\1', k)
        else:
            k = k.replace('stem.conv.', 'downsample_layers.0.conv.').replace('stem.norm.', 'downsample_layers.0.post_norm.')
            k = re.sub(r'^stages\.(\d+)\.downsample\.norm\.', r'downsample_layers.\1.pre_norm.', k)
            k = re.sub(r'^stages\.(\d+)\.downsample\.conv\.', r'downsample_layers.\1.conv.', k)
            k = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.', k)
        out[k] = v
    return out


def _features(model, x):
    if isinstance(model, TimmBackbone):
        return model(x)
    return model.forward_intermediates(x, indices=[0, 1, 2, 3], intermediates_only=True)


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize('name', FAMILIES)
def test_shapes_strides_odd_sizes_and_same_features_as_timm(name):
    torch.manual_seed(0)
    ref = _timm(name)
    bb = TimmBackbone(name).eval()
    bb.load_weights(ref.state_dict())  # hub layout: every backbone key found, head dropped
    assert bb.out_channels == tuple(f['num_chs'] for f in ref.feature_info)
    assert bb.out_strides == (4, 8, 16, 32)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        outs, want = bb(x), _features(ref, x)
    for o, w, c, s in zip(outs, want, bb.out_channels, bb.out_strides):
        assert o.shape[:2] == (1, c)
        assert abs(o.shape[2] - 97 / s) < 1 and abs(o.shape[3] - 131 / s) < 1, (o.shape, s)
        torch.testing.assert_close(o, w)


def test_pruning_output_norms_and_names():
    bb = TimmBackbone('caformer_s18', out_indices=(0, 2), out_norm='ln')
    assert not any(k.startswith(('head.', 'stages.3.')) for k in bb.state_dict())
    assert [n for n, _ in bb.named_children()] == ['stem', 'stages', 'norm0', 'norm2']
    outs = bb(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 16, 16), (2, 320, 4, 4)]
    # a LayerNorm over channels: every position has mean 0 (weight 1, bias 0 at init)
    assert outs[1].mean(1).abs().max() < 1e-4
    assert TimmBackbone('poolformer_s12', out_indices=(3,), out_norm='gn').norm3.num_groups == 1


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match='fixed number of tokens.*224x224.*identityformer_'):
        TimmBackbone('randformer_s12')
    with pytest.raises(ValueError, match="unknown timm model 'caformer_s19'.*caformer_s18"):
        TimmBackbone('caformer_s19')
    with pytest.raises(ValueError, match='out_indices .* out of range: poolformer_s12 has outputs 0..3'):
        TimmBackbone('poolformer_s12', out_indices=(4,))
    with pytest.raises(ValueError, match='out_norm'):
        TimmBackbone('poolformer_s12', out_norm='bn')


def test_pretrained_kwarg_tolerance(tmp_path):
    """Like mmdet backbones: pretrained=None is nothing, pretrained=PATH means init_cfg (warned)."""
    ref = _timm('poolformer_s12')
    torch.save(ref.state_dict(), tmp_path / 'p.pth')
    assert TimmBackbone('poolformer_s12', pretrained=None).init_cfg is None
    with pytest.warns(DeprecationWarning, match='init_cfg'):
        bb = TimmBackbone('poolformer_s12', pretrained=str(tmp_path / 'p.pth'))
    bb.init_weights()
    assert torch.equal(bb.stem.conv.weight, ref.stem.conv.weight)


def test_copies_and_module_swaps_run_their_own_weights():
    """EMA hooks deep-copy the model and SyncBN/BN conversions swap modules: the forward must
    use the copy's / the new modules, not the originals."""
    import copy
    bb = TimmBackbone('poolformer_s12', out_indices=(0,)).eval()
    twin = copy.deepcopy(bb)
    with torch.no_grad():
        twin.stem.conv.weight.mul_(2)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(bb(x)[0], twin(x)[0])
    rn = TimmBackbone('resnet18', out_indices=(0,)).eval()
    from mmengine.model import revert_sync_batchnorm
    rn = revert_sync_batchnorm(torch.nn.SyncBatchNorm.convert_sync_batchnorm(rn)).eval()
    before = rn(x)[0]
    rn.bn1 = torch.nn.BatchNorm2d(64).eval()  # a top-level swap: made on the adapter only
    with torch.no_grad():
        rn.bn1.weight.fill_(3.0)
    assert not torch.allclose(rn(x)[0], before)  # the new bn1 runs


# ----------------------------------------------------------------------------- training modes
@pytest.mark.parametrize('name', ['caformer_s18', 'poolformer_s12'])
def test_frozen_stages_really_freeze(name):
    bb = TimmBackbone(name, out_norm='ln', frozen_stages=2)
    bb.train()
    sum(o.float().mean() for o in bb(torch.randn(1, 3, 64, 64))).backward()
    frozen = ('stem.', 'stages.0.', 'stages.1.', 'norm0.', 'norm1.')
    for n, p in bb.named_parameters():
        if n.startswith(frozen):
            assert not p.requires_grad and p.grad is None, n
        else:
            assert p.requires_grad and p.grad is not None, n
    assert not bb.stem.training and not bb.stages[1].training and not bb.norm1.training
    assert bb.stages[2].training and bb.norm2.training
    bb.train()  # mmengine calls train() again at every epoch: still frozen
    assert not bb.stages[0].training


def test_norm_eval_and_with_cp():
    bb = TimmBackbone('resnet18', norm_eval=True).train()  # any timm model with forward_intermediates
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    torch.manual_seed(0)
    a = TimmBackbone('convformer_s18', drop_path_rate=0.).train()
    b = TimmBackbone('convformer_s18', with_cp=True, drop_path_rate=0.).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    for m in (a, b):
        sum(o.sum() for o in m(x)).backward()
    assert b._timm_model.grad_checkpointing
    torch.testing.assert_close(b.stages[2].blocks[0].mlp.fc1.weight.grad,
                               a.stages[2].blocks[0].mlp.fc1.weight.grad)


@pytest.mark.parametrize('name', FAMILIES)
def test_get_layer_depth_is_monotone_over_depth(name):
    bb = TimmBackbone(name, out_norm='ln')
    ids = [bb.get_layer_depth('backbone.' + n, prefix='backbone.') for n, _ in bb.named_parameters()]
    num = ids[0][1]
    assert num == sum(len(s.blocks) for s in bb.stages) + 2
    depth = [i for i, _ in ids]
    assert depth == sorted(depth) and depth[0] == 0 and depth[-1] == num - 1
    assert bb.get_layer_depth('backbone.stages.0.blocks.0.norm1.weight', 'backbone.')[0] == 1
    assert bb.get_layer_depth('neck.conv.weight', 'backbone.') == (num - 1, num)


def test_no_weight_decay_is_what_configs_apply():
    """flat_decay_mult=0 in the configs exempts exactly TimmBackbone.no_weight_decay()."""
    from mmengine.optim import DefaultOptimWrapperConstructor
    bb = TimmBackbone('caformer_s18', out_norm='ln')
    nwd = bb.no_weight_decay()
    names = {n for n, _ in bb.named_parameters()}
    assert {'stages.0.blocks.0.mlp.act.scale', 'stages.0.blocks.0.mlp.act.bias',
            'stages.2.blocks.0.res_scale1.scale', 'stem.norm.weight', 'norm0.bias'} <= nwd
    assert 'stages.2.blocks.0.token_mixer.qkv.weight' not in nwd
    opt = DefaultOptimWrapperConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05)),
        dict(flat_decay_mult=0.0))(bb)
    by_id = {id(p): n for n, p in bb.named_parameters()}
    zero = {by_id[id(p)] for g in opt.optimizer.param_groups if g['weight_decay'] == 0 for p in g['params']}
    assert zero == nwd and len(names - zero) > 0


# ----------------------------------------------------------------------------- loading
@pytest.mark.parametrize('name,v1', [('caformer_s18', False), ('convformer_s18', False),
                                     ('poolformerv2_s12', False), ('identityformer_s12', False),
                                     ('poolformer_s12', True)])
def test_hub_and_authors_layout_load_strictly_same_features(name, v1, tmp_path):
    torch.manual_seed(1)
    src = _timm(name).state_dict()
    hub, authors, plain = tmp_path / 'hub.pth', tmp_path / 'authors.pth', tmp_path / 'plain.pth'
    torch.save(src, hub)
    # the release wraps its weights in {'model': ...}; our loader unwraps it, timm's does not
    torch.save({'model': to_authors_layout(src, v1), 'epoch': 300}, authors)
    torch.save(to_authors_layout(src, v1), plain)
    x = torch.randn(1, 3, 72, 88)
    feats = []
    for ours, timms in ((hub, hub), (authors, plain)):
        bb = TimmBackbone(name, init_cfg=dict(type='Pretrained', checkpoint=str(ours))).eval()
        bb.init_weights()
        rep = bb._pretrained_report
        assert not rep.missing and not rep.unexpected and len(rep.loaded) == len(bb.state_dict())
        assert rep.dropped and all(k.startswith('head.') for k in rep.dropped)
        # timm loads the same weights strictly (the authors' layout through its own filter)
        ref = _timm(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(timms)))
        with torch.no_grad():
            f, r = bb(x), _features(ref, x)
        for a, b in zip(f, r):
            torch.testing.assert_close(a, b)
        feats.append(f)
    for a, b in zip(*feats):
        assert torch.equal(a, b)


def test_foreign_keys_in_authors_checkpoint_are_reported_not_crashing(tmp_path):
    src = _timm('poolformer_s12').state_dict()
    ck = to_authors_layout(src, v1=True)
    ck['norm0.weight'] = torch.ones(64)  # the authors' dense backbone had per-output norms
    ck['teacher.whatever'] = torch.ones(3)
    path = tmp_path / 'a.pth'
    torch.save(ck, path)
    bb = TimmBackbone('poolformer_s12', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match='(?s)strictly.*unexpected: .*whatever'):
        bb.init_weights()
    bb = TimmBackbone('poolformer_s12', init_cfg=dict(type='Pretrained', checkpoint=str(path), strict=False))
    bb.init_weights()
    assert len(bb._pretrained_report.unexpected) == 2
    assert torch.equal(bb.stages[2].blocks[3].mlp.fc2.weight, src['stages.2.blocks.3.mlp.fc2.weight'])


def test_wrong_variant_and_wrong_model_fail_clearly(tmp_path):
    torch.save(_timm('caformer_s36').state_dict(), tmp_path / 's36.pth')
    bb = TimmBackbone('caformer_m36', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 's36.pth')))
    with pytest.raises(CheckpointError, match='another variant'):
        bb.init_weights()
    torch.save({'conv.weight': torch.zeros(3)}, tmp_path / 'x.pth')
    bb = TimmBackbone('caformer_s18', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'x.pth')))
    with pytest.raises(CheckpointError, match='could not convert|no key matches'):
        bb.init_weights()
    bb = TimmBackbone('caformer_s18', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(CheckpointError, match='not found'):
        bb.init_weights()


@pytest.mark.parametrize('config', ['mask_rcnn_caformer_s18_1x.py', 'mask_rcnn_poolformer_s12_1x.py'])
def test_mmdet_checkpoint_reloads_through_init_cfg(config, tmp_path):
    """A checkpoint mmdet's runner would write (meta + state_dict with backbone./neck./...) of a
    whole detector loads into the backbone of a new detector, output norms included."""
    pytest.importorskip('mmdet')
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.runner.checkpoint import get_state_dict, save_checkpoint, weights_to_cpu
    register_all_modules()
    cfg = Config.fromfile(str(REPO / 'configs' / 'detection' / config))
    cfg.model.backbone.init_cfg = None
    det = MODELS.build(cfg.model)
    det.init_weights()
    path = tmp_path / 'epoch_12.pth'
    save_checkpoint({'meta': {'epoch': 12, 'mmdet_version': '3.3.0'},
                     'state_dict': weights_to_cpu(get_state_dict(det))}, str(path))
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(path))
    det2 = MODELS.build(cfg.model)
    det2.init_weights()
    rep = det2.backbone._pretrained_report
    assert not rep.missing and not rep.unexpected and not rep.dropped
    assert "took the 'backbone.' sub-dict" in ' '.join(rep.notes)
    for (k, a), b in zip(det.backbone.state_dict().items(), det2.backbone.state_dict().values()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------- configs
DET = ['mask_rcnn_caformer_s18_1x.py', 'mask_rcnn_convformer_s18_1x.py', 'mask_rcnn_poolformer_s12_1x.py',
       'mask_rcnn_poolformer_s24_1x.py', 'mask_rcnn_poolformer_s36_1x.py']
SEG = ['fpn_caformer_s18_ade20k_80k.py', 'fpn_convformer_s18_ade20k_80k.py'] + [
    f'fpn_poolformer_{v}_ade20k_40k.py' for v in ('s12', 's24', 's36', 'm36', 'm48')]


@pytest.mark.parametrize('config', DET + SEG)
def test_configs_build_and_keep_the_recipe(config):
    from mmengine.config import Config
    det = config.startswith('mask_rcnn')
    pytest.importorskip('mmdet' if det else 'mmseg')
    cfg = Config.fromfile(str(REPO / 'configs' / ('detection' if det else 'segmentation') / config))
    bb = cfg.model.backbone
    assert bb.type == 'iformer_mm.TimmBackbone' and bb.init_cfg.type == 'Pretrained'
    opt = cfg.optim_wrapper.optimizer
    if 'poolformer' in config:  # the PoolFormer paper's recipe
        assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 2e-4, 1e-4)
        assert bb.out_norm == 'gn' and 'paramwise_cfg' not in cfg.optim_wrapper
        if not det:
            assert cfg.param_scheduler[0].end == 40000 and cfg.train_cfg.max_iters == 40000
            assert cfg.train_dataloader.batch_size == 4  # x 8 GPUs
    else:  # exactly the iFormer-S recipe, only the backbone and the decay exemptions differ
        base = Config.fromfile(str(REPO / 'configs' / ('detection/mask_rcnn_iformer_s_1x.py' if det
                                                       else 'segmentation/fpn_iformer_s_ade20k_80k.py')))
        assert cfg.optim_wrapper.optimizer == base.optim_wrapper.optimizer
        assert cfg.optim_wrapper.paramwise_cfg == dict(flat_decay_mult=0.0)
        assert cfg.param_scheduler == base.param_scheduler and cfg.train_cfg == base.train_cfg
        assert cfg.train_dataloader.batch_size == base.train_dataloader.batch_size
        assert bb.drop_path_rate == base.model.backbone.drop_path_rate and bb.out_norm == 'ln'
    if det:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    else:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    register_all_modules()
    cfg.model.backbone.init_cfg = None
    if not det:
        cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    model = MODELS.build(cfg.model)
    assert model.neck.in_channels == list(model.backbone.out_channels)
    feats = model.extract_feat(torch.randn(1, 3, 64, 96))
    assert len(feats) == (5 if det else 4)
