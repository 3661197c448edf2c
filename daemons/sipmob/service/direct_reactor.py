"""An epoll reactor that hands a datagram socket's wake-ups straight to its reader.

Responsible for: dispatching the events of a descriptor whose selectable carries a `read_direct`
method by calling it, without Twisted's per-event machinery (a log context pushed and popped
around `_doReadOrWrite`, the selectable's `logPrefix` and `fileno` asked each time): for a daemon
answering one small datagram per wake-up, that machinery costs as much as the answer. Everything
else (TCP, timers, signals, other descriptors) goes through `EPollReactor` unchanged.

Not here: what is read, or how (the daemon's protocol sets `read_direct` on its port); the main
loop itself (`sipmob.service.daemon`).
"""

from __future__ import annotations

import errno
import logging
import select
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.python.log import callWithLogger

log = logging.getLogger("sipmob.service")

_WRITE = select.EPOLLOUT


class DirectReactor(EPollReactor):
    """`EPollReactor`, calling ``selectable.read_direct()`` for the descriptors that have one."""

    def doPoll(self, timeout: float | None) -> None:
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            read = getattr(selectable, "read_direct", None)
            if read is not None and not event & _WRITE:
                # Errors and hang-ups too: the read takes any pending error off the socket.
                try:
                    read()
                except Exception:
                    log.exception("reading descriptor %d failed", fd)
                continue
            callWithLogger(selectable, self._doReadOrWrite, selectable, fd, event)  # type: ignore[no-untyped-call]

    doIteration = doPoll


def install() -> Any:
    """Install `DirectReactor` as Twisted's reactor; call before anything imports the reactor."""
    from twisted.internet.main import installReactor

    reactor = DirectReactor()  # type: ignore[no-untyped-call]
    installReactor(reactor)  # type: ignore[no-untyped-call]
    return reactor
