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

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.logging import MMLogger
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from timm.models.iformer import SHMA, SHMABlock
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..pretrained import load_mobile_iformer
from ..registry import MODELS

__all__ = ['MobileIFormer', 'AUTHORS_WINDOW_BLOCKS', 'MOBILE_IFORMER_ARCHS']

NUM_STAGES = 4
WINDOW_STAGE = 2  # stage 3 (0-based 2), at stride 16
#: arch -> timm model name.
MOBILE_IFORMER_ARCHS = {a: f'iformer_{a}' for a in ('t', 's', 'm', 'l', 'l2', 'h')}
#: The authors' dense models: stage-3 block indices (``stages.2.blocks.<j>``) of the attention
#: block whose input is split into windows and of the one after whose attention they merge.
#: M windows all 4 attention triples, L 7 of 8, L2 10 of 11. T/S/H have no dense model.
AUTHORS_WINDOW_BLOCKS = {'m': (10, 19), 'l': (9, 27), 'l2': (13, 40)}
AUTHORS_WINDOW_SIZE = 16


@MODELS.register_module()
class MobileIFormer(BaseModule):
    """Mobile iFormer (ICLR 2025) backbone returning NCHW maps at strides 4, 8, 16, 32.

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
        norm_eval: keep every BatchNorm in eval mode while training (the authors' recipe).
        norm_cfg: ``dict(type='BN')`` or ``dict(type='SyncBN')`` (multi-GPU runs that train
            BN statistics, i.e. with ``norm_eval=False``).
        drop_path_rate: stochastic depth, per stage as timm's model (the authors' dense
            models use 0).
        with_cp: gradient checkpointing of every block (saves memory, costs a recompute).
        out_norm: LayerNorm2d on each returned map (``norm{i}``); off as the authors.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads, strictly and with
            ``weights_only=True``, the authors' classification files (plain or distilled),
            their det/seg checkpoints, timm files or this backbone's checkpoints; see
            :func:`iformer_mm.pretrained.load_mobile_iformer`. Optional keys ``strict``
            (default True) and ``use_ema`` (default True: ``model_ema`` when present, as timm).
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
            out_norm: bool = False,
            init_cfg: Optional[Union[dict, list]] = None,
    ) -> None:
        super().__init__(init_cfg=copy.deepcopy(init_cfg))
        if arch not in MOBILE_IFORMER_ARCHS:
            raise ValueError(f'arch {arch!r} is not a Mobile iFormer: use one of {list(MOBILE_IFORMER_ARCHS)}')
        self.arch = arch
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        if not out_indices or any(not isinstance(i, int) or not -NUM_STAGES <= i < NUM_STAGES
                                  for i in out_indices):
            raise ValueError(f'out_indices {tuple(out_indices)} out of range: Mobile iFormer has stages 0..3')
        self.out_indices = tuple(sorted({i % NUM_STAGES for i in out_indices}))
        if not -1 <= frozen_stages <= NUM_STAGES:
            raise ValueError(f'frozen_stages must be in -1..{NUM_STAGES}, got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        # timm's model, without classifier; its stem and stages become ours (same names).
        net = timm.create_model(MOBILE_IFORMER_ARCHS[arch], pretrained=False, num_classes=0,
                                in_chans=in_channels, drop_path_rate=drop_path_rate)
        self.num_stages_built = max(self.out_indices) + 1
        self.stem = net.stem
        self.stages = nn.Sequential(*list(net.stages)[:self.num_stages_built])
        self.embed_dims = tuple(f['num_chs'] for f in net.feature_info)
        self.depths = tuple(len(s.blocks) for s in net.stages)
        self.out_channels = tuple(self.embed_dims[i] for i in self.out_indices)
        self.feature_info = [net.feature_info[i] for i in self.out_indices]
        self.window_size, self.window_blocks = self._resolve_windows(window_size, window_blocks)

        self.out_norm = out_norm
        if out_norm:
            for i in self.out_indices:
                self.add_module(f'norm{i}', LayerNorm2d(self.embed_dims[i]))
        norm_type = (norm_cfg or {}).get('type', 'BN')
        if norm_type in ('SyncBN', 'MMSyncBN'):
            nn.SyncBatchNorm.convert_sync_batchnorm(self)
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
        if WINDOW_STAGE >= self.num_stages_built:
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

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` with the safe loader.

        Other ``init_cfg`` types go through mmengine's initialisers; without one the weights
        keep timm's initialisation (training from scratch).
        """
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH")
            self._pretrained_report = load_mobile_iformer(
                self, cfg['checkpoint'], strict=cfg.get('strict', True), use_ema=cfg.get('use_ema', True),
                allowed_missing=[r'^norm\d\.'],  # output norms are new in a dense model
                log=MMLogger.get_current_instance())
            self._is_init = True
        elif cfg:
            super().init_weights()
        self._freeze_stages()

    # ------------------------------------------------------------------ forward
    def _run(self, blocks: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def _forward_windowed(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Stage 3 of the authors' dense models: blocks ``split..merge`` run per window."""
        split, merge = self.window_blocks
        ws = self.window_size
        blocks = list(stage.blocks)
        x = self._run(blocks[:split], x)
        H, W = x.shape[-2:]
        x = F.pad(x, (0, (ws - W % ws) % ws, 0, (ws - H % ws) % ws))
        Hp, Wp = x.shape[-2:]
        # (B, C, Hp, Wp) -> (B * nWin, C, ws, ws), batch-major then row-major (timm's helpers)
        x = self._run(blocks[split:merge + 1], SHMA._window_partition(x, ws))
        x = SHMA._window_reverse(x, ws, Hp, Wp)[:, :, :H, :W].contiguous()
        return self._run(blocks[merge + 1:], x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, C, H, W)`` of any size -> tuple of ``(B, C_i, ~H/s_i, ~W/s_i)``, s = 4, 8, 16, 32."""
        if x.ndim != 4:
            raise ValueError(f'MobileIFormer expects a (B, C, H, W) image batch, got shape {tuple(x.shape)}')
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            if i == WINDOW_STAGE and self.window_blocks is not None:
                x = self._forward_windowed(stage, stage.downsample(x))
            else:
                x = self._run(stage.blocks, stage.downsample(x))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x) if self.out_norm else x)
        return tuple(outs)

    # ------------------------------------------------------------------ training modes
    def _frozen_modules(self) -> List[nn.Module]:
        mods: List[nn.Module] = [self.stem] if self.frozen_stages >= 0 else []
        for i in range(min(self.frozen_stages, self.num_stages_built)):
            mods.append(self.stages[i])
            if hasattr(self, f'norm{i}'):
                mods.append(getattr(self, f'norm{i}'))
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'MobileIFormer':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ lr decay
    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """Layer id for layer-wise lr decay: stem 0, block j of stage i its global index + 1
        (a stage's downsampling shares its first block's id), anything else the last id."""
        num_layers = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):].split('.')
        if name[0] == 'stem':
            return 0, num_layers
        if name[0] == 'stages':
            i = int(name[1])
            j = int(name[3]) if name[2] == 'blocks' else 0
            return sum(self.depths[:i]) + j + 1, num_layers
        return num_layers - 1, num_layers
