"""OpenMMLab backbone ``iformer_mm.IFormer`` for MMDetection 3.x / MMSegmentation 1.x.

A thin adapter over :class:`~iformer_mm.models.iformer.InceptionTransformer`: the same modules
and parameter names (classification checkpoints load with no renaming), the core's
``forward_intermediates`` and ``prune_intermediate_layers``, and what dense heads and mm
configs expect on top — a tuple of NCHW maps, output LayerNorms, ``frozen_stages``,
``norm_eval``, ``init_cfg=dict(type='Pretrained', ...)`` and ``get_layer_depth`` for
layer-wise lr decay (layer ids from the core's ``group_matcher``).
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.models import group_parameters
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..pretrained import load_pretrained
from ..registry import MODELS
from .iformer import NUM_STAGES, InceptionTransformer

# Model-zoo URLs of other backbones that mmdet/mmseg base configs put in ``pretrained``.
_FOREIGN_ZOOS = ('open-mmlab://', 'torchvision://', 'mmcls://', 'mmpretrain://')


def _resolve_pretrained(pretrained: Optional[str], init_cfg: Optional[Union[dict, list]]) -> Optional[Union[dict, list]]:
    """The deprecated ``pretrained=`` argument, as mmdet's backbones take it.

    mmseg's ``EncoderDecoder`` copies the segmentor's ``pretrained`` into the backbone, and
    mmseg's base configs set it to a ResNet (``open-mmlab://resnet50_v1c``): that is not an
    iFormer checkpoint, so it is ignored with a warning instead of failing.
    """
    if pretrained is None:
        return init_cfg
    if not isinstance(pretrained, str):
        raise TypeError(f'pretrained must be a checkpoint path or None, got {type(pretrained).__name__}')
    if pretrained.startswith(_FOREIGN_ZOOS):
        warnings.warn(f'IFormer: ignoring pretrained={pretrained!r} (another model\'s weights, usually '
                      'inherited from an mmdet/mmseg base config). Load iFormer weights with '
                      "backbone.init_cfg=dict(type='Pretrained', checkpoint=...); set model.pretrained=None "
                      'to silence this.', stacklevel=3)
        return init_cfg
    if init_cfg is not None:
        warnings.warn(f'IFormer: both pretrained={pretrained!r} and init_cfg are set; init_cfg wins '
                      '(pretrained is deprecated).', stacklevel=3)
        return init_cfg
    warnings.warn("IFormer: pretrained= is deprecated; use init_cfg=dict(type='Pretrained', "
                  'checkpoint=...)', DeprecationWarning, stacklevel=3)
    return dict(type='Pretrained', checkpoint=pretrained)


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
        attn_impl: ``'sdpa'`` or ``'naive'`` attention.
        window_size: ``None`` (global attention) or a window size / one per stage.
        impl: ``'auto'`` (fast CPU kernels where measured and safe), ``'reference'`` or
            ``'fast'``; see :mod:`iformer_mm.ops.dispatch`.
        pretrained: deprecated (mmdet style); a path becomes ``init_cfg`` Pretrained, another
            model zoo's URL (from mmseg's base configs) is ignored with a warning.
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
            attn_impl: str = 'sdpa',
            window_size: Union[None, int, Sequence[Optional[int]]] = None,
            impl: str = 'auto',
            pretrained: Optional[str] = None,
            init_cfg: Optional[Union[dict, list]] = None,
    ) -> None:
        super().__init__(arch=arch, img_size=img_size, in_chans=in_channels, num_classes=0,
                         drop_path_rate=drop_path_rate, with_cp=with_cp, attn_impl=attn_impl,
                         window_size=window_size, impl=impl)
        self.init_cfg = copy.deepcopy(_resolve_pretrained(pretrained, init_cfg))
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not -NUM_STAGES <= i < NUM_STAGES
                                  for i in out_indices):
            raise ValueError(f'out_indices {out_indices} out of range: iFormer has stages 0..{NUM_STAGES - 1}')
        self.out_indices = tuple(sorted({i % NUM_STAGES for i in out_indices}))
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'frozen_stages must be in -1..{NUM_STAGES}, got {frozen_stages}')
        self.frozen_stages, self.norm_eval, self.out_norm = frozen_stages, norm_eval, out_norm

        # No classifier; stages after the last output are not built (unused parameters
        # would break DDP).
        self.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        self.feature_info = [self.feature_info[i] for i in self.out_indices]
        self.out_channels = tuple(self.embed_dims[i] for i in self.out_indices)
        if out_norm:
            for i in self.out_indices:
                self.add_module(f'norm{i}', nn.LayerNorm(self.embed_dims[i], eps=1e-6))
        self._layer_ids: Optional[Dict[str, int]] = None
        self._freeze_stages()

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` with our safe loader.

        Weights were initialised for training from scratch at construction; other init_cfg
        types go through mmengine's initialisers.
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH")
            self._pretrained_report = load_pretrained(
                self, cfg['checkpoint'], strict=cfg.get('strict', True), use_ema=cfg.get('use_ema', True),
                log=MMLogger.get_current_instance(),
                allowed_missing=[r'^norm\d$', r'^norm\d\.'])  # output norms are new in a dense model
            self._is_init = True
        elif cfg:
            super().init_weights()
        self._freeze_stages()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, C, H, W)`` of any size -> tuple of ``(B, C_i, ceil(H/s_i), ceil(W/s_i))``."""
        maps = self.forward_intermediates(x, self.out_indices, output_fmt='NHWC', intermediates_only=True)
        outs = []
        for i, y in zip(self.out_indices, maps):
            if self.out_norm:
                y = getattr(self, f'norm{i}')(y)
            outs.append(y.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    # ------------------------------------------------------------------ training modes
    def _stage_parts(self, i: int) -> Tuple[list, list]:
        """(modules, parameters) that belong to stage ``i`` (0-based, ``-1`` = stem only)."""
        if i < 0:
            return [self.patch_embed], []
        embed, pos_embed, blocks = self.stage_modules(i)
        mods = [blocks] + ([embed] if i > 0 else [])
        if hasattr(self, f'norm{i}'):
            mods.append(getattr(self, f'norm{i}'))
        return mods, [pos_embed]

    def _freeze_stages(self) -> None:
        for i in range(-1, min(self.frozen_stages, self.num_stages_built)):
            mods, params = self._stage_parts(i)
            for m in mods:
                m.eval()
                params += list(m.parameters())
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

        Ids come from the core's ``group_matcher``: stem 0, then one per block (a stage's
        downsampling and position table share its first block's id); anything else (output
        norms) takes the last id.
        """
        if self._layer_ids is None:
            self._layer_ids = group_parameters(self, self.group_matcher(coarse=False), reverse=True)
        num_layers = sum(self.depths[:self.num_stages_built]) + 2
        name = param_name[len(prefix):] if param_name.startswith(prefix) else None
        if name is None or name not in self._layer_ids or name.startswith('norm'):
            return num_layers - 1, num_layers
        return min(self._layer_ids[name], num_layers - 1), num_layers
