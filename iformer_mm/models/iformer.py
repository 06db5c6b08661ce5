"""Inception Transformer (iFormer), pure PyTorch.

Si et al., "Inception Transformer", NeurIPS 2022. This is the one model implementation of
the package: the timm classifiers and the OpenMMLab backbone are thin adapters over
:class:`InceptionTransformer`. Parameter names follow the authors' checkpoints exactly, so
their published ``state_dict`` loads strictly with no renaming.

Differences from the authors' code (all keep their weights and their outputs on square
inputs whose maps are even):

* any input size: non-square maps, odd maps (pool with ``ceil_mode`` and crop after the 2x
  upsample), position embeddings resized by *shape* (the authors compared areas);
* attention through ``scaled_dot_product_attention`` (never materialises the N x N map);
  ``attn_impl='naive'`` keeps the explicit softmax(QK^T)V for equivalence tests/benchmarks;
* optional windowed attention (``window_size``) for very large maps;
* per-stage gradient checkpointing, multi-scale outputs, the full timm model contract.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    'ARCH_SETTINGS', 'InceptionTransformer', 'InceptionMixer', 'Block', 'resolve_arch',
    'resize_pos_embed',
]

# One ``attention_heads`` entry per block over all stages (global block index).
ARCH_SETTINGS: Dict[str, Dict[str, Any]] = {
    'small': dict(
        depths=(3, 3, 9, 3),
        embed_dims=(96, 192, 320, 384),
        attention_heads=(1,) * 3 + (3,) * 3 + (7,) * 4 + (9,) * 5 + (11,) * 3,
    ),
    'base': dict(
        depths=(4, 6, 14, 6),
        embed_dims=(96, 192, 384, 512),
        attention_heads=(1,) * 4 + (3,) * 6 + (8,) * 7 + (10,) * 7 + (15,) * 6,
    ),
    'large': dict(
        depths=(4, 6, 18, 8),
        embed_dims=(96, 192, 448, 640),
        attention_heads=(1,) * 4 + (3,) * 6 + (10,) * 9 + (12,) * 9 + (19,) * 8,
    ),
}
ARCH_ALIASES = {'s': 'small', 'b': 'base', 'l': 'large'}

# Architecture facts shared by every variant (overridable through an ``arch`` dict).
_ARCH_DEFAULTS: Dict[str, Any] = dict(
    head_dim=32,  # every attention head is 32 wide
    mlp_ratio=4.0,
    layer_scale_stages=(False, False, True, True),  # layer scale only in stages 3-4
    attn_pool_stages=(True, True, False, False),  # 2x2 avg-pool before attention in 1-2
)
NUM_STAGES = 4


def resolve_arch(arch: Union[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """Turn an arch name or dict into a validated, complete arch dict.

    Args:
        arch: ``'small'``, ``'base'``, ``'large'`` (or ``'s'``/``'b'``/``'l'``), or a dict
            with at least ``depths``, ``embed_dims`` and ``attention_heads`` (one entry per
            block over all stages); optional ``head_dim``, ``mlp_ratio``,
            ``layer_scale_stages``, ``attn_pool_stages``.

    Returns:
        A new dict with every key filled in and sequences turned into tuples.

    Raises:
        ValueError: unknown name, missing keys, or numbers that cannot form an iFormer.
    """
    if isinstance(arch, str):
        name = ARCH_ALIASES.get(arch.lower(), arch.lower())
        if name not in ARCH_SETTINGS:
            raise ValueError(
                f'Unknown iFormer arch {arch!r}. Valid names: {sorted(ARCH_SETTINGS)} '
                f"(or a dict with 'depths', 'embed_dims' and 'attention_heads').")
        cfg = dict(ARCH_SETTINGS[name])
    elif isinstance(arch, Mapping):
        cfg = dict(arch)
    else:
        raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}')

    missing = {'depths', 'embed_dims', 'attention_heads'} - set(cfg)
    if missing:
        raise ValueError(f'iFormer arch dict is missing {sorted(missing)}; got keys {sorted(cfg)}')
    unknown = set(cfg) - {'depths', 'embed_dims', 'attention_heads'} - set(_ARCH_DEFAULTS)
    if unknown:
        raise ValueError(f'iFormer arch dict has unknown keys {sorted(unknown)}; valid keys: '
                         f"{sorted({'depths', 'embed_dims', 'attention_heads'} | set(_ARCH_DEFAULTS))}")
    out = dict(_ARCH_DEFAULTS)
    out.update(cfg)
    for key in ('depths', 'embed_dims', 'attention_heads', 'layer_scale_stages', 'attn_pool_stages'):
        out[key] = tuple(out[key])
    depths, dims, heads, hd = out['depths'], out['embed_dims'], out['attention_heads'], out['head_dim']
    for key in ('depths', 'embed_dims', 'layer_scale_stages', 'attn_pool_stages'):
        if len(out[key]) != NUM_STAGES:
            raise ValueError(f'arch {key!r} needs {NUM_STAGES} entries (one per stage), got {out[key]}')
    if len(heads) != sum(depths):
        raise ValueError(f"arch 'attention_heads' needs one entry per block: sum(depths)="
                         f'{sum(depths)}, got {len(heads)}')
    block = 0
    for stage, (depth, dim) in enumerate(zip(depths, dims)):
        for _ in range(depth):
            low = heads[block] * hd
            high = dim - low
            if heads[block] < 1 or high <= 0 or high % 2:
                raise ValueError(
                    f'block {block} (stage {stage + 1}): {heads[block]} attention heads x '
                    f'{hd} = {low} low-frequency channels leaves {high} of {dim} for the '
                    f'high-frequency branches; that must be positive and even')
            block += 1
    return out


def _to_2tuple(x: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    x = tuple(x)
    if len(x) != 2:
        raise ValueError(f'expected an int or (H, W), got {x}')
    return x  # type: ignore[return-value]


def resize_pos_embed(pos_embed: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a channels-last ``(1, h, w, C)`` position table to ``(1, H, W, C)``.

    Bilinear, ``align_corners=False`` — what the authors' model does at run time, and what
    we use when a checkpoint of one resolution is loaded into a model of another.
    """
    if tuple(pos_embed.shape[1:3]) == tuple(size):
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2), size=tuple(size), mode='bilinear',
                            align_corners=False)
    return resized.permute(0, 2, 3, 1)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval or with ``p == 0``)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


