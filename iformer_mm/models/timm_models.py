"""timm registration: ``iformer_{small,base,large}`` and their ``_384`` fine-tuned variants.

``timm.create_model('iformer_small', pretrained=True,
pretrained_cfg_overlay=dict(file='iformer_small.pth'))`` loads the authors' checkpoint strictly;
:func:`checkpoint_filter_fn` also takes timm/iformer_mm training checkpoints and
mmdet/mmseg checkpoints, and resizes position tables (224 <-> 384). Weights are fetched by
URL only (timm loads URLs with ``weights_only=True``).
"""
from __future__ import annotations

from typing import Any, Dict

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..pretrained import (CheckpointError, LoadReport, adapt_state_dict, explain_download_failure,
                          extract_state_dict, logger)
from .iformer import InceptionTransformer

__all__ = ['checkpoint_filter_fn', 'MODEL_ARCHS']

# timm name -> (arch, img_size)
MODEL_ARCHS = {
    'iformer_small': ('small', 224), 'iformer_base': ('base', 224), 'iformer_large': ('large', 224),
    'iformer_small_384': ('small', 384), 'iformer_base_384': ('base', 384),
    'iformer_large_384': ('large', 384),
}
_WEIGHTS_URL = 'https://huggingface.co/sail/dl2/resolve/main/iformer/{}.pth'
# Authors' ImageNet-1k top-1 (paper, Table 1 / 384 fine-tune).
_TOP1 = {'iformer_small': 83.4, 'iformer_base': 84.6, 'iformer_large': 84.8,
         'iformer_small_384': 84.6, 'iformer_base_384': 85.7, 'iformer_large_384': 85.8}


def _cfg(name: str, size: int) -> Dict[str, Any]:
    return {
        'url': _WEIGHTS_URL.format(name),
        'num_classes': 1000,
        'input_size': (3, size, size),
        'pool_size': (size // 32, size // 32),
        'crop_pct': 0.9 if size == 224 else 1.0,
        'crop_mode': 'center',
        'interpolation': 'bicubic',
        'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj1',
        'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2205.12956',
        'paper_name': 'Inception Transformer',
        'origin_url': 'https://github.com/sail-sg/iFormer',
        'notes': (f'ImageNet-1k top-1 {_TOP1[name]} (authors)',),
    }


default_cfgs = generate_default_cfgs({
    f'{name}.sail_in1k': _cfg(name, size) for name, (_, size) in MODEL_ARCHS.items()})


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: InceptionTransformer) -> Dict[str, torch.Tensor]:
    """Map any supported checkpoint onto ``model``'s keys (see :mod:`iformer_mm.pretrained`).

    Position tables are resized to the model's ``img_size``. Classifier keys pass through
    (timm drops them itself when ``num_classes`` differs from the pretrained config).
    """
    sd, notes = extract_state_dict(state_dict)
    report = LoadReport(source='pretrained', notes=notes)
    # A classifier of another size is timm's to handle (it drops it when num_classes differs).
    out = adapt_state_dict(sd, model, report, reinit_head=True)
    logger.info(report.summary())
    if report.unexpected:
        raise CheckpointError(f'checkpoint has keys this model does not: {report.unexpected[:8]}; '
                              'is it an iFormer checkpoint of this variant?')
    return out


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    arch, size = MODEL_ARCHS[variant]
    kwargs.setdefault('img_size', size)
    local = (kwargs.get('pretrained_cfg_overlay') or {}).get('file')
    with explain_download_failure(variant, _WEIGHTS_URL.format(variant), local_file=local):
        return build_model_with_cfg(
            InceptionTransformer, variant, pretrained, arch=arch,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
            **kwargs)


@register_model
def iformer_small(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-S, 224 (19.9 M params, 4.8 GFLOPs, 83.4 top-1)."""
    return _create('iformer_small', pretrained, **kwargs)


@register_model
def iformer_base(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-B, 224 (47.9 M params, 9.4 GFLOPs, 84.6 top-1)."""
    return _create('iformer_base', pretrained, **kwargs)


@register_model
def iformer_large(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-L, 224 (86.6 M params, 14.0 GFLOPs, 84.8 top-1)."""
    return _create('iformer_large', pretrained, **kwargs)


@register_model
def iformer_small_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-S fine-tuned at 384 (84.6 top-1)."""
    return _create('iformer_small_384', pretrained, **kwargs)


@register_model
def iformer_base_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-B fine-tuned at 384 (85.7 top-1)."""
    return _create('iformer_base_384', pretrained, **kwargs)


@register_model
def iformer_large_384(pretrained: bool = False, **kwargs: Any) -> InceptionTransformer:
    """iFormer-L fine-tuned at 384 (85.8 top-1)."""
    return _create('iformer_large_384', pretrained, **kwargs)
