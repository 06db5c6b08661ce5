"""Whole-model paths compute the same function (kernels, naive attention, checkpointing,
windows) and stay compilable and exportable. Kernel-level equality: tests/test_ops.py.

Every iFormer here is tiny (or iFormer-S at a small input) so the file runs in well under a
minute on one core; timings live in tools/analysis/benchmark.py, never in tests.
"""
import re

import pytest
import torch

from iformer_mm import compat
from iformer_mm.models.iformer import InceptionMixer, InceptionTransformer, LowMixer

TINY = dict(depths=[1, 1, 2, 1], embed_dims=[64, 64, 96, 128], attention_heads=[1, 1, 1, 2, 3])
ODD_INPUT = (2, 3, 72, 100)  # stage maps 18x25, 9x13, 5x7, 3x4: odd sizes and crops everywhere


def _tiny(**kw) -> InceptionTransformer:
    torch.manual_seed(0)
    model = InceptionTransformer(TINY, img_size=64, num_classes=10, **kw)
    # Layer scales of 1e-6 would hide any error of the mixer/MLP behind the residual.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'layer_scale' in name:
                p.fill_(0.5)
    return model


def _same_weights(src: InceptionTransformer, **kw) -> InceptionTransformer:
    dst = _tiny(**kw)
    dst.load_state_dict(src.state_dict())
    return dst


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _assert_grads_close(grads, ref, tol=1e-4):
    """Each gradient within ``tol`` of its reference, relative to the larger of its own
    scale and 1e-3 of the largest gradient."""
    assert set(grads) == set(ref)
    top = max(g.abs().max().item() for g in ref.values())
    for name, g in grads.items():
        if re.fullmatch(r'patch_embed\d?\.proj\d?\.bias', name):
            continue  # a conv bias right before BatchNorm: its true gradient is exactly 0
        scale = max(ref[name].abs().max().item(), 1e-3 * top)
        assert (g - ref[name]).abs().max().item() <= tol * scale, name


