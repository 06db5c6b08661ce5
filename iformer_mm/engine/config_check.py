"""Check a training/testing config *before* the Runner builds anything.

Mistakes that otherwise surface late or cryptically — after the model is built, the
annotations are parsed, or hours into training — are caught in well under a second, each
with the fix:

* the backbone written as ``type='IFormer'`` (not found in mmdet's / mmseg's registry: it is
  ``iformer_mm.IFormer``) or the package not importable (``custom_imports``);
* a dataset root, annotation file or image folder that does not exist, and a JSON annotation
  file that does not parse (truncated download, HTML error page, ...);
* a head whose ``num_classes`` differs from the number of classes of its dataset (mmdet and
  mmseg train such a model silently).

Used by ``tools/train.py`` and ``tools/test.py``; importable without mmdet/mmseg.
"""
from __future__ import annotations

import importlib.util
import json
import os
import os.path as osp
from typing import Any, Iterator, List, Mapping, Optional, Tuple

from ..build import ConfigError

__all__ = ['ConfigError', 'CUSTOM_IMPORTS_FIX', 'check_config', 'check_backbone_types',
           'check_dataset_paths', 'check_num_classes', 'explain_build_error', 'preflight_or_exit',
           'build_runner']

CUSTOM_IMPORTS_FIX = "custom_imports=dict(imports=['iformer_mm'], allow_failed_imports=False)"
# Full JSON parse up to this size; above it only the first/last bytes are checked (COCO's
# train annotations are 450 MB and are parsed once by the dataset anyway).
_FULL_PARSE_BYTES = 64 * 2 ** 20


def _walk(node: Any, path: str) -> Iterator[Tuple[str, Mapping]]:
    """Every dict under ``node`` with its dotted config path."""
    if isinstance(node, Mapping):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f'{path}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f'{path}[{i}]')


def _custom_imports(cfg: Mapping) -> List[str]:
    ci = cfg.get('custom_imports') or {}
    imports = ci.get('imports', []) if isinstance(ci, Mapping) else []
    return [imports] if isinstance(imports, str) else list(imports)


def check_backbone_types(cfg: Mapping) -> List[str]:
    """Problems with how the config names the iFormer backbone (empty list = fine)."""
    problems = []
    has_import = any(m == 'iformer_mm' or m.startswith('iformer_mm.') for m in _custom_imports(cfg))
    for path, node in _walk(cfg.get('model'), 'model'):
        t = node.get('type')
        if not isinstance(t, str):
            continue
        if t in ('IFormer', 'mmdet.IFormer', 'mmseg.IFormer', 'InceptionTransformer'):
            problems.append(
                f"{path}.type={t!r} is not in mmdet's/mmseg's registry: the backbone is registered "
                f"as 'iformer_mm.IFormer'. Fix: write type='iformer_mm.IFormer' and add "
                f'{CUSTOM_IMPORTS_FIX} to the config file.')
        elif t.startswith('iformer_mm.') and not has_import and importlib.util.find_spec('iformer_mm') is None:
            problems.append(
                f'{path}.type={t!r} needs the iformer_mm package, which is not importable. Fix: '
                f'pip install -e /path/to/iformer_mm and add {CUSTOM_IMPORTS_FIX} to the config file.')
    return problems


def _active_splits(cfg: Mapping) -> Tuple[str, ...]:
    """The dataloaders a training run builds: train, and val when a val loop is configured."""
    return ('train',) + (('val',) if cfg.get('val_cfg') and cfg.get('val_dataloader') else ())


