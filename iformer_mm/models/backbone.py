"""OpenMMLab backbone ``iformer_mm.IFormer`` for MMDetection 3.x / MMSegmentation 1.x.

A thin adapter over :class:`~iformer_mm.models.iformer.InceptionTransformer`: same modules and
parameter names (so classification checkpoints load with no renaming), no classifier, plus
what dense heads and mm configs expect — multi-scale NCHW outputs, output LayerNorms,
``frozen_stages``, ``norm_eval``, ``with_cp``, ``init_cfg=dict(type='Pretrained', ...)`` and
``get_layer_depth`` for layer-wise lr decay.
"""
from __future__ import annotations

import copy
import logging
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..pretrained import load_pretrained
from ..registry import MODELS
from .iformer import NUM_STAGES, InceptionTransformer


@MODELS.register_module()
class IFormer(InceptionTransformer, BaseModule):
    """iFormer backbone returning a tuple of NCHW feature maps (strides 4, 8, 16, 32).

    Args:
        arch: ``'small' | 'base' | 'large'`` or an arch dict (see ``resolve_arch``).
        img_size: resolution of the position tables (the ImageNet checkpoint's, 224 or 384);
            inputs may have any size, the tables are resized to each map.
        in_channels: input channels.
        out_indices: stages to return (0-3). Stages after the last one are not built.
        out_norm: LayerNorm each returned map (named ``norm{i}``), as Swin/ConvNeXt backbones do.
        frozen_stages: -1 none; 0 the stem; k >= 1 the stem and stages 1..k (weights frozen,
            modules kept in eval mode).
        norm_eval: keep every BatchNorm (stem and downsampling layers) in eval mode.
        with_cp: gradient checkpointing, a bool or one per stage.
        drop_path_rate: stochastic depth rate (linear over blocks).
        attn_impl: ``'fused'`` or ``'naive'`` attention.
        window_size: ``None`` (global attention) or a window size / one per stage.
        local_grad: ``'recompute'`` (default, least memory) or ``'store'`` (faster training,
            more memory), or one per stage; see ``InceptionTransformer``.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads the authors' ``.pth``, a
            timm / iformer_mm classification checkpoint or an mmdet/mmseg checkpoint.
            Optional keys: ``strict`` (default True: every backbone weight must be found),
            ``use_ema`` (default True).
    """

    def __init__(
            self,
            arch: Union[str, Mapping[str, Any]] = 'small',
            img_size: Union[int, Tuple[int, int]] = 224,
            in_channels: int = 3,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            out_norm: bool = True,
            frozen_stages: int = -1,
            norm_eval: bool = False,
            with_cp: Union[bool, Sequence[bool]] = False,
            drop_path_rate: float = 0.1,
            attn_impl: str = 'fused',
            window_size: Union[None, int, Sequence[Optional[int]]] = None,
            local_grad: Union[str, Sequence[str]] = 'recompute',
            init_cfg: Optional[Union[dict, list]] = None,
    ) -> None:
        super().__init__(arch=arch, img_size=img_size, in_chans=in_channels, num_classes=0,
                         drop_path_rate=drop_path_rate, with_cp=with_cp, attn_impl=attn_impl,
                         window_size=window_size, local_grad=local_grad)
        self.init_cfg = copy.deepcopy(init_cfg)
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not -NUM_STAGES <= i < NUM_STAGES
                                  for i in out_indices):
            raise ValueError(f'out_indices {out_indices} out of range: iFormer has stages 0..{NUM_STAGES - 1}')
        self.out_indices = tuple(sorted({i % NUM_STAGES for i in out_indices}))
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'frozen_stages must be in -1..{NUM_STAGES}, got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.out_norm = out_norm

        # No classifier in a backbone; stages after the last output are not built at all
        # (unused parameters would break DDP).
        del self.norm, self.head, self.head_drop
        self.num_stages_built = max(self.out_indices) + 1
        for i in range(self.num_stages_built, NUM_STAGES):
            delattr(self, f'patch_embed{i + 1}')
            delattr(self, f'blocks{i + 1}')
            delattr(self, f'pos_embed{i + 1}')
        self.feature_info = [self.feature_info[i] for i in self.out_indices]
        self.out_channels = tuple(self.embed_dims[i] for i in self.out_indices)
        if out_norm:
            for i in self.out_indices:
                self.add_module(f'norm{i}', nn.LayerNorm(self.embed_dims[i], eps=1e-6))
        self._freeze_stages()

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` with our safe loader.

        Weights were initialised for training from scratch at construction; other init_cfg
        types go through mmengine's initialisers.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH")
            logger = MMLogger.get_current_instance()
            report = load_pretrained(self, cfg['checkpoint'], strict=cfg.get('strict', True),
                                     use_ema=cfg.get('use_ema', True), log=logger,
                                     # output norms are new in a dense model
                                     allowed_missing=[r'^norm\d$', r'^norm\d\.'])
            self._pretrained_report = report
            self._is_init = True
        elif cfg:
            super().init_weights()
        self._freeze_stages()

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, C, H, W)`` of any size -> tuple of ``(B, C_i, ceil(H/s_i), ceil(W/s_i))``."""
        self._check_input(x)
        outs = []
        for i in range(self.num_stages_built):
            x = self.forward_stage(i, x if i == 0 else x.permute(0, 3, 1, 2))
            if i in self.out_indices:
                y = getattr(self, f'norm{i}')(x) if self.out_norm else x
                outs.append(y.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    # ------------------------------------------------------------------ training modes
    def _stage_parts(self, i: int) -> Tuple[list, list]:
        """(modules, parameters) that belong to stage ``i`` (0-based, ``-1`` = stem only)."""
        if i < 0:
            return [self.patch_embed], []
        mods = [getattr(self, f'blocks{i + 1}')]
        if i > 0:
            mods.append(getattr(self, f'patch_embed{i + 1}'))
        if hasattr(self, f'norm{i}'):
            mods.append(getattr(self, f'norm{i}'))
        return mods, [getattr(self, f'pos_embed{i + 1}')]

    def _freeze_stages(self) -> None:
        for i in range(-1, min(self.frozen_stages, self.num_stages_built)):
            mods, params = self._stage_parts(i)
            for m in mods:
                m.eval()
                for p in m.parameters():
                    p.requires_grad = False
            for p in params:
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'IFormer':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ lr decay
    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id for layer-wise lr decay (mmpretrain's ``LearningRateDecayOptimWrapperConstructor``).

        Stem -> 0; block j of stage i -> its global block index + 1 (a stage's downsampling and
        position table share the id of its first block); anything else -> the last id.
        """
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        if name.startswith('patch_embed.'):
            return 0, num_layers
        m = re.match(r'^(?:patch_embed|pos_embed)(\d)', name)
        if m:
            return sum(self.depths[:int(m.group(1)) - 1]) + 1, num_layers
        m = re.match(r'^blocks(\d)\.(\d+)\.', name)
        if m:
            return sum(self.depths[:int(m.group(1)) - 1]) + int(m.group(2)) + 1, num_layers
        return num_layers - 1, num_layers
