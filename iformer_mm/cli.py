"""What every command-line tool of the repository does on a known error: one line, not a traceback."""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Optional, Sequence

from .pretrained import CheckpointError

__all__ = ['main_entry', 'run_cli']


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


def main_entry(main: Callable[[Optional[Sequence[str]]], object]) -> NoReturn:
    """What a tool that can run distributed calls under ``if __name__ == '__main__':``.

    :func:`run_cli`, with Python's own handling of ``SystemExit`` and of other exceptions
    (message or traceback on stderr, status 1), then
    :func:`iformer_mm.engine.device.end_process`: a rank of a finished ``torchrun`` run exits
    with its status instead of sometimes aborting in interpreter finalization.
    """
    try:
        status = run_cli(main)
    except SystemExit as e:
        status = _exit_status(e.code)
    except Exception:  # noqa: BLE001  (printed as Python would, then the same exit path)
        sys.excepthook(*sys.exc_info())
        status = 1
    from .engine.device import end_process
    end_process(status)


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives: ``None`` → 0, an int as is, else printed → 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
