"""Durable daemon state on flash storage: atomic replacement, and few writes.

`atomic_write` never leaves a half-written file: it writes a temporary file beside the target, fsyncs
it, renames it over the target and fsyncs the directory, so a power cut leaves either the old or the
new state. `DebouncedWriter` coalesces bursts of changes into one write after a quiet delay (bounded
by a maximum delay), because an SD card wears out with every rewrite and registrations arrive in
bursts.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

log = logging.getLogger("sipmob.service")


def atomic_write(path: str | Path, data: bytes, mode: int = 0o640) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(path: str | Path) -> Any | None:
    """The JSON document at `path`, or None when it is absent or unreadable (logged, never raised)."""
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


class DebouncedWriter:
    """Write `produce()` to `path` at most once per `delay` seconds of quiet, and within `max_delay`."""

    def __init__(self, reactor: IReactorTime, path: str | Path, produce: Callable[[], bytes],
                 delay: float = 2.0, max_delay: float = 30.0) -> None:
        self._reactor = reactor
        self.path = Path(path)
        self._produce = produce
        self._delay = delay
        self._max_delay = max_delay
        self._call: IDelayedCall | None = None
        self._first_dirty: float | None = None
        self.writes = 0

    def mark_dirty(self) -> None:
        now = self._reactor.seconds()
        if self._first_dirty is None:
            self._first_dirty = now
        when = min(now + self._delay, self._first_dirty + self._max_delay)
        if self._call is not None and self._call.active():
            self._call.reset(max(0.0, when - now))
        else:
            self._call = self._reactor.callLater(max(0.0, when - now), self.flush)

    @property
    def dirty(self) -> bool:
        return self._first_dirty is not None

    def flush(self) -> None:
        """Write now if anything changed (also called on a clean stop)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._first_dirty is None:
            return
        self._first_dirty = None
        try:
            atomic_write(self.path, self._produce())
            self.writes += 1
        except OSError as exc:
            log.error("cannot write state file %s: %s", self.path, exc)
