"""Checkpoint conversion between classification (authors', timm, ours) and OpenMMLab backbones.

The logic of ``tools/model_converters/{iformer_to_mm,mm_to_iformer}.py``, here so both tools and
the tests import it normally. Reading goes through :mod:`iformer_mm.pretrained`
(``weights_only=True``); writing saves tensors only and proves they read back safely.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any, Dict, Tuple

import torch

from .models import ARCH_SETTINGS, InceptionTransformer
from .pretrained import (CheckpointError, extract_state_dict, infer_arch, load_checkpoint_file,
                         load_state_dict_into)

__all__ = ['CLASSIFIER_RE', 'MM_OUT_NORM_RE', 'read_checkpoint', 'build_reference', 'to_backbone',
           'from_mm', 'add_prefix', 'save_plain']

_logger = logging.getLogger('iformer_mm.convert')
CLASSIFIER_RE = re.compile(r'^(head|norm|head_drop)\.')
MM_OUT_NORM_RE = re.compile(r'^norm\d\.')  # the mm backbone's per-stage output norms


def read_checkpoint(path: str, trust_pickle: bool = False) -> Any:
    """The package's safe read; with ``trust_pickle`` a fixed allow-list of training-state classes.

    Raises:
        CheckpointError: unreadable file, or a training checkpoint read without ``trust_pickle``
            (the message names the ``--trust-pickle`` flag).
    """
    try:
        return load_checkpoint_file(path)
    except CheckpointError as e:
        if 'safe loading' not in str(e):
            raise
        if not trust_pickle:
            held = re.search(r"Python object '([\w.]+)'", str(e))
            if held and held.group(1).startswith(('mmengine.', 'numpy.', 'argparse.Namespace')):
                raise CheckpointError(
                    f'{path} was refused by safe loading (weights_only=True): it is a training '
                    f'checkpoint (it pickles {held.group(1)}). If you produced it, add --trust-pickle: '
                    'it reads exactly the training-state classes, still weights_only=True.') from None
            raise
    from .engine.trusted_runs import trusted_globals
    _logger.warning(f'{path}: holds training state (--trust-pickle): reading it with the allow-list '
                    'argparse.Namespace + mmengine logger classes, still weights_only=True')
    return load_checkpoint_file(path, allowed=trusted_globals() + [argparse.Namespace])


def build_reference(sd: Dict[str, torch.Tensor], num_classes: int = 0) -> InceptionTransformer:
    """An iFormer with the checkpoint's variant and position-table size (to verify a conversion)."""
    arch = infer_arch(sd, ARCH_SETTINGS)
    if arch is None:
        raise CheckpointError(f'not an iFormer checkpoint (first keys: {sorted(sd)[:5]})')
    if arch['name'] is None:
        raise CheckpointError(f"custom iFormer arch {arch}: cannot verify it against a named variant "
                              '(small/base/large); convert with --no-verify')
    n = sd['pos_embed1'].shape[1]
    return InceptionTransformer(arch['name'], img_size=(4 * n, 4 * sd['pos_embed1'].shape[2]),
                                num_classes=num_classes)


def to_backbone(obj: Any, use_ema: bool = True, keep_head: bool = False,
                verify: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Backbone tensors (authors' key names) from any supported classification checkpoint.

    Returns:
        ``(state_dict, info)`` where ``info`` says which variant and what was dropped.
    """
    sd, notes = extract_state_dict(obj, use_ema=use_ema)
    dropped = sorted(k for k in sd if CLASSIFIER_RE.match(k)) if not keep_head else []
    out = {k: v.detach().clone().contiguous() for k, v in sd.items() if k not in dropped}
    info = dict(notes=notes, dropped=dropped, arch=infer_arch(out, ARCH_SETTINGS))
    if verify:
        ref = build_reference(out)
        # the reference keeps the final norm of a classifier; a backbone has none
        report = load_state_dict_into(ref, out, strict=True, allowed_missing=[r'^norm\.'])
        missing = [k for k in report.missing if not CLASSIFIER_RE.match(k)]
        if missing or report.resized:
            raise CheckpointError(f'converted weights do not fill the backbone: missing {missing[:8]}')
    return out, info


def from_mm(obj: Any, source: str = 'checkpoint') -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """iFormer weights (authors' layout, no classifier) from an mmdet/mmseg checkpoint or backbone.

    Returns:
        ``(state_dict, info)``: ``info`` has the variant, the loader's notes and the number of
        mm-only output-norm tensors dropped.
    """
    sd, notes = extract_state_dict(obj, use_ema=True)
    arch = infer_arch(sd, ARCH_SETTINGS)
    if arch is None:
        raise CheckpointError(f'{source} holds no iFormer backbone (first keys: {sorted(sd)[:5]})')
    out = {k: v.detach().clone().contiguous() for k, v in sd.items() if not MM_OUT_NORM_RE.match(k)}
    return out, dict(arch=arch, notes=notes, dropped=len(sd) - len(out))


def add_prefix(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


def save_plain(sd: Dict[str, torch.Tensor], path: str) -> None:
    """Write tensors only, then prove the file reads back with ``weights_only=True``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(sd, path)
    back = torch.load(path, map_location='cpu', weights_only=True)
    if set(back) != set(sd):
        raise RuntimeError(f'{path} did not read back intact')


