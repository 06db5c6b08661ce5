"""Make ``import torchvision`` work on a CPU-only torch that has a CUDA-only torchvision wheel.

The only torchvision for torch 2.13 on PyPI is a CUDA build; on CPU torch its C++ extension
cannot load, and ``import torchvision`` dies in its meta registrations (``RuntimeError:
operator torchvision::nms does not exist``), taking ``import timm`` and ``import mmseg.models``
with it. Defining the two op schemas before torchvision's first import lets its pure-Python
parts (transforms, models, everything timm uses) import; the ops themselves stay unavailable
(use mmcv's). On a normal install the extension loads and this does nothing.

``tools/install.sh`` installs a one-line ``.pth`` file that calls :func:`install_import_hook`
*only* on machines that need it: a ``sys.meta_path`` finder that runs the fix right before the
first ``import torchvision``, whoever imports it (timm, mmseg, user code). It costs nothing
at start-up (torch is not imported until torchvision is).
"""
import glob
import importlib.abc
import importlib.util
import os
import sys

_KEEP_ALIVE = []  # the torch.library.Library must outlive the call
_SCHEMAS = (
    'nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
    'qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor',
)


def _has_nms(torch) -> bool:
    try:
        return bool(torch._C._jit_get_schemas_for_operator('torchvision::nms'))
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision_importable() -> bool:
    """Define the missing op schemas if torchvision's extension cannot load.

    Returns:
        True when the schemas had to be defined.
    """
    if 'torchvision' in sys.modules or _KEEP_ALIVE:
        return False
    spec = importlib.util.find_spec('torchvision')
    if spec is None or spec.origin is None:
        return False
    import torch
    if _has_nms(torch):
        return False
    for lib_path in glob.glob(os.path.join(os.path.dirname(spec.origin), '_C*.so')):
        try:
            torch.ops.load_library(lib_path)
        except (OSError, RuntimeError):
            continue
        if _has_nms(torch):
            return False
    lib = torch.library.Library('torchvision', 'DEF')
    for schema in _SCHEMAS:
        lib.define(schema)
    _KEEP_ALIVE.append(lib)
    return True


class _Finder(importlib.abc.MetaPathFinder):
    """Runs the fix once, right before the first ``import torchvision``."""

    def find_spec(self, name, path=None, target=None):
        if name == 'torchvision':
            sys.meta_path.remove(self)
            ensure_torchvision_importable()
        return None  # let the normal finders import it


def install_import_hook() -> None:
    """Install the finder (``IFORMER_NO_TVFIX=1`` disables it, e.g. to test whether it is needed)."""
    if os.environ.get('IFORMER_NO_TVFIX') == '1':
        return
    if 'torchvision' not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
