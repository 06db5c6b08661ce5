"""timm contract over every registered variant, plus the core model's dense-input behaviour."""
import pytest
import torch

import iformer_mm  # noqa: F401  (registers the timm names)
from iformer_mm import InceptionTransformer
from iformer_mm.models.iformer import resize_pos_embed

VARIANTS = ['iformer_small', 'iformer_base', 'iformer_large',
            'iformer_small_384', 'iformer_base_384', 'iformer_large_384']
PARAMS = {'iformer_small': 19_866_344, 'iformer_base': 47_866_216, 'iformer_large': 86_637_096,
          'iformer_small_384': 20_899_944, 'iformer_base_384': 48_936_296, 'iformer_large_384': 87_743_656}
DIMS = {'small': (96, 192, 320, 384), 'base': (96, 192, 384, 512), 'large': (96, 192, 448, 640)}


@pytest.fixture(scope='module', params=VARIANTS)
def variant(request):
    import timm
    torch.manual_seed(0)
    return request.param, timm.create_model(request.param).eval()


def test_param_count_equals_authors(variant):
    name, model = variant
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


def test_pretrained_cfg(variant):
    name, model = variant
    cfg = model.pretrained_cfg
    size = 384 if name.endswith('384') else 224
    assert cfg['input_size'] == (3, size, size)
    assert cfg['crop_pct'] == (1.0 if size == 384 else 0.9)
    assert cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert cfg['first_conv'] == 'patch_embed.proj1' and cfg['classifier'] == 'head'
    assert cfg['url'].endswith(f'iformer/{name}.pth')
    model.get_submodule(cfg['first_conv'])  # names resolve
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()


def test_forward_head_and_classifier_reset(variant):
    name, model = variant
    dims = DIMS[name.split('_')[1]]
    x = torch.randn(2, 3, 40, 72)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2, 3, dims[-1])  # channels-last stage-4 tokens after the final norm
        assert model.forward_head(feats).shape == (2, 1000)
        assert model.forward_head(feats, pre_logits=True).shape == (2, dims[-1])
        assert torch.allclose(model(x), model.forward_head(feats), atol=1e-5)
    head = model.get_classifier()
    try:
        model.reset_classifier(7)
        assert model.get_classifier().out_features == 7
        with torch.no_grad():
            assert model(x).shape == (2, 7)
        model.reset_classifier(0)
        with torch.no_grad():
            assert model(x).shape == (2, dims[-1])
    finally:
        model.head = head
        model.num_classes = 1000


def test_feature_info_and_intermediates(variant):
    name, model = variant
    dims = DIMS[name.split('_')[1]]
    assert [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]
    assert [f['num_chs'] for f in model.feature_info] == list(dims)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
        assert [tuple(m.shape) for m in maps] == [
            (1, dims[0], 9, 12), (1, dims[1], 5, 6), (1, dims[2], 3, 3), (1, dims[3], 2, 2)]
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [torch.equal(a, b) for a, b in zip(last2, maps[2:])] == [True, True]
        nhwc = model.forward_intermediates(x, indices=[0], output_fmt='NHWC', intermediates_only=True)
        assert torch.equal(nhwc[0], maps[0].permute(0, 2, 3, 1))
        final, inter = model.forward_intermediates(x, norm=True)
        assert torch.allclose(final, model.forward_features(x), atol=1e-6)
        assert torch.allclose(inter[-1], final.permute(0, 3, 1, 2), atol=1e-6)


def test_no_weight_decay_names(variant):
    _, model = variant
    nwd = model.no_weight_decay()
    names = dict(model.named_parameters())
    assert {f'pos_embed{i}' for i in range(1, 5)} <= nwd
    assert nwd <= set(names)
    assert {n for n in names if 'layer_scale' in n} <= nwd and any('layer_scale' in n for n in nwd)
    assert 'blocks1.0.norm1.weight' in nwd and 'patch_embed.norm1.bias' in nwd and 'norm.weight' in nwd
    assert not any(n.endswith('qkv.weight') or 'fc1' in n or 'conv' in n or n.startswith('head') for n in nwd)


def test_group_matcher_drives_layer_decay(variant):
    """timm's layer-wise lr decay groups every parameter, stem first, head last, in depth order."""
    from timm.models import group_parameters
    _, model = variant
    groups = group_parameters(model, model.group_matcher(coarse=False))
    flat = [n for g in groups.values() for n in g]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    order = list(groups)
    first = {n: order.index(g) for g, ns in groups.items() for n in ns}
    assert first['patch_embed.proj1.weight'] == 0
    assert first['blocks1.0.norm1.weight'] < first['blocks1.1.norm1.weight'] < first['blocks2.0.norm1.weight']
    # a stage's downsampling and position table share its first block's group
    assert first['patch_embed2.proj.weight'] == first['pos_embed2'] == first['blocks2.0.norm1.weight']
    assert first['blocks2.0.norm1.weight'] < first['blocks4.0.norm1.weight'] < first['norm.weight']
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 6  # stem, 4 stages, final norm/head


def test_features_only_model():
    import timm
    model = timm.create_model('iformer_small', features_only=True, out_indices=(1, 2, 3)).eval()
    assert model.feature_info.reduction() == [8, 16, 32]
    assert model.feature_info.channels() == [192, 320, 384]
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 65, 97))
    assert [tuple(o.shape) for o in outs] == [(2, 192, 9, 13), (2, 320, 5, 7), (2, 384, 3, 4)]
    full = timm.create_model('iformer_small', features_only=True)
    assert full.feature_info.reduction() == [4, 8, 16, 32]


