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

For inference (``tools/test.py --amp``, ``autocast_features(..., inference=True)``) the
dense heads run under autocast too (at the demo's 128 px the RoI mask head's convs are most
of a Mask R-CNN prediction), and :func:`cast_matmul_weights` stores the conv/linear weights
in the reduced dtype once, so autocast does not cast them again on every forward. Norms,
position tables and the residual stream stay fp32: storing *everything* in bf16 was 1.08x
faster still (iFormer-S, 224, batch 32) but missed the authors' golden outputs by up to
1.4 % relative L2, against <= 0.92 % this way.

On CUDA, ``--amp`` keeps mmengine's own ``AmpOptimWrapper`` (fp16 with dynamic loss
scaling, or bf16) for training; testing uses the same feature autocast as on CPU.
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from iformer_mm.registry import HOOKS

__all__ = ['AMP_CHOICES', 'FeatureAutocastHook', 'apply_amp', 'autocast_features', 'cast_matmul_weights']

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


# Layers whose op autocast runs in reduced precision (CPU and CUDA lists): storing their
# parameters in that dtype changes nothing in what they compute under autocast.
_LOWP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d)


def cast_matmul_weights(module: nn.Module, dtype: str = 'bf16') -> int:
    """Store the conv/linear parameters of ``module`` in ``dtype``, in place, for inference.

    Under ``torch.autocast`` these layers compute in ``dtype`` anyway, so their outputs do not
    change; what goes is the cast of every weight on every forward. Norm layers, position
    tables, layer scales and anything else stay as they are (fp32). Use it for inference
    only: an optimizer needs fp32 weights.

    Returns:
        The number of tensors cast.
    """
    if dtype not in _DTYPES:
        raise ValueError(f'dtype must be one of {AMP_CHOICES}, got {dtype!r}')
    cast, n = _DTYPES[dtype], 0
    for m in module.modules():
        if isinstance(m, _LOWP_LAYERS):
            for p in m.parameters(recurse=False):
                if p.is_floating_point() and p.dtype != cast:
                    p.data = p.data.to(cast)
                    n += 1
    return n


# Heads whose ``forward`` is a stack of convs/linears from features (or RoI features) to
# scores, deltas, mask or class logits; decoding, nms, RoIAlign and the losses run outside
# their forward, so autocasting it leaves those in fp32.
_HEADS = ('rpn_head', 'roi_head.bbox_head', 'roi_head.mask_head', 'decode_head', 'auxiliary_head')


def _autocast_forward(fn: Any, device_type: str, cast: torch.dtype) -> Any:
    """``fn`` run under autocast, its floating outputs handed back in fp32; not wrapped twice."""
    if getattr(fn, '_autocast_dtype', None) is not None:
        return fn

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, dtype=cast):
            out = fn(*args, **kwargs)
        return _to_fp32(out)
    wrapped._autocast_dtype = cast  # type: ignore[attr-defined]
    return wrapped


def _heads(model: nn.Module) -> Iterator[nn.Module]:
    """The model's dense heads named in :data:`_HEADS` (each element of a ModuleList)."""
    for path in _HEADS:
        m: Any = model
        for attr in path.split('.'):
            m = getattr(m, attr, None)
        if isinstance(m, nn.ModuleList):
            yield from m
        elif isinstance(m, nn.Module):
            yield m


