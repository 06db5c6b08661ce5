"""OpenMMLab backbone ``iformer_mm.MobileIFormer``: the Mobile iFormer of ICLR 2025 for dense tasks.

"iFormer: Integrating ConvNet and Transformer for Mobile Application" (Chuanyang Zheng, ICLR
2025) is not the Inception Transformer of the rest of this package. timm (>= 1.0.30) ships its
classification models as ``iformer_t/s/m/l/l2/h``; this backbone is built from those very
modules (same parameter names, so timm files load as they are) and adds what the authors'
detection/segmentation models do differently:

* **Windowed stage 3.** The authors' dense M/L/L2 split the stride-16 map into 16x16 windows at
  the input of the first stage-3 attention block and merge them only after the attention of a
  later one. Everything in between (3x3 conv position encodings, FFNs, attention) runs per
  window on the map zero-padded (right/bottom) to multiples of 16, with no mask; the padding
  is not re-zeroed, so padded positions evolve and act as keys/values. This changes the
  outputs themselves, so reproducing their numbers needs it (``window_size=None`` gives
  timm's global model).
* **BN frozen, raw outputs.** ``norm_eval=True`` by default (the authors keep every BN in eval
  mode while training); the four stage outputs are returned without output norms.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import MMLogger
from timm.models import checkpoint_seq
from timm.models.iformer import SHMA, SHMABlock
from torch import nn

from ..pretrained import LoadReport, load_mobile_iformer
from ..registry import MODELS
from .timm_backbone import TimmBackbone

__all__ = ['MobileIFormer', 'AUTHORS_WINDOW_BLOCKS', 'MOBILE_IFORMER_ARCHS']

WINDOW_STAGE = 2  # stage 3 (0-based 2), at stride 16
#: arch -> timm model name.
MOBILE_IFORMER_ARCHS = {a: f'iformer_{a}' for a in ('t', 's', 'm', 'l', 'l2', 'h')}
#: The authors' dense models: stage-3 block indices (``stages.2.blocks.<j>``) of the attention
#: block whose input is split into windows and of the one after whose attention they merge.
#: M windows all 4 attention triples, L 7 of 8, L2 10 of 11. T/S/H have no dense model.
AUTHORS_WINDOW_BLOCKS = {'m': (10, 19), 'l': (9, 27), 'l2': (13, 40)}
AUTHORS_WINDOW_SIZE = 16


@MODELS.register_module()
class MobileIFormer(TimmBackbone):
    """Mobile iFormer (ICLR 2025) backbone returning NCHW maps at strides 4, 8, 16, 32.

    A :class:`~iformer_mm.models.timm_backbone.TimmBackbone` over timm's ``iformer_<arch>``
    (``frozen_stages``, ``norm_eval``, ``get_layer_depth``, output norms and loading come from
    there) with the authors' windowed stage 3 and their defaults.

    Args:
        arch: ``'t' | 's' | 'm' | 'l' | 'l2' | 'h'`` (timm's ``iformer_<arch>``).
        in_channels: input channels.
        out_indices: stages to return (0-3). Stages after the last one are not built.
        window_size: stage-3 window size. ``'auto'`` (default): 16 for M/L/L2, exactly the
            authors' dense models, and global attention for T/S/H (the authors have no dense
            model of those). ``None``: global attention (timm's classification model).
        window_blocks: ``(split, merge)`` stage-3 block indices, both attention (SHMA) blocks:
            windows start at the input of ``split`` and end after the attention of ``merge``.
            ``None``: the authors' positions (M/L/L2; required for T/S/H with windows).
        frozen_stages: -1 none; 0 the stem; k >= 1 the stem and stages 1..k (weights frozen,
            modules kept in eval mode).
        norm_eval: keep every BatchNorm in eval mode while training (default, the authors'
            recipe).
        norm_cfg: ``dict(type='BN')`` (default) or ``dict(type='SyncBN')`` for multi-GPU runs
            that train BN statistics (``norm_eval=False``); tools/train.py turns SyncBN into
            BN on CPU.
        drop_path_rate: stochastic depth, per stage as timm's model (the authors' dense
            models use 0).
        with_cp: gradient checkpointing of the blocks (saves memory, costs a recompute).
        out_norm: ``None`` (default, raw maps as the authors), ``'ln'`` or ``'gn'``.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads, strictly and with
            ``weights_only=True``, the authors' classification files (plain or distilled,
            ``Namespace`` and NumPy scalars allowed), their det/seg checkpoints, timm files or
            this backbone's checkpoints. Optional keys ``strict`` (default True) and
            ``use_ema`` (default True: ``model_ema`` when present, as timm).
    """

    def __init__(
            self,
            arch: str = 'm',
            in_channels: int = 3,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            window_size: Union[str, int, None] = 'auto',
            window_blocks: Optional[Sequence[int]] = None,
            frozen_stages: int = -1,
            norm_eval: bool = True,
            norm_cfg: Optional[Dict[str, Any]] = None,
            drop_path_rate: float = 0.0,
            with_cp: bool = False,
            out_norm: Optional[str] = None,
            init_cfg: Optional[Union[dict, list]] = None,
    ) -> None:
        if arch not in MOBILE_IFORMER_ARCHS:
            raise ValueError(f'arch {arch!r} is not a Mobile iFormer: use one of {list(MOBILE_IFORMER_ARCHS)} '
                             "(the Inception Transformer's small/base/large is iformer_mm.IFormer)")
        super().__init__(MOBILE_IFORMER_ARCHS[arch], out_indices=out_indices, out_norm=out_norm,
                         frozen_stages=frozen_stages, norm_eval=norm_eval, drop_path_rate=drop_path_rate,
                         with_cp=with_cp, in_channels=in_channels, init_cfg=init_cfg)
        self.arch = arch
        # the authors' distilled files (the recommended dense init) add a second classifier:
        # part of the full model by design, so it is reported as dropped, not unexpected
        self.full_shapes.update({k.replace('head.head.', 'head.head_dist.', 1): v
                                 for k, v in self.full_shapes.items() if k.startswith('head.head.')})
        self.depths = tuple(len(s.blocks) for s in self.stages)
        self.window_size, self.window_blocks = self._resolve_windows(window_size, window_blocks)
        norm_type = (norm_cfg or {}).get('type', 'BN')
        if norm_type in ('SyncBN', 'MMSyncBN'):
            nn.SyncBatchNorm.convert_sync_batchnorm(self)  # in place: the modules are shared with timm's model
        elif norm_type not in ('BN', 'BN2d'):
            raise ValueError(f"norm_cfg type {norm_type!r} not supported: use 'BN' or 'SyncBN'")
        self._freeze_stages()

    def _resolve_windows(self, window_size: Union[str, int, None],
                         window_blocks: Optional[Sequence[int]]) -> Tuple[Optional[int], Optional[Tuple[int, int]]]:
        """Check the window settings against the stage-3 blocks; name the valid choices if wrong."""
        if window_size == 'auto':
            window_size = AUTHORS_WINDOW_SIZE if self.arch in AUTHORS_WINDOW_BLOCKS else None
        if window_size is None:
            return None, None
        if not isinstance(window_size, int) or window_size <= 0:
            raise ValueError(f"window_size must be a positive int, None or 'auto', got {window_size!r}")
        if WINDOW_STAGE >= len(self.stages):
            return window_size, None  # stage 3 is not built: nothing to window
        attn = [j for j, b in enumerate(self.stages[WINDOW_STAGE].blocks) if isinstance(b, SHMABlock)]
        if window_blocks is None:
            if self.arch not in AUTHORS_WINDOW_BLOCKS:
                raise ValueError(
                    f'arch {self.arch!r} has no authors\' dense model, so windows need explicit '
                    f'window_blocks=(split, merge) among its stage-3 attention blocks {attn}, '
                    'or window_size=None for global attention')
            window_blocks = AUTHORS_WINDOW_BLOCKS[self.arch]
        split, merge = window_blocks
        if split not in attn or merge not in attn or split > merge:
            raise ValueError(
                f'window_blocks {tuple(window_blocks)} must be two stage-3 attention blocks '
                f'(split <= merge) of {self.arch!r}, i.e. among {attn}')
        return window_size, (split, merge)

    def load_weights(self, checkpoint: Any, strict: bool = True, use_ema: bool = True) -> LoadReport:
        """The adapter's loader, the authors' ``Namespace`` / NumPy scalars allowed (:func:`load_mobile_iformer`)."""
        return load_mobile_iformer(self, checkpoint, strict=strict, use_ema=use_ema,
                                   allowed_missing=[r'^norm\d+\.'], log=MMLogger.get_current_instance())

    # ------------------------------------------------------------------ forward
    def _run(self, stage: nn.Module, blocks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        if stage.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting():
            return checkpoint_seq(nn.Sequential(*blocks), x)
        for block in blocks:
            x = block(x)
        return x

    def _forward_windowed(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Stage 3 of the authors' dense models: blocks ``split..merge`` run per window."""
        split, merge = self.window_blocks
        ws = self.window_size
        blocks = list(stage.blocks)
        x = self._run(stage, blocks[:split], stage.downsample(x))
        H, W = x.shape[-2:]
        x = F.pad(x, (0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws))
        Hp, Wp = x.shape[-2:]
        # (B, C, Hp, Wp) -> (B * nWin, C, ws, ws), batch-major then row-major (timm's helpers)
        x = self._run(stage, blocks[split:merge + 1], SHMA._window_partition(x, ws))
        x = SHMA._window_reverse(x, ws, Hp, Wp)[:, :, :H, :W].contiguous()
        return self._run(stage, blocks[merge + 1:], x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, C, H, W)`` of any size -> tuple of ``(B, C_i, ~H/s_i, ~W/s_i)``, s = 4, 8, 16, 32."""
        if self.window_blocks is None:
            return super().forward(x)  # timm's forward_intermediates
        if x.ndim != 4:
            raise ValueError(f'MobileIFormer expects a (B, C, H, W) batch, got shape {tuple(x.shape)}')
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = self._forward_windowed(stage, x) if i == WINDOW_STAGE else stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x) if self.out_norm else x)
        return tuple(outs)
