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


def _sdp(extra_pt: str = "", extra: str = "") -> object:
    from sipmob.sdp import parse

    return parse("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                 f"m=audio 4000 RTP/AVP 0{extra_pt}\r\na=rtpmap:0 PCMU/8000\r\n{extra}")


@pytest.mark.parametrize(("theirs", "layout", "sending", "expected"), [
    (" 96", ("mn",), True, 96),  # both offered it: RFC 4733 with the CN's payload type
    ("", ("mn",), True, None),  # the CN did not: SIP INFO
    (" 96", ("sip:desk@h",), True, None),  # the audio is on a device: SIP INFO
    (" 96", ("mn",), False, None),  # our stream is not running (on hold): SIP INFO
])
def test_dtmf_method_follows_the_negotiation_and_where_the_audio_is(
        theirs: str, layout: tuple[str, ...], sending: bool, expected: int | None) -> None:
    from types import SimpleNamespace

    from sipmob.mn.controls import CallControls
    from sipmob.mn.mobility import MOBILE_NODE

    ours = _sdp(" 101", "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")
    cn = _sdp(theirs, "a=rtpmap:96 telephone-event/8000\r\n" if theirs else "")
    phone = SimpleNamespace(audio_index=lambda pc: 0, calls={})
    pc = SimpleNamespace(id="1", oa=SimpleNamespace(local=ours), cn_sdp=cn,
                         layout=tuple(MOBILE_NODE if x == "mn" else x for x in layout),
                         rtp=SimpleNamespace(sending=sending))
    controls = CallControls(phone, task.Clock())  # type: ignore[arg-type]
    assert controls.telephone_event_pt(pc) == expected  # type: ignore[arg-type]
