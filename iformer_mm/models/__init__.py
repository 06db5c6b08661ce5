"""Models: the reference iFormer (PyTorch + timm layers) and its timm registrations, the
IdentityFormer timm registrations, and the OpenMMLab backbones (registered in
``iformer_mm.registry.MODELS`` when mmengine is installed)."""
import importlib.util as _util

from . import metaformer, timm_models  # noqa: F401  (register the timm model names)
from .iformer import ARCH_SETTINGS, InceptionTransformer, resize_pos_embed, resolve_arch

__all__ = ['ARCH_SETTINGS', 'InceptionTransformer', 'resize_pos_embed', 'resolve_arch']

if _util.find_spec('mmengine') is not None:
    from .backbone import IFormer  # noqa: F401
    from .mobile_iformer import MobileIFormer  # noqa: F401
    from .timm_backbone import TimmBackbone  # noqa: F401
    __all__ += ['IFormer', 'MobileIFormer', 'TimmBackbone']
