"""``python -m iformer_mm.env``: is this environment able to run iformer_mm? (the stack check).

The check itself lives in :mod:`iformer_mm.engine.stack_check` (standard library only at import);
this module is its short, documented command (also ``python tools/misc/check_env.py``). It runs
even when torch, timm or torchvision cannot be imported (the package then skips the models, see
``iformer_mm/__init__.py``), since that is when it is needed most: the check then comes from its
file, as :mod:`iformer_mm.engine` (whose other modules need torch) cannot be imported.
"""
import importlib.util
import os.path as osp
import sys
from typing import Optional, Sequence


def _stack_check():
    try:
        from .engine import stack_check
        return stack_check
    except Exception:  # the engine package needs torch; the check itself only the standard library
        pass
    name = 'iformer_mm.engine.stack_check'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, osp.join(osp.dirname(osp.abspath(__file__)), 'engine', 'stack_check.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The stack check's command line (:func:`iformer_mm.engine.stack_check.main`)."""
    return _stack_check().main(argv)


if __name__ == '__main__':
    from .cli import main_entry
    main_entry(main)
