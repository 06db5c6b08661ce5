"""The package's own OpenMMLab registry scope, ``iformer_mm``.

A child of mmengine's root ``MODELS``, so ``dict(type='iformer_mm.IFormer')`` resolves from
mmdet's and mmseg's registries alike (mmengine imports ``iformer_mm.registry`` when it meets
the scope prefix). Importing this module does not import mmdet or mmseg.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='iformer_mm',
                  locations=['iformer_mm.models.backbone'])

__all__ = ['MODELS']
