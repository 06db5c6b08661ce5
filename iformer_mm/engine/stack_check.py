"""Is this Python environment able to run iformer_mm? Versions, a verdict, and the fix.

Run ``python -m iformer_mm.engine.stack_check`` (or ``python tools/misc/check_env.py``). It prints the
versions of torch, torchvision, timm, mmengine, mmcv (and whether its C++ ops load and run),
mmdet and mmseg, then one line per problem with the command that fixes it, and exits with 1
when something required is broken (0 otherwise), so CI and install scripts can gate on it.

Version rules come from what was measured to work together (``tools/install.sh``): mmdet 3.3
and mmseg 1.2 refuse mmcv >= 2.2; mmengine 0.10.x; torchvision must be the release made for
the installed torch. The checks are split into :func:`check_versions` (pure: versions in,
findings out; unit-tested with made-up versions) and :func:`check_runtime` (imports things).
Tools call :func:`require_stack` first so a broken install fails in a second, with the fix,
instead of with ``No module named 'mmcv._ext'`` deep inside a model build.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as metadata
import json
import platform
import sys
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['Finding', 'StackError', 'KNOWN_GOOD', 'installed_versions', 'check_versions',
           'check_runtime', 'collect', 'format_report', 'require_stack', 'main']

# The combination tools/install.sh installs and CI runs (see ../shared/STACK.md).
KNOWN_GOOD: Dict[str, str] = {
    'torch': '2.13.0', 'torchvision': '0.28.0', 'timm': '1.0.31', 'mmengine': '0.10.7',
    'mmcv': '2.1.0', 'mmdet': '3.3.0', 'mmsegmentation': '1.2.2',
}
# Oldest timm everything here works with (TimmBackbone over MetaFormers, mobile iFormer).
TIMM_FLOOR: Tuple[int, int, int] = (1, 0, 30)
_TIMM_FLOOR_STR = '.'.join(map(str, TIMM_FLOOR))
# Distribution names whose versions are printed (import name differs for a few).
_DISTS = ('torch', 'torchvision', 'timm', 'mmengine', 'mmcv', 'mmcv-lite', 'mmdet',
          'mmsegmentation', 'numpy', 'opencv-python', 'opencv-python-headless', 'setuptools',
          'pycocotools', 'ftfy', 'regex', 'safetensors')

MMCV_FIX = ('pip uninstall -y mmcv mmcv-lite && MMCV_WITH_OPS=1 MAX_JOBS=2 '
            'pip install --no-build-isolation mmcv==2.1.0   (or run tools/install.sh)')


class StackError(RuntimeError):
    """The installed packages cannot run the requested task; the message lists the fixes."""


@dataclass
class Finding:
    """One check's outcome.

    Attributes:
        component: package or feature checked (``'mmcv ops'``, ``'mmdet'`` ...).
        level: ``'ok'``, ``'warn'`` (works, or only an optional part is affected) or
            ``'error'`` (a required part is broken).
        message: what was found.
        fix: the command or change that fixes it (empty when ``level == 'ok'``).
        tasks: which tasks need the component: any of ``'core'``, ``'mm'``, ``'det'``,
            ``'seg'``, ``'timm'``.
    """

    component: str
    level: str
    message: str
    fix: str = ''
    tasks: Tuple[str, ...] = ('core',)


def _parse(version: str) -> Tuple[int, ...]:
    """``'2.13.0+cpu'`` -> ``(2, 13, 0)``; pre-releases count as their release (``2.0.0rc4``)."""
    out = []
    for part in version.split('+')[0].split('.')[:3]:
        digits = ''
        for ch in part:
            if not ch.isdigit():
                break
            digits += ch
        out.append(int(digits or 0))
    return tuple(out + [0] * (3 - len(out)))


def _in_range(version: str, low: str, high: str) -> bool:
    return _parse(low) <= _parse(version) < _parse(high)


def installed_versions(dists: Sequence[str] = _DISTS) -> Dict[str, Optional[str]]:
    """Installed distribution versions from package metadata (imports nothing heavy)."""
    out: Dict[str, Optional[str]] = {}
    for name in dists:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def check_versions(versions: Mapping[str, Optional[str]]) -> List[Finding]:
    """Judge a set of versions without importing anything.

    Args:
        versions: distribution name -> version (``None`` = not installed), as returned by
            :func:`installed_versions`.

    Returns:
        One :class:`Finding` per component.
    """
    v = dict(versions)
    found: List[Finding] = []

    torch_v = v.get('torch')
    if torch_v is None:
        found.append(Finding('torch', 'error', 'torch is not installed',
                             'pip install torch==2.13.0 (CPU or the CUDA build for your driver)'))
    elif _parse(torch_v) < (1, 13, 0):
        found.append(Finding('torch', 'error', f'torch {torch_v} is older than 1.13',
                             'pip install torch==2.13.0'))
    else:
        note = (' (loads checkpoints with weights_only=True by default; iformer_mm handles it: '
                'see docs/reliability.md)' if _parse(torch_v) >= (2, 6, 0) else '')
        found.append(Finding('torch', 'ok', f'torch {torch_v}{note}'))

    tv = v.get('torchvision')
    if tv is None:
        found.append(Finding('torchvision', 'warn', 'torchvision is not installed (timm needs it)',
                             f'pip install torchvision=={_tv_for(torch_v)} torch=={_plain(torch_v)}',
                             tasks=('timm',)))
    elif torch_v and _parse(torch_v)[0] == 2 and _parse(tv)[:2] != (0, _parse(torch_v)[1] + 15):
        found.append(Finding(
            'torchvision', 'error',
            f'torchvision {tv} was not built for torch {torch_v} (needs {_tv_for(torch_v)})',
            f'pip install torchvision=={_tv_for(torch_v)} torch=={_plain(torch_v)}  '
            '(pin torch in the same command, or pip may replace it)', tasks=('timm',)))
    else:
        found.append(Finding('torchvision', 'ok', f'torchvision {tv}', tasks=('timm',)))

    timm_v = v.get('timm')
    if timm_v is None:
        found.append(Finding('timm', 'warn', 'timm is not installed: the iformer_* timm models '
                             'are unavailable', f'pip install "timm>={_TIMM_FLOOR_STR}" torch=={_plain(torch_v)}',
                             tasks=('timm',)))
    elif _parse(timm_v) < TIMM_FLOOR:
        # 1.0.13: correct MetaFormer strides; 1.0.16: their forward_intermediates (TimmBackbone);
        # 1.0.30: the mobile iFormer models.
        found.append(Finding('timm', 'error', f'timm {timm_v} is older than {_TIMM_FLOOR_STR}',
                             f'pip install "timm>={_TIMM_FLOOR_STR}" torch=={_plain(torch_v)}', tasks=('timm',)))
    else:
        found.append(Finding('timm', 'ok', f'timm {timm_v}', tasks=('timm',)))

    me = v.get('mmengine')
    if me is None:
        found.append(Finding('mmengine', 'warn', 'mmengine is not installed: no OpenMMLab backbone',
                             'pip install mmengine==0.10.7', tasks=('mm', 'det', 'seg')))
    elif not _in_range(me, '0.10.0', '1.0.0'):
        found.append(Finding('mmengine', 'error', f'mmengine {me} is outside the supported 0.10.x',
                             'pip install mmengine==0.10.7', tasks=('mm', 'det', 'seg')))
    else:
        found.append(Finding('mmengine', 'ok', f'mmengine {me}', tasks=('mm', 'det', 'seg')))

    mmcv = v.get('mmcv')
    if mmcv is None and v.get('mmcv-lite'):
        found.append(Finding('mmcv', 'error', f'only mmcv-lite {v["mmcv-lite"]} is installed (no C++ '
                             'ops: RoIAlign/NMS for detection are missing)', MMCV_FIX,
                             tasks=('mm', 'det', 'seg')))
    elif mmcv is None:
        found.append(Finding('mmcv', 'warn', 'mmcv is not installed: no OpenMMLab backbone',
                             MMCV_FIX, tasks=('mm', 'det', 'seg')))
    elif not _in_range(mmcv, '2.0.0', '2.2.0'):
        found.append(Finding('mmcv', 'error', f'mmcv {mmcv} is not in [2.0.0, 2.2.0): mmdet 3.3 and '
                             'mmseg 1.2 refuse it at import', MMCV_FIX, tasks=('mm', 'det', 'seg')))
    else:
        found.append(Finding('mmcv', 'ok', f'mmcv {mmcv}', tasks=('mm', 'det', 'seg')))

    for dist, low, high, good, task, extra in (
            ('mmdet', '3.0.0', '3.4.0', KNOWN_GOOD['mmdet'], 'det', 'pycocotools'),
            ('mmsegmentation', '1.0.0', '1.3.0', KNOWN_GOOD['mmsegmentation'], 'seg', 'ftfy regex')):
        ver = v.get(dist)
        fix = f'pip install {dist}=={good} {extra}'
        if ver is None:
            found.append(Finding(dist, 'warn', f'{dist} is not installed ({task} configs unavailable)',
                                 fix, tasks=(task,)))
        elif not _in_range(ver, low, high):
            found.append(Finding(dist, 'error', f'{dist} {ver} is not in [{low}, {high})', fix,
                                 tasks=(task,)))
        else:
            found.append(Finding(dist, 'ok', f'{dist} {ver}', tasks=(task,)))
    for dist, task, why in (('pycocotools', 'det', 'COCO evaluation'),
                            ('ftfy', 'seg', 'imported by mmseg.models'),
                            ('regex', 'seg', 'imported by mmseg.models')):
        if v.get(dist) is None and v.get('mmdet' if task == 'det' else 'mmsegmentation'):
            found.append(Finding(dist, 'error', f'{dist} is missing ({why})', f'pip install {dist}',
                                 tasks=(task,)))
    return found


def _plain(torch_v: Optional[str]) -> str:
    return (torch_v or KNOWN_GOOD['torch']).split('+')[0]


def _tv_for(torch_v: Optional[str]) -> str:
    """torchvision release paired with a torch 2.x release (2.N -> 0.(N+15))."""
    if not torch_v or _parse(torch_v)[0] != 2:
        return KNOWN_GOOD['torchvision']
    return f'0.{_parse(torch_v)[1] + 15}.0'


def _try(component: str, tasks: Tuple[str, ...], fix: str, fn) -> Finding:
    try:
        msg = fn()
        return Finding(component, 'ok', msg or 'ok', tasks=tasks)
    except Exception as e:  # any failure here is the finding itself
        first = (str(e).strip().splitlines() or [''])[0][:200]
        return Finding(component, 'error', f'{type(e).__name__}: {first}', fix, tasks=tasks)


def _mmcv_ops() -> str:
    import torch
    from mmcv.ops import nms, roi_align  # noqa: F401  (imports mmcv._ext)
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    if keep.tolist() != [0, 2]:
        raise RuntimeError(f'mmcv.ops.nms returned {keep.tolist()}, expected [0, 2]')
    return 'mmcv._ext loads; nms runs on CPU'


def _import(name: str) -> str:
    with warnings.catch_warnings():  # pkg_resources warns that it is deprecated
        warnings.simplefilter('ignore')
        importlib.import_module(name)
    return f'import {name} works'


def _registered() -> str:
    import iformer_mm  # noqa: F401
    from iformer_mm.registry import MODELS
    if MODELS.get('IFormer') is None:
        raise RuntimeError('iformer_mm.IFormer is not registered')
    return 'iformer_mm.IFormer is registered (scope iformer_mm)'


def check_runtime(versions: Mapping[str, Optional[str]], heavy: bool = True) -> List[Finding]:
    """Import-time checks: pkg_resources, mmcv ops, torchvision, our registration, mmdet/mmseg.

    Args:
        versions: from :func:`installed_versions` (packages not installed are skipped).
        heavy: also import ``mmdet.models`` and ``mmseg.models`` (about 4 s each).
    """
    out: List[Finding] = []
    out.append(_try('setuptools/pkg_resources', ('mm', 'det', 'seg'),
                    'pip install "setuptools>=77.0.3,<81"  (setuptools 81+ has no pkg_resources, which '
                    "mmengine's mmdet::/mmseg:: config lookup needs)", lambda: _import('pkg_resources')))
    if versions.get('mmcv'):
        out.append(_try('mmcv ops', ('det', 'seg'), 'mmcv was installed without its C++ ops: ' + MMCV_FIX,
                        _mmcv_ops))
    if versions.get('torchvision'):
        out.append(_try('torchvision import', ('timm',),
                        f'pip install torchvision=={_tv_for(versions.get("torch"))} '
                        f'torch=={_plain(versions.get("torch"))}, then `import iformer_mm` before timm '
                        '(it patches a CUDA-only torchvision on CPU torch)',
                        lambda: (importlib.import_module('iformer_mm'), _import('torchvision'))[1]))
    if versions.get('mmengine') and versions.get('mmcv'):
        out.append(_try('iformer_mm registry', ('mm',), 'pip install -e .  (from the repository root)',
                        _registered))
    if versions.get('opencv-python') or versions.get('opencv-python-headless'):
        out.append(_try('cv2 import', ('mm', 'det', 'seg'),
                        'numpy 2.x needs opencv-python>=4.12 (numpy 1.26 needs opencv-python<4.12): '
                        'pip install "opencv-python>=4.12"', lambda: _import('cv2')))
    if heavy:
        for dist, mod, task in (('mmdet', 'mmdet.models', 'det'), ('mmsegmentation', 'mmseg.models', 'seg')):
            if versions.get(dist):
                out.append(_try(f'import {mod}', (task,),
                                f'see the {dist}/mmcv lines above; known-good: {MMCV_FIX} && pip install '
                                f'{dist}=={KNOWN_GOOD[dist]}', lambda mod=mod: _import(mod)))
    return out


def collect(heavy: bool = True) -> Tuple[Dict[str, Optional[str]], List[Finding]]:
    """Versions and every finding (version rules, then runtime checks)."""
    versions = installed_versions()
    return versions, check_versions(versions) + check_runtime(versions, heavy=heavy)


def format_report(versions: Mapping[str, Optional[str]], findings: Sequence[Finding]) -> str:
    """Human-readable report ending with the verdict line."""
    lines = [f'Python {platform.python_version()} on {platform.system()} {platform.machine()}']
    try:
        import torch
        lines.append(f'torch CUDA available: {torch.cuda.is_available()}  threads: {torch.get_num_threads()}')
    except ImportError:
        pass
    lines.append('Installed:')
    for k, ver in versions.items():
        good = KNOWN_GOOD.get(k)
        tag = '' if ver is None or good is None or _plain(ver) == good else f'   (tested: {good})'
        lines.append(f'  {k:<24}{ver or "-"}{tag}')
    lines.append('Checks:')
    for f in findings:
        mark = {'ok': 'OK  ', 'warn': 'WARN', 'error': 'FAIL'}[f.level]
        lines.append(f'  [{mark}] {f.component}: {f.message}')
        if f.fix:
            lines.append(f'         fix: {f.fix}')
    errors = [f for f in findings if f.level == 'error']
    warns = [f for f in findings if f.level == 'warn']
    if errors:
        lines.append(f'VERDICT: BROKEN - {len(errors)} problem(s); run the fix lines above '
                     '(or tools/install.sh for the tested stack).')
    elif warns:
        lines.append(f'VERDICT: OK with {len(warns)} optional part(s) missing (see WARN lines).')
    else:
        lines.append('VERDICT: OK - torch, timm, mmengine, mmcv (+ops), mmdet and mmseg work together.')
    return '\n'.join(lines)


def require_stack(task: str = 'det', heavy: bool = False) -> None:
    """Fail fast, with fixes, when the installed stack cannot run ``task``.

    Args:
        task: ``'det'``, ``'seg'``, ``'mm'`` (backbone only) or ``'timm'``.
        heavy: also import ``mmdet.models`` / ``mmseg.models`` here.

    Raises:
        StackError: listing each problem that affects ``task`` with its fix.
    """
    needs = {task, 'core'} | ({'mm'} if task in ('det', 'seg') else set())
    versions = installed_versions()
    findings = check_versions(versions) + check_runtime(versions, heavy=heavy)
    bad = [f for f in findings if set(f.tasks) & needs
           and (f.level == 'error' or (f.level == 'warn' and f.component != 'torchvision'))]
    if bad:
        raise StackError(f'the installed packages cannot run {task!r}:\n' + '\n'.join(
            f'  - {f.component}: {f.message}\n    fix: {f.fix}' for f in bad)
            + '\n  (python -m iformer_mm.engine.stack_check prints the full report)')


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='skip importing mmdet.models / mmseg.models')
    parser.add_argument('--json', action='store_true', help='machine-readable output')
    args = parser.parse_args(argv)
    versions, findings = collect(heavy=not args.quick)
    if args.json:
        print(json.dumps(dict(versions=versions, findings=[asdict(f) for f in findings]), indent=1))
    else:
        print(format_report(versions, findings))
    return 1 if any(f.level == 'error' for f in findings) else 0


if __name__ == '__main__':
    sys.exit(main())