def _no_autograd() -> bool:
    """True when no graph is being recorded, so ops may overwrite fresh tensors in place.

    Tracing (TorchScript/ONNX) always takes the out-of-place path, so a traced graph does
    not depend on the grad mode it was traced under.
    """
    return not torch.is_grad_enabled() and not torch.jit.is_tracing()


def _gelu(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Exact (erf) GELU; in place when no autograd graph needs the input (saves a fresh
    allocation, which on CPU costs more page faults than the GELU itself)."""
    return torch.ops.aten.gelu_(x) if inplace else F.gelu(x)


class _GeluLinear(torch.autograd.Function):
    """``linear(gelu(h), w, b)`` that saves ``h`` only and recomputes ``gelu(h)`` for backward.

    The MLP's hidden activations are the largest tensors a block stores for backward (4C
    per token, twice: before and after the GELU). Keeping one of them and recomputing the
    GELU (elementwise, cheap next to the two matmuls) cuts the MLP's stored memory by ~45%.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(h, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(F.gelu(h), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        h, weight = ctx.saved_tensors
        # Under autocast the forward ran in h's dtype (bf16/fp16); backward runs outside
        # autocast, so cast explicitly and return parameter grads in the parameters' dtype.
        dt = h.dtype
        grad_out = grad_out.to(dt).contiguous()
        go2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = go2.t().mm(F.gelu(h).reshape(-1, h.shape[-1])).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = go2.sum(0).to(ctx.bias_dtype)
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.ops.aten.gelu_backward(grad_out.matmul(weight.to(dt)), h)
        return grad_h, grad_w, grad_b


