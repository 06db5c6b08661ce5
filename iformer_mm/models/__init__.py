"""Models: the reference iFormer (pure PyTorch + timm layers), its timm registrations and the
OpenMMLab backbone (registered in ``iformer_mm.registry.MODELS`` when mmengine is installed)."""
import importlib.util as _util

from .iformer import ARCH_SETTINGS, InceptionTransformer, resize_pos_embed, resolve_arch
from . import timm_models  # noqa: F401  (registers the timm model names)

__all__ = ['ARCH_SETTINGS', 'InceptionTransformer', 'resize_pos_embed', 'resolve_arch']

if _util.find_spec('mmengine') is not None:
    from .backbone import IFormer  # noqa: F401  (registers iformer_mm.IFormer)
    __all__.append('IFormer')
