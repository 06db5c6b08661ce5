"""Mixed precision for ``tools/train.py --amp`` and ``tools/test.py --amp``, CPUs included.

What mmengine 0.10.7 offers does not run on a CPU-only machine:

* ``AmpOptimWrapper`` asserts a GPU (CUDA/NPU/MLU/MUSA) in ``__init__``;
* ``TestLoop(fp16=True)`` autocasts the whole model, and under CPU bf16 autocast the heads'
  scores reach mmcv's CPU ``nms``, which accepts fp32 only (``RuntimeError: expected scalar
  type Float but found BFloat16``); the same happens in Mask R-CNN training (the RPN's
  proposals go through nms).

So on CPU the precision is set per part: :func:`autocast_features` runs the model's
``extract_feat`` (backbone and neck, where nearly all the time goes) under
``torch.autocast(<device>, bfloat16)`` and hands fp32 features to the heads (box
regression, nms and the losses stay fp32). Weights, gradients and optimizer state stay
fp32; bf16 has fp32's exponent range, so no loss scaling is needed. The backward pass
follows the forward's dtypes by itself. :class:`FeatureAutocastHook` applies it in a
Runner (train, val and test), and :func:`apply_amp` is what the tools' ``--amp`` flag does.

On CUDA, ``--amp`` keeps mmengine's own ``AmpOptimWrapper`` (fp16 with dynamic loss
scaling, or bf16) for training; testing uses the same feature autocast as on CPU.
"""
from __future__ import annotations

import functools
from typing import Any, Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from iformer_mm.registry import HOOKS

__all__ = ['AMP_CHOICES', 'FeatureAutocastHook', 'apply_amp', 'autocast_features']

AMP_CHOICES = ('bf16', 'fp16')
_DTYPES = {'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16, 'fp16': torch.float16,
           'float16': torch.float16}


def _to_fp32(out: Any) -> Any:
    """Reduced-precision float tensors in a (nested) tuple/list/dict back to fp32."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float32 else out
    if isinstance(out, (list, tuple)):
        return type(out)(_to_fp32(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_fp32(v) for k, v in out.items()}
    return out


def autocast_features(model: torch.nn.Module, dtype: str = 'bf16',
                      device_type: Optional[str] = None) -> torch.nn.Module:
    """Run ``model.extract_feat`` (mmdet/mmseg: backbone + neck) under autocast, in place.

    The features come back in fp32, so the heads, nms and losses run as without AMP. The
    parameters and the state dict do not change (only the instance's ``extract_feat`` is
    wrapped); calling it twice does not wrap twice.

    Args:
        model: an mmdet detector / mmseg segmentor (or a model wrapper around one).
        dtype: ``'bf16'`` or ``'fp16'`` (fp16: CUDA only).
        device_type: autocast device; ``None``: the device of the model's first parameter.

    Returns:
        The (unwrapped) model.
    """
    if is_model_wrapper(model):
        model = model.module
    if not hasattr(model, 'extract_feat'):
        raise TypeError(f'--amp: {type(model).__name__} has no extract_feat (backbone + neck); '
                        'mixed precision here supports mmdet detectors and mmseg segmentors.')
    if dtype not in _DTYPES:
        raise ValueError(f'dtype must be one of {AMP_CHOICES}, got {dtype!r}')
    if getattr(model.extract_feat, '_autocast_dtype', None) is not None:
        return model
    if device_type is None:
        device_type = next(model.parameters()).device.type
    if device_type == 'cpu' and _DTYPES[dtype] == torch.float16:
        raise ValueError('fp16 autocast needs a GPU; on CPU use bf16')
    inner = model.extract_feat
    cast = _DTYPES[dtype]

    @functools.wraps(inner)
    def extract_feat(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=cast):
            out = inner(*args, **kwargs)
        return _to_fp32(out)
    extract_feat._autocast_dtype = cast  # type: ignore[attr-defined]
    model.extract_feat = extract_feat
    return model


@HOOKS.register_module()
class FeatureAutocastHook(Hook):
    """Backbone and neck in bf16 (or fp16 on a GPU) for the whole run: training, validation
    and testing. ``custom_hooks = [dict(type='iformer_mm.FeatureAutocastHook', dtype='bf16')]``,
    or ``tools/train.py --amp bf16`` / ``tools/test.py --amp bf16``.

    Args:
        dtype: ``'bf16'`` (default) or ``'fp16'``.
    """

    priority = 'VERY_HIGH'

    def __init__(self, dtype: str = 'bf16') -> None:
        if dtype not in _DTYPES:
            raise ValueError(f'FeatureAutocastHook: dtype must be one of {AMP_CHOICES}, got {dtype!r}')
        self.dtype = dtype

    def before_run(self, runner: Any) -> None:
        model = autocast_features(runner.model, self.dtype)
        runner.logger.info(f'FeatureAutocastHook: backbone and neck run under {self.dtype} autocast on '
                           f'{next(model.parameters()).device.type}; heads and weights stay fp32')


def apply_amp(cfg: Any, dtype: str, training: bool) -> None:
    """What ``--amp DTYPE`` does to a config, in place.

    CPU (training and testing) and CUDA testing: :class:`FeatureAutocastHook`. CUDA
    training: mmengine's ``AmpOptimWrapper`` (fp16 with dynamic loss scaling, or bf16).

    Raises:
        SystemExit: an unknown dtype, fp16 without a GPU, or a config that already sets
            its own optimizer wrapper type.
    """
    if dtype not in AMP_CHOICES:
        raise SystemExit(f'--amp: choose one of {AMP_CHOICES}, got {dtype!r}')
    cuda = torch.cuda.is_available()
    if dtype == 'fp16' and not cuda:
        raise SystemExit('--amp fp16 needs a CUDA GPU (CPU autocast computes in bf16 only); '
                         'on CPU use --amp bf16.')
    if training and cuda:
        wrapper = cfg.optim_wrapper
        if wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP training is already enabled in your config.')
            return
        wrapper.type = 'AmpOptimWrapper'
        wrapper.dtype = 'bfloat16' if dtype == 'bf16' else 'float16'
        if dtype == 'fp16':
            wrapper.loss_scale = 'dynamic'
        return
    hooks = list(cfg.get('custom_hooks') or [])
    hooks = [h for h in hooks if h.get('type') not in ('FeatureAutocastHook', 'iformer_mm.FeatureAutocastHook')]
    hooks.append(dict(type='iformer_mm.FeatureAutocastHook', dtype=dtype))
    cfg.custom_hooks = hooks
