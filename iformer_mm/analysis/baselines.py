"""The authors' released iFormer, rebuilt as the benchmark's baseline (not used by the package).

The data flow of the released code (NeurIPS 2022, timm 0.5.4), op for op: the mixer's
``.contiguous()`` copies of each channel slice, two concatenations (conv + pool, then with
attention), the attention output reshaped through ``transpose(2, 3)`` to NCHW, and the
non-contiguous channels-last residual stream the patch embeddings' ``permute`` gives. Two
attention kernels: the released ``softmax((q k^T) * scale) v`` (``attn='naive'``), or
``scaled_dot_product_attention`` swapped in (``attn='sdpa'``) — the baseline every speed and
op-count ratio of the benchmark is taken against.

Beyond the released code only what a dense benchmark needs: non-square maps (the release
reshapes with ``int(sqrt(N))``). Odd maps in stages 1-2 are refused, as they fail there too.
Parameter names are the authors', so any iFormer ``state_dict`` loads strictly.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from ..models.iformer import ARCH_SETTINGS, DownEmbed, StemEmbed, resize_pos_embed

__all__ = ['AuthorsIFormer']


class _HighMixer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cnn_in = dim // 2
        self.conv1 = nn.Conv2d(self.cnn_in, dim, 1, bias=False)
        self.proj1 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=False)
        self.mid_gelu1 = nn.GELU()
        self.Maxpool = nn.MaxPool2d(3, 1, 1)
        self.proj2 = nn.Conv2d(self.cnn_in, dim, 1)
        self.mid_gelu2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cx = self.mid_gelu1(self.proj1(self.conv1(x[:, :self.cnn_in].contiguous())))
        px = self.mid_gelu2(self.proj2(self.Maxpool(x[:, self.cnn_in:].contiguous())))
        return torch.cat((cx, px), dim=1)


class _LowMixer(nn.Module):
    def __init__(self, dim: int, num_heads: int, pool: bool, attn: str) -> None:
        super().__init__()
        self.dim, self.num_heads, self.attn = dim, num_heads, attn
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.pool = nn.AvgPool2d(2, 2, count_include_pad=False) if pool else nn.Identity()
        self.uppool = nn.Upsample(scale_factor=2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xa = self.pool(x)
        B, C, h, w = xa.shape
        xa = xa.permute(0, 2, 3, 1).reshape(B, -1, C)
        N = xa.shape[1]
        qkv = self.qkv(xa).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.attn == 'naive':
            out = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.uppool(out.transpose(2, 3).reshape(B, C, N).view(B, C, h, w))


class _Mixer(nn.Module):
    def __init__(self, dim: int, heads: int, pool: bool, attn: str) -> None:
        super().__init__()
        self.low_dim = heads * 32
        self.high_dim = dim - self.low_dim
        self.high_mixer = _HighMixer(self.high_dim)
        self.low_mixer = _LowMixer(self.low_dim, heads, pool, attn)
        fused = 2 * self.high_dim + self.low_dim
        self.conv_fuse = nn.Conv2d(fused, fused, 3, 1, 1, groups=fused, bias=False)
        self.proj = nn.Conv2d(fused, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        hx = self.high_mixer(x[:, :self.high_dim].contiguous())
        lx = self.low_mixer(x[:, self.high_dim:].contiguous())
        x = torch.cat((hx, lx), dim=1)
        x = x + self.conv_fuse(x)
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, pool: bool, layer_scale: bool, attn: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Mixer(dim, heads, pool, attn)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)
        self.use_layer_scale = layer_scale
        if layer_scale:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), 1e-6))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_layer_scale:
            x = x + self.layer_scale_1 * self.attn(self.norm1(x))
            return x + self.layer_scale_2 * self.mlp(self.norm2(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AuthorsIFormer(nn.Module):
    """The released iFormer's backbone data flow (no head): four channels-last stage maps.

    Args:
        arch: ``'small' | 'base' | 'large'``.
        attn: ``'naive'`` (the released code) or ``'sdpa'`` (fused attention swapped in).
        img_size: size of the position tables.
    """

    def __init__(self, arch: str = 'small', attn: str = 'sdpa', img_size: int = 224) -> None:
        super().__init__()
        cfg: Dict = ARCH_SETTINGS[arch]
        dims, depths = cfg['embed_dims'], cfg['depths']
        self.patch_embed = StemEmbed(3, dims[0])
        for i in range(1, 4):
            self.add_module(f'patch_embed{i + 1}', DownEmbed(dims[i - 1], dims[i]))
        block = 0
        for i in range(4):
            n = img_size // 2 ** (i + 2)
            self.register_parameter(f'pos_embed{i + 1}', nn.Parameter(torch.zeros(1, n, n, dims[i])))
            blocks = []
            for _ in range(depths[i]):
                blocks.append(_Block(dims[i], cfg['attention_heads'][block], pool=i < 2,
                                     layer_scale=i >= 2, attn=attn))
                block += 1
            self.add_module(f'blocks{i + 1}', nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f'the released data flow needs inputs divisible by 32, got {tuple(x.shape)}')
        outs = []
        for i in range(4):
            embed = self.patch_embed if i == 0 else getattr(self, f'patch_embed{i + 1}')
            x = embed(x if i == 0 else x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            x = x + resize_pos_embed(getattr(self, f'pos_embed{i + 1}'), [x.shape[1], x.shape[2]])
            x = getattr(self, f'blocks{i + 1}')(x)
            outs.append(x)
        return tuple(outs)
