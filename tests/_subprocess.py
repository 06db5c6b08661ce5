"""Helpers for tests that start other Python processes (torchrun ranks, tools, timm's suite)."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nothing listens on now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def env_with_repo(**extra: str) -> Dict[str, str]:
    """``os.environ`` with this checkout first on ``PYTHONPATH``, plus ``extra``."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')]),
                **extra)
