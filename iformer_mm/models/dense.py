"""What every dense (detection / segmentation) backbone of the package shares.

:class:`DenseBackbone` is the base of ``iformer_mm.IFormer`` and ``iformer_mm.TimmBackbone``
(and so of ``MobileIFormer``): the checks of ``out_indices`` / ``frozen_stages``, output norms
``norm{i}``, freezing, ``norm_eval``, ``with_cp``, layer ids for layer-wise lr decay, the
deprecated ``pretrained=`` argument and ``init_cfg=dict(type='Pretrained', ...)`` loading.

A subclass calls :meth:`DenseBackbone.setup_dense` in its ``__init__`` and provides:

* :meth:`stage_parts` — the modules (and loose parameters) of the stem (``-1``) and of stage ``i``;
* :meth:`stage_depths` — blocks per built stage;
* :meth:`layer_id` — the lr-decay layer id of a parameter name (``None``: the last id);
* :meth:`load_weights` — load a checkpoint file through :mod:`iformer_mm.pretrained`.

``pretrained=`` and ``init_cfg`` follow mmdet's and mmseg's own backbones (ResNet, Swin): a path
in ``pretrained`` is the deprecated spelling of ``init_cfg=dict(type='Pretrained',
checkpoint=path)`` (a ``DeprecationWarning``), and giving both is an error. One addition: another
model zoo's URL (``open-mmlab://``, ``torchvision://``...), which mmseg's ``EncoderDecoder`` copies
from its base configs into every backbone, is ignored with a warning: it cannot be weights of
this backbone.
"""
from __future__ import annotations

import copy
import re
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['DenseBackbone', 'resolve_pretrained']

# Model-zoo URLs of other backbones that mmdet/mmseg base configs put in ``pretrained``.
FOREIGN_ZOOS = ('open-mmlab://', 'torchvision://', 'mmcls://', 'mmpretrain://')
_OUT_NORM = re.compile(r'^norm\d+(\.|$)')


def resolve_pretrained(owner: str, pretrained: Optional[str],
                       init_cfg: Optional[Union[dict, list]]) -> Optional[Union[dict, list]]:
    """The ``init_cfg`` a backbone gets from its ``pretrained`` and ``init_cfg`` arguments.

    Raises:
        ValueError: both a checkpoint path and ``init_cfg`` are given (as mmdet's backbones).
        TypeError: ``pretrained`` is neither ``None`` nor a path.
    """
    if pretrained is None:
        return copy.deepcopy(init_cfg)
    if not isinstance(pretrained, str):
        raise TypeError(f'{owner}: pretrained must be a checkpoint path or None, got {pretrained!r}')
    if pretrained.startswith(FOREIGN_ZOOS):
        warnings.warn(f"{owner}: ignoring pretrained={pretrained!r} (another model's weights, usually "
                      'inherited from an mmdet/mmseg base config). Load weights with '
                      "backbone.init_cfg=dict(type='Pretrained', checkpoint=...); set model.pretrained=None "
                      'to silence this.', stacklevel=3)
        return copy.deepcopy(init_cfg)
    if init_cfg is not None:
        raise ValueError(f'{owner}: give either pretrained={pretrained!r} or init_cfg, not both '
                         "(pretrained=PATH is the deprecated spelling of init_cfg=dict(type='Pretrained', "
                         'checkpoint=PATH))')
    warnings.warn(f"{owner}: pretrained=PATH is deprecated; use init_cfg=dict(type='Pretrained', "
                  'checkpoint=PATH)', DeprecationWarning, stacklevel=3)
    return dict(type='Pretrained', checkpoint=pretrained)


