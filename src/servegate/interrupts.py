"""SIGTERM and SIGINT as ``Interrupted`` exceptions, so a cancelled CI job (SIGTERM) or Ctrl-C
(SIGINT) runs the same cleanup as a failed gate: ``except``/``finally`` blocks and context
managers (temporary directories, MLflow runs) all see an ordinary exception.

``critical()`` marks a section that must not be cut in half (moving the registry alias and the
server default): a signal arriving inside it is held and raised when the section ends. A second
signal during cleanup is reported and otherwise ignored (SIGKILL still works).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from servegate.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_installed = 0
_critical = 0
_pending: int | None = None
_raised = False


def _handler(signum: int, frame: FrameType | None) -> None:
    global _pending, _raised
    if _critical > 0:
        _pending = _pending or signum
        return
    if _raised:
        print(f"servegate: {signal.Signals(signum).name} ignored while cleaning up "
              "(SIGKILL stops at once, leaving the cleanup to the next run)", file=sys.stderr)
        return
    _raised = True
    raise Interrupted(signum)


@contextmanager
def signals_as_errors() -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT raise ``Interrupted`` (main thread only; elsewhere a
    no-op, since Python delivers signals to the main thread)."""
    global _installed, _raised, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _installed:
        _installed += 1
        try:
            yield
        finally:
            _installed -= 1
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _installed, _raised, _pending = 1, False, None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        _installed = 0
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def critical() -> Iterator[None]:
    """Hold signals for the block; raise ``Interrupted`` afterwards if one arrived."""
    global _critical, _pending, _raised
    _critical += 1
    try:
        yield
    except BaseException:
        _critical -= 1
        raise
    _critical -= 1
    if _critical == 0 and _pending is not None:
        signum, _pending = _pending, None
        _raised = True
        raise Interrupted(signum)
