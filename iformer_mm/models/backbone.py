"""OpenMMLab backbone ``iformer_mm.IFormer`` for MMDetection 3.x / MMSegmentation 1.x.

A thin adapter over :class:`~iformer_mm.models.iformer.InceptionTransformer`: the same modules
and parameter names (classification checkpoints load with no renaming), the core's
``forward_intermediates`` and ``prune_intermediate_layers``, and what dense heads and mm
configs expect on top — a tuple of NCHW maps, output LayerNorms, and from
:class:`~iformer_mm.models.dense.DenseBackbone` ``frozen_stages``, ``norm_eval``,
``init_cfg=dict(type='Pretrained', ...)`` and ``get_layer_depth`` for layer-wise lr decay
(layer ids from the core's ``group_matcher``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import MMLogger
from timm.models import group_parameters
from torch import nn

from ..pretrained import load_pretrained
from ..registry import MODELS
from .dense import DenseBackbone, resolve_pretrained
from .iformer import NUM_STAGES, InceptionTransformer


@MODELS.register_module()
class IFormer(InceptionTransformer, DenseBackbone):
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
        pretrained: deprecated (as mmdet's backbones): a path is ``init_cfg`` Pretrained (not
            both); another model zoo's URL (from mmseg's base configs) is ignored with a warning
            (:func:`iformer_mm.models.dense.resolve_pretrained`).
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
        self.init_cfg = resolve_pretrained('IFormer', pretrained, init_cfg)
        self.setup_dense(out_indices, NUM_STAGES, frozen_stages, norm_eval, with_cp, 'iFormer')
        self.out_norm = out_norm

        # No classifier; stages after the last output are not built (unused parameters
        # would break DDP).
        self.prune_intermediate_layers(self.out_indices, prune_norm=True, prune_head=True)
        self.num_stages_built = max(self.out_indices) + 1
        self.feature_info = [self.feature_info[i] for i in self.out_indices]
        self.out_channels = tuple(self.embed_dims[i] for i in self.out_indices)
        if out_norm:
            self.add_out_norms(lambda i: nn.LayerNorm(self.embed_dims[i], eps=1e-6))
        self._layer_ids: Optional[Dict[str, int]] = None
        self._freeze_stages()

    def load_weights(self, checkpoint: Any, strict: bool = True, use_ema: bool = True) -> Any:
        """The authors' ``.pth``, a timm / iformer_mm classification checkpoint or an mmdet/mmseg
        checkpoint (weights were initialised for training from scratch at construction)."""
        return load_pretrained(self, checkpoint, strict=strict, use_ema=use_ema, log=MMLogger.get_current_instance(),
                               allowed_missing=[r'^norm\d$', r'^norm\d\.'])  # output norms are new in a dense model

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, C, H, W)`` of any size -> tuple of ``(B, C_i, ceil(H/s_i), ceil(W/s_i))``."""
        maps = self.forward_intermediates(x, self.out_indices, output_fmt='NHWC', intermediates_only=True)
        outs = []
        for i, y in zip(self.out_indices, maps):
            if self.out_norm:
                y = getattr(self, f'norm{i}')(y)
            outs.append(y.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)

    # ------------------------------------------------------------------ DenseBackbone hooks
    def stage_parts(self, i: int) -> Tuple[List[nn.Module], List[nn.Parameter]]:
        if i < 0:
            return [self.patch_embed], []
        embed, pos_embed, blocks = self.stage_modules(i)
        return [blocks] + ([embed] if i > 0 else []), [pos_embed]

    def stage_depths(self) -> List[int]:
        return list(self.depths[:self.num_stages_built])

    def layer_id(self, name: str) -> Optional[int]:
        """From the core's ``group_matcher``: stem 0, then one per block (a stage's downsampling
        and position table share its first block's id)."""
        if self._layer_ids is None:
            self._layer_ids = group_parameters(self, self.group_matcher(coarse=False), reverse=True)
        return self._layer_ids.get(name)
