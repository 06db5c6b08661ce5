"""Layer-wise learning-rate decay for detectors and segmentors, on mmpretrain's constructor.

mmpretrain's ``LearningRateDecayOptimWrapperConstructor`` gives each parameter the lr
``base_lr * layer_decay_rate ** (max_depth - depth - 1)``, with ``depth`` from the model's
``get_layer_depth(name)``. mmpretrain's classifiers have that method; mmdet's detectors and
mmseg's segmentors do not, so used directly it stops with ``NotImplementedError``.
:class:`LayerDecayOptimWrapperConstructor` only supplies it, the way mmpretrain's
``ImageClassifier`` does: the backbone's ``get_layer_depth`` with the ``backbone.`` prefix
(``iformer_mm.IFormer``, ``iformer_mm.TimmBackbone``). Neck and heads are deeper than the
last block and keep the base lr. Everything else (weight-decay rules, ``custom_keys``, the
log of every layer's lr) is mmpretrain's.

Config (mmpretrain must be installed; see configs/detection/README.md)::

    optim_wrapper = dict(
        constructor='iformer_mm.LayerDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.9, norm_decay_mult=0.0))
"""
from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional

from torch import nn

from ..registry import OPTIM_WRAPPER_CONSTRUCTORS

try:
    from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor
except ImportError as e:  # the message names the fix; mmpretrain is optional for everything else
    raise ImportError(
        "iformer_mm.LayerDecayOptimWrapperConstructor builds on mmpretrain's "
        'LearningRateDecayOptimWrapperConstructor, and mmpretrain is not importable '
        f'({e}). Fix: pip install --no-deps mmpretrain==1.2.0 importlib-metadata modelindex '
        'einops mat4py (or bash tools/install.sh --tests).') from e

__all__ = ['LayerDecayOptimWrapperConstructor', 'backbone_layer_depth']


def backbone_layer_depth(model: nn.Module) -> Callable[[str], Any]:
    """``get_layer_depth(name)`` for a whole detector/segmentor, from its backbone's.

    Raises:
        NotImplementedError: the model has no ``get_layer_depth`` and neither has its backbone.
    """
    if hasattr(model, 'get_layer_depth'):
        return model.get_layer_depth
    backbone = getattr(model, 'backbone', None)
    if not hasattr(backbone, 'get_layer_depth'):
        raise NotImplementedError(
            f'layer-wise lr decay needs get_layer_depth on the model or its backbone; '
            f'{type(model).__name__} with backbone {type(backbone).__name__} has neither '
            '(iformer_mm.IFormer and iformer_mm.TimmBackbone have it).')
    return functools.partial(backbone.get_layer_depth, prefix='backbone.')


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-decay constructor for any model whose backbone has ``get_layer_depth``.

    ``paramwise_cfg`` is mmpretrain's: ``layer_decay_rate``, ``norm_decay_mult``,
    ``bias_decay_mult``, ``flat_decay_mult``, ``custom_keys`` (``decay_mult`` only).
    """

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   get_layer_depth: Optional[Callable] = None, **kwargs: Any) -> None:
        if get_layer_depth is None:  # the top-level call: mmengine passes the whole model
            get_layer_depth = backbone_layer_depth(module)
        super().add_params(params, module, prefix=prefix, get_layer_depth=get_layer_depth, **kwargs)
