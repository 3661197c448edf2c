"""The reactor side of sans-I/O deadlines: one armed call, re-armed as the core's deadline moves."""

from __future__ import annotations

from twisted.internet.task import Clock

from sipmob.service.timers import TimerDriver


class Core:
    def __init__(self) -> None:
        self.deadlines: list[float] = []
        self.fired: list[float] = []

    def get_timer(self) -> float | None:
        return min(self.deadlines) if self.deadlines else None

    def handle_timer(self, now: float) -> None:
        due = [d for d in self.deadlines if d <= now]
        self.deadlines = [d for d in self.deadlines if d > now]
        self.fired.extend(due)


def test_no_deadline_arms_nothing() -> None:
    clock, core = Clock(), Core()
    TimerDriver(clock, core.get_timer, core.handle_timer).update()
    assert clock.getDelayedCalls() == []


def test_fires_at_deadline_and_rearms_for_the_next() -> None:
    clock, core = Clock(), Core()
    driver = TimerDriver(clock, core.get_timer, core.handle_timer)
    core.deadlines = [5.0, 2.0]
    driver.update()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(2)
    assert core.fired == [2.0]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(3)
    assert core.fired == [2.0, 5.0]
    assert clock.getDelayedCalls() == []


def test_earlier_deadline_replaces_armed_call() -> None:
    clock, core = Clock(), Core()
    driver = TimerDriver(clock, core.get_timer, core.handle_timer)
    core.deadlines = [10.0]
    driver.update()
    core.deadlines.append(1.0)
    driver.update()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(1)
    assert core.fired == [1.0]


def test_past_deadline_fires_immediately_and_after_hook_runs() -> None:
    clock, core = Clock(), Core()
    clock.advance(100)
    calls: list[int] = []
    driver = TimerDriver(clock, core.get_timer, core.handle_timer, after=lambda: calls.append(1))
    core.deadlines = [50.0]
    driver.update()
    clock.advance(0)
    assert core.fired == [50.0] and calls == [1]