class Mlp(nn.Module):
    """Linear C->hC, GELU, Linear hC->C on channels-last tokens."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward_fast(self, x: torch.Tensor) -> torch.Tensor:
        """Same result as :meth:`forward`, less memory: GELU in place without autograd,
        recomputed in backward with it (TorchScript/ONNX tracing takes the plain path)."""
        h = self.fc1(x)
        if _no_autograd():
            return self.fc2(_gelu(h, True))
        if torch.jit.is_scripting() or torch.jit.is_tracing():
            return self.fc2(F.gelu(h))
        return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias)


class HighMixer(nn.Module):
    """The two high-frequency branches: conv (1x1 -> dw3x3 -> GELU), pool (max3x3 -> 1x1 -> GELU).

    Each takes half of the ``dim`` high-frequency input channels and gives ``dim`` outputs.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        self.split = half
        self.conv1 = nn.Conv2d(half, dim, 1, bias=False)
        self.proj1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.proj2 = nn.Conv2d(half, dim, 1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: NCHW view of the high-frequency channels. Returns (conv branch, pool branch)."""
        cx = F.gelu(self.proj1(self.conv1(x[:, :self.split])))
        px = F.max_pool2d(x[:, self.split:], 3, stride=1, padding=1)
        px = F.gelu(self.proj2(px))
        return cx, px

    def forward_cl(self, xc: torch.Tensor, xp: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Channels-last version of :meth:`forward` on the two input halves, each
        ``(B, H, W, dim/2)``; returns two ``(B, H, W, dim)``. The 1x1 convs run as matmuls
        over channels (no layout copies, no slow conv backward); the 3x3s run on
        channels-last memory."""
        dim, half = self.proj1.out_channels, self.split
        inplace = _no_autograd()
        cx = F.linear(xc, self.conv1.weight.view(dim, half))
        cx = F.conv2d(cx.permute(0, 3, 1, 2), self.proj1.weight, padding=1, groups=dim)
        cx = _gelu(cx, inplace).permute(0, 2, 3, 1)
        px = F.max_pool2d(xp.permute(0, 3, 1, 2), 3, stride=1, padding=1)
        px = F.linear(px.permute(0, 2, 3, 1), self.proj2.weight.view(dim, half), self.proj2.bias)
        return cx, _gelu(px, inplace)


class LowMixer(nn.Module):
    """The low-frequency branch: (avg-pool 2x2) -> global multi-head self-attention -> (2x up).

    Args:
        dim: low-frequency channels (``num_heads * head_dim``).
        num_heads: attention heads.
        pool: average-pool 2x2 before attention and upsample 2x after (stages 1-2).
        attn_impl: ``'fused'`` (``scaled_dot_product_attention``) or ``'naive'`` (explicit
            softmax(QK^T)V; materialises the N x N map — for tests and benchmarks).
        window_size: ``None`` for global attention, else attend within non-overlapping
            windows of this many (pooled) tokens per side.
    """

    def __init__(self, dim: int, num_heads: int, pool: bool, attn_impl: str = 'fused',
                 window_size: Optional[int] = None) -> None:
        super().__init__()
        if attn_impl not in ('fused', 'naive'):
            raise ValueError(f"attn_impl must be 'fused' or 'naive', got {attn_impl!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.pool = pool
        self.attn_impl = attn_impl
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3)
        # Plain attribute (the benchmark flips it): with 'naive', scale the N x N map after
        # QK^T exactly as the authors' released code does, instead of scaling q first.
        self.scale_after = False

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.attn_impl == 'naive':
            if self.scale_after:  # the released code's order: one more pass over the N x N map
                attn = (q @ k.transpose(-2, -1)) * self.scale
            else:
                attn = (q * self.scale) @ k.transpose(-2, -1)
            if mask is not None:
                attn = attn.masked_fill(~mask, float('-inf'))
            return attn.softmax(dim=-1) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _global(self, x: torch.Tensor) -> torch.Tensor:
        B, h, w, C = x.shape
        qkv = self.qkv(x.reshape(B, h * w, C))
        q, k, v = qkv.view(B, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = self._attend(q, k, v)  # (B, heads, N, hd)
        return out.transpose(1, 2).reshape(B, h, w, C)

    def _windowed(self, x: torch.Tensor, ws: int) -> torch.Tensor:
        B, h, w, C = x.shape
        ph, pw = (-h) % ws, (-w) % ws
        mask = None
        if ph or pw:
            # Pad to whole windows; padded keys are masked so they never receive weight.
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
            valid = torch.zeros(h + ph, w + pw, dtype=torch.bool, device=x.device)
            valid[:h, :w] = True
            nwh, nww = (h + ph) // ws, (w + pw) // ws
            mask = valid.view(nwh, ws, nww, ws).permute(0, 2, 1, 3).reshape(1, nwh * nww, 1, 1, ws * ws)
        Hp, Wp = x.shape[1:3]
        nwh, nww = Hp // ws, Wp // ws
        win = x.view(B, nwh, ws, nww, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B * nwh * nww, ws * ws, C)
        qkv = self.qkv(win)
        q, k, v = qkv.view(-1, ws * ws, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if mask is not None:
            mask = mask.expand(B, -1, -1, -1, -1).reshape(B * nwh * nww, 1, 1, ws * ws)
        out = self._attend(q, k, v, mask)  # (B*nW, heads, ws*ws, hd)
        out = out.transpose(1, 2).reshape(B, nwh, nww, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(B, Hp, Wp, C)[:, :h, :w]

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over a channels-last map, global or windowed."""
        ws = self.window_size
        if ws is None or (x.shape[1] <= ws and x.shape[2] <= ws):
            return self._global(x)
        return self._windowed(x, ws)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: channels-last ``(B, H, W, C)`` low-frequency channels. Returns NCHW ``(B, C, H, W)``."""
        H, W = x.shape[1:3]
        if self.pool:
            # ceil_mode: odd maps keep their last row/column; partial windows average only
            # the valid pixels (count_include_pad=False), as the golden cases pin.
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True,
                             count_include_pad=False).permute(0, 2, 3, 1)
        out = self._tokens(x).permute(0, 3, 1, 2)
        if self.pool:
            out = F.interpolate(out, scale_factor=2.0, mode='nearest')[:, :, :H, :W]
        return out

    def forward_cl(self, x: torch.Tensor) -> torch.Tensor:
        """Channels-last attention output *before* the 2x upsample: ``(B, h, w, C)``.

        The pooled map is small and cheap to keep for backward; the caller upsamples it
        (inside its recomputed region) so the full-resolution copy is never stored.
        """
        if self.pool:
            # contiguous() makes the slice a channels-last map, so the pool runs on the
            # channels-last kernel and its output needs no copy before the qkv matmul.
            x = F.avg_pool2d(x.contiguous().permute(0, 3, 1, 2), 2, 2, ceil_mode=True,
                             count_include_pad=False).permute(0, 2, 3, 1)
        return self._tokens(x)

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, pool={self.pool}, '
                f'attn_impl={self.attn_impl}, window_size={self.window_size}')


def _upsample2x_cl(x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest 2x upsample of a channels-last map, cropped to ``size`` (odd maps)."""
    B, h, w, C = x.shape
    up = x[:, :, None, :, None, :].expand(B, h, 2, w, 2, C).reshape(B, 2 * h, 2 * w, C)
    if 2 * h != size[0] or 2 * w != size[1]:
        up = up[:, :size[0], :size[1]]
    return up


class InceptionMixer(nn.Module):
    """Inception token mixer: channel split into conv / max-pool / attention branches.

    Input channels ``[0, C_h)`` go to :class:`HighMixer`, ``[C_h, C)`` to :class:`LowMixer`;
    the branch outputs ``[conv (C_h), pool (C_h), attention (C_l)]`` are fused by a residual
    depthwise 3x3 and projected back to ``C`` by a 1x1.

    With ``attn_impl='fused'`` the mixer runs channels-last end to end (1x1 convs as
    matmuls, one concat, no layout copies) and, when training, recomputes its cheap local
    part (conv/pool branches, fuse, projection) in backward instead of storing it; only the
    attention output is kept. ``attn_impl='naive'`` keeps the reference data flow of the
    authors' implementation (NCHW branches, explicit attention) as the baseline.
    """

    def __init__(self, dim: int, attention_heads: int, head_dim: int = 32, pool: bool = False,
                 attn_impl: str = 'fused', window_size: Optional[int] = None) -> None:
        super().__init__()
        self.low_dim = attention_heads * head_dim
        self.high_dim = dim - self.low_dim
        self.high_mixer = HighMixer(self.high_dim)
        self.low_mixer = LowMixer(self.low_dim, attention_heads, pool, attn_impl, window_size)
        fused = 2 * self.high_dim + self.low_dim
        self.conv_fuse = nn.Conv2d(fused, fused, 3, padding=1, groups=fused, bias=False)
        self.proj = nn.Conv2d(fused, dim, 1)
        # Plain attributes, not constructor arguments (benchmarks and FLOP counting flip
        # them): recompute the local part in backward, and the reference data flow (always
        # on for the naive baseline; with 'fused' it isolates what the kernel alone buys).
        self.recompute_local = True
        self.reference_flow = attn_impl == 'naive'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: channels-last ``(B, H, W, C)``; returns the same layout."""
        if self.reference_flow:
            return self.forward_reference(x)
        # One split (its backward is a single concat) instead of three slices (whose
        # backward writes three zero-filled full-size gradients and adds them up).
        half = self.high_mixer.split
        xc, xp, xl = x.contiguous().split([half, half, self.low_dim], dim=-1)
        lx = self.low_mixer.forward_cl(xl)
        if (self.recompute_local and self.training and torch.is_grad_enabled()
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()):
            return checkpoint(self._local, xc, xp, lx, use_reentrant=False)
        return self._local(xc, xp, lx)

    def _local(self, xc: torch.Tensor, xp: torch.Tensor, lx: torch.Tensor) -> torch.Tensor:
        """Conv and pool branches, concat with the attention output, fuse, project."""
        cx, px = self.high_mixer.forward_cl(xc, xp)
        if self.low_mixer.pool:
            lx = _upsample2x_cl(lx, xc.shape[1:3])
        y = torch.cat((cx, px, lx), dim=-1)
        z = F.conv2d(y.permute(0, 3, 1, 2), self.conv_fuse.weight, padding=1,
                     groups=y.shape[-1]).permute(0, 2, 3, 1)
        z = z.add_(y) if _no_autograd() else z + y
        return F.linear(z, self.proj.weight.view(self.proj.out_channels, -1), self.proj.bias)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' data flow: NCHW branches, concat, fuse, 1x1 conv."""
        nchw = x.permute(0, 3, 1, 2)  # a view: channels-last memory, no copy
        cx, px = self.high_mixer(nchw[:, :self.high_dim])
        lx = self.low_mixer(x[..., self.high_dim:])
        y = torch.cat((cx, px, lx), dim=1)
        y = y + self.conv_fuse(y)
        return self.proj(y).permute(0, 2, 3, 1)


class Block(nn.Module):
    """Pre-norm iFormer block on channels-last tokens, optional layer scale (stages 3-4)."""

    def __init__(self, dim: int, attention_heads: int, head_dim: int = 32, mlp_ratio: float = 4.0,
                 pool: bool = False, drop_path: float = 0.0, layer_scale: bool = False,
                 layer_scale_init_value: float = 1e-6, norm_eps: float = 1e-6,
                 attn_impl: str = 'fused', window_size: Optional[int] = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = InceptionMixer(dim, attention_heads, head_dim, pool, attn_impl, window_size)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init_value))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init_value))
        else:
            self.layer_scale_1 = self.layer_scale_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.attn.reference_flow:
            return self.forward_reference(x)
        # Same arithmetic as the reference (a + x == x + a exactly); without autograd the
        # residual adds and layer scales run in place on fresh tensors.
        inplace = _no_autograd()
        a = self.attn(self.norm1(x))
        if self.layer_scale_1 is not None:
            a = a.mul_(self.layer_scale_1) if inplace else self.layer_scale_1 * a
        x = a.add_(x) if inplace else x + self.drop_path(a)
        m = self.mlp.forward_fast(self.norm2(x))
        if self.layer_scale_2 is not None:
            m = m.mul_(self.layer_scale_2) if inplace else self.layer_scale_2 * m
        return m.add_(x) if inplace else x + self.drop_path(m)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The authors' block (used with ``attn_impl='naive'``, the baseline)."""
        a = self.attn(self.norm1(x))
        if self.layer_scale_1 is not None:
            a = self.layer_scale_1 * a
        x = x + self.drop_path(a)
        m = self.mlp(self.norm2(x))
        if self.layer_scale_2 is not None:
            m = self.layer_scale_2 * m
        return x + self.drop_path(m)


