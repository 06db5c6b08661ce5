"""Build a detector or segmentor (or its backbone) from an mm config: the one builder.

Every tool that needs a model from a config without training it (FLOPs, frequency/CAM
analysis, the benchmark, ONNX export) calls :func:`build_from_config`. Two rules live here
and nowhere else:

* **Weights are stripped** (:func:`strip_pretrained`): every ``init_cfg`` of type
  ``Pretrained`` and every ``pretrained=`` that names weights (a path/URL, or ``True`` for a
  download) is removed from the model config, wherever it sits. They name files or URLs that
  are usually not there; a tool that wants weights loads its ``--checkpoint`` afterwards.
* **Detector or segmentor** (:func:`task_of`): the config's ``default_scope`` (``mmdet`` or
  ``mmseg``) decides; without one, the registry that holds the model's ``type``.

Mode: the model is returned in eval mode (call ``.train()`` to time a training step).
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any, Dict, Optional, Tuple

__all__ = ['ConfigError', 'TASK_SCOPES', 'build_from_config', 'load_config', 'strip_pretrained',
           'task_of']

#: task -> the OpenMMLab scope whose registry builds it.
TASK_SCOPES = {'det': 'mmdet', 'seg': 'mmseg'}


class ConfigError(ValueError):
    """A config that cannot work; the message names the key and the fix."""


def load_config(config: Any) -> Any:
    """An ``mmengine.Config`` from a ``.py`` path, an ``mmdet::``/``mmseg::`` name or a Config.

    Raises:
        ConfigError: the file or package config does not exist, or has no ``model``.
    """
    from mmengine.config import Config
    if isinstance(config, Config):
        cfg = config
    elif not isinstance(config, str) or not config:
        raise ConfigError(f'a config must be a .py path or an mmdet::/mmseg:: name, got {config!r}')
    elif '::' in config:
        from mmengine.hub import get_config
        try:
            cfg = get_config(config)
        except (FileNotFoundError, ValueError, ImportError) as e:
            raise ConfigError(f'cannot find the package config {config!r} ({e}); check the name, '
                              'e.g. mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py') from None
    elif not os.path.isfile(config):
        raise ConfigError(f'config file not found: {config!r} (give a path to a .py config or an '
                          'mmdet::/mmseg:: config name)')
    else:
        cfg = Config.fromfile(config)
    if 'model' not in cfg:
        raise ConfigError(f'{config} has no model = dict(...) section')
    return cfg


def _is_pretrained_init(init: Any) -> bool:
    return isinstance(init, dict) and init.get('type') == 'Pretrained'


def strip_pretrained(node: Any) -> Any:
    """Remove every weight source from a model config, in place, at any depth.

    ``init_cfg=dict(type='Pretrained', ...)`` becomes ``None``; in a list of init configs only
    the ``Pretrained`` entries go (other initialisers stay). ``pretrained=<path or URL>`` and
    ``pretrained=True`` (a hub download) become ``None``; ``pretrained=False/None`` stay.

    Returns:
        ``node``, for chaining.
    """
    if isinstance(node, dict):
        for key in list(node.keys()):
            val = node[key]
            if key == 'init_cfg':
                if _is_pretrained_init(val):
                    node[key] = None
                elif isinstance(val, (list, tuple)):
                    kept = [v for v in val if not _is_pretrained_init(v)]
                    node[key] = kept or None
            elif key == 'pretrained' and (isinstance(val, str) or val is True):
                node[key] = None
            else:
                strip_pretrained(val)
    elif isinstance(node, (list, tuple)):
        for v in node:
            strip_pretrained(v)
    return node


def _registries() -> Dict[str, Any]:
    """``task -> MODELS`` registry of each installed OpenMMLab package (their models registered)."""
    out = {}
    try:
        import mmdet.models  # noqa: F401  (registers)
        from mmdet.registry import MODELS as DET
        out['det'] = DET
    except ImportError:
        pass
    try:
        import mmseg.models  # noqa: F401  (registers)
        from mmseg.registry import MODELS as SEG
        out['seg'] = SEG
    except ImportError:
        pass
    return out


def task_of(cfg: Any) -> str:
    """``'det'`` or ``'seg'``: the config's ``default_scope``, else the registry of ``model.type``.

    Raises:
        ConfigError: neither tells (an unknown model type, or mmdet/mmseg not installed).
    """
    scope = cfg.get('default_scope')
    for task, s in TASK_SCOPES.items():
        if scope == s:
            return task
    mtype = str(cfg.model.get('type', ''))
    prefix, _, name = mtype.rpartition('.')
    for task, registry in _registries().items():
        if prefix in ('', TASK_SCOPES[task]) and name in registry.module_dict:
            return task
    raise ConfigError(f'cannot tell whether model.type={mtype!r} is an mmdet detector or an mmseg '
                      "segmentor; set default_scope='mmdet' or 'mmseg' in the config (and check "
                      'that the package is installed)')


def build_from_config(config: Any, strip_weights: bool = True, *, part: Optional[str] = None,
                      cfg_options: Optional[Dict[str, Any]] = None, revert_sync_bn: bool = False,
                      init_weights: bool = False) -> Tuple[Any, str]:
    """Build the model of an mm config (or one part of it) in its task's registry.

    Args:
        config: a ``.py`` path, an ``mmdet::``/``mmseg::`` name, or an ``mmengine.Config``
            (edited by the caller, e.g. a backbone option; it is not modified here).
        strip_weights: drop every pretrained-weight source first (:func:`strip_pretrained`).
        part: ``None`` for the whole detector/segmentor, or a key of ``model`` to build alone
            (``'backbone'``).
        cfg_options: ``--cfg-options`` style overrides, merged before anything else.
        revert_sync_bn: turn SyncBN into BN (a single process cannot run SyncBN).
        init_weights: run ``model.init_weights()`` (the modules' own initialisers; with
            ``strip_weights`` no file is read). mmengine's per-parameter INFO log is muted.

    Returns:
        ``(model in eval mode, 'det' or 'seg')``.

    Raises:
        ConfigError: a missing config, no ``model`` (or no ``model.<part>``), or a task that
            cannot be told.
    """
    from mmengine.registry import init_default_scope
    cfg = load_config(config)
    if cfg_options:
        cfg = cfg if isinstance(config, str) else copy.deepcopy(cfg)  # the caller's stays as is
        cfg.merge_from_dict(cfg_options)
    task = task_of(cfg)
    model_cfg = copy.deepcopy(cfg.model)  # a ConfigDict: mmdet reads its fields as attributes
    if part is not None:
        if not isinstance(model_cfg.get(part), dict):
            raise ConfigError(f'{config}: model.{part} is not a dict(type=...) section')
        model_cfg = model_cfg[part]
    if strip_weights:
        strip_pretrained(model_cfg)
    init_default_scope(TASK_SCOPES[task])
    model = _registries()[task].build(model_cfg)
    if revert_sync_bn:
        from mmengine.model import revert_sync_batchnorm
        model = revert_sync_batchnorm(model)
    if init_weights:
        from mmengine.logging import MMLogger
        mm_logger = MMLogger.get_current_instance()
        level = mm_logger.level
        mm_logger.setLevel(logging.WARNING)
        try:
            model.init_weights()
        finally:
            mm_logger.setLevel(level)
    model.eval()  # not chained: mmdet's Swin train() returns None
    return model, task