def _dataset_nodes(cfg: Mapping, splits: Tuple[str, ...] = ('train', 'val', 'test')
                   ) -> Iterator[Tuple[str, Mapping]]:
    """``(path, dataset dict)`` of the given splits' datasets, unwrapping dataset wrappers."""
    for split in (f'{s}_dataloader' for s in splits):
        loader = cfg.get(split)
        if not isinstance(loader, Mapping) or not isinstance(loader.get('dataset'), Mapping):
            continue
        stack = [(f'{split}.dataset', loader['dataset'])]
        while stack:
            path, ds = stack.pop()
            inner = ds.get('dataset')
            if isinstance(inner, Mapping):  # RepeatDataset, ClassBalancedDataset, MultiImageMix...
                stack.append((f'{path}.dataset', inner))
            for i, d in enumerate(ds.get('datasets') or []):  # ConcatDataset
                if isinstance(d, Mapping):
                    stack.append((f'{path}.datasets[{i}]', d))
            if not isinstance(inner, Mapping) and not ds.get('datasets'):  # a leaf dataset
                yield path, ds


def _json_problem(path: str) -> Optional[str]:
    size = os.path.getsize(path)
    if size == 0:
        return 'is empty'
    if size <= _FULL_PARSE_BYTES:
        try:
            with open(path, 'rb') as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            return f'does not parse as JSON ({type(e).__name__}: {e})'
        return None
    with open(path, 'rb') as f:
        head = f.read(64).lstrip()
        f.seek(-64, os.SEEK_END)
        tail = f.read().rstrip()
    if not head.startswith((b'{', b'[')) or not tail.endswith((b'}', b']')):
        return f'is not a complete JSON document (starts {head[:16]!r}, ends {tail[-16:]!r})'
    return None


def check_dataset_paths(cfg: Mapping, splits: Optional[Tuple[str, ...]] = None) -> List[str]:
    """Missing dataset roots / annotation files / image folders, unparseable JSON annotations.

    Args:
        cfg: the config.
        splits: which dataloaders to check (``'train'``, ``'val'``, ``'test'``); default: those
            a training run builds (train, and val when ``val_cfg`` is set).
    """
    problems = []
    for path, ds in _dataset_nodes(cfg, _active_splits(cfg) if splits is None else splits):
        root = ds.get('data_root') or ''
        if root and '://' not in root and not osp.isdir(root):
            problems.append(f'{path}.data_root={root!r} does not exist (resolved from {os.getcwd()}). '
                            f'Fix: download/convert the dataset there, or set --cfg-options '
                            f'{path}.data_root=/path/to/dataset/')
            continue  # everything below is relative to it
        ann = ds.get('ann_file') or ''
        if ann and '://' not in ann:
            full = ann if osp.isabs(ann) or not root else osp.join(root, ann)
            if not osp.isfile(full):
                problems.append(f'{path}.ann_file: {full!r} does not exist. Fix: check data_root '
                                f'and ann_file (--cfg-options {path}.ann_file=...)')
            elif full.endswith('.json'):
                why = _json_problem(full)
                if why:
                    problems.append(f'{path}.ann_file: {full!r} {why}. Fix: re-download or '
                                    're-generate the annotation file.')
        prefix = ds.get('data_prefix') or {}
        for key, sub in (prefix.items() if isinstance(prefix, Mapping) else []):
            if not isinstance(sub, str) or not sub or '://' in sub:
                continue
            full = sub if osp.isabs(sub) or not root else osp.join(root, sub)
            if not osp.isdir(full):
                problems.append(f'{path}.data_prefix.{key}: folder {full!r} does not exist. Fix: '
                                f'check the dataset layout (--cfg-options {path}.data_prefix.{key}=...)')
    return problems


def _dataset_classes(ds: Mapping) -> Optional[int]:
    """Number of classes a dataset config will have, or None when it cannot be told cheaply."""
    meta = ds.get('metainfo')
    if isinstance(meta, Mapping) and meta.get('classes') is not None:
        return len(meta['classes'])
    t = ds.get('type')
    if not isinstance(t, str):
        return None
    try:
        from mmengine.registry import DATASETS
        cls = DATASETS.get(t)
        if cls is None:  # scoped registries (mmdet/mmseg) are searched through the default scope
            for scope in ('mmdet', 'mmseg'):
                try:
                    reg = importlib.import_module(f'{scope}.registry').DATASETS
                except ImportError:
                    continue
                cls = reg.get(t)
                if cls is not None:
                    break
    except Exception:  # registry lookups import toolboxes; never fail the preflight on them
        return None
    classes = getattr(cls, 'METAINFO', {}).get('classes') if cls is not None else None
    return len(classes) if classes else None


