"""Print the versions of the OpenMMLab/timm stack and a verdict with fixes (same as ``python -m iformer_mm.env``).

Usage: ``python tools/misc/check_env.py [--quick] [--json]``; exit status 1 when something is broken.
"""
from iformer_mm.cli import main_entry
from iformer_mm.env import main  # runs even where torch/timm cannot be imported

if __name__ == '__main__':
    main_entry(main)