class StemEmbed(nn.Module):
    """Stride-4 stem: conv3x3 s2 -> BN -> GELU -> conv3x3 s2 -> BN."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.act = nn.GELU()
        self.proj2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.proj2(self.act(self.norm1(self.proj1(x)))))


class DownEmbed(nn.Module):
    """Stride-2 downsampling between stages: conv3x3 s2 -> BN."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


def _per_stage(value: Any, name: str) -> Tuple[Any, ...]:
    """Broadcast a scalar setting to the four stages, or check a per-stage sequence."""
    if isinstance(value, (list, tuple)):
        if len(value) != NUM_STAGES:
            raise ValueError(f'{name} needs {NUM_STAGES} entries (one per stage), got {value!r}')
        return tuple(value)
    return (value,) * NUM_STAGES


def _take_indices(num: int, indices: Optional[Union[int, Sequence[int]]]) -> List[int]:
    """timm semantics: ``None`` -> all, ``int n`` -> last n, sequence -> those (negatives ok)."""
    if indices is None:
        return list(range(num))
    if isinstance(indices, int):
        if not 0 < indices <= num:
            raise ValueError(f'indices={indices}: take the last 1..{num} stages')
        return list(range(num - indices, num))
    out = []
    for i in indices:
        j = i + num if i < 0 else i
        if not 0 <= j < num:
            raise ValueError(f'stage index {i} out of range for {num} stages (valid: 0..{num - 1} or negative)')
        out.append(j)
    return out


