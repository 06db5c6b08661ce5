"""``python -m iformer_mm.env``: is this environment able to run iformer_mm? (the stack check).

The check itself lives in :mod:`iformer_mm.engine.stack_check`; this module is only its short,
documented command (also ``python tools/misc/check_env.py``).
"""
from .cli import main_entry
from .engine.stack_check import main

if __name__ == '__main__':
    main_entry(main)
