"""CPU kernel twin of the MLP ``fc2(gelu(fc1(x)))`` (reference: ``models.iformer.Mlp``).

Streams the tokens in chunks of :data:`CHUNK_ROWS` rows, forward and backward, so the 4C-wide
hidden activation never exists at full size: a chunk stays in L2 between the GELU and the
second matmul, and no fresh multi-MB buffer is allocated (on CPU its page faults cost as
much as the GELU itself). Training saves ``x`` and the pre-GELU ``h`` (as autograd would)
and recomputes the GELU per chunk in backward. Per-token results are those of the
reference layers; weight gradients are summed over chunks (in fp32 for reduced precision).

Measured on a 2-core CPU (docs/performance.md); a Python loop whose length grows with the
image, so never chosen on CUDA by ``impl='auto'``.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import compute_dtype

__all__ = ['CHUNK_ROWS', 'fused_mlp']

# Tokens per chunk: a chunk's hidden activations (1024 x 4C) stay in L2.
CHUNK_ROWS = 1024


def _acc_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b``, accumulating reduced-precision products in ``acc``'s dtype."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    else:
        acc.add_(a.mm(b))


class _FusedMlpFn(torch.autograd.Function):
    """Chunked ``fc2(gelu(fc1(x)))`` on 2-D tokens with a hand-written backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,  # type: ignore[override]
                w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xd, w1d, b1d, w2d, b2d = (t.to(dt) for t in (x, w1, b1, w2, b2))
            h = xd.new_empty((x.shape[0], w1.shape[0]))
            out = xd.new_empty((x.shape[0], w2.shape[0]))
            for s in range(0, x.shape[0], CHUNK_ROWS):
                hc = torch.addmm(b1d, xd[s:s + CHUNK_ROWS], w1d.t(), out=h[s:s + CHUNK_ROWS])
                torch.addmm(b2d, F.gelu(hc), w2d.t(), out=out[s:s + CHUNK_ROWS])
        ctx.save_for_backward(x, h, w1, w2)
        ctx.dtype = dt
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x0, h, w1_0, w2_0 = ctx.saved_tensors
        dt, need = ctx.dtype, ctx.needs_input_grad
        acc = torch.float32 if dt in (torch.bfloat16, torch.float16) else dt
        with torch.autocast(x0.device.type, enabled=False):
            x, w1, w2 = x0.to(dt), w1_0.to(dt), w2_0.to(dt)
            g = grad_out.to(dt)
            gx = torch.empty_like(x) if need[0] else None
            gw1 = w1.new_zeros(w1.shape, dtype=acc)
            gb1 = w1.new_zeros(w1.shape[0], dtype=acc)
            gw2 = w2.new_zeros(w2.shape, dtype=acc)
            for s in range(0, x.shape[0], CHUNK_ROWS):
                hc, gc = h[s:s + CHUNK_ROWS], g[s:s + CHUNK_ROWS]
                a = F.gelu(hc)
                _acc_mm(gw2, gc.t(), a)
                ga = torch.mm(gc, w2, out=a)  # the activation is dead: reuse its chunk
                gh = torch.ops.aten.gelu_backward.grad_input(ga, hc, grad_input=ga)
                _acc_mm(gw1, gh.t(), x[s:s + CHUNK_ROWS])
                gb1.add_(gh.sum(0, dtype=acc))
                if gx is not None:
                    torch.mm(gh, w1, out=gx[s:s + CHUNK_ROWS])
            gb2 = g.sum(0, dtype=acc)
        grads = [gr.to(p.dtype) if need[i + 1] else None
                 for i, (gr, p) in enumerate(zip((gw1, gb1, gw2, gb2), (w1_0, w1_0, w2_0, w2_0)))]
        return (None if gx is None else gx.to(x0.dtype), *grads)


def fused_mlp(x: torch.Tensor, fc1: nn.Linear, fc2: nn.Linear) -> torch.Tensor:
    """``fc2(gelu(fc1(x)))`` over the last dim of ``x``, chunked (see the module docstring).

    Without autograd (inference) the GELU runs in place on each chunk.
    """
    lead, c = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, c)
    if torch.is_grad_enabled() and (x.requires_grad or fc1.weight.requires_grad
                                    or fc2.weight.requires_grad):
        out = _FusedMlpFn.apply(x2, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        return out.view(*lead, -1)
    dt = compute_dtype(x2)
    with torch.autocast(x.device.type, enabled=False):
        xd = x2.to(dt)
        w1, b1, w2, b2 = (t.to(dt) for t in (fc1.weight, fc1.bias, fc2.weight, fc2.bias))
        out = xd.new_empty((x2.shape[0], w2.shape[0]))
        for s in range(0, x2.shape[0], CHUNK_ROWS):
            a = torch.ops.aten.gelu_(F.linear(xd[s:s + CHUNK_ROWS], w1, b1))
            torch.addmm(b2, a, w2.t(), out=out[s:s + CHUNK_ROWS])
    return out.view(*lead, -1)
