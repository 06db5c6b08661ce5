"""timm registration of the MetaFormer baselines timm does not ship: ``identityformer_*``.

IdentityFormer (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024) is PoolFormerV2 with
an identity token mixer: timm's own :class:`~timm.models.metaformer.MetaFormer` builds it, and
the authors' sail-sg checkpoints load through timm's own ``checkpoint_filter_fn``::

    timm.create_model('identityformer_s12', pretrained=True,
                      pretrained_cfg_overlay=dict(file='identityformer_s12.pth'))

RandFormer (a frozen random token-mixing matrix) is deliberately not registered: the matrix is
sized for 14x14 / 7x7 maps, so the model only takes 224x224 inputs and cannot be a dense
backbone; :data:`REFUSED_DENSE` says so and what to use instead.

The module is named like timm's own ``timm.models.metaformer``: timm files models by the last
part of their module name, so ``timm.list_models(module='metaformer')`` lists ``identityformer_*``
with the other MetaFormers.
"""
from __future__ import annotations

from typing import Any, Dict

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.metaformer import GroupNorm1NoBias, MetaFormer, checkpoint_filter_fn
from torch import nn

__all__ = ['IDENTITYFORMER_ARCHS', 'REFUSED_DENSE']

# Authors' settings (sail-sg/metaformer, metaformer_baselines.py): depths, dims, ImageNet-1k top-1.
IDENTITYFORMER_ARCHS = {
    'identityformer_s12': ((2, 2, 6, 2), (64, 128, 320, 512), 74.6),
    'identityformer_s24': ((4, 4, 12, 4), (64, 128, 320, 512), 78.2),
    'identityformer_s36': ((6, 6, 18, 6), (64, 128, 320, 512), 79.3),
    'identityformer_m36': ((6, 6, 18, 6), (96, 192, 384, 768), 80.0),
    'identityformer_m48': ((8, 8, 24, 8), (96, 192, 384, 768), 80.4),
}

# Model-name prefixes that must not become dense backbones, with the reason and the way out.
REFUSED_DENSE = {
    'randformer': (
        "RandFormer's token mixer is a frozen random matrix over a fixed number of tokens "
        '(sized for a 224x224 input: 14x14 and 7x7 maps), so it cannot take the variable, larger '
        'inputs of detection/segmentation. Use identityformer_* (the same network with an '
        'identity mixer) or poolformerv2_* as the baseline instead.'),
}


def _cfg(name: str) -> Dict[str, Any]:
    return {
        'url': f'https://huggingface.co/sail/dl/resolve/main/identityformer/{name}.pth',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'classifier': 'head.fc', 'first_conv': 'stem.conv',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2210.13452', 'paper_name': 'MetaFormer Baselines for Vision',
        'origin_url': 'https://github.com/sail-sg/metaformer',
        'notes': (f'ImageNet-1k top-1 {IDENTITYFORMER_ARCHS[name][2]} (authors)',),
    }


default_cfgs = generate_default_cfgs({f'{name}.sail_in1k': _cfg(name) for name in IDENTITYFORMER_ARCHS})


def _create_identityformer(variant: str, pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    depths, dims, _ = IDENTITYFORMER_ARCHS[variant]
    out_indices = kwargs.pop('out_indices', tuple(range(len(depths))))
    # PoolFormerV2's settings (StarReLU MLP without bias, bias-free GroupNorm(1) / LayerNorm2d,
    # res-scale in the last two stages, linear head) with nn.Identity as the token mixer.
    model_args = dict(depths=depths, dims=dims, token_mixers=nn.Identity,
                      norm_layers=GroupNorm1NoBias, use_mlp_head=False)
    return build_model_with_cfg(
        MetaFormer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **dict(model_args, **kwargs))


@register_model
def identityformer_s12(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _create_identityformer('identityformer_s12', pretrained, **kwargs)


@register_model
def identityformer_s24(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _create_identityformer('identityformer_s24', pretrained, **kwargs)


@register_model
def identityformer_s36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _create_identityformer('identityformer_s36', pretrained, **kwargs)


@register_model
def identityformer_m36(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _create_identityformer('identityformer_m36', pretrained, **kwargs)


@register_model
def identityformer_m48(pretrained: bool = False, **kwargs: Any) -> MetaFormer:
    return _create_identityformer('identityformer_m48', pretrained, **kwargs)
