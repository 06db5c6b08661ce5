"""iformer_mm: the Inception Transformer (iFormer) for timm, MMDetection 3.x and MMSegmentation 1.x.

``import iformer_mm`` registers, for whatever is installed:

* the OpenMMLab backbone ``iformer_mm.IFormer`` (needs mmengine + mmcv; never imports mmdet/mmseg);
* the timm models ``iformer_{small,base,large}[_384]`` and ``identityformer_*`` (needs timm);
* the OpenMMLab backbone ``iformer_mm.TimmBackbone`` over any timm model with
  ``forward_intermediates`` (needs mmengine and timm);
* the OpenMMLab backbone ``iformer_mm.MobileIFormer`` of the *other* iFormer, the mobile
  network of ICLR 2025 (timm's ``iformer_t..h``, with the authors' windowed dense stage 3;
  needs mmengine and timm >= 1.0.30).

The core model (:class:`InceptionTransformer`) and the checkpoint loader need only torch.
"""
import importlib.util as _util

from .pretrained import CheckpointError, LoadReport, load_checkpoint_file, load_pretrained
from .models import ARCH_SETTINGS, InceptionTransformer, resolve_arch
from .version import __version__

__all__ = ['ARCH_SETTINGS', 'CheckpointError', 'InceptionTransformer', 'LoadReport',
           'load_checkpoint_file', 'load_pretrained', 'resolve_arch', '__version__']

if _util.find_spec('mmengine') is not None:
    from .models.backbone import IFormer  # noqa: F401  (registers iformer_mm.IFormer)
    __all__.append('IFormer')

if _util.find_spec('timm') is not None:
    from .models import metaformer, timm_models  # noqa: F401  (register timm model names)
    if _util.find_spec('mmengine') is not None:
        from .models.timm_backbone import TimmBackbone  # noqa: F401  (registers iformer_mm.TimmBackbone)
        __all__.append('TimmBackbone')
        if _util.find_spec('timm.models.iformer') is not None:  # timm >= 1.0.30
            from .models.mobile_iformer import MobileIFormer  # noqa: F401  (registers iformer_mm.MobileIFormer)
            __all__.append('MobileIFormer')