def autocast_features(model: torch.nn.Module, dtype: str = 'bf16',
                      device_type: Optional[str] = None,
                      inference: bool = False) -> torch.nn.Module:
    """Run ``model.extract_feat`` (mmdet/mmseg: backbone + neck) under autocast, in place.

    The features come back in fp32, so the heads, nms and losses run as without AMP. The
    parameters and the state dict do not change (only the instance's ``extract_feat`` is
    wrapped); calling it twice does not wrap twice.

    Args:
        model: an mmdet detector / mmseg segmentor (or a model wrapper around one).
        dtype: ``'bf16'`` or ``'fp16'`` (fp16: CUDA only).
        device_type: autocast device; ``None``: the device of the model's first parameter.
        inference: for test runs, on CPU. Also runs the dense heads' forward under autocast (RPN,
            RoI box and mask heads, mmseg decode heads: their convs and linears; box decoding,
            nms, RoIAlign and resizing stay fp32) and stores the conv/linear weights of
            backbone, neck and those heads in ``dtype`` (:func:`cast_matmul_weights`), so
            they are not cast again on every forward. The parameter dtypes change: do not
            train the model afterwards. On other devices (not measured there yet) it does
            nothing more than ``inference=False``.

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
    if device_type is None:
        device_type = next(model.parameters()).device.type
    if device_type == 'cpu' and _DTYPES[dtype] == torch.float16:
        raise ValueError('fp16 autocast needs a GPU; on CPU use bf16')
    cast = _DTYPES[dtype]
    model.extract_feat = _autocast_forward(model.extract_feat, device_type, cast)
    # Measured on CPU only (docs/performance.md); a GPU keeps backbone + neck autocast until a
    # GPU measurement says the rest helps there too.
    if inference and device_type == 'cpu':
        for part in ('backbone', 'neck'):
            if isinstance(getattr(model, part, None), nn.Module):
                cast_matmul_weights(getattr(model, part), dtype)
        for head in _heads(model):
            head.forward = _autocast_forward(head.forward, device_type, cast)
            cast_matmul_weights(head, dtype)
    return model


@HOOKS.register_module()
class FeatureAutocastHook(Hook):
    """Backbone and neck in bf16 (or fp16 on a GPU) for the whole run: training, validation
    and testing; in test runs the dense heads too.
    ``custom_hooks = [dict(type='iformer_mm.FeatureAutocastHook', dtype='bf16')]``, or
    ``tools/train.py --amp bf16`` / ``tools/test.py --amp bf16``.

    Args:
        dtype: ``'bf16'`` (default) or ``'fp16'``.
        inference: when ``Runner.test()`` runs, also autocast the dense heads and store the
            conv/linear weights in ``dtype`` (``autocast_features(..., inference=True)``);
            ``tools/test.py --amp`` sets it. Training runs never cast their weights.
    """

    priority = 'VERY_HIGH'

    def __init__(self, dtype: str = 'bf16', inference: bool = False) -> None:
        if dtype not in _DTYPES:
            raise ValueError(f'FeatureAutocastHook: dtype must be one of {AMP_CHOICES}, got {dtype!r}')
        self.dtype = dtype
        self.inference = inference

    def before_run(self, runner: Any) -> None:
        self._apply(runner, inference=False)

    def before_test(self, runner: Any) -> None:
        # Runner.test() loads the checkpoint after before_run and before this hook; training
        # (whose optimizer needs fp32 weights) never calls it.
        if self.inference:
            self._apply(runner, inference=True)

    def _apply(self, runner: Any, inference: bool) -> None:
        model = autocast_features(runner.model, self.dtype, inference=inference)
        where = next(model.parameters()).device.type
        if inference and where == 'cpu':
            what = (f'backbone, neck and dense heads run under {self.dtype} autocast on {where} (their '
                    f'conv/linear weights stored in {self.dtype}); box decoding, nms and RoIAlign stay fp32')
        else:
            what = (f'backbone and neck run under {self.dtype} autocast on {where}; heads and weights '
                    'stay fp32')
        runner.logger.info('FeatureAutocastHook: ' + what)


def apply_amp(cfg: Any, dtype: str, training: bool) -> None:
    """What ``--amp DTYPE`` does to a config, in place.

    CPU (training and testing) and CUDA testing: :class:`FeatureAutocastHook` (for a test
    run with ``inference=True``). CUDA training: mmengine's ``AmpOptimWrapper`` (fp16 with
    dynamic loss scaling, or bf16).

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
    hooks.append(dict(type='iformer_mm.FeatureAutocastHook', dtype=dtype, inference=not training))
    cfg.custom_hooks = hooks
