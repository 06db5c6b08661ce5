"""Each kernel in iformer_mm.ops equals the reference modules it stands in for, and runs only
where the dispatch rule allows it (iformer_mm/ops/dispatch.py)."""
import pytest
import torch
from torch import nn

from iformer_mm.models.iformer import InceptionMixer, Mlp
from iformer_mm.ops import CHUNK_ROWS, fused_mlp, inception_mixer_cl, kernel_allowed
from iformer_mm.ops.dispatch import MEASURED_WINS


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _mixer(pool: bool, dtype=torch.float32) -> InceptionMixer:
    torch.manual_seed(0)
    mixer = InceptionMixer(96, 1, pool=pool, impl='reference').to(dtype)
    with torch.no_grad():
        for p in mixer.parameters():
            p.normal_(0, 0.2)
    return mixer


def _grads(fn, x, params, seed):
    out = fn(x)
    return out.detach(), torch.autograd.grad(out, [x] + params, seed)


# ------------------------------------------------------------------ Inception mixer
@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=['fp64', 'fp32'])
@pytest.mark.parametrize('pool,hw', [(True, (8, 12)), (True, (7, 9)), (False, (5, 6))],
                         ids=['pooled_even', 'pooled_odd', 'unpooled'])
def test_mixer_kernel_equals_reference_forward_and_backward(pool, hw, dtype, tol):
    """Outputs and the input and weight gradients of the channels-last kernel (hand-written,
    recomputing backward) equal autograd through the reference modules; a retained graph
    can be differentiated twice."""
    mixer = _mixer(pool, dtype)
    x = torch.randn(2, *hw, 96, dtype=dtype, requires_grad=True)
    params = list(mixer.parameters())
    ref_out = mixer(x)
    seed = torch.ones_like(ref_out).cos_()
    ref = torch.autograd.grad(ref_out, [x] + params, seed)
    out = inception_mixer_cl(mixer, x)
    assert _rel(out, ref_out) < tol
    grads = torch.autograd.grad(out, [x] + params, seed, retain_graph=True)
    again = torch.autograd.grad(out, [x] + params, seed)
    for (name, _), a, b, c in zip([('x', None)] + list(mixer.named_parameters()), grads, again, ref):
        assert torch.equal(a, b), name
        assert _rel(a, c) < tol * 10, name
    with torch.no_grad():  # the in-place inference path
        assert _rel(inception_mixer_cl(mixer, x), ref_out) < tol


# ------------------------------------------------------------------ MLP
@pytest.mark.parametrize('rows', [7, CHUNK_ROWS, 2 * CHUNK_ROWS + 333], ids=['short', 'one_chunk', 'three_chunks'])
def test_fused_mlp_equals_reference_across_chunks_fp32(rows):
    """fp32, across chunk boundaries: outputs, input and weight gradients match timm's Mlp."""
    torch.manual_seed(0)
    mlp = Mlp(48, 192, impl='reference')
    x = torch.randn(1, rows, 48, requires_grad=True)
    params = list(mlp.parameters())
    seed = torch.randn(1, rows, 48)
    ref_out, ref = _grads(mlp, x, params, seed)
    out, got = _grads(lambda t: fused_mlp(t, mlp.fc1, mlp.fc2), x, params, seed)
    assert _rel(out, ref_out) < 1e-6
    for a, b in zip(got, ref):
        assert _rel(a, b) < 1e-5
    with torch.no_grad():
        assert _rel(fused_mlp(x, mlp.fc1, mlp.fc2), ref_out) < 1e-6


def test_fused_mlp_bf16_autocast_close():
    torch.manual_seed(0)
    mlp = Mlp(48, 192, impl='reference')
    x = torch.randn(3000, 48)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        ref, out = mlp(x), fused_mlp(x, mlp.fc1, mlp.fc2)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert ((out.float() - ref.float()).norm() / ref.float().norm()).item() < 0.01


# ------------------------------------------------------------------ the dispatch rule
def _calls(monkeypatch, module, name):
    """Count calls of the kernel the module's forward would dispatch to."""
    import iformer_mm.models.iformer as core
    seen = []
    orig = getattr(core, name)

    def spy(*args, **kwargs):
        seen.append(1)
        return orig(*args, **kwargs)
    monkeypatch.setattr(core, name, spy)
    return seen


@pytest.fixture
def mlp_and_spy(monkeypatch):
    mlp = Mlp(16, 64, impl='auto')
    return mlp, _calls(monkeypatch, mlp, 'fused_mlp')


