"""iformer_mm: the Inception Transformer (iFormer) for timm, MMDetection 3.x and MMSegmentation 1.x,
with the backbones its users compare it with.

``import iformer_mm`` registers:

* the timm models ``iformer_{small,base,large}[_384]`` and ``identityformer_*``;
* when mmengine is installed (mmdet/mmseg are never imported here), the OpenMMLab backbones
  ``iformer_mm.IFormer``, ``iformer_mm.TimmBackbone`` (any timm model with
  ``forward_intermediates``: CAFormer, ConvFormer, PoolFormer v1/v2, IdentityFormer, ...) and
  ``iformer_mm.MobileIFormer`` (the ICLR 2025 mobile iFormer's dense models).

and, when mmengine is installed, makes mmengine read checkpoint files and model-zoo URLs safely
on every torch: tensors plus the training-state classes mmengine writes, nothing else
(:func:`iformer_mm.engine.trusted_runs.load_from_local_safely` and ``load_from_url_safely``;
what this means for other checkpoints read in the same process: docs/reliability.md).

Layout: :mod:`.models` (the reference model, timm and mm adapters), :mod:`.ops` (fast kernels
beside the modules they stand in for), :mod:`.pretrained` (the one safe checkpoint loader),
:mod:`.registry`, :mod:`.build` (the one config -> model builder), :mod:`.cli` (the one tool
entry), :mod:`.engine` (runner helpers and checks), :mod:`.datasets` (registered datasets),
:mod:`.datagen` (dataset generators), :mod:`.analysis` and :mod:`.classification` (the tools' logic).
"""
import sys

from .version import __version__


def _running_the_stack_check() -> bool:
    """``python -m iformer_mm.env`` / ``tools/misc/check_env.py`` must report a broken torch, timm
    or torchvision, not die importing it."""
    argv = list(getattr(sys, 'orig_argv', ()))
    return (any(a == '-m' and b == 'iformer_mm.env' for a, b in zip(argv, argv[1:]))
            or (bool(sys.argv) and sys.argv[0].endswith('check_env.py')))


try:
    from .models import ARCH_SETTINGS, InceptionTransformer, resolve_arch
    from .pretrained import CheckpointError, LoadReport, load_checkpoint_file, load_pretrained
except Exception as e:  # a missing or mismatched torch / timm / torchvision (ImportError, RuntimeError, ...)
    if not _running_the_stack_check():
        first = (str(e).strip().splitlines() or [''])[0]
        raise ImportError(f'iformer_mm cannot import its dependencies ({type(e).__name__}: {first}). '
                          '`python -m iformer_mm.env` names the broken package and the command that '
                          'fixes it.') from e
    __all__ = ['__version__']
else:
    __all__ = ['ARCH_SETTINGS', 'CheckpointError', 'InceptionTransformer', 'LoadReport',
               'load_checkpoint_file', 'load_pretrained', 'resolve_arch', '__version__']
    try:  # the OpenMMLab backbones (registered when mmengine is installed)
        from .models import IFormer, MobileIFormer, TimmBackbone  # noqa: F401
        __all__ += ['IFormer', 'MobileIFormer', 'TimmBackbone']
    except ImportError:
        pass
    else:  # mmengine is installed: its loads of checkpoints go through our allow-list
        from .engine.trusted_runs import register_mmengine_loader
        register_mmengine_loader()
