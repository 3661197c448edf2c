"""The phone's answers to the CN's re-INVITEs (`sipmob.mn.remote_offer`) with fakes for the media
and SIP sides: what is refused and how, what the RTP endpoint is told (session timers are the SIP core's:
tests/unit/sip/test_session_refresh.py)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import task

from sipmob.media import codecs as media_codecs
from sipmob.mn.mobility import MOBILE_NODE
from sipmob.mn.phone import PhoneCall
from sipmob.mn.remote_offer import RemoteOffers, stream_status
from sipmob.sdp import Codec, LocalCapabilities, MediaCapability, OfferAnswerState, Origin, answer, parse
from sipmob.service.sipua import SIPError
from sipmob.sip.message import Headers, Request
from sipmob.sip.uri import URI


def cn(version: int, port: int = 4000, fmts: str = "0 8", direction: str = "sendrecv",
       extra: str = "") -> bytes:
    return (f"v=0\r\no=cn 5 {version} IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP {fmts}\r\na={direction}\r\n{extra}").encode()


class FakeRtp:
    def __init__(self) -> None:
        self.port = 5000
        self.sending = False
        self.sending_as: Any = None
        self.destination: Any = None
        self.log: list[tuple[str, Any]] = []

    def start_sending(self, source: Any, codec: Any, pt: int, destination: Any) -> None:
        self.sending, self.sending_as, self.destination = True, (codec, pt), destination
        self.log.append(("start", (codec.name, pt, destination)))

    def stop_sending(self) -> None:
        self.sending = False
        self.log.append(("stop", None))

    def set_rtcp_destination(self, destination: Any) -> None:
        self.rtcp_destination = destination


class FakeCall:
    def __init__(self) -> None:
        self.handlers: list[Any] = []
        self.byes = 0

    def on_reinvite(self, handler: Any) -> None:
        self.reinvite = handler

    def on_request(self, method: str, handler: Any) -> None:
        self.handlers.append((method, handler))

    def on_terminated(self, handler: Any) -> None:
        self.handlers.append(handler)

    def bye(self) -> Any:
        from twisted.internet import defer
        self.byes += 1
        return defer.succeed(None)


class FakePhone:
    def __init__(self) -> None:
        self.reactor = task.Clock()
        self.codecs = tuple(media_codecs.lookup(n, 8000) for n in ("PCMU", "PCMA"))
        self.calls: dict[str, PhoneCall] = {}

    def _local_caps(self) -> LocalCapabilities:
        return LocalCapabilities((MediaCapability("audio", (Codec("PCMU", 8000), Codec("PCMA", 8000))),))

    def _source(self, sample_rate: int = 8000) -> Any:
        return object()


def request(body: bytes = b"", **headers: str) -> Request:
    h = Headers([(k.replace("_", "-"), v) for k, v in headers.items()])
    return Request("INVITE", URI.parse("sip:mn@127.0.0.1"), headers=h, body=body)


@pytest.fixture
def setup() -> tuple[RemoteOffers, PhoneCall, FakePhone]:
    phone = FakePhone()
    oa = OfferAnswerState(Origin("sipmob", 1, 1, "IN", "IP4", "127.0.0.1"))
    first = parse(cn(1))
    oa.receive_offer(first)
    oa.create_answer(answer(first, phone._local_caps(), origin=oa.origin, connection_address="127.0.0.1",
                            ports={"audio": 5000}))
    assert oa.local is not None
    pc = PhoneCall("1", "sip:cn@127.0.0.2", FakeCall(), oa, first, oa.local, FakeRtp(),  # type: ignore[arg-type]
                   (MOBILE_NODE,))
    phone.calls["1"] = pc
    offers = RemoteOffers(phone)  # type: ignore[arg-type]
    offers.attach(pc)
    return offers, pc, phone


def test_hold_stops_our_audio_and_resume_starts_it_at_the_new_port(setup: Any) -> None:
    offers, pc, _ = setup
    body = offers.answer(pc, pc.call, request(cn(2, direction="sendonly")))
    assert b"a=recvonly" in body and pc.rtp.log[-1] == ("stop", None)
    assert stream_status(pc, 0) == {"codec": "PCMU/8000", "hold": "held by the remote party"}
    offers.answer(pc, pc.call, request(cn(3, port=4444, fmts="8")))
    assert pc.rtp.log[-1] == ("start", ("PCMA", 8, ("127.0.0.2", 4444)))
    assert stream_status(pc, 0) == {"codec": "PCMA/8000"}


def test_a_refresh_leaves_the_stream_alone(setup: Any) -> None:
    offers, pc, _ = setup
    offers.answer(pc, pc.call, request(cn(2, port=4444)))
    before = list(pc.rtp.log)
    again = offers.answer(pc, pc.call, request(cn(2, port=4444)))
    assert pc.rtp.log == before and b"o=sipmob 1 1 " in again  # our version unchanged throughout


def test_refusals(setup: Any) -> None:
    offers, pc, _ = setup
    with pytest.raises(SIPError) as unreadable:
        offers.answer(pc, pc.call, request(b"v=0\r\nnonsense"))
    assert unreadable.value.status == 488
    pc.busy = True
    with pytest.raises(SIPError) as busy:
        offers.answer(pc, pc.call, request(cn(2)))
    assert busy.value.status == 491
    pc.busy = False
    pc.oa.create_offer(pc.oa.local)  # our own offer outstanding: glare
    with pytest.raises(SIPError) as glare:
        offers.answer(pc, pc.call, request(cn(2)))
    assert glare.value.status == 491
    pc.oa.rollback()
    assert offers.answer(pc, pc.call, request()) == pc.oa.local.to_bytes()  # no offer: ours again


def test_rtcp_goes_where_the_cns_a_rtcp_says_else_to_rtp_port_plus_one(setup: Any) -> None:
    offers, pc, _ = setup
    offers.answer(pc, pc.call, request(cn(2, port=4444, extra="a=rtcp:6001 IN IP4 127.0.0.9\r\n")))
    assert pc.rtp.destination == ("127.0.0.2", 4444)
    assert pc.rtp.rtcp_destination == ("127.0.0.9", 6001)  # RFC 3605, address included
    offers.answer(pc, pc.call, request(cn(3, port=4446, extra="a=rtcp:7001\r\n")))
    assert pc.rtp.rtcp_destination == ("127.0.0.2", 7001)  # the RTP address when none is stated
    offers.answer(pc, pc.call, request(cn(4, port=4448)))
    assert pc.rtp.rtcp_destination == ("127.0.0.2", 4449)
