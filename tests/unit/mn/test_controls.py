"""The control socket's event log: numbering, long polls, bounds."""

from __future__ import annotations

import pytest
from twisted.internet import task

from sipmob.mn.control import CommandError
from sipmob.mn.controls import EventLog


def test_poll_answers_at_once_with_what_is_newer() -> None:
    log = EventLog(task.Clock())
    log.announce("incoming", call="1")
    log.announce("state", call="1", state="established")
    found = log.poll(1, 10)
    assert [e["seq"] for e in found["events"]] == [2] and found["next"] == 2


def test_poll_from_now_waits_for_the_next_event() -> None:
    clock = task.Clock()
    log = EventLog(clock)
    log.announce("incoming", call="1")
    d = log.poll(None, 10)
    got: list[dict[str, object]] = []
    d.addCallback(got.append)
    assert not got
    log.announce("state", call="1", state="ended")
    assert [e["event"] for e in got[0]["events"]] == ["state"]  # type: ignore[union-attr]


def test_poll_times_out_empty_and_the_wait_is_capped() -> None:
    clock = task.Clock()
    log = EventLog(clock)
    got: list[dict[str, object]] = []
    log.poll(None, 10_000).addCallback(got.append)
    clock.advance(60)
    assert got == [{"events": [], "next": 0}]


def test_waiters_are_bounded() -> None:
    log = EventLog(task.Clock(), max_waiters=2)
    log.poll(None, 5)
    log.poll(None, 5)
    with pytest.raises(CommandError):
        log.poll(None, 5)


def test_the_log_keeps_only_the_last_events() -> None:
    log = EventLog(task.Clock(), size=3)
    for i in range(10):
        log.announce("state", call=str(i))
    assert [e["seq"] for e in log.poll(0, 0)["events"]] == [8, 9, 10]


def test_a_number_from_a_previous_phone_means_from_now_on() -> None:
    clock = task.Clock()
    log = EventLog(clock)
    got: list[dict[str, object]] = []
    log.poll(500, 10).addCallback(got.append)
    log.announce("incoming", call="1")
    assert [e["seq"] for e in got[0]["events"]] == [1]  # type: ignore[union-attr]
