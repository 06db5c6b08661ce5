"""The OpenMMLab backbone: registry, outputs, freezing, norm_eval, pretrained loading."""
import pytest
import torch

import iformer_mm  # noqa: F401
from iformer_mm import CheckpointError
from iformer_mm.models.backbone import IFormer

from _golden import TINY_ARCH, make_state_dict


def _tiny(**kw):
    kw.setdefault('drop_path_rate', 0.0)
    return IFormer(arch=TINY_ARCH, img_size=64, **kw)


@pytest.mark.parametrize('scope,registry', [('mmdet', 'mmdet.registry'), ('mmseg', 'mmseg.registry')])
def test_builds_from_mmdet_and_mmseg_registries(scope, registry):
    import importlib

    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    models = importlib.import_module(registry).MODELS
    model = models.build(dict(type='iformer_mm.IFormer', arch='small', out_indices=(1, 2, 3)))
    assert isinstance(model, IFormer)
    outs = model(torch.randn(1, 3, 64, 96))
    assert [o.shape[1] for o in outs] == [192, 320, 384] and model.out_channels == (192, 320, 384)


def test_config_with_custom_imports_builds_in_fresh_process(tmp_path):
    """A user config: custom_imports + type='iformer_mm.IFormer' under mmdet's scope, nothing else imported."""
    import subprocess
    import sys
    cfg = tmp_path / 'cfg.py'
    cfg.write_text("custom_imports = dict(imports=['iformer_mm'], allow_failed_imports=False)\n"
                   "default_scope = 'mmdet'\n"
                   "model = dict(type='iformer_mm.IFormer', arch='small', out_indices=(0, 1, 2, 3))\n")
    code = ("import sys; from mmengine.config import Config; from mmengine.registry import init_default_scope;"
            "from mmdet.registry import MODELS; cfg = Config.fromfile(sys.argv[1]);"
            "init_default_scope(cfg.default_scope); m = MODELS.build(cfg.model);"
            "print(type(m).__module__, type(m).__name__, m.out_channels)")
    out = subprocess.run([sys.executable, '-c', code, str(cfg)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'iformer_mm.models.backbone IFormer (96, 192, 320, 384)' in out.stdout


def test_import_does_not_pull_mmdet_or_mmseg():
    import subprocess
    import sys
    code = "import sys, iformer_mm; print(any(m.split('.')[0] in ('mmdet', 'mmseg') for m in sys.modules))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == 'False'


def test_outputs_norms_and_pruning():
    torch.manual_seed(0)
    full = _tiny()
    outs = full(torch.randn(2, 3, 72, 100))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 18, 25), (2, 64, 9, 13), (2, 96, 5, 7), (2, 128, 3, 4)]
    assert all(o.is_contiguous() for o in outs)
    # output LayerNorm: per-position channel statistics are normalised (weight 1, bias 0 at init)
    assert torch.allclose(outs[0].mean(1), torch.zeros(2, 18, 25), atol=1e-5)
    raw = _tiny(out_norm=False)
    assert not any(n.startswith('norm') for n, _ in raw.named_parameters())
    pruned = _tiny(out_indices=(0, 1))
    assert not hasattr(pruned, 'blocks3') and not hasattr(pruned, 'pos_embed4')
    assert len(pruned(torch.randn(1, 3, 64, 64))) == 2
    assert _tiny(out_indices=(-1,)).out_indices == (3,)
    with pytest.raises(ValueError, match='out of range'):
        _tiny(out_indices=(0, 4))


def test_frozen_stages_really_freeze():
    torch.manual_seed(0)
    model = _tiny(frozen_stages=2)
    model.train()
    frozen = [model.patch_embed, model.blocks1, model.patch_embed2, model.blocks2, model.norm0, model.norm1]
    assert all(not m.training for f in frozen for m in f.modules())
    assert model.blocks3.training and model.patch_embed3.training
    assert not model.pos_embed1.requires_grad and not model.pos_embed2.requires_grad
    assert model.pos_embed3.requires_grad
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(o.sum() for o in model(torch.randn(2, 3, 64, 64))).backward()
    opt.step()
    for n, p in model.named_parameters():
        stage_frozen = n.startswith(('patch_embed.', 'blocks1.', 'patch_embed2.', 'blocks2.', 'norm0.', 'norm1.',
                                     'pos_embed1', 'pos_embed2'))
        assert (p.grad is None) == stage_frozen, n
    after = model.state_dict()
    # frozen BatchNorm running stats did not move either (eval mode)
    assert torch.equal(before['patch_embed.norm1.running_mean'], after['patch_embed.norm1.running_mean'])
    assert not torch.equal(before['patch_embed3.norm.running_mean'], after['patch_embed3.norm.running_mean'])


def test_norm_eval_keeps_batchnorm_in_eval():
    model = _tiny(norm_eval=True).train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 5 and not any(m.training for m in bns)
    assert model.blocks1.training