def _input(shape=ODD_INPUT, seed=1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _loss_and_grads(model: torch.nn.Module, x: torch.Tensor):
    model.train()
    model.zero_grad(set_to_none=True)
    feats = model.forward_intermediates(x, intermediates_only=True)
    # A different weight per stage, so every stage's gradient matters.
    loss = sum((i + 1) * f.square().mean() for i, f in enumerate(feats))
    loss.backward()
    return [f.detach() for f in feats], {n: p.grad.clone() for n, p in model.named_parameters()
                                         if p.grad is not None}


# ------------------------------------------------------------------ equivalence of paths
@pytest.mark.parametrize('grad_mode', [False, True], ids=['no_grad', 'grad'])
def test_kernels_and_reference_equal_the_naive_baseline_at_inference(grad_mode):
    """impl='auto' (CPU kernels) == impl='reference' (SDPA) == the released code's explicit
    softmax(QK^T)V, on odd non-square maps, with and without autograd."""
    naive = _tiny(attn_impl='naive', impl='reference').eval()
    fused = _same_weights(naive).eval()
    kernel = _same_weights(naive, impl='reference').eval()
    x = _input()
    with torch.set_grad_enabled(grad_mode):
        ref = naive(x)
        ref_feats = naive.forward_intermediates(x, intermediates_only=True)
        for model in (fused, kernel):
            assert _rel(model(x), ref) < 1e-5
            for a, b in zip(model.forward_intermediates(x, intermediates_only=True), ref_feats):
                assert a.shape == b.shape
                assert _rel(a, b) < 1e-5


def test_kernel_training_path_equals_naive_outputs_and_gradients():
    """Training through the kernels (recomputed local branches, GELU recomputed in the MLP's
    backward) gives the naive reference's outputs and parameter gradients."""
    naive = _tiny(attn_impl='naive', impl='reference')
    fused = _same_weights(naive)
    x = _input()
    ref_out, ref_grads = _loss_and_grads(naive, x)
    out, grads = _loss_and_grads(fused, x)
    for a, b in zip(out, ref_out):
        assert _rel(a, b) < 1e-5
    # every parameter the stages use gets a gradient (the classifier norm/head are unused)
    used = [n for n, _ in fused.named_parameters() if not n.startswith(('norm.', 'head.'))]
    assert set(grads) == set(ref_grads) == set(used)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.parametrize('with_cp', [True, [True, False, True, False], [False, False, False, True]])
def test_per_stage_checkpointing_gives_equal_outputs_and_grads(with_cp):
    ref = _tiny()
    cp = _same_weights(ref, with_cp=with_cp)
    assert cp.grad_checkpointing == tuple(with_cp if isinstance(with_cp, list) else [with_cp] * 4)
    x = _input()
    out_a, g_a = _loss_and_grads(ref, x)
    out_b, g_b = _loss_and_grads(cp, x)
    for a, b in zip(out_a, out_b):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    _assert_grads_close(g_b, g_a, 1e-5)


def test_with_cp_needs_one_entry_per_stage():
    with pytest.raises(ValueError, match='one per stage'):
        _tiny(with_cp=[True, False])


# ------------------------------------------------------------------ windowed attention
def _window_reference(mixer: LowMixer, x: torch.Tensor, ws: int) -> torch.Tensor:
    """Independent windowed attention: loop over the windows, each clipped to the map."""
    B, h, w, C = x.shape
    out = torch.empty_like(x)
    for i in range(0, h, ws):
        for j in range(0, w, ws):
            win = x[:, i:i + ws, j:j + ws]
            wh, ww = win.shape[1:3]
            qkv = mixer.qkv(win.reshape(B, wh * ww, C)).view(B, wh * ww, 3, mixer.num_heads, -1)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            attn = (q @ k.transpose(-2, -1) * mixer.head_dim ** -0.5).softmax(-1)
            out[:, i:i + ws, j:j + ws] = (attn @ v).transpose(1, 2).reshape(B, wh, ww, C)
    return out


@pytest.mark.parametrize('impl', ['sdpa', 'naive'])
@pytest.mark.parametrize('hw,ws', [((6, 10), 4), ((7, 5), 3), ((8, 8), 4), ((5, 7), 8)])
def test_windowed_attention_matches_per_window_reference(impl, hw, ws):
    """Padded windows are masked: partial windows at the border attend only to real tokens.
    A window larger than the map (last case) pads to one window and equals global attention."""
    torch.manual_seed(0)
    mixer = LowMixer(64, 2, pool=False, attn_impl=impl, window_size=ws)
    x = torch.randn(2, *hw, 64)
    with torch.no_grad():
        got = mixer.attention(x)  # window_size=ws
        assert torch.allclose(got, _window_reference(mixer, x, ws), rtol=1e-5, atol=1e-6)
        if ws >= max(hw):
            mixer.window_size = None
            assert torch.allclose(got, mixer.attention(x), rtol=1e-5, atol=1e-6)


def test_window_covering_every_map_equals_global_attention():
    ref = _tiny().eval()
    win = _same_weights(ref, window_size=[5, 3, 3, 2]).eval()  # pooled maps: 9x13, 5x7, 5x7, 3x4
    covering = _same_weights(ref, window_size=[13, 7, 7, 4]).eval()
    x = _input()
    with torch.no_grad():
        out = ref(x)
        assert torch.allclose(covering(x), out, rtol=1e-5, atol=1e-6)
        # and a window that does not cover the map really changes the function
        assert not torch.allclose(win(x), out, rtol=1e-3, atol=1e-4)


def test_windowed_training_path_matches_naive_windowed():
    naive = _tiny(attn_impl='naive', window_size=[4, 3, None, None], impl='reference')
    fused = _same_weights(naive, window_size=[4, 3, None, None])
    x = _input()
    out_a, g_a = _loss_and_grads(naive, x)
    out_b, g_b = _loss_and_grads(fused, x)
    for a, b in zip(out_b, out_a):
        assert _rel(a, b) < 1e-5
    _assert_grads_close(g_b, g_a)


# ------------------------------------------------------------------ compile / export
def test_torch_compile_has_no_graph_breaks():
    """fullgraph=True fails on any graph break, in inference and in training (the recomputed
    local part and the chunked MLP, both with hand-written backward passes, included)."""
    model = _tiny().eval()
    x = _input((1, 3, 64, 96))
    with torch.no_grad():
        ref = model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    with torch.no_grad():
        assert _rel(compiled(x), ref) < 1e-6
    model.train()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    compiled(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch._dynamo.reset()


def test_torchscript_trace_matches_eager():
    model = _tiny().eval()
    x = _input()
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, x)  # check_trace re-runs and compares the graphs
        assert _rel(traced(x), ref) < 1e-6
        # a traced model at another size: the traced position-table resize must follow
        x2 = _input(ODD_INPUT, seed=2)
        assert _rel(traced(x2), model(x2)) < 1e-5


# ------------------------------------------------------------------ reduced precision
def test_bf16_autocast_is_finite_and_close_at_a_dense_size():
    """bf16 autocast on CPU, iFormer-S at 256x320 (attention over 64x80 pooled tokens in
    stage 1): finite outputs and gradients, features within bf16 accuracy of fp32."""
    torch.manual_seed(0)
    model = InceptionTransformer('small', num_classes=0)
    x = torch.randn(1, 3, 256, 320)
    model.eval()
    with torch.no_grad():
        ref = model.forward_intermediates(x, intermediates_only=True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model.forward_intermediates(x, intermediates_only=True)
    for a, b in zip(low, ref):
        # the residual stream stays fp32 under autocast (as in timm's models); branches run in bf16
        assert a.dtype == torch.float32 and torch.isfinite(a).all()
        # relative to each map's scale; bf16 has 8 bits of mantissa
        assert ((a.float() - b).norm() / b.norm()).item() < 0.05
    model.train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model.forward_intermediates(x[..., :128, :160], intermediates_only=True)
        loss = sum(o.float().square().mean() for o in out)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
