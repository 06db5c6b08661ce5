"""CPU kernel twin of the Inception mixer (reference: ``models.iformer.InceptionMixer``).

Same function as the reference modules, computed channels-last end to end:

* the 1x1 convs run as matmuls over channels, the 3x3s on channels-last memory: no layout
  copies, no slow NCHW conv backward;
* the branches are written straight into the fused map (no concat) and the residual is
  added in place;
* in training, the local part (conv/pool branches, upsampled attention, fuse, projection)
  has a hand-written backward that keeps only its inputs and the small pooled attention
  output, recomputes the rest and overwrites its own dead buffers (the projection's input
  gradient goes over the fused map, GELU derivatives over their inputs). On CPU every fresh
  large tensor costs page faults comparable to the op that fills it, so this beats both
  autograd and ``checkpoint`` at detection sizes.

Weights are read from the reference modules (``high_mixer.conv1`` ...), so ``impl`` never
changes the parameters or their names. Measured on a 2-core CPU (docs/performance.md).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .dispatch import compute_dtype

__all__ = ['inception_mixer_cl']


def _upsample2x_cl(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest 2x upsample of a channels-last map, cropped to ``size`` (odd maps)."""
    B, h, w, C = x.shape
    up = x[:, :, None, :, None, :].expand(B, h, 2, w, 2, C).reshape(B, 2 * h, 2 * w, C)
    return up[:, :size[0], :size[1]]


