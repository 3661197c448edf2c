"""Driving the deadlines of a sans-I/O protocol machine from the Twisted reactor.

A protocol core exposes ``get_timer() -> float | None`` (the earliest absolute deadline, in the same
clock as ``reactor.seconds()``) and ``handle_timer(now)``. `TimerDriver` keeps exactly one
``callLater`` armed for that deadline and re-arms it after every interaction, so an idle daemon has at
most one pending timer and never polls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class TimerDriver:
    def __init__(self, reactor: IReactorTime, get_timer: Callable[[], float | None],
                 handle_timer: Callable[[float], Any],
                 after: Callable[[], Any] | None = None) -> None:
        self._reactor = reactor
        self._get_timer = get_timer
        self._handle_timer = handle_timer
        self._after = after
        self._call: IDelayedCall | None = None
        self._deadline: float | None = None

    def update(self) -> None:
        """Re-arm for the core's current earliest deadline; call after anything that touched it."""
        deadline = self._get_timer()
        if deadline == self._deadline and self._call is not None and self._call.active():
            return
        self.cancel()
        self._deadline = deadline
        if deadline is not None:
            delay = max(0.0, deadline - self._reactor.seconds())
            self._call = self._reactor.callLater(delay, self._fire)

    def cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._deadline = None

    def _fire(self) -> None:
        self._call = None
        self._deadline = None
        self._handle_timer(self._reactor.seconds())
        if self._after is not None:
            self._after()
        self.update()
