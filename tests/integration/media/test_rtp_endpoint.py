"""RtpEndpoint on the real reactor and real loopback sockets: streams, recording, a destination switch.

Two or three endpoints in this process exchange RTP over 127.0.0.1; one test checks the wire with a
plain socket and `struct`, independently of `sipmob.media.rtp`. Pass/fail is on what arrives
(counts, sequence numbers, timestamps, recorded samples), never on how long it took.
"""

from __future__ import annotations

import socket
import struct
import time
import wave
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from twisted.internet import reactor

from sipmob.media.codecs import PCMA, PCMU
from sipmob.media.recorder import WavRecorder
from sipmob.media.rtcp import Bye, RtcpPacket, SenderReport, SourceDescription
from sipmob.media.rtp import RtpPacket
from sipmob.media.sources import ToneSource
from sipmob.service.rtp import RtpEndpoint

Addr = tuple[str, int]


def spin_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        reactor.iterate(0.002)
    assert condition(), "condition not met in time"


def settle(seconds: float = 0.1) -> None:
    """Let datagrams already on the loopback be read."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reactor.iterate(0.002)


@pytest.fixture
def endpoints() -> Iterator[Callable[[], RtpEndpoint]]:
    made: list[RtpEndpoint] = []

    def make() -> RtpEndpoint:
        ep = RtpEndpoint(reactor, ("127.0.0.1", 0))
        made.append(ep)
        return ep
    yield make
    for ep in made:
        ep.close()
    settle(0.01)


def arrivals(ep: RtpEndpoint) -> list[RtpPacket]:
    got: list[RtpPacket] = []
    ep.on_packet = lambda packet, addr, now: got.append(packet)
    return got


def here(ep: RtpEndpoint) -> Addr:
    return ("127.0.0.1", ep.port)


def test_two_second_tone_arrives_complete_in_order(endpoints: Callable[[], RtpEndpoint],
                                                   tmp_path: Path) -> None:
    sender, receiver = endpoints(), endpoints()
    got = arrivals(receiver)
    recorder = WavRecorder(tmp_path / "rx.wav")
    receiver.attach_recorder(recorder, {0: PCMU})
    sender.start_sending(ToneSource(440, duration=2.0), PCMU, 0, here(receiver))
    spin_until(lambda: not sender.sending, timeout=10)
    spin_until(lambda: len(got) >= 100, timeout=2)
    settle()
    recorder.close()

    assert len(got) == 100 == sender.stats().sent_packets
    assert [(p.sequence - got[0].sequence) % 65536 for p in got] == list(range(100))
    assert [(p.timestamp - got[0].timestamp) % 2**32 for p in got] == [160 * i for i in range(100)]
    report = receiver.stats().sources[sender.ssrc]
    assert (report.received, report.lost, report.duplicates) == (100, 0, 0)
    with wave.open(str(tmp_path / "rx.wav"), "rb") as wav:
        assert wav.getframerate() == 8000
        assert wav.getnframes() == 16000


def test_destination_switch_mid_stream_loses_nothing(endpoints: Callable[[], RtpEndpoint]) -> None:
    sender, old, new = endpoints(), endpoints(), endpoints()
    at_old, at_new = arrivals(old), arrivals(new)
    sender.start_sending(ToneSource(440), PCMU, 0, here(old))
    spin_until(lambda: len(at_old) >= 25)
    sender.set_destination(here(new))
    spin_until(lambda: len(at_new) >= 25)
    sender.stop_sending()
    settle()

    both = at_old + at_new
    assert len(both) == sender.stats().sent_packets
    assert [(p.sequence - both[0].sequence) % 65536 for p in both] == list(range(len(both)))
    # The gap at the switch, in media time, is exactly one packet interval.
    assert (at_new[0].timestamp - at_old[-1].timestamp) % 2**32 == 160
    assert {p.ssrc for p in both} == {sender.ssrc}


def test_recording_across_a_switch_of_senders_keeps_the_timeline(endpoints: Callable[[], RtpEndpoint],
                                                                   tmp_path: Path) -> None:
    first, second, receiver = endpoints(), endpoints(), endpoints()
    got = arrivals(receiver)
    recorder = WavRecorder(tmp_path / "rx.wav")
    receiver.attach_recorder(recorder, {0: PCMU, 8: PCMA})
    first.start_sending(ToneSource(440, duration=0.5), PCMU, 0, here(receiver))
    spin_until(lambda: not first.sending)
    second.start_sending(ToneSource(440, duration=0.5), PCMA, 8, here(receiver))
    spin_until(lambda: not second.sending)
    spin_until(lambda: len(got) >= 50)
    settle()
    recorder.close()
    assert {p.ssrc for p in got} == {first.ssrc, second.ssrc}
    with wave.open(str(tmp_path / "rx.wav"), "rb") as wav:
        samples = array("h", wav.readframes(wav.getnframes()))
    # Each sender's half second is recorded whole and unbroken: the only silence is the handover.
    assert len(samples) >= 8000
    assert not has_silent_frame(samples[:4000])
    assert not has_silent_frame(samples[-4000:])


def has_silent_frame(samples: array[int]) -> bool:
    quiet = 0
    for s in samples:
        quiet = quiet + 1 if abs(s) < 100 else 0
        if quiet >= 160:
            return True
    return False


def test_malformed_datagrams_are_counted_and_the_stream_survives(
        endpoints: Callable[[], RtpEndpoint]) -> None:
    sender, receiver = endpoints(), endpoints()
    got = arrivals(receiver)
    junk = [b"", b"\x00", b"\x40" + bytes(20), bytes([0x8F]) + bytes(15), bytes([0xA0]) + bytes(11) + b"\xff"]
    sender.start_sending(ToneSource(440, duration=0.4), PCMU, 0, here(receiver))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        for data in junk:
            raw.sendto(data, here(receiver))
            reactor.iterate(0.005)
    spin_until(lambda: not sender.sending)
    spin_until(lambda: len(got) >= 20)
    settle()
    assert receiver.stats().malformed == len(junk)
    assert len(got) == 20
    assert receiver.stats().sources[sender.ssrc].lost == 0


def test_the_wire_carries_rtp_version_2_headers_as_an_independent_reader_sees_them(
        endpoints: Callable[[], RtpEndpoint]) -> None:
    sender = endpoints()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        raw.setblocking(False)
        sender.start_sending(ToneSource(1000), PCMA, 8, raw.getsockname())
        received: list[bytes] = []

        def read() -> bool:
            try:
                received.append(raw.recv(2048))
            except BlockingIOError:
                pass
            return len(received) >= 10
        spin_until(read)
        sender.stop_sending()
    headers = [struct.unpack("!BBHII", data[:12]) for data in received]
    assert all(first == 0x80 and len(data) == 12 + 160 for (first, *_), data in zip(headers, received,
                                                                                      strict=True))
    assert [second & 0x7F for _, second, *_ in headers] == [8] * 10
    assert headers[0][1] & 0x80  # the marker on the first packet of the stream
    assert {ssrc for *_, ssrc in headers} == {sender.ssrc}


def test_idle_endpoint_schedules_nothing_on_the_reactor(endpoints: Callable[[], RtpEndpoint]) -> None:
    before = len(reactor.getDelayedCalls())
    ep = endpoints()
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 9))
    assert len(reactor.getDelayedCalls()) == before + 1
    ep.stop_sending()
    assert len(reactor.getDelayedCalls()) == before


def test_ipv6_loopback_endpoints_exchange_a_stream(endpoints: Callable[[], RtpEndpoint]) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sender, receiver = RtpEndpoint(reactor, ("::1", 0)), RtpEndpoint(reactor, ("::1", 0))
    except Exception as exc:  # any bind failure means no ::1 here
        pytest.skip(f"cannot bind ::1: {exc}")
    try:
        got = arrivals(receiver)
        sender.start_sending(ToneSource(duration=0.2), PCMU, 0, ("::1", receiver.port))
        spin_until(lambda: len(got) >= 10)
        assert receiver.stats().sources[sender.ssrc].lost == 0
    finally:
        sender.close()
        receiver.close()



def test_rtcp_reports_flow_both_ways_and_give_a_round_trip() -> None:
    sender = RtpEndpoint(reactor, ("127.0.0.1", 0), rtcp=True, cname="phone@127.0.0.1", rtcp_interval=0.2)
    receiver = RtpEndpoint(reactor, ("127.0.0.1", 0), rtcp=True, cname="tv@127.0.0.1", rtcp_interval=0.2)
    at_receiver: list[RtcpPacket] = []
    receiver.on_rtcp = lambda packets, addr, now: at_receiver.extend(packets)
    try:
        assert (sender.port % 2, sender.rtcp_port) == (0, sender.port + 1)
        sender.start_sending(ToneSource(440), PCMU, 0, here(receiver))
        spin_until(lambda: sender.stats().round_trip is not None
                   and any(isinstance(p, SenderReport) for p in at_receiver))
        sender.stop_sending()
        about_sender = sender.rtcp.reports_about_us[receiver.ssrc] if sender.rtcp else None
        assert about_sender is not None and about_sender.ssrc == sender.ssrc
        assert about_sender.cumulative_lost == 0
        cnames = {c.cname for p in at_receiver if isinstance(p, SourceDescription) for c in p.chunks}
        assert cnames == {"phone@127.0.0.1"}
        sender.close()
        spin_until(lambda: any(isinstance(p, Bye) and sender.ssrc in p.ssrcs for p in at_receiver))
    finally:
        sender.close()
        receiver.close()