def check_num_classes(cfg: Mapping) -> List[str]:
    """Heads whose ``num_classes`` differs from the training dataset's class count."""
    train = list(_dataset_nodes(cfg, ('train',)))
    if not train:
        return []
    n_data = _dataset_classes(train[0][1])
    if n_data is None:
        return []
    problems = []
    for path, node in _walk(cfg.get('model'), 'model'):
        n = node.get('num_classes')
        if not isinstance(n, int) or path.split('.')[-1] in ('train_cfg', 'test_cfg'):
            continue
        if 'RPN' in str(node.get('type', '')):  # region proposals are class-agnostic (1 class)
            continue
        # mmseg heads for binary segmentation use num_classes=2 with out_channels=1; and
        # a head's num_classes may include the background for some detectors (+1).
        if n != n_data and not (node.get('out_channels') == 1 and n == 2):
            problems.append(
                f'{path}.num_classes={n} but {train[0][0]} has {n_data} classes. Fix: set '
                f'num_classes={n_data} in every head (--cfg-options {path}.num_classes={n_data}), '
                'or give the dataset metainfo=dict(classes=(...)) with the classes you train on.')
    return problems


def check_config(cfg: Mapping, datasets: bool = True, splits: Optional[Tuple[str, ...]] = None) -> None:
    """Run every check; raise one :class:`ConfigError` listing all problems found.

    Args:
        cfg: an mmengine ``Config`` (or plain dict) after command-line overrides.
        datasets: also check dataset paths and annotation files.
        splits: dataloaders whose datasets are checked (default: see :func:`check_dataset_paths`).
    """
    problems = check_backbone_types(cfg)
    if datasets:
        problems += check_dataset_paths(cfg, splits)
    problems += check_num_classes(cfg)
    if problems:
        raise ConfigError('the config cannot work as written:\n' + '\n'.join(f'  - {p}' for p in problems))


def explain_build_error(exc: BaseException) -> Optional[str]:
    """A fix for a registry ``KeyError`` raised while building a model, or None.

    mmengine says ``'X is not in the mmdet::model registry'``; when X is our backbone the fix is
    the scoped type name and ``custom_imports``.
    """
    text = str(exc)
    if isinstance(exc, KeyError) and 'registry' in text and ('IFormer' in text or 'iformer' in text):
        return (f'{text.strip(chr(39))}\n  fix: write the backbone as type=\'iformer_mm.IFormer\' '
                f'and add {CUSTOM_IMPORTS_FIX} to the config file (custom_imports given through '
                '--cfg-options is ignored).')
    return None


def preflight_or_exit(cfg: Any, splits: Optional[Tuple[str, ...]] = None) -> None:
    """What ``tools/train.py`` and ``tools/test.py`` check before building anything: the
    installed stack for the config's toolbox, then :func:`check_config`. A problem ends the
    process with one ``error: ...`` message naming the fix (no traceback)."""
    from .stack_check import StackError, require_stack
    try:
        require_stack({'mmdet': 'det', 'mmseg': 'seg'}.get(cfg.get('default_scope'), 'mm'))
        check_config(cfg, splits=splits)
    except (StackError, ConfigError) as e:
        raise SystemExit(f'error: {e}') from None


def build_runner(cfg: Any) -> Any:
    """mmengine's Runner for ``cfg`` (or its ``runner_type``); a registry miss of our backbone
    ends the process with the fix from :func:`explain_build_error`."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    try:
        return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    except KeyError as e:
        hint = explain_build_error(e)
        if hint is None:
            raise
        raise SystemExit(f'error: {hint}') from None
