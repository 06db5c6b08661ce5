"""OpenMMLab backbone ``iformer_mm.TimmBackbone``: any timm model with ``forward_intermediates``.

What mmseg's / mmpretrain's ``TIMMBackbone`` lack and dense baselines need: the timm model's own
parameter names (hub weights, the authors' files and our mm checkpoints load strictly), stages
after the last output pruned, optional output norms, ``frozen_stages``, ``norm_eval``,
``get_layer_depth`` for layer-wise lr decay, a list of the 1-D parameters that take no weight
decay, and loading through the package's one safe loader (never a download unless asked).

Subclasses (another model family) override the ``build_timm_model`` / ``stem_modules`` /
``stage_modules`` / ``stage_depths`` / ``build_out_norm`` / ``load_weights`` hooks; forward,
and from :class:`~iformer_mm.models.dense.DenseBackbone` freezing, ``norm_eval``, loading and
layer depth, follow from them.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Union

import timm
import torch
from mmengine.logging import MMLogger
from timm.layers import LayerNorm2d
from torch import nn

from ..pretrained import CheckpointError, LoadReport, load_timm_weights
from ..registry import MODELS
from .dense import DenseBackbone, resolve_pretrained
from .metaformer import REFUSED_DENSE

__all__ = ['TimmBackbone']

# Output norms: name -> constructor taking the channel count (NCHW maps).
OUT_NORMS = {
    'ln': lambda c: LayerNorm2d(c, eps=1e-6),  # LayerNorm over channels, as Swin/ConvNeXt/iFormer
    'gn': lambda c: nn.GroupNorm(1, c),  # GroupNorm(1): the PoolFormer paper's dense models
}


@MODELS.register_module()
class TimmBackbone(DenseBackbone):
    """A timm model as a dense backbone: a tuple of NCHW maps, one per ``out_indices``.

    The timm model's modules become this module's children under their timm names (``stem``,
    ``stages.0.blocks.1...``), so a timm checkpoint's keys are this backbone's keys; output norms
    are the only additions (``norm{i}``).

    Args:
        model_name: a timm model name, e.g. ``'caformer_s18'``, ``'poolformer_s12'``,
            ``'identityformer_s12'`` (registered by ``import iformer_mm``).
        out_indices: feature taps to return (timm's ``feature_info`` order: 0..3 for the
            4-stage models). Stages after the last one are not kept.
        out_norm: ``None`` (maps as timm returns them), ``'ln'`` (LayerNorm over channels) or
            ``'gn'`` (GroupNorm with one group) applied to every returned map.
        frozen_stages: -1 none; 0 the stem; k >= 1 the stem and the first k stages (no grad,
            eval mode, output norms of those stages included).
        norm_eval: keep every BatchNorm in eval mode while training.
        drop_path_rate: stochastic depth rate, passed to timm.
        with_cp: gradient checkpointing of the stages (timm's ``set_grad_checkpointing``).
        in_channels: input channels.
        pretrained: ``True`` fetches timm's hub weights (the only path that downloads); a path
            is the deprecated spelling of ``init_cfg=dict(type='Pretrained', checkpoint=path)``
            (not both: :func:`iformer_mm.models.dense.resolve_pretrained`).
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` with a timm-hub file, the authors'
            release or an mmdet/mmseg checkpoint; optional ``strict`` (default True) and
            ``use_ema`` (default True).
        **model_kwargs: further ``timm.create_model`` arguments.
    """

    def __init__(
            self,
            model_name: str,
            out_indices: Sequence[int] = (0, 1, 2, 3),
            out_norm: Optional[str] = None,
            frozen_stages: int = -1,
            norm_eval: bool = False,
            drop_path_rate: float = 0.,
            with_cp: bool = False,
            in_channels: int = 3,
            pretrained: Union[None, bool, str] = None,
            init_cfg: Optional[Union[dict, List[dict]]] = None,
            **model_kwargs: Any,
    ) -> None:
        if pretrained not in (None, False, True) and not isinstance(pretrained, str):
            raise TypeError(f'pretrained must be None, a bool or a path, got {pretrained!r}')
        super().__init__(init_cfg=resolve_pretrained(
            'TimmBackbone', None if isinstance(pretrained, bool) else pretrained, init_cfg))
        self.model_name = model_name
        self.pretrained = pretrained is True

        model = self.build_timm_model(model_name, in_chans=in_channels,
                                      drop_path_rate=drop_path_rate, **model_kwargs)
        if not hasattr(model, 'forward_intermediates'):
            raise ValueError(
                f'timm model {model_name!r} has no forward_intermediates, so it cannot give '
                'multi-scale maps here; pick a model that has it (timm >= 1.0.16 for MetaFormers).')
        # Keys and shapes of the complete model: the loader reports the pruned ones as dropped.
        self.full_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self.all_feature_info = [dict(f) for f in model.feature_info]
        self.setup_dense(out_indices, len(self.all_feature_info), frozen_stages, norm_eval, with_cp, model_name)

        # Nothing after the last tap, no classifier: unused parameters would break DDP.
        model.prune_intermediate_layers(list(self.out_indices), prune_norm=True, prune_head=True)
        if with_cp:
            model.set_grad_checkpointing(True)
        self._adopt(model)
        self.feature_info = [self.all_feature_info[i] for i in self.out_indices]
        self.out_channels = tuple(f['num_chs'] for f in self.feature_info)
        self.out_strides = tuple(f['reduction'] for f in self.feature_info)

        if out_norm not in (None, *OUT_NORMS):
            raise ValueError(f'out_norm must be None or one of {sorted(OUT_NORMS)}, got {out_norm!r}')
        self.out_norm = out_norm
        if out_norm is not None:
            channels = dict(zip(self.out_indices, self.out_channels))
            self.add_out_norms(lambda i: self.build_out_norm(i, channels[i]))
        self._freeze_stages()

    # ------------------------------------------------------------------ overridable hooks
    def build_timm_model(self, model_name: str, **kwargs: Any) -> nn.Module:
        """Build the complete timm model (random init: loading is :meth:`init_weights`' job)."""
        for prefix, why in REFUSED_DENSE.items():
            if model_name.startswith(prefix):
                raise ValueError(f'{model_name} cannot be a dense backbone: {why}')
        if not timm.is_model(model_name):
            family = model_name.split('_')[0]
            near = timm.list_models(f'{family}*')[:12]
            raise ValueError(f'unknown timm model {model_name!r}' +
                             (f'; {family} models: {near}' if near else '') +
                             '. identityformer_* need `import iformer_mm` (custom_imports in configs).')
        return timm.create_model(model_name, pretrained=False, **kwargs)

    def build_out_norm(self, index: int, channels: int) -> nn.Module:
        """The norm applied to output ``index`` (``channels`` wide)."""
        return OUT_NORMS[self.out_norm](channels)

    def stage_modules(self, index: int) -> List[nn.Module]:
        """Modules of feature tap ``index`` (timm's ``feature_info[index]['module']``)."""
        return [self.get_submodule(self.stage_path(index))]

    def stage_path(self, index: int) -> str:
        """Dotted name of the module that produces tap ``index``, e.g. ``'stages.2'``."""
        return self.all_feature_info[index]['module']

    def stem_modules(self) -> List[nn.Module]:
        """Top-level modules that run before the first stage (``stem`` for MetaFormers)."""
        first = self.stage_path(0).split('.')[0]
        mods = []
        for name, child in self.named_children():
            if name == first:
                break
            mods.append(child)
        return mods

    def stage_depths(self) -> List[int]:
        """Blocks per kept tap (a tap without a ``blocks`` list counts as one layer)."""
        depths = []
        for i in range(max(self.out_indices) + 1):
            blocks = getattr(self.get_submodule(self.stage_path(i)), 'blocks', None)
            depths.append(len(blocks) if isinstance(blocks, nn.Sequential) else 1)
        return depths

    def load_weights(self, checkpoint: Any, strict: bool = True, use_ema: bool = True) -> LoadReport:
        """Load a file or a state dict through the package's safe loader."""
        module = sys.modules.get(type(self._timm_model).__module__)
        return load_timm_weights(
            self, checkpoint, full_shapes=self.full_shapes,
            filter_fn=getattr(module, 'checkpoint_filter_fn', None), filter_model=self._timm_model,
            strict=strict, use_ema=use_ema, allowed_missing=[r'^norm\d+\.'],
            log=MMLogger.get_current_instance())

    # ------------------------------------------------------------------ build helpers
    def _adopt(self, model: nn.Module) -> None:
        """Make ``model``'s children and own tensors ours, under the same names.

        The timm model stays reachable (outside the module tree) to run its own
        ``forward_intermediates``; both share every module and tensor.
        """
        for name, child in model.named_children():
            if any(True for _ in child.parameters()) or any(True for _ in child.buffers()):
                self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.__dict__['_timm_model'] = model

    def _sync_timm_model(self) -> None:
        """Point the timm model at our current top-level modules and tensors.

        Tools that swap modules (SyncBN conversion, ``revert_sync_batchnorm``, fusing) or
        tensors (``_apply`` with ``overwrite_module_params_on_conversion``) replace them on us only.
        """
        root = self._timm_model
        for store in ('_modules', '_parameters', '_buffers'):
            ours, theirs = getattr(self, store), getattr(root, store)
            for name, value in ours.items():
                if name in theirs and theirs[name] is not value:
                    theirs[name] = value

    # ------------------------------------------------------------------ init
    def init_weights(self) -> None:
        """With ``pretrained=True``, timm's hub weights; else :class:`DenseBackbone`'s
        (``init_cfg=dict(type='Pretrained', ...)`` or mmengine's initialisers)."""
        if self.pretrained:
            self._pretrained_report = self.load_weights(self._hub_state_dict())
            self._is_init = True
            self._freeze_stages()
        else:
            super().init_weights()

    def _hub_state_dict(self) -> Dict[str, torch.Tensor]:
        """timm's hub weights for ``model_name`` (the only download; asked for by pretrained=True)."""
        try:
            return timm.create_model(self.model_name, pretrained=True).state_dict()
        except Exception as e:  # noqa: BLE001 - network/hub errors come in many types
            raise CheckpointError(
                f'could not fetch timm hub weights for {self.model_name} ({type(e).__name__}: {e}). '
                "Offline, download them elsewhere and use init_cfg=dict(type='Pretrained', "
                'checkpoint=PATH) with pretrained=None.') from e

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, C, H, W)`` -> one ``(B, C_i, H_i, W_i)`` map per ``out_indices``."""
        if x.ndim != 4:
            raise ValueError(f'{type(self).__name__} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}')
        self._sync_timm_model()
        feats = self._timm_model.forward_intermediates(
            x, indices=list(self.out_indices), intermediates_only=True)
        if self.out_norm is not None:
            feats = [getattr(self, f'norm{i}')(f) for i, f in zip(self.out_indices, feats)]
        return tuple(feats)

    # ------------------------------------------------------------------ DenseBackbone hooks
    def stage_parts(self, i: int) -> Tuple[List[nn.Module], List[nn.Parameter]]:
        return (list(self.stem_modules()) if i < 0 else self.stage_modules(i)), []

    def layer_id(self, name: str) -> Optional[int]:
        """Stem 0; block j of stage i its global block index + 1 (a stage's downsampling layer
        shares the id of its first block)."""
        stem = {n for n, c in self.named_children() if any(c is m for m in self.stem_modules())}
        if name.split('.')[0] in stem:
            return 0
        depths = self.stage_depths()
        for i in range(len(depths)):
            path = self.stage_path(i)
            if name.startswith(path + '.'):
                m = re.match(rf'^{re.escape(path)}\.blocks\.(\d+)\.', name)
                return sum(depths[:i]) + (int(m.group(1)) if m else 0) + 1
        return None

    def train(self, mode: bool = True) -> 'TimmBackbone':
        self._timm_model.training = mode  # the root is not one of our children
        return super().train(mode)

    # ------------------------------------------------------------------ optimizer helpers
    def no_weight_decay(self) -> Set[str]:
        """Parameters that take no weight decay: every 1-D tensor (norm weights/biases, biases,
        layer/res scales, StarReLU's scale and bias) plus what the timm model itself lists.

        Configs get exactly this set with ``paramwise_cfg=dict(flat_decay_mult=0.,
        norm_decay_mult=0., bias_decay_mult=0.)`` (mmengine's optimizer constructor).
        """
        own = getattr(self._timm_model, 'no_weight_decay', lambda: set())()
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n in own}
