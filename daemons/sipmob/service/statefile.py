"""Durable daemon state on flash storage: atomic replacement, and few writes.

`atomic_write` never leaves a half-written file: it writes a temporary file beside the target, fsyncs
it, renames it over the target and fsyncs the directory, so a power cut leaves either the old or the
new state. `DebouncedWriter` coalesces bursts of changes into one write after a quiet delay (bounded
by a maximum delay), because an SD card wears out with every rewrite and registrations arrive in
bursts. `Journal` appends small JSON records beside such a file, in batches a fraction of a second
apart, so that a change survives a crash long before the next full rewrite; the owner replays it
after the file at start and empties it whenever the file is rewritten.
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


def read_json(path: str | Path, max_bytes: int | None = None) -> Any | None:
    """The JSON document at `path`, or None when it is absent, unreadable or larger than `max_bytes`
    (logged, never raised)."""
    try:
        with open(path, "rb") as fh:
            if max_bytes is not None and os.fstat(fh.fileno()).st_size > max_bytes:
                log.warning("ignoring state file %s: larger than %d bytes", path, max_bytes)
                return None
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable state file %s: %s", path, exc)
        return None


class Journal:
    """Append-only JSON lines at `path`, written and fsynced at most every `interval` seconds.

    A record is durable at most `interval` seconds (plus one fsync) after `append`. A crash during
    a write leaves at most a broken last line, which `read` skips.
    """

    def __init__(self, reactor: IReactorTime, path: str | Path, interval: float = 0.25) -> None:
        self._reactor = reactor
        self.path = Path(path)
        self._interval = interval
        self._pending: list[bytes] = []
        self._call: IDelayedCall | None = None
        self.size = self.path.stat().st_size if self.path.exists() else 0
        self.writes = 0

    def append(self, records: list[dict[str, Any]]) -> None:
        self._pending.extend(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        if self._pending and (self._call is None or not self._call.active()):
            self._call = self._reactor.callLater(self._interval, self.flush)

    def flush(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.size += len(data)
            self.writes += 1
        except OSError as exc:
            log.error("cannot append to journal %s: %s", self.path, exc)

    def reset(self) -> None:
        """Empty the journal: its records are in the state file just written."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._pending = []
        if self.size or self.path.exists():
            try:
                with open(self.path, "wb") as fh:
                    os.fsync(fh.fileno())
            except OSError as exc:
                log.error("cannot empty journal %s: %s", self.path, exc)
        self.size = 0

    @staticmethod
    def read(path: str | Path, max_bytes: int) -> list[dict[str, Any]]:
        """The records of a journal, in order, reading at most `max_bytes`; broken lines are skipped."""
        try:
            with open(path, "rb") as fh:
                data = fh.read(max_bytes)
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("ignoring unreadable journal %s: %s", path, exc)
            return []
        records = []
        for line in data.split(b"\n"):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # empty, or cut by a crash or by max_bytes
            if isinstance(record, dict):
                records.append(record)
        return records


class DebouncedWriter:
    """Write `produce()` to `path` at most once per `delay` seconds of quiet, and within `max_delay`."""

    def __init__(self, reactor: IReactorTime, path: str | Path, produce: Callable[[], bytes],
                 delay: float = 2.0, max_delay: float = 30.0,
                 on_written: Callable[[], None] | None = None) -> None:
        self._reactor = reactor
        self._on_written = on_written
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

    def flush(self) -> bool:
        """Write now if anything changed (also called on a clean stop); whether it was written."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._first_dirty is None:
            return False
        self._first_dirty = None
        try:
            atomic_write(self.path, self._produce())
            self.writes += 1
        except OSError as exc:
            log.error("cannot write state file %s: %s", self.path, exc)
            return False
        if self._on_written is not None:
            self._on_written()
        return True
