"""The package's OpenMMLab registry scope, ``iformer_mm``: its models and its hooks.

Children of mmengine's root registries, so ``dict(type='iformer_mm.IFormer')`` and
``dict(type='iformer_mm.RNGStateHook')`` resolve from mmdet's and mmseg's registries alike
(mmengine imports the listed ``locations`` when it meets the scope prefix). Importing this
module does not import mmdet or mmseg.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='iformer_mm',
                  locations=['iformer_mm.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='iformer_mm',
                 locations=['iformer_mm.engine.resilience', 'iformer_mm.engine.progress',
                            'iformer_mm.engine.amp'])

__all__ = ['HOOKS', 'MODELS']