def test_layer_decay_optimizer_builds():
    import timm
    from timm.optim import create_optimizer_v2
    model = timm.create_model('iformer_small')
    opt = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    scales = sorted({g['lr_scale'] for g in opt.param_groups})
    assert len(scales) > 10 and scales[-1] == 1.0
    no_decay = [g for g in opt.param_groups if g['weight_decay'] == 0.0]
    names = {id(p): n for n, p in model.named_parameters()}
    nd_names = {names[id(p)] for g in no_decay for p in g['params']}
    assert 'pos_embed1' in nd_names and 'blocks3.0.layer_scale_1' in nd_names


@pytest.mark.parametrize('shape', [(1, 3, 33, 47), (1, 3, 225, 225), (2, 3, 64, 96), (1, 3, 512, 683),
                                   (1, 3, 1, 1)])
def test_any_input_size(shape):
    """Non-square, odd, not a multiple of 32, tiny: stage i is ceil(H / 2^(i+2)) x ceil(W / 2^(i+2))."""
    torch.manual_seed(0)
    model = InceptionTransformer('small', num_classes=10).eval()
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(shape), intermediates_only=True)
        logits = model(torch.randn(shape))
    B, _, H, W = shape
    for i, m in enumerate(maps):
        s = 4 * 2 ** i
        assert tuple(m.shape) == (B, model.embed_dims[i], -(-H // s), -(-W // s))
        assert torch.isfinite(m).all()
    assert logits.shape == (B, 10)


def test_dense_input_800x1333_backbone_shapes():
    """The detection resolution runs (global attention over 16,800 stage-1 tokens through SDPA)."""
    from iformer_mm.models.backbone import IFormer
    model = IFormer('small', out_norm=True).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 800, 1333))
    assert [tuple(o.shape[2:]) for o in outs] == [(200, 334), (100, 167), (50, 84), (25, 42)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_pos_embed_resized_by_shape_not_area():
    """A 49x64 map has the area of 56x56 but must still get a resized table (the authors' bug)."""
    table = torch.randn(1, 56, 56, 8)
    out = resize_pos_embed(table, (49, 64))
    assert out.shape == (1, 49, 64, 8)
    assert resize_pos_embed(table, (56, 56)) is table
    ref = torch.nn.functional.interpolate(table.permute(0, 3, 1, 2), size=(49, 64), mode='bilinear',
                                          align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(out, ref)


def test_grad_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    a = InceptionTransformer('small', num_classes=5, drop_path_rate=0.0).train()
    b = InceptionTransformer('small', num_classes=5, drop_path_rate=0.0).train()
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    assert b.grad_checkpointing == (True,) * 4
    x = torch.randn(2, 3, 64, 80)
    a(x).square().sum().backward()
    b(x).square().sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-6), n
    b.set_grad_checkpointing([False, True, False, True])
    assert b.grad_checkpointing == (False, True, False, True)


def test_drop_path_schedule_and_train_stochasticity():
    model = InceptionTransformer('small', drop_path_rate=0.3)
    rates = [blk.drop_path.drop_prob for i in range(1, 5) for blk in getattr(model, f'blocks{i}')
             if hasattr(blk.drop_path, 'drop_prob')]
    assert len(rates) == 17 and abs(rates[-1] - 0.3) < 1e-6 and rates == sorted(rates)


def test_arch_dict_and_validation():
    model = InceptionTransformer(dict(depths=[1, 1, 2, 1], embed_dims=[64, 64, 96, 128],
                                      attention_heads=[1, 1, 1, 2, 3]), img_size=64, num_classes=10)
    assert model.blocks3[1].attn.low_dim == 64 and model.blocks3[1].attn.high_dim == 32
    with pytest.raises(ValueError, match=r"Valid names: \['base', 'large', 'small'\]"):
        InceptionTransformer('tiny')
    with pytest.raises(ValueError, match='one entry per block'):
        InceptionTransformer(dict(depths=[1, 1, 1, 1], embed_dims=[64] * 4, attention_heads=[1]))
    with pytest.raises(ValueError, match='positive and even'):
        InceptionTransformer(dict(depths=[1, 1, 1, 1], embed_dims=[64] * 4, attention_heads=[2, 1, 1, 1]))


@pytest.mark.parametrize('index', [0, 1, 2, 3])
def test_pruned_model_ends_at_its_tap(index):
    """timm's prune contract: after ``prune_intermediate_layers([i], prune_norm=True)``,
    ``forward_features`` (eager and TorchScript) ends at stage ``i``'s map, every parameter left
    is used, and ``forward_intermediates`` still returns the same tap."""
    import copy
    model = InceptionTransformer(dict(depths=[1, 1, 2, 1], embed_dims=[64, 64, 96, 128],
                                      attention_heads=[1, 1, 1, 2, 3]), num_classes=5).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tap = model.forward_intermediates(x, intermediates_only=True)[index]
        pruned = copy.deepcopy(model)
        pruned.prune_intermediate_layers([index], prune_norm=True)
        assert pruned.num_stages_built == index + 1
        torch.testing.assert_close(pruned.forward_features(x).permute(0, 3, 1, 2), tap, rtol=0, atol=0)
        torch.testing.assert_close(torch.jit.script(pruned).forward_features(x).permute(0, 3, 1, 2), tap)
        final, (again,) = pruned.forward_intermediates(x, indices=[index])
        torch.testing.assert_close(again, tap, rtol=0, atol=0)
    pruned.train()
    pruned(x).sum().backward()
    assert not [n for n, p in pruned.named_parameters() if p.grad is None]