class DenseBackbone(BaseModule):
    """The shared half of the package's OpenMMLab backbones (see the module doc)."""

    out_indices: Tuple[int, ...]
    frozen_stages: int
    norm_eval: bool
    with_cp: Union[bool, Sequence[bool]]

    # ------------------------------------------------------------------ set-up
    def setup_dense(self, out_indices: Union[int, Sequence[int]], num_taps: int, frozen_stages: int,
                    norm_eval: bool, with_cp: Union[bool, Sequence[bool]], what: str) -> None:
        """Check and store the options every dense backbone takes.

        Args:
            out_indices: outputs to return; negative indices count from the end.
            num_taps: how many outputs the network has (stages).
            frozen_stages: -1 none; 0 the stem; k >= 1 the stem and the first k stages.
            norm_eval: keep every BatchNorm in eval mode while training.
            with_cp: gradient checkpointing (the subclass applies it).
            what: the network, for error messages.
        """
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(out_indices)
        if not out_indices or any(not isinstance(i, int) or not -num_taps <= i < num_taps for i in out_indices):
            raise ValueError(f'out_indices {out_indices} out of range: {what} has outputs 0..{num_taps - 1}')
        if not -1 <= frozen_stages <= num_taps:
            raise ValueError(f'frozen_stages must be in -1..{num_taps}, got {frozen_stages}')
        self.out_indices = tuple(sorted({i % num_taps for i in out_indices}))
        self.frozen_stages, self.norm_eval, self.with_cp = frozen_stages, norm_eval, with_cp

    def add_out_norms(self, make: Callable[[int], nn.Module]) -> None:
        """Add ``norm{i} = make(i)`` for every output ``i``."""
        for i in self.out_indices:
            if hasattr(self, f'norm{i}'):
                raise ValueError(f'{type(self).__name__} already has a module norm{i}; cannot add output norms')
            self.add_module(f'norm{i}', make(i))

    # ------------------------------------------------------------------ subclass hooks
    def stage_parts(self, i: int) -> Tuple[List[nn.Module], List[nn.Parameter]]:
        """Modules and loose parameters of stage ``i`` (``-1``: the stem), output norm excluded."""
        raise NotImplementedError

    def stage_depths(self) -> List[int]:
        """Blocks per built stage (``max(out_indices) + 1`` stages)."""
        raise NotImplementedError

    def layer_id(self, name: str) -> Optional[int]:
        """Layer id of parameter ``name``: 0 the stem, then one per block; ``None``: the last."""
        raise NotImplementedError

    def load_weights(self, checkpoint: Any, strict: bool = True, use_ema: bool = True) -> Any:
        """Load a checkpoint file (or state dict) through the package's safe loader."""
        raise NotImplementedError

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', checkpoint=...)`` through :meth:`load_weights`
        (optional keys ``strict``, default True, and ``use_ema``, default True); other init_cfg
        types go through mmengine's initialisers."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError("init_cfg=dict(type='Pretrained') needs checkpoint=PATH")
            self._pretrained_report = self.load_weights(
                cfg['checkpoint'], strict=cfg.get('strict', True), use_ema=cfg.get('use_ema', True))
            self._is_init = True
        elif cfg:
            super().init_weights()
        self._freeze_stages()

    # ------------------------------------------------------------------ training modes
    def _freeze_stages(self) -> None:
        for i in range(-1, min(self.frozen_stages, max(self.out_indices) + 1)):
            mods, params = self.stage_parts(i)
            if hasattr(self, f'norm{i}'):
                mods = mods + [getattr(self, f'norm{i}')]
            for m in mods:
                m.eval()
                params = params + list(m.parameters())
            for p in params:
                p.requires_grad = False

    def train(self, mode: bool = True) -> 'DenseBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ lr decay
    def get_layer_depth(self, param_name: str, prefix: str = '') -> Tuple[int, int]:
        """``(layer id, number of layers)`` for layer-wise lr decay (mmpretrain's
        ``LearningRateDecayOptimWrapperConstructor``): stem 0, one id per block (a stage's
        downsampling shares its first block's id), output norms and anything else the last."""
        num_layers = sum(self.stage_depths()) + 2
        if not param_name.startswith(prefix):
            return num_layers - 1, num_layers
        name = param_name[len(prefix):]
        lid = None if _OUT_NORM.match(name) else self.layer_id(name)
        return (num_layers - 1 if lid is None else min(lid, num_layers - 1)), num_layers
