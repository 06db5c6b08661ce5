"""Inception Transformer (iFormer), the reference model.

Si et al., "Inception Transformer", NeurIPS 2022. This file is the one model definition of
the package: the timm classifiers and the OpenMMLab backbone are thin adapters over
:class:`InceptionTransformer`. Parameter names follow the authors' checkpoints exactly, so
their published ``state_dict`` loads strictly with no renaming.

Every module has one ``forward`` that calls its submodules as modules, in the authors' data
flow, so forward hooks, module swaps (LoRA, quantisation), parametrisations, fx, TorchScript
and ``torch.compile`` see the real model. Attention uses ``scaled_dot_product_attention``
(``attn_impl='naive'`` keeps the released code's explicit softmax(QK^T)V, the baseline).

Faster CPU kernels for the Inception mixer and the MLP live in :mod:`iformer_mm.ops`. A model
built with ``impl='auto'`` (the default) runs them only where they were measured to win and
only when nothing observes or replaces the modules they stand in for; ``impl='reference'``
never does. The rule is written once, in :mod:`iformer_mm.ops.dispatch`.

Beyond the authors' code: any input size (non-square and odd maps: pool with ``ceil_mode``,
crop after the 2x upsample; position tables resized by shape), optional windowed attention,
per-stage gradient checkpointing, multi-scale outputs and the full timm model contract.
"""

import contextlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp as TimmMlp
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..compat import is_fx_tracing
from ..ops import check_impl, fused_mlp, inception_mixer_cl, kernel_allowed
from .arch import ARCH_SETTINGS, NUM_STAGES, per_stage, resolve_arch, take_indices

__all__ = ['ARCH_SETTINGS', 'InceptionTransformer', 'InceptionMixer', 'Block', 'resolve_arch',
           'resize_pos_embed']


def _onnx_exporting() -> bool:
    """Whether the ONNX exporter is recording; TorchScript compiles only the first branch
    (``torch.onnx.is_in_onnx_export`` itself is not scriptable on newer torch)."""
    if torch.jit.is_scripting():
        return False
    else:
        return torch.onnx.is_in_onnx_export()


