"""How every command-line tool of the repository starts and ends: the one tool entry.

A tool is ``def main(argv=None) -> Optional[int]`` plus::

    if __name__ == '__main__':
        main_entry(main)

* the exit status is what ``main`` returns (``None`` is 0), or the code of a ``SystemExit`` it
  raises (``raise SystemExit('error: ...')`` prints the message, status 1);
* a known bad-input error (:data:`USER_ERRORS`: a checkpoint, a config, an analysis input, the
  installed stack) ends with one ``error: <message>`` line and status 1 — its message already
  names the problem and the fix, so a traceback would only hide it;
* any other exception is a bug: its traceback as Python prints it, status 1;
* the process then ends through :func:`iformer_mm.engine.device.end_process`: a rank of a
  finished ``torchrun`` run exits with its status instead of sometimes aborting in
  interpreter finalization.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Optional, Sequence, Tuple, Type

__all__ = ['main_entry', 'run_cli', 'user_errors']

Main = Callable[[Optional[Sequence[str]]], object]


def user_errors() -> Tuple[Type[BaseException], ...]:
    """The exception types whose message is the whole story (one line, no traceback)."""
    errors: Tuple[Type[BaseException], ...] = ()
    for module, name in (('iformer_mm.pretrained', 'CheckpointError'), ('iformer_mm.build', 'ConfigError'),
                         ('iformer_mm.analysis.features', 'AnalysisError'),
                         ('iformer_mm.engine.stack_check', 'StackError')):
        mod = sys.modules.get(module)  # only a module the tool imported can have raised it
        if mod is not None and hasattr(mod, name):
            errors += (getattr(mod, name),)
    return errors


def run_cli(main: Main, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` and return the process exit status (see the module doc)."""
    try:
        status = main(argv)
    except SystemExit as e:
        return _exit_status(e.code)
    except Exception as e:  # noqa: BLE001  (sorted below: a known error or a bug)
        if isinstance(e, user_errors()):
            print(f'error: {e}', file=sys.stderr)
        else:
            sys.excepthook(*sys.exc_info())
        return 1
    return status if type(status) is int else 0  # (a bool or other value: 0)


def main_entry(main: Main) -> NoReturn:
    """What every tool calls under ``if __name__ == '__main__':`` (see the module doc)."""
    status = run_cli(main)
    try:
        from .engine.device import end_process
    except Exception:  # torch/timm cannot be imported: only the stack check runs then, in one process
        sys.exit(status)
    end_process(status)


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives: ``None`` → 0, an int as is, else printed → 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1