def test_pretrained_init_cfg_changes_weights(golden_dir, tmp_path):
    sd = make_state_dict(golden_dir, 'tiny')
    path = tmp_path / 'tiny.pth'
    torch.save(sd, path)
    model = _tiny(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    assert not torch.equal(model.blocks2[0].mlp.fc1.weight, sd['blocks2.0.mlp.fc1.weight'])
    model.init_weights()
    for k, v in model.state_dict().items():
        if k in sd:
            assert torch.equal(v, sd[k]), k
    report = model._pretrained_report
    assert sorted(report.dropped) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    assert report.missing == [f'norm{i}.{p}' for i in range(4) for p in ('bias', 'weight')]
    assert not report.unexpected and len(report.loaded) == len(sd) - 4


def test_pretrained_from_mmdet_checkpoint_and_384_table(golden_dir, tmp_path):
    """A detector checkpoint ('backbone.' keys, meta, optimizer) and a 384 table both load."""
    sd = make_state_dict(golden_dir, 'iformer_small_384')
    det = {'meta': {'epoch': 12}, 'state_dict': {**{f'backbone.{k}': v for k, v in sd.items()},
                                                 'neck.lateral_convs.0.conv.weight': torch.zeros(1)}}
    path = tmp_path / 'det.pth'
    torch.save(det, path)
    model = IFormer('small', out_indices=(0, 1), init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    r = model._pretrained_report
    assert r.resized['pos_embed1'] == ((1, 96, 96, 96), (1, 56, 56, 96))
    assert "took the 'backbone.' sub-dict" in ' '.join(r.notes)
    # stages 3-4 are not built for out_indices=(0, 1): their weights are reported as dropped by design
    assert 'blocks3.0.attn.low_mixer.qkv.weight' not in r.loaded and 'blocks3.0.mlp.fc1.weight' in r.dropped
    assert 'pos_embed4' in r.dropped and not r.unexpected
    assert torch.equal(model.blocks2[0].attn.proj.weight, sd['blocks2.0.attn.proj.weight'])


def test_mismatched_checkpoint_raises_clear_error(golden_dir, tmp_path):
    path = tmp_path / 'base.pth'
    torch.save(make_state_dict(golden_dir, 'iformer_base'), path)
    model = IFormer('small', init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointError, match=r"iFormer-base .* but the model is iFormer-small.*arch='base'"):
        model.init_weights()
    torch.save({'conv.weight': torch.zeros(3)}, tmp_path / 'other.pth')
    model = IFormer('small', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'other.pth')))
    with pytest.raises(CheckpointError, match='no key matches'):
        model.init_weights()
    model = IFormer('small', init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'missing.pth')))
    with pytest.raises(CheckpointError, match='not found'):
        model.init_weights()


def test_get_layer_depth_is_monotonic():
    model = IFormer('small')
    ids = [model.get_layer_depth(n, prefix='backbone.')[0] for n in (
        'backbone.patch_embed.proj1.weight', 'backbone.pos_embed1', 'backbone.blocks1.0.norm1.weight',
        'backbone.blocks1.2.mlp.fc1.weight', 'backbone.patch_embed2.proj.weight', 'backbone.blocks2.0.attn.proj.bias',
        'backbone.blocks4.2.mlp.fc2.weight', 'backbone.norm3.weight')]
    assert ids == [0, 1, 1, 3, 4, 4, 18, 19]
    assert model.get_layer_depth('neck.conv.weight', prefix='backbone.') == (19, 20)


def test_with_cp_per_stage_same_gradients():
    torch.manual_seed(0)
    a = _tiny().train()
    b = _tiny(with_cp=[True, False, True, False]).train()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 80)
    sum(o.square().sum() for o in a(x)).backward()
    sum(o.square().sum() for o in b(x)).backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-4, atol=1e-6), n


def test_impl_from_config_same_outputs_and_gradients():
    """``impl`` reaches every mixer and MLP from an mm config; the kernels train like the reference.

    In float64 (``impl='fast'`` lifts the fp32-only device/dtype condition): some of these
    gradients are ill-conditioned sums (fp32 reference vs fp64 reference differ by 25% on
    the largest), so exactness is shown where rounding cannot hide a bug.
    """
    torch.manual_seed(0)
    a = _tiny(impl='reference').train().double()
    b = _tiny(impl='fast').train().double()
    b.load_state_dict(a.state_dict())
    assert {m.impl for m in b.modules() if hasattr(m, 'impl')} == {'fast'}
    x = torch.randn(2, 3, 64, 80, dtype=torch.float64)
    outs_a, outs_b = a(x), b(x)
    for oa, ob in zip(outs_a, outs_b):
        assert torch.allclose(oa, ob, rtol=1e-12, atol=1e-12)
    sum(o.square().sum() for o in outs_a).backward()
    sum(o.square().sum() for o in outs_b).backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-9, atol=1e-12), n