def test_kernel_runs_on_cpu_fp32_with_auto(mlp_and_spy):
    mlp, seen = mlp_and_spy
    mlp(torch.randn(4, 16))
    assert seen == [1]


def test_reference_impl_never_runs_a_kernel(monkeypatch):
    mlp = Mlp(16, 64, impl='reference')
    seen = _calls(monkeypatch, mlp, 'fused_mlp')
    mlp(torch.randn(4, 16))
    assert seen == []


def test_unmeasured_dtype_takes_the_reference_unless_fast(mlp_and_spy):
    """fp64 and CPU fp16 autocast were not measured: 'auto' runs the modules, 'fast' the kernel."""
    mlp, seen = mlp_and_spy
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            mlp(torch.randn(4, 16))
    except RuntimeError as e:  # torch < 2.2: CPU autocast has bf16 only
        assert 'Bfloat16' in str(e)
    mlp.double()(torch.randn(4, 16, dtype=torch.float64))
    assert seen == []
    mlp.impl = 'fast'
    mlp(torch.randn(4, 16, dtype=torch.float64))
    assert seen == [1]


def test_cpu_bf16_autocast_is_a_measured_win_and_runs_the_kernel(mlp_and_spy):
    """bf16 autocast on CPU was measured faster with the kernels (docs/performance.md):
    'auto' takes them there (tests/test_amp.py checks they equal the reference in bf16)."""
    mlp, seen = mlp_and_spy
    assert ('cpu', torch.bfloat16) in MEASURED_WINS
    with torch.autocast('cpu', dtype=torch.bfloat16):
        mlp(torch.randn(4, 16))
    assert seen == [1]


@pytest.mark.parametrize('kind', ['forward', 'forward_pre', 'full_backward', 'global_forward'])
def test_hooks_send_the_call_to_the_reference(mlp_and_spy, kind):
    mlp, seen = mlp_and_spy
    fired = []
    hook = {
        'forward': lambda: mlp.fc2.register_forward_hook(lambda *a: fired.append(1)),
        'forward_pre': lambda: mlp.act.register_forward_pre_hook(lambda *a: fired.append(1)),
        'full_backward': lambda: mlp.fc1.register_full_backward_hook(lambda *a: fired.append(1)),
        'global_forward': lambda: nn.modules.module.register_module_forward_hook(lambda *a: fired.append(1)),
    }[kind]()
    try:
        mlp(torch.randn(4, 16, requires_grad=True)).sum().backward()
    finally:
        hook.remove()
    assert seen == [] and fired
    mlp(torch.randn(4, 16))  # hook removed: the kernel is back
    assert seen == [1]


def test_swapped_or_parametrized_modules_send_the_call_to_the_reference(mlp_and_spy):
    mlp, seen = mlp_and_spy

    class LoRALinear(nn.Linear):
        pass
    fc1 = mlp.fc1
    mlp.fc1 = LoRALinear(16, 64)
    mlp(torch.randn(4, 16))
    mlp.fc1 = fc1
    torch.nn.utils.parametrizations.weight_norm(mlp.fc2)
    mlp(torch.randn(4, 16))
    assert seen == []


def test_tracing_and_scripting_see_the_modules(mlp_and_spy):
    mlp, seen = mlp_and_spy
    x = torch.randn(4, 16)
    traced = torch.jit.trace(mlp, x, check_trace=False)  # check_trace would rerun eagerly
    assert 'fc1' in str(traced.inlined_graph)  # the module calls are in the graph
    gm = torch.fx.symbolic_trace(mlp)
    assert any(n.op == 'call_module' and n.target == 'fc1' for n in gm.graph.nodes)
    assert seen == []


def test_kernel_allowed_refuses_tensor_subclasses_and_reference():
    lin = nn.Linear(2, 2)
    x = torch.randn(2, 2)
    assert kernel_allowed('auto', x, [(lin, nn.Linear)])
    assert not kernel_allowed('reference', x, [(lin, nn.Linear)])
    assert not kernel_allowed('auto', x, [(lin, nn.Conv2d)])

    class Sub(torch.Tensor):
        pass
    assert not kernel_allowed('auto', x.as_subclass(Sub), [(lin, nn.Linear)])
    with pytest.raises(ValueError, match="impl must be one of"):
        Mlp(4, 8, impl='gpu')
