"""The package's OpenMMLab registry scope, ``iformer_mm``: its models, its hooks and its
optim wrapper constructor.

Children of mmengine's root registries, so ``dict(type='iformer_mm.IFormer')`` and
``dict(type='iformer_mm.RNGStateHook')`` resolve from mmdet's and mmseg's registries alike
(mmengine imports the listed ``locations`` when it meets the scope prefix). Importing this
module does not import mmdet or mmseg.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='iformer_mm',
                  locations=['iformer_mm.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='iformer_mm',
                 locations=['iformer_mm.engine.resilience', 'iformer_mm.engine.progress',
                            'iformer_mm.engine.amp'])

# Imported only when a config names one (it needs mmpretrain, an optional dependency).
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optim wrapper constructor', parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
                                      scope='iformer_mm', locations=['iformer_mm.engine.layer_decay'])

__all__ = ['HOOKS', 'MODELS', 'OPTIM_WRAPPER_CONSTRUCTORS']
