"""What every command-line tool of the repository does on a known error: one line, not a traceback."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from .pretrained import CheckpointError

__all__ = ['run_cli']


def run_cli(main: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]] = None) -> int:
    """Run a tool's ``main(argv)``; a :class:`CheckpointError` becomes ``error: ...`` on stderr.

    The error's message already says what is wrong and the fix, so the traceback would only
    hide it. Other exceptions propagate unchanged (they are bugs to report, with their trace).

    Returns:
        The process exit status: 0, or 1 after a :class:`CheckpointError`.
    """
    try:
        main(argv)
    except CheckpointError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0
