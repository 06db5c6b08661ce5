"""What ``tools/train.py`` and ``tools/test.py`` show while mmengine's Runner is built.

mmengine's ``Runner`` logs the whole config (several hundred lines for a Mask R-CNN) to the
console and to its log file before anything runs; the screen then starts with a config the
user already has. :func:`config_to_work_dir` keeps that one record out of the console — it
stays in the log file (``<work_dir>/<timestamp>/<timestamp>.log``), and the Runner writes the
merged config to ``<work_dir>/<config name>.py`` — and prints one line saying where it is.
Every other log line (environment, hooks, training) is printed as before.
"""
from __future__ import annotations

import contextlib
import io
import os.path as osp
import sys
from typing import Any, Iterator, TextIO

__all__ = ['config_to_work_dir']

# mmengine's formatter writes "<time> - <logger> - INFO - " before the message, which for the
# config record is "Config:\n<the config>"; a StreamHandler writes each record in one call.
_CONFIG_RECORD = ' - Config:\n'


class _WithoutConfigRecord(io.TextIOBase):
    """A console stream that replaces mmengine's config record with one line."""

    def __init__(self, stream: TextIO, note: str) -> None:
        self._stream = stream
        self._note = note

    def write(self, text: str) -> int:
        if _CONFIG_RECORD in text:
            head = text.split(_CONFIG_RECORD, 1)[0]
            self._stream.write(f'{head} - Config: {self._note}\n')
        else:
            self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, 'encoding', 'utf-8')


@contextlib.contextmanager
def config_to_work_dir(cfg: Any, verbose: bool = False) -> Iterator[None]:
    """Build a Runner inside this block: its console shows no config, only where it was written.

    The Runner's console handler is created in the block, bound to the filtering stream, and
    keeps it for the whole run (the config is logged once, at construction).

    Args:
        cfg: the run's config (its ``work_dir`` and file name are named in the line printed).
        verbose: print mmengine's config as it does (``--verbose``); the block then changes nothing.
    """
    if verbose:
        yield
        return
    name = osp.basename(cfg.filename) if getattr(cfg, 'filename', None) else '<timestamp>.py'
    note = (f'written to {osp.join(str(cfg.work_dir), name)} and to the run\'s log file '
            '(--verbose prints it here)')
    with contextlib.redirect_stdout(_WithoutConfigRecord(sys.stdout, note)):
        yield
