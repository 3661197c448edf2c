"""The daemon's side of systemd: readiness and status notification, the watchdog, the journal.

Everything degrades to nothing outside systemd: with no ``NOTIFY_SOCKET`` the notifier is silent, with
no ``WATCHDOG_USEC`` there is no watchdog timer (an idle daemon must not wake up for nothing), and
without a journal stream logs go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sipmob.service")

try:  # python3-systemd is a hard dependency of the packages, but not of a developer checkout.
    from systemd import daemon as _sd_daemon
    from systemd import journal as _sd_journal
except ImportError:  # pragma: no cover - exercised only where python3-systemd is absent
    _sd_daemon = None
    _sd_journal = None


class Notifier:
    """sd_notify(3) through python-systemd; a no-op when not started by systemd."""

    def __init__(self, send: Callable[[str], Any] | None = None) -> None:
        if send is None and os.environ.get("NOTIFY_SOCKET") and _sd_daemon is not None:
            send = _sd_daemon.notify
        self._send = send
        self.last_status = ""

    @property
    def active(self) -> bool:
        return self._send is not None

    def notify(self, line: str) -> None:
        if self._send is not None:
            self._send(line)

    def ready(self, status: str = "") -> None:
        self.notify(f"READY=1\nSTATUS={status}" if status else "READY=1")

    def status(self, text: str) -> None:
        if text != self.last_status:
            self.last_status = text
            self.notify(f"STATUS={text}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=), or None when there is no watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.1)
    except ValueError:
        return None


def journal_is_stderr() -> bool:
    """True when stderr is connected to the journal (systemd.exec(5), $JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream or _sd_journal is None:
        return False
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class FieldsFormatter(logging.Formatter):
    """Stderr format: the message, then the structured SIPMOB_* fields as key=value."""

    def __init__(self, name: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s " + name + ": %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = [f"{k.removeprefix('SIPMOB_').lower()}={v}" for k, v in sorted(vars(record).items())
                  if k.startswith("SIPMOB_")]
        return f"{text} [{' '.join(fields)}]" if fields else text


def setup_logging(name: str, level: str = "info") -> None:
    """Send the `sipmob` loggers to the journal under systemd, to stderr otherwise.

    Structured fields travel as ``extra={"SIPMOB_CALL_ID": ...}`` on a log call; the journal keeps
    them as fields a person can filter on (``journalctl SIPMOB_DEVICE=tv``).
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler: logging.Handler
    if journal_is_stderr():
        assert _sd_journal is not None
        handler = _sd_journal.JournalHandler(SYSLOG_IDENTIFIER=name)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(FieldsFormatter(name))
    root.addHandler(handler)
    root.setLevel(level.upper())
