"""The phone's pure parts: command-line overrides and how a call's layout is described."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from sipmob.mn.config import MnConfig
from sipmob.mn.mobility import MOBILE_NODE
from sipmob.mn.phone import PhoneCall, _override
from sipmob.sdp import DuplexSplit, OfferAnswerState, Origin, parse
from sipmob.service.rtp import EndpointStats

CN = parse("v=0\r\no=cn 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
           "m=audio 3456 RTP/AVP 0\r\nm=video 3458 RTP/AVP 34\r\nm=video 0 RTP/AVP 34\r\n")


def args(**kw: Any) -> argparse.Namespace:
    flags = {"control": None, "listen": None, "user": None, "auto_answer": None, "audio_in": None,
             "record": None, "da": None}
    return argparse.Namespace(**{**flags, **kw})


def test_listen_flag_overrides_address_and_port() -> None:
    config = _override(MnConfig(), args(listen="127.0.0.2:5090"))
    assert (config.listen.address, config.listen.port) == ("127.0.0.2", 5090)


def test_control_flag_overrides_the_socket_path() -> None:
    assert _override(MnConfig(), args(control="/tmp/x.sock")).control_path == Path("/tmp/x.sock")


def test_bad_listen_flag_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="--listen must be HOST:PORT"):
        _override(MnConfig(), args(listen="localhost"))


class FakeRtp:
    sending = False

    def stats(self) -> EndpointStats:
        return EndpointStats(1, 10, 1600, 0, 0, {})


class FakeCall:
    state = "confirmed"


def test_calls_say_where_each_stream_is_by_device_name() -> None:
    oa = OfferAnswerState(Origin("mn", 1, 1, "IN", "IP4", "192.0.2.9"))
    layout = (MOBILE_NODE, DuplexSplit("sip:tv@192.0.2.2", "sip:cam@192.0.2.3"), None)
    pc = PhoneCall("1", "sip:cn@192.0.2.1", FakeCall(), oa, CN, CN, FakeRtp(), layout,  # type: ignore[arg-type]
                   names={"sip:tv@192.0.2.2": "TV", "sip:cam@192.0.2.3": "Camera"})
    described = pc.describe()
    assert described["streams"] == [{"media": "audio", "where": "this phone"},
                                    {"media": "video", "where": "out on TV, in from Camera"}]
    assert (described["rtp_sent"], described["rtp_received"], described["sending"]) == (10, 0, False)


class ClosingRtp:
    def __init__(self) -> None:
        self.sending, self.closed = True, False

    def stop_sending(self) -> None:
        self.sending = False

    def close(self) -> None:
        self.closed = True


def ended_phone() -> tuple[Any, PhoneCall]:
    """A phone with one call, for `_ended` alone: no store, no egress, a clock for a reactor."""
    from twisted.internet import task

    from sipmob.mn.phone import Phone

    phone: Any = Phone.__new__(Phone)
    phone.store, phone.egress, phone.reactor, phone._lingering = None, None, task.Clock(), {}
    oa = OfferAnswerState(Origin("mn", 1, 1, "IN", "IP4", "192.0.2.9"))
    pc = PhoneCall("1", "sip:cn@192.0.2.1", FakeCall(), oa, CN, CN, ClosingRtp(),  # type: ignore[arg-type]
                   (MOBILE_NODE, None, None))
    phone.calls = {"1": pc}
    return phone, pc


def test_a_call_the_other_party_ended_still_receives_for_a_moment() -> None:
    # PJSIP may send the old stream's last packets after the BYE that ends it (an INVITE with
    # Replaces moved the call): they must find our socket open, not bounce with ICMP
    from sipmob.mn.phone import MEDIA_LINGER

    phone, pc = ended_phone()
    phone._ended(pc, linger=True)
    assert "1" not in phone.calls and not pc.rtp.sending and not pc.rtp.closed
    phone.reactor.advance(MEDIA_LINGER / 2)
    assert not pc.rtp.closed
    phone.reactor.advance(MEDIA_LINGER)
    assert pc.rtp.closed and not phone._lingering and not phone.reactor.getDelayedCalls()


def test_a_call_we_end_closes_its_socket_at_once_and_stop_closes_a_lingering_one() -> None:
    phone, pc = ended_phone()
    phone._ended(pc)
    assert pc.rtp.closed and not phone.reactor.getDelayedCalls()
    phone, pc = ended_phone()
    phone._ended(pc, linger=True)
    phone._close_lingering()  # as stop() does
    assert pc.rtp.closed and not phone.reactor.getDelayedCalls()