class InceptionTransformer(nn.Module):
    """iFormer: 4 stages of Inception mixers over a stride-4 stem; timm's model contract.

    Args:
        arch: ``'small' | 'base' | 'large'`` or an arch dict (see :func:`resolve_arch`).
        img_size: training resolution; sets the size of the position-embedding tables
            (``img_size/4 ... img_size/32``). Any other input size works: the tables are
            resized to each feature map's (H, W).
        in_chans: input channels.
        num_classes: classifier outputs; 0 for no head (``forward`` returns pooled features).
        global_pool: ``'avg'`` or ``''`` (no pooling in ``forward_head``).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
        layer_scale_init_value: initial layer scale (stages given by the arch).
        with_cp: gradient checkpointing, a bool or one bool per stage.
        attn_impl: ``'fused'`` (default) or ``'naive'``.
        window_size: ``None`` (global attention everywhere), an int, or one int/None per stage:
            attention within windows of that many tokens per side of the attended map
            (after the 2x2 pool in stages 1-2). Equal to global when the window covers the map.
    """

    def __init__(
            self,
            arch: Union[str, Mapping[str, Any]] = 'small',
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            layer_scale_init_value: float = 1e-6,
            with_cp: Union[bool, Sequence[bool]] = False,
            attn_impl: str = 'fused',
            window_size: Union[None, int, Sequence[Optional[int]]] = None,
    ) -> None:
        super().__init__()
        cfg = resolve_arch(arch)
        if in_chans < 1:
            raise ValueError(f'in_chans must be >= 1, got {in_chans}')
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        self.arch_settings = cfg
        self.depths = cfg['depths']
        self.embed_dims = cfg['embed_dims']
        self.img_size = _to_2tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.grad_checkpointing = tuple(bool(v) for v in _per_stage(with_cp, 'with_cp'))
        windows = _per_stage(window_size, 'window_size')
        for w in windows:
            if w is not None and (not isinstance(w, int) or w < 1):
                raise ValueError(f'window_size entries must be None or a positive int, got {window_size!r}')

        dims = self.embed_dims
        self.patch_embed = StemEmbed(in_chans, dims[0])
        for i in range(1, NUM_STAGES):
            self.add_module(f'patch_embed{i + 1}', DownEmbed(dims[i - 1], dims[i]))
        for i in range(NUM_STAGES):
            stride = 4 * 2 ** i
            if self.img_size[0] % stride or self.img_size[1] % stride:
                raise ValueError(f'img_size {self.img_size} must be divisible by 32 '
                                 '(it sets the position-embedding tables); inputs may be any size')
            n = (self.img_size[0] // stride, self.img_size[1] // stride)
            self.register_parameter(f'pos_embed{i + 1}', nn.Parameter(torch.zeros(1, *n, dims[i])))

        dpr = torch.linspace(0, drop_path_rate, sum(self.depths)).tolist()
        block = 0
        for i in range(NUM_STAGES):
            blocks = []
            for _ in range(self.depths[i]):
                blocks.append(Block(
                    dims[i], cfg['attention_heads'][block], head_dim=cfg['head_dim'],
                    mlp_ratio=cfg['mlp_ratio'], pool=cfg['attn_pool_stages'][i],
                    drop_path=dpr[block], layer_scale=cfg['layer_scale_stages'][i],
                    layer_scale_init_value=layer_scale_init_value, attn_impl=attn_impl,
                    window_size=windows[i]))
                block += 1
            self.add_module(f'blocks{i + 1}', nn.Sequential(*blocks))

        self.feature_info = [
            dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'blocks{i + 1}') for i in range(NUM_STAGES)]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    # ------------------------------------------------------------------ init / helpers
    def reset_parameters(self) -> None:
        """Training-from-scratch init: trunc-normal(.02) weights and position tables, zero biases."""
        for i in range(NUM_STAGES):
            nn.init.trunc_normal_(getattr(self, f'pos_embed{i + 1}'), std=0.02)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_modules(self, i: int) -> Tuple[nn.Module, nn.Parameter, nn.Sequential]:
        """(patch embed, position table, blocks) of stage ``i`` (0-based)."""
        embed = self.patch_embed if i == 0 else getattr(self, f'patch_embed{i + 1}')
        return embed, getattr(self, f'pos_embed{i + 1}'), getattr(self, f'blocks{i + 1}')

    def forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Run stage ``i`` (0-based): NCHW input of the embed -> channels-last ``(B, H, W, C)``."""
        embed, pos_embed, blocks = self.stage_modules(i)
        x = embed(x).permute(0, 2, 3, 1)
        x = x + resize_pos_embed(pos_embed, x.shape[1:3])
        if self.grad_checkpointing[i] and self.training and torch.is_grad_enabled():
            for blk in blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = blocks(x)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'iFormer expects a tensor, got {type(x).__name__}')
        if x.ndim != 4:
            raise ValueError(f'iFormer expects a 4-D (B, C, H, W) input, got shape {tuple(x.shape)}'
                             + (' (add a batch dimension: x[None])' if x.ndim == 3 else ''))
        if x.shape[1] != self.in_chans:
            if x.shape[-1] == self.in_chans:  # a channels-last (B, H, W, C) image batch
                raise ValueError(f'iFormer expects NCHW input but got shape {tuple(x.shape)}, which '
                                 'looks channels-last (B, H, W, C); pass x.permute(0, 3, 1, 2)')
            raise ValueError(f'iFormer was built for {self.in_chans} input channels but got '
                             f'{x.shape[1]} (shape {tuple(x.shape)}); convert the input or build '
                             f'the model with in_chans={x.shape[1]} (in_channels= for the mm backbone)')
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f'empty input of shape {tuple(x.shape)}')

    # ------------------------------------------------------------------ timm contract
    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, Sequence[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (raw block outputs, NCHW) and optionally the final features.

        Args:
            x: ``(B, C, H, W)`` images of any size.
            indices: stages to return (``None`` all, int = last n, or a list).
            norm: apply the head's LayerNorm to the last stage's map when it is returned.
            stop_early: stop after the last requested stage (only with ``intermediates_only``).
            output_fmt: ``'NCHW'`` or ``'NHWC'``.
            intermediates_only: return only the list of maps.
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._check_input(x)
        take = _take_indices(NUM_STAGES, indices)
        last = max(take) if (stop_early or intermediates_only) else NUM_STAGES - 1
        intermediates = []
        for i in range(last + 1):
            x = self.forward_stage(i, x if i == 0 else x.permute(0, 3, 1, 2))
            if i in take:
                y = self.norm(x) if (norm and i == NUM_STAGES - 1) else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices: Union[int, Sequence[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last index in ``indices`` (and the head/norm)."""
        take = _take_indices(NUM_STAGES, indices)
        for i in range(max(take) + 1, NUM_STAGES):
            for name in (f'patch_embed{i + 1}', f'blocks{i + 1}'):
                setattr(self, name, nn.Identity())
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stage-4 tokens after the final LayerNorm, channels-last ``(B, H/32, W/32, C)``."""
        self._check_input(x)
        for i in range(NUM_STAGES):
            x = self.forward_stage(i, x if i == 0 else x.permute(0, 3, 1, 2))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: Union[bool, Sequence[bool]] = True) -> None:
        self.grad_checkpointing = tuple(bool(v) for v in _per_stage(enable, 'enable'))

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Position tables, every norm's parameters and the layer scales (exact names)."""
        return {name for name, p in self.named_parameters()
                if name.startswith('pos_embed') or 'layer_scale' in name or _is_norm_param(self, name)}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise lr decay: stem, then stage by stage (block by block)."""
        if coarse:
            blocks = [(r'^(?:patch_embed|pos_embed|blocks)(\d+)', None), (r'^norm\.', (99999,))]
        else:
            blocks = [
                (r'^(?:patch_embed|pos_embed)(\d+)', (-1,)),  # downsample + table open a stage
                (r'^blocks(\d+)\.(\d+)', None),
                (r'^norm\.', (99999,)),
            ]
        return dict(stem=r'^patch_embed\.', blocks=blocks)


def _is_norm_param(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rsplit('.', 1)[0]) if '.' in name else model
    return isinstance(owner, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm))
