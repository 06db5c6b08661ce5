"""iformer_mm: the Inception Transformer (iFormer) for timm, MMDetection 3.x and MMSegmentation 1.x.

``import iformer_mm`` registers:

* the timm models ``iformer_{small,base,large}[_384]``;
* the OpenMMLab backbone ``iformer_mm.IFormer`` when mmengine is installed (mmdet/mmseg are
  never imported here).

Layout: :mod:`.models` (the reference model, timm and mm adapters), :mod:`.ops` (fast kernels
beside the modules they stand in for), :mod:`.pretrained` (the one safe checkpoint loader),
:mod:`.registry`, :mod:`.engine` (runner helpers), :mod:`.datasets` (registered datasets),
:mod:`.datagen` (dataset generators).
"""
from .models import ARCH_SETTINGS, InceptionTransformer, resolve_arch
from .pretrained import CheckpointError, LoadReport, load_checkpoint_file, load_pretrained
from .version import __version__

__all__ = ['ARCH_SETTINGS', 'CheckpointError', 'InceptionTransformer', 'LoadReport',
           'load_checkpoint_file', 'load_pretrained', 'resolve_arch', '__version__']

try:
    from .models import IFormer  # noqa: F401
    __all__.append('IFormer')
except ImportError:  # mmengine not installed: timm and plain PyTorch use only
    pass