@torch.fx.wrap
def resize_pos_embed(pos_embed: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Resize a channels-last ``(1, h, w, C)`` position table to ``(1, H, W, C)``.

    Bilinear, ``align_corners=False``: what the authors' model does at run time. Compared by
    shape (the authors compared areas, wrong for e.g. 49x64 vs 56x56). A leaf for fx. While
    exporting to ONNX the table is always resized: resizing to its own size is exact, and a
    graph recorded at the table's size must still follow other sizes.
    """
    if pos_embed.shape[1] == size[0] and pos_embed.shape[2] == size[1] and not _onnx_exporting():
        return pos_embed
    resized = F.interpolate(pos_embed.permute(0, 3, 1, 2), size=(size[0], size[1]), mode='bilinear',
                            align_corners=False)
    return resized.permute(0, 2, 3, 1)


class HighMixer(nn.Module):
    """High-frequency branches on NCHW maps: conv (1x1 -> dw3x3 -> GELU) and pool (max3x3 -> 1x1 -> GELU).

    Each takes half of the ``dim`` input channels and gives ``dim`` outputs; returns both.
    Module names of the non-parametric layers follow the authors' code.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.split = dim // 2
        self.conv1 = nn.Conv2d(self.split, dim, 1, bias=False)
        self.proj1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.mid_gelu1 = nn.GELU()
        self.Maxpool = nn.MaxPool2d(3, stride=1, padding=1)
        self.proj2 = nn.Conv2d(self.split, dim, 1)
        self.mid_gelu2 = nn.GELU()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        cx = self.mid_gelu1(self.proj1(self.conv1(x[:, :self.split])))
        px = self.mid_gelu2(self.proj2(self.Maxpool(x[:, self.split:])))
        return cx, px


class LowMixer(nn.Module):
    """Low-frequency branch on NCHW maps: (avg-pool 2x2) -> multi-head self-attention -> (2x up).

    Args:
        dim: low-frequency channels (``num_heads * head_dim``).
        num_heads: attention heads.
        pool: average-pool 2x2 before attention and upsample 2x after (stages 1-2).
        attn_impl: ``'sdpa'`` (``scaled_dot_product_attention``; never materialises the
            N x N map) or ``'naive'`` (the released code: ``softmax((q k^T) * scale) v``).
        window_size: ``None`` for global attention, else attend within non-overlapping
            windows of this many (pooled) tokens per side; equal to global when one window
            covers the map.
    """

    window_size: Optional[int]

    def __init__(self, dim: int, num_heads: int, pool: bool, attn_impl: str = 'sdpa',
                 window_size: Optional[int] = None) -> None:
        super().__init__()
        if attn_impl not in ('sdpa', 'naive'):
            raise ValueError(f"attn_impl must be 'sdpa' or 'naive', got {attn_impl!r}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.naive = attn_impl == 'naive'
        self.window_size = window_size
        self.pool_input = pool
        self.qkv = nn.Linear(dim, dim * 3)
        # ceil_mode: odd maps keep their last row/column; partial windows average only the
        # valid pixels. The 2x upsample is cropped back to the input size in forward.
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) if pool else nn.Identity()
        self.uppool = nn.Upsample(scale_factor=2.0, mode='nearest') if pool else nn.Identity()

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.naive:
            attn = (q @ k.transpose(-2, -1)) * self.scale
            if mask is not None:
                attn = attn.masked_fill(~mask, float('-inf'))
            return attn.softmax(dim=-1) @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _tokens(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Self-attention over ``(B, N, C)`` tokens."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self._attend(q, k, v, mask).transpose(1, 2).reshape(B, N, C)

    def _windowed(self, x: torch.Tensor, ws: int) -> torch.Tensor:
        """Attention within ``ws x ws`` windows of a channels-last map; padded keys are masked."""
        B, h, w, C = x.shape
        ph, pw = (-h) % ws, (-w) % ws
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        nh, nw = (h + ph) // ws, (w + pw) // ws
        valid = torch.zeros(h + ph, w + pw, dtype=torch.bool, device=x.device)
        valid[:h, :w] = True
        mask = valid.view(nh, ws, nw, ws).permute(0, 2, 1, 3).reshape(1, nh * nw, 1, 1, ws * ws)
        mask = mask.expand(B, -1, -1, -1, -1).reshape(B * nh * nw, 1, 1, ws * ws)
        win = x.view(B, nh, ws, nw, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
        out = self._tokens(win, mask).view(B, nh, nw, ws, ws, C).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(B, nh * ws, nw * ws, C)[:, :h, :w]

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over a channels-last ``(B, h, w, C)`` map, global or windowed."""
        B, h, w, C = x.shape
        ws = self.window_size
        if ws is not None and (h > ws or w > ws):
            return self._windowed(x, ws)
        return self._tokens(x.reshape(B, h * w, C)).view(B, h, w, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: NCHW ``(B, C, H, W)``; returns the same shape."""
        H, W = x.shape[-2:]
        xa = self.pool(x)
        xa = self.attention(xa.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.uppool(xa)[:, :, :H, :W]

    def extra_repr(self) -> str:
        return (f'dim={self.dim}, num_heads={self.num_heads}, '
                f"attn_impl={'naive' if self.naive else 'sdpa'}, window_size={self.window_size}")


class InceptionMixer(nn.Module):
    """Inception token mixer: channel split into conv / max-pool / attention branches.

    Input channels ``[0, C_h)`` go to :class:`HighMixer`, ``[C_h, C)`` to :class:`LowMixer`;
    the outputs ``[conv (C_h), pool (C_h), attention (C_l)]`` are concatenated, fused by a
    residual depthwise 3x3 and projected back to ``C`` by a 1x1. Works on channels-last
    ``(B, H, W, C)`` tokens. Kernel twin: :func:`iformer_mm.ops.inception_mixer_cl`.
    """

    def __init__(self, dim: int, attention_heads: int, head_dim: int = 32, pool: bool = False,
                 attn_impl: str = 'sdpa', window_size: Optional[int] = None, impl: str = 'auto') -> None:
        super().__init__()
        self.impl = check_impl(impl)
        self.low_dim = attention_heads * head_dim
        self.high_dim = dim - self.low_dim
        self.high_mixer = HighMixer(self.high_dim)
        self.low_mixer = LowMixer(self.low_dim, attention_heads, pool, attn_impl, window_size)
        fused = 2 * self.high_dim + self.low_dim
        self.conv_fuse = nn.Conv2d(fused, fused, 3, padding=1, groups=fused, bias=False)
        self.proj = nn.Conv2d(fused, dim, 1)

    @torch.jit.unused
    def _kernel_allowed(self, x: torch.Tensor) -> bool:
        hm, lm = self.high_mixer, self.low_mixer
        return kernel_allowed(self.impl, x, (
            (hm, HighMixer), (hm.conv1, nn.Conv2d), (hm.proj1, nn.Conv2d), (hm.mid_gelu1, nn.GELU),
            (hm.Maxpool, nn.MaxPool2d), (hm.proj2, nn.Conv2d), (hm.mid_gelu2, nn.GELU),
            (lm, LowMixer), (lm.qkv, nn.Linear),
            (lm.pool, nn.AvgPool2d if lm.pool_input else nn.Identity),
            (lm.uppool, nn.Upsample if lm.pool_input else nn.Identity),
            (self.conv_fuse, nn.Conv2d), (self.proj, nn.Conv2d)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._kernel_allowed(x):
            return inception_mixer_cl(self, x)
        x = x.permute(0, 3, 1, 2)  # NCHW view
        cx, px = self.high_mixer(x[:, :self.high_dim])
        lx = self.low_mixer(x[:, self.high_dim:])
        x = torch.cat((cx, px, lx), dim=1)
        x = x + self.conv_fuse(x)
        return self.proj(x).permute(0, 2, 3, 1)


class Mlp(TimmMlp):
    """timm's ``Mlp`` (``fc1`` -> GELU -> ``fc2``) with a CPU kernel twin (:func:`iformer_mm.ops.fused_mlp`)."""

    def __init__(self, dim: int, hidden_dim: int, impl: str = 'auto') -> None:
        super().__init__(dim, hidden_dim, act_layer=nn.GELU)
        self.impl = check_impl(impl)

    @torch.jit.unused
    def _kernel_allowed(self, x: torch.Tensor) -> bool:
        if (self.drop1.p and self.training) or (self.drop2.p and self.training):
            return False
        return kernel_allowed(self.impl, x, (
            (self.fc1, nn.Linear), (self.act, nn.GELU), (self.drop1, nn.Dropout),
            (self.norm, nn.Identity), (self.fc2, nn.Linear), (self.drop2, nn.Dropout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and self._kernel_allowed(x):
            return fused_mlp(x, self.fc1, self.fc2)
        # timm's Mlp.forward, spelled out (TorchScript has no super())
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


class Block(nn.Module):
    """Pre-norm iFormer block on channels-last tokens, optional layer scale (stages 3-4)."""

    def __init__(self, dim: int, attention_heads: int, head_dim: int = 32, mlp_ratio: float = 4.0,
                 pool: bool = False, drop_path: float = 0.0, layer_scale: bool = False,
                 layer_scale_init_value: float = 1e-6, attn_impl: str = 'sdpa',
                 window_size: Optional[int] = None, impl: str = 'auto') -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = InceptionMixer(dim, attention_heads, head_dim, pool, attn_impl, window_size, impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), impl)
        self.layer_scale_1: Optional[nn.Parameter] = None
        self.layer_scale_2: Optional[nn.Parameter] = None
        if layer_scale:
            self.layer_scale_1 = nn.Parameter(torch.full((dim,), layer_scale_init_value))
            self.layer_scale_2 = nn.Parameter(torch.full((dim,), layer_scale_init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(self.norm1(x))
        if self.layer_scale_1 is not None:
            a = self.layer_scale_1 * a
        x = x + self.drop_path(a)
        m = self.mlp(self.norm2(x))
        if self.layer_scale_2 is not None:
            m = self.layer_scale_2 * m
        return x + self.drop_path(m)


class Stage(nn.Sequential):
    """A stage's blocks (an ``nn.Sequential``: keys stay ``blocksN.<i>``), optionally checkpointed."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and torch.is_grad_enabled():
            for blk in self:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        for blk in self:
            x = blk(x)
        return x


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


class InceptionTransformer(nn.Module):
    """iFormer: 4 stages of Inception mixers over a stride-4 stem; timm's model contract.

    Args:
        arch: ``'small' | 'base' | 'large'`` or an arch dict (see :func:`resolve_arch`).
        img_size: training resolution; sets the size of the position tables (``img_size/4 ...
            img_size/32``). Inputs of any other size work: the tables are resized per map.
        in_chans: input channels.
        num_classes: classifier outputs; 0 for no head (``forward`` returns pooled features).
        global_pool: ``'avg'`` or ``''`` (no pooling in ``forward_head``).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
        layer_scale_init_value: initial layer scale (stages given by the arch).
        with_cp: gradient checkpointing, a bool or one bool per stage.
        attn_impl: ``'sdpa'`` (default) or ``'naive'`` (the released code's explicit attention).
        window_size: ``None`` (global attention), an int, or one int/None per stage: attention
            within windows of that many tokens per side of the attended map.
        impl: ``'auto'`` (default: :mod:`iformer_mm.ops` kernels where measured faster and
            safe, see :mod:`iformer_mm.ops.dispatch`), ``'reference'`` (never) or ``'fast'``
            (on any device, for measuring them). Same outputs, same parameters.
        device, dtype: where and in which dtype to create the parameters (timm's factory kwargs).
    """

    arch_zoo = ARCH_SETTINGS

    def __init__(
            self,
            arch: Union[str, Mapping[str, Any]] = 'small',
            img_size: Union[int, Sequence[int]] = 224,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            layer_scale_init_value: float = 1e-6,
            with_cp: Union[bool, Sequence[bool]] = False,
            attn_impl: str = 'sdpa',
            window_size: Union[None, int, Sequence[Optional[int]]] = None,
            impl: str = 'auto',
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__()
        with torch.device(device) if device is not None else contextlib.nullcontext():
            self._build(arch, img_size, in_chans, num_classes, global_pool, drop_rate, drop_path_rate,
                        layer_scale_init_value, with_cp, attn_impl, window_size, impl)
        if dtype is not None:
            self.to(dtype=dtype)

    def _build(self, arch: Union[str, Mapping[str, Any]], img_size: Union[int, Sequence[int]], in_chans: int,
               num_classes: int, global_pool: str, drop_rate: float, drop_path_rate: float,
               layer_scale_init_value: float, with_cp: Union[bool, Sequence[bool]], attn_impl: str,
               window_size: Union[None, int, Sequence[Optional[int]]], impl: str) -> None:
        cfg = resolve_arch(arch)
        if in_chans < 1:
            raise ValueError(f'in_chans must be >= 1, got {in_chans}')
        if global_pool not in ('avg', ''):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        windows = per_stage(window_size, 'window_size')
        if any(w is not None and (not isinstance(w, int) or w < 1) for w in windows):
            raise ValueError(f'window_size entries must be None or a positive int, got {window_size!r}')
        self.arch_settings = cfg
        self.depths, self.embed_dims = cfg['depths'], cfg['embed_dims']
        self.num_stages_built = NUM_STAGES  # fewer after prune_intermediate_layers
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(self.img_size) != 2 or self.img_size[0] % 32 or self.img_size[1] % 32:
            raise ValueError(f'img_size {img_size} must be an int or (H, W) divisible by 32 (it sets '
                             'the position tables); inputs may be any size')
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.impl = check_impl(impl)
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.output_fmt = 'NHWC'  # forward_features returns channels-last tokens

        dims = self.embed_dims
        self.patch_embed = StemEmbed(in_chans, dims[0])
        for i in range(1, NUM_STAGES):
            self.add_module(f'patch_embed{i + 1}', DownEmbed(dims[i - 1], dims[i]))
        for i in range(NUM_STAGES):
            n = (self.img_size[0] // 2 ** (i + 2), self.img_size[1] // 2 ** (i + 2))
            self.register_parameter(f'pos_embed{i + 1}', nn.Parameter(torch.zeros(1, *n, dims[i])))
        dpr = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        block = 0
        for i in range(NUM_STAGES):
            blocks = []
            for _ in range(self.depths[i]):
                blocks.append(Block(
                    dims[i], cfg['attention_heads'][block], cfg['head_dim'], cfg['mlp_ratio'],
                    pool=cfg['attn_pool_stages'][i], drop_path=dpr[block],
                    layer_scale=cfg['layer_scale_stages'][i],
                    layer_scale_init_value=layer_scale_init_value, attn_impl=attn_impl,
                    window_size=windows[i], impl=impl))
                block += 1
            self.add_module(f'blocks{i + 1}', Stage(*blocks))
        self.set_grad_checkpointing(with_cp)
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f'blocks{i + 1}')
                             for i in range(NUM_STAGES)]
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

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

    # ------------------------------------------------------------------ stages
    def stage_modules(self, i: int) -> Tuple[nn.Module, nn.Parameter, nn.Module]:
        """(patch embed, position table, blocks) of stage ``i`` (0-based)."""
        embed = self.patch_embed if i == 0 else getattr(self, f'patch_embed{i + 1}')
        return embed, getattr(self, f'pos_embed{i + 1}'), getattr(self, f'blocks{i + 1}')

    @torch.jit.unused
    def _cpu_layout(self, x: torch.Tensor) -> bool:
        return kernel_allowed(self.impl, x, ())

    def _embed_input(self, x: torch.Tensor) -> torch.Tensor:
        """Where the CPU kernels run, patch embeddings take channels-last input.

        Their outputs are then channels-last too, so each stage's token stream is a contiguous
        ``(B, H, W, C)`` tensor for free: the permuted NCHW stream of the authors' layout makes
        every LayerNorm copy its input and every residual add transpose, forward and backward.
        """
        if not torch.jit.is_scripting() and self._cpu_layout(x):
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @staticmethod
    def _tokens(x: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """Embed output (NCHW) -> channels-last tokens plus the (resized) position table."""
        x = x.permute(0, 2, 3, 1)
        return x + resize_pos_embed(pos_embed, [x.shape[1], x.shape[2]])

    def forward_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` (0-based): NCHW input of its embed -> channels-last ``(B, H, W, C)``."""
        embed, pos_embed, blocks = self.stage_modules(i)
        return blocks(self._tokens(embed(self._embed_input(x)), pos_embed))

    @torch.jit.unused
    def _check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy) or is_fx_tracing():
            return  # shapes are symbolic
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'iFormer expects a tensor, got {type(x).__name__}')
        if x.ndim != 4:
            raise ValueError(f'iFormer expects a 4-D (B, C, H, W) input, got shape {tuple(x.shape)}'
                             + (' (add a batch dimension: x[None])' if x.ndim == 3 else ''))
        if x.shape[1] != self.in_chans:
            if x.shape[-1] == self.in_chans:
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
        """Stage outputs (raw block outputs) and optionally the final features.

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
        take = take_indices(NUM_STAGES, indices)
        last = max(take) if (stop_early or intermediates_only) else self.num_stages_built - 1
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
        """Delete the stages after the last index in ``indices`` (and the norm/head if asked).

        ``forward_features`` then ends at that stage (with ``prune_norm=True``, its raw tokens);
        ``forward_intermediates`` returns its maps as before.
        """
        take = take_indices(NUM_STAGES, indices)
        for i in range(max(take) + 1, NUM_STAGES):
            for name in (f'patch_embed{i + 1}', f'blocks{i + 1}', f'pos_embed{i + 1}'):
                if hasattr(self, name):
                    delattr(self, name)
        self.num_stages_built = min(self.num_stages_built, max(take) + 1)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stage-4 tokens after the final LayerNorm, channels-last ``(B, H/32, W/32, C)``."""
        if not torch.jit.is_scripting():
            self._check_input(x)
        # Unrolled (not a loop over getattr) so that TorchScript can compile it. A model cut by
        # prune_intermediate_layers ends at its last kept stage; TorchScript resolves hasattr
        # when compiling, so the branch of a deleted stage is not compiled.
        x = self.blocks1(self._tokens(self.patch_embed(self._embed_input(x)), self.pos_embed1))
        if hasattr(self, 'blocks2'):
            x = self.blocks2(self._tokens(self.patch_embed2(x.permute(0, 3, 1, 2)), self.pos_embed2))
        if hasattr(self, 'blocks3'):
            x = self.blocks3(self._tokens(self.patch_embed3(x.permute(0, 3, 1, 2)), self.pos_embed3))
        if hasattr(self, 'blocks4'):
            x = self.blocks4(self._tokens(self.patch_embed4(x.permute(0, 3, 1, 2)), self.pos_embed4))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'avg':
            x = x.mean(dim=(1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        if num_classes > 0:
            w = self.norm.weight if isinstance(self.norm, nn.LayerNorm) else None
            self.head = nn.Linear(self.num_features, num_classes,
                                  device=None if w is None else w.device, dtype=None if w is None else w.dtype)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
            self.head.train(self.training)
        else:
            self.head = nn.Identity()

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: Union[bool, Sequence[bool]] = True) -> None:
        """Gradient checkpointing per stage: one bool, or one per stage."""
        flags = tuple(bool(v) for v in per_stage(enable, 'with_cp'))
        for i, flag in enumerate(flags):
            if hasattr(self, f'blocks{i + 1}'):
                getattr(self, f'blocks{i + 1}').grad_checkpointing = flag
        self.grad_checkpointing = flags

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        """Position tables, every norm's parameters and the layer scales (exact names)."""
        norms = (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)
        return {f'{mn}.{pn}' if mn else pn for mn, m in self.named_modules()
                for pn, _ in m.named_parameters(recurse=False)
                if isinstance(m, norms) or pn.startswith('pos_embed') or 'layer_scale' in pn}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise lr decay: stem, then stage by stage (block by block)."""
        if coarse:
            blocks = [(r'^(?:patch_embed|pos_embed|blocks)(\d+)', None), (r'^norm\.', (99999,))]
        else:
            # a stage's downsampling and position table share its first block's group
            blocks = [(r'^(?:patch_embed|pos_embed)(\d+)', (0,)),
                      (r'^blocks(\d+)\.(\d+)', None), (r'^norm\.', (99999,))]
        return dict(stem=r'^patch_embed\.', blocks=blocks)