def _local_forward(xc: torch.Tensor, xp: torch.Tensor, lx: torch.Tensor,
                   weights: Sequence[torch.Tensor], keep: bool) -> Tuple[torch.Tensor, Tuple[Any, ...]]:
    """The mixer's local part on channels-last maps, without autograd, up to the fused map.

    Computes ``z = dwconv3x3(y) + y`` for ``y = [gelu(dw3x3(xc W1)), gelu(maxpool(xp) W2 + b2),
    up2x(lx)]``, writing each branch straight into ``y``. With ``keep`` the branches keep
    their pre-activations and the intermediates backward needs are returned as well.
    The GELUs run on the branch maps, never on ``y``'s strided slices: ``gelu.out`` into a
    strided slice from a contiguous input writes wrong values on CPU (torch 2.13).
    """
    w1, wdw, w2, b2, wf = weights[:5]
    B, H, W, half = xc.shape
    dim, low = wdw.shape[0], lx.shape[-1]
    c1 = F.linear(xc, w1.view(dim, half))
    c2 = F.conv2d(c1.permute(0, 3, 1, 2), wdw, padding=1, groups=dim)
    y = c2.new_empty((B, H, W, 2 * dim + low))
    y[..., :dim].copy_((F.gelu(c2) if keep else torch.ops.aten.gelu_(c2)).permute(0, 2, 3, 1))
    idx = None
    if keep:
        mp, idx = F.max_pool2d(xp.permute(0, 3, 1, 2), 3, 1, 1, return_indices=True)
    else:
        mp = F.max_pool2d(xp.permute(0, 3, 1, 2), 3, 1, 1)
    mp = mp.permute(0, 2, 3, 1)
    p1 = F.linear(mp, w2.view(dim, half), b2)
    y[..., dim:2 * dim].copy_(F.gelu(p1) if keep else torch.ops.aten.gelu_(p1))
    y_low = y[..., 2 * dim:]
    if lx.shape[1:3] == (H, W):
        y_low.copy_(lx)
    elif lx.shape[1] * 2 == H and lx.shape[2] * 2 == W:  # nearest 2x straight into y
        y_low.view(B, H // 2, 2, W // 2, 2, low).copy_(lx[:, :, None, :, None])
    else:  # odd map: the last row/column of the 2x map is cropped
        y_low.copy_(_upsample2x_cl(lx, (H, W)))
    z = F.conv2d(y.permute(0, 3, 1, 2), wf, padding=1, groups=y.shape[-1]).permute(0, 2, 3, 1)
    z = z.add_(y)
    return z, ((c1, c2, mp, idx, p1, y) if keep else ())


def _gelu_backward(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """GELU's input gradient written into ``out`` (which may alias ``x`` or ``grad``)."""
    return torch.ops.aten.gelu_backward.grad_input(grad, x, grad_input=out)


class _LocalMixFn(torch.autograd.Function):
    """Local part + projection with a recomputing, buffer-reusing backward.

    Inputs: ``xc``/``xp`` (the conv/pool halves of the high-frequency channels), ``lx`` (the
    attention output before the 2x upsample), then the weights ``conv1, proj1, proj2,
    proj2.bias, conv_fuse, proj, proj.bias``. Only the inputs are saved.
    """

    @staticmethod
    def forward(ctx: Any, xc: torch.Tensor, xp: torch.Tensor, lx: torch.Tensor,  # type: ignore[override]
                *weights: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(xc)  # autocast is applied by hand, and replayed in backward
        ctx.dtype = dt
        with torch.autocast(xc.device.type, enabled=False):
            ws = [w.to(dt) for w in weights]
            z, _ = _local_forward(xc.to(dt), xp.to(dt), lx.to(dt), ws, keep=False)
            out = F.linear(z, ws[5].view(ws[5].shape[0], -1), ws[6])
        ctx.save_for_backward(xc, xp, lx, *weights)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        xc0, xp0, lx0, *weights0 = ctx.saved_tensors
        dt, need = ctx.dtype, ctx.needs_input_grad  # (xc, xp, lx, 7 weights)
        with torch.autocast(xc0.device.type, enabled=False):
            xc, xp = xc0.to(dt), xp0.to(dt)
            ws = [w.to(dt) for w in weights0]
            w1, wdw, w2, _, wf, wp, _ = ws
            z, (c1, c2, mp, idx, p1, y) = _local_forward(xc, xp, lx0.to(dt), ws, keep=True)
            B, H, W, half = xc.shape
            dim, ct = wdw.shape[0], y.shape[-1]
            g = grad_out.to(dt).reshape(-1, grad_out.shape[-1])
            gw: list = [None] * 7

            # proj (1x1): its input gradient goes over the fused map, dead after gw_proj.
            z2 = z.reshape(-1, ct)
            if need[8]:
                gw[5] = g.t().mm(z2).view_as(wp)
            if need[9]:
                gw[6] = g.sum(0)
            gz = torch.mm(g, wp.view(-1, ct), out=z2).view(B, H, W, ct)
            # fuse: z = dw3x3(y) + y
            gy, gw[4], _ = torch.ops.aten.convolution_backward(
                gz.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2), wf, None, [1, 1], [1, 1], [1, 1],
                False, [0, 0], ct, [True, need[7], False])
            gy = gy.permute(0, 2, 3, 1).add_(gz)
            # conv branch: gelu(dw3x3(xc W1))
            gc2 = _gelu_backward(gy[..., :dim].permute(0, 3, 1, 2), c2, c2)
            gc1, gw[1], _ = torch.ops.aten.convolution_backward(
                gc2, c1.permute(0, 3, 1, 2), wdw, None, [1, 1], [1, 1], [1, 1],
                False, [0, 0], dim, [True, need[4], False])
            gc1 = gc1.permute(0, 2, 3, 1).reshape(-1, dim)
            if need[3]:
                gw[0] = gc1.t().mm(xc.reshape(-1, half)).view_as(w1)
            gxc = gc1.mm(w1.view(dim, half)).view(B, H, W, half) if need[0] else None
            # pool branch: gelu(maxpool3x3(xp) W2 + b2)
            gp1 = _gelu_backward(gy[..., dim:2 * dim], p1, p1).reshape(-1, dim)
            if need[5]:
                gw[2] = gp1.t().mm(mp.reshape(-1, half)).view_as(w2)
            if need[6]:
                gw[3] = gp1.sum(0)
            gxp = None
            if need[1]:
                gmp = gp1.mm(w2.view(dim, half)).view(B, H, W, half)
                gxp = torch.ops.aten.max_pool2d_with_indices_backward(
                    gmp.permute(0, 3, 1, 2), xp.permute(0, 3, 1, 2), [3, 3], [1, 1], [1, 1], [1, 1],
                    False, idx).permute(0, 2, 3, 1)
            # attention output: the 2x nearest upsample's gradient sums each 2x2 cell
            glx = None
            if need[2]:
                g_low = gy[..., 2 * dim:]
                h, w = lx0.shape[1:3]
                if (h, w) == (H, W):
                    glx = g_low
                else:
                    if (2 * h, 2 * w) != (H, W):  # odd map: zero gradient for the cropped cells
                        g_low = F.pad(g_low, (0, 0, 0, 2 * w - W, 0, 2 * h - H))
                    g6 = g_low.view(B, h, 2, w, 2, g_low.shape[-1])
                    # Four strided adds: ~10x faster on CPU than .sum((2, 4)) over this view.
                    glx = g6[:, :, 0, :, 0] + g6[:, :, 0, :, 1]
                    glx += g6[:, :, 1, :, 0]
                    glx += g6[:, :, 1, :, 1]
        grads = [None if gr is None else gr.to(w.dtype) for gr, w in zip(gw, weights0)]
        return (gxc, gxp, glx, *grads)


def inception_mixer_cl(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mixer(x)`` for an ``InceptionMixer`` on channels-last ``(B, H, W, C)`` tokens.

    The attention itself is the mixer's own ``low_mixer.attention`` (SDPA on the pooled map);
    everything around it runs here.
    """
    hm, lm = mixer.high_mixer, mixer.low_mixer
    half = hm.conv1.in_channels
    # One split (its backward is a single concat) instead of three slices (whose backward
    # writes three zero-filled full-size gradients and adds them up).
    xc, xp, xl = x.contiguous().split([half, half, lm.dim], dim=-1)
    if lm.pool_input:
        # contiguous(): the slice becomes a channels-last map, so the pool runs on the
        # channels-last kernel and its output needs no copy before the qkv matmul.
        xl = F.avg_pool2d(xl.contiguous().permute(0, 3, 1, 2), 2, 2, ceil_mode=True,
                          count_include_pad=False).permute(0, 2, 3, 1)
    lx = lm.attention(xl)
    weights = (hm.conv1.weight, hm.proj1.weight, hm.proj2.weight, hm.proj2.bias,
               mixer.conv_fuse.weight, mixer.proj.weight, mixer.proj.bias)
    if torch.is_grad_enabled():
        return _LocalMixFn.apply(xc, xp, lx, *weights)
    z, _ = _local_forward(xc, xp, lx, weights, keep=False)
    return F.linear(z, mixer.proj.weight.view(mixer.proj.out_channels, -1), mixer.proj.bias)
