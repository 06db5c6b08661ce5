"""Every PyTorch tool that looks into or replaces modules sees the real iFormer:
forward hooks, module swaps (LoRA-style subclasses), parametrisations, hook-based FLOP counters,
and stochastic depth that depends on ``.training`` only."""
import pytest
import torch
from torch import nn

from iformer_mm import InceptionTransformer
from iformer_mm.models.backbone import IFormer

TINY = dict(depths=[1, 1, 2, 1], embed_dims=[64, 64, 96, 128], attention_heads=[1, 1, 1, 2, 3])


def _model(impl='auto', **kw):
    torch.manual_seed(0)
    model = InceptionTransformer(TINY, img_size=64, num_classes=10, impl=impl, **kw)
    with torch.no_grad():  # layer scales of 1e-6 would hide a mixer/MLP change behind the residual
        for name, p in model.named_parameters():
            if 'layer_scale' in name:
                p.fill_(0.5)
    return model


X = torch.randn(2, 3, 72, 100, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_forward_hook_fires_on_every_linear_and_conv(train, grad):
    model = _model().train(train)
    layers = {n: m for n, m in model.named_modules() if type(m) in (nn.Linear, nn.Conv2d)}
    assert len(layers) > 30 and 'blocks1.0.mlp.fc1' in layers and 'blocks1.0.attn.high_mixer.conv1' in layers
    fired = set()
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: fired.add(n)) for n, m in layers.items()]
    with torch.set_grad_enabled(grad):
        model(X)
    for h in handles:
        h.remove()
    assert fired == set(layers)


def test_mixer_branches_are_observable_as_module_outputs():
    """The frequency analysis hooks the branch outputs: conv, max-pool and attention."""
    model = _model().eval()
    mixer = model.blocks1[0].attn
    got = {}
    mixer.high_mixer.mid_gelu1.register_forward_hook(lambda m, i, o: got.setdefault('conv', o))
    mixer.high_mixer.mid_gelu2.register_forward_hook(lambda m, i, o: got.setdefault('pool', o))
    mixer.low_mixer.register_forward_hook(lambda m, i, o: got.setdefault('attn', o))
    with torch.no_grad():
        model(X)
    hd, ld = mixer.high_dim, mixer.low_dim
    assert got['conv'].shape == got['pool'].shape == (2, hd, 18, 25)
    assert got['attn'].shape == (2, ld, 18, 25)


class LoRALinear(nn.Linear):
    """A LoRA-style adapter: ``W x + B A x``, built as an ``nn.Linear`` subclass (as peft does)."""

    def __init__(self, base: nn.Linear, rank: int = 4) -> None:
        super().__init__(base.in_features, base.out_features)
        self.load_state_dict(base.state_dict())
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) * 0.5)
        self.lora_b = nn.Parameter(torch.randn(base.out_features, rank) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x @ self.lora_a.t() @ self.lora_b.t()


@pytest.mark.parametrize('train', [False, True], ids=['eval', 'train'])
def test_lora_swap_of_mlp_fc1_changes_the_output(train):
    model = _model().train(train)
    with torch.no_grad():
        before = model(X)
    blk = model.blocks1[0]
    blk.mlp.fc1 = LoRALinear(blk.mlp.fc1)
    out = model(X)
    assert not torch.allclose(out, before, atol=1e-4)
    out.sum().backward()
    assert blk.mlp.fc1.lora_a.grad is not None and blk.mlp.fc1.lora_a.grad.abs().sum() > 0
    # and it equals the reference path with the same swap
    ref = _model(impl='reference').train(train)
    ref.load_state_dict(model.state_dict(), strict=False)
    ref.blocks1[0].mlp.fc1 = blk.mlp.fc1
    if not train:
        with torch.no_grad():
            assert torch.allclose(ref(X), model(X), rtol=1e-5, atol=1e-5)


def test_weight_norm_parametrization_on_attn_proj_is_honoured():
    model = _model().eval()
    proj = model.blocks2[0].attn.proj
    torch.nn.utils.parametrizations.weight_norm(proj)
    with torch.no_grad():
        before = model(X)
        proj.parametrizations.weight.original0.mul_(2.0)  # the magnitude g
        after = model(X)
        assert not torch.allclose(before, after, atol=1e-4)
        # the effective weight is used: the same result as a plain conv with that weight
        plain = nn.Conv2d(proj.in_channels, proj.out_channels, 1)
        plain.weight.copy_(proj.weight)
        plain.bias.copy_(proj.bias)
        model.blocks2[0].attn.proj = plain
        assert torch.allclose(model(X), after, rtol=1e-5, atol=1e-6)


def test_drop_path_depends_on_training_only_not_grad_mode():
    model = _model(drop_path_rate=0.5).train()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(X)
        torch.manual_seed(1)
        b = model(X)
        assert not torch.allclose(a, b)  # stochastic depth ran under no_grad in train mode
        model.eval()
        assert torch.equal(model(X), model(X))


def test_paper_flops_from_module_hooks():
    """A hook-based counter with mmcv 1.x rules (tools/analysis/get_flops.py) gives the paper's
    92.2 G for the iFormer-S backbone at 1280x800; it only works if every module runs."""
    from iformer_mm.analysis.flops import count_paper
    model = IFormer('small', out_norm=False).eval()
    x = torch.zeros(1, 3, 1280, 800, device='meta')
    model.to('meta')
    flops = count_paper(model, lambda: model(x))
    assert abs(flops / 1e9 - 92.2) <= 0.5, flops / 1e9


def test_reference_path_op_count_matches_the_authors_flow_and_does_not_grow_with_the_image():
    """The path GPUs take (``impl='reference'``) issues about as many ATen ops per forward+backward
    as the released data flow with SDPA (each op is a kernel launch on a GPU), at any image size."""
    from iformer_mm.analysis.baselines import AuthorsIFormer
    from iformer_mm.analysis.opcount import count_ops
    torch.manual_seed(0)
    ref = IFormer('small', out_norm=False, drop_path_rate=0.0, impl='reference').train()
    authors = AuthorsIFormer('small', attn='sdpa').train()
    authors.load_state_dict(ref.state_dict())

    def step(model, h, w):
        x = torch.randn(1, 3, h, w)
        return lambda: sum(o.sum() for o in model(x)).backward()
    counts = {size: count_ops(step(ref, *size)).total for size in [(64, 96), (128, 192)]}
    base = count_ops(step(authors, 64, 96)).total
    # not growing with the image (odd small maps cost a few crop ops more)
    assert counts[(128, 192)] <= counts[(64, 96)] <= 1.01 * counts[(128, 192)], counts
    assert counts[(64, 96)] <= 1.1 * base, (counts, base)
