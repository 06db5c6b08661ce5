"""Pure-PyTorch iFormer (no OpenMMLab or timm import here)."""
from .iformer import ARCH_SETTINGS, InceptionTransformer, resize_pos_embed, resolve_arch

__all__ = ['ARCH_SETTINGS', 'InceptionTransformer', 'resize_pos_embed', 'resolve_arch']
