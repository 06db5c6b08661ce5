"""Print the versions of the OpenMMLab/timm stack and a verdict with fixes (same as ``python -m iformer_mm.env``).

Usage: ``python tools/misc/check_env.py [--quick] [--json]``; exit status 1 when something is broken.
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..')))

from iformer_mm.env import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
