"""RtpEndpoint on a fake reactor: pacing by schedule, destination switch, idle timers, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error, task

from sipmob.media.codecs import PCMA, PCMU
from sipmob.media.recorder import WavRecorder
from sipmob.media.rtcp import Bye, SenderReport, SourceDescription, parse_compound
from sipmob.media.rtp import RtpPacket, parse
from sipmob.media.sources import ToneSource
from sipmob.service.rtp import RtpEndpoint


class FakeUdp:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


class FakePort:
    def __init__(self, port: int) -> None:
        self.port = port
        self.closed = False

    def getHost(self) -> Any:
        return self

    def stopListening(self) -> None:
        self.closed = True


class FakeReactor(task.Clock):
    """A clock whose UDP ports share one fake wire; port 0 binds the next free number from 40000."""

    def __init__(self, taken: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.wire = FakeUdp()
        self.rtcp_wire = FakeUdp()
        self.protocols: dict[int, Any] = {}
        self.taken = set(taken)
        self._next = 40000

    @property
    def protocol(self) -> Any:
        return self.protocols[min(self.protocols)]

    def listenUDP(self, port: int, protocol: Any, interface: str = "") -> FakePort:
        if port == 0:
            while self._next in self.taken or self._next in self.protocols:
                self._next += 1
            port = self._next
            self._next += 1
        elif port in self.taken or port in self.protocols:
            raise error.CannotListenError(interface, port, OSError("in use"))
        self.protocols[port] = protocol
        protocol.transport = self.rtcp_wire if len(self.protocols) % 2 == 0 else self.wire
        fake = FakePort(port)
        fake.stopListening = lambda: self.protocols.pop(port, None)  # type: ignore[method-assign]
        return fake


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


def endpoint(reactor: FakeReactor) -> RtpEndpoint:
    return RtpEndpoint(reactor, ("127.0.0.1", 0), monotonic=reactor.seconds)


def sent(reactor: FakeReactor) -> list[RtpPacket]:
    return [parse(data) for data, _ in reactor.wire.sent]


def run(reactor: FakeReactor, seconds: float, step: float = 0.02) -> None:
    for _ in range(round(seconds / step)):
        reactor.advance(step)


def test_idle_endpoint_has_no_timer(reactor: FakeReactor) -> None:
    endpoint(reactor)
    assert reactor.getDelayedCalls() == []


def test_stopped_endpoint_leaves_no_timer(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 0.1)
    ep.stop_sending()
    assert reactor.getDelayedCalls() == []
    assert not ep.sending


def test_one_packet_per_ptime_with_consecutive_numbers(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 1.0)
    packets = sent(reactor)
    assert len(packets) == 51  # one at t=0, then one per 20 ms up to and including t=1.0
    assert all(p.ssrc == ep.ssrc and p.payload_type == 0 and len(p.payload) == 160 for p in packets)
    assert [(p.sequence - packets[0].sequence) % 65536 for p in packets] == list(range(51))
    assert [(p.timestamp - packets[0].timestamp) % 2**32 for p in packets] == [160 * i for i in range(51)]


def test_a_stalled_reactor_catches_up_two_packets_per_tick(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    reactor.advance(0.1)  # five intervals at once, as after a stall
    assert len(reactor.wire.sent) == 3
    run(reactor, 0.1)
    assert len(reactor.wire.sent) == 11  # caught up by t=0.2


def test_set_destination_moves_the_stream_without_resetting_it(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 0.2)
    ep.set_destination(("127.0.0.1", 6000))
    run(reactor, 0.2)
    addrs = [addr for _, addr in reactor.wire.sent]
    packets = sent(reactor)
    switch = addrs.index(("127.0.0.1", 6000))
    assert set(addrs[switch:]) == {("127.0.0.1", 6000)}
    assert packets[switch].sequence == (packets[switch - 1].sequence + 1) % 65536
    assert packets[switch].timestamp == (packets[switch - 1].timestamp + 160) % 2**32
    assert packets[switch].ssrc == packets[0].ssrc
    assert not packets[switch].marker


def test_restarting_keeps_ssrc_and_continues_sequence(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 0.1)
    ep.stop_sending()
    reactor.advance(5)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    packets = sent(reactor)
    assert packets[-1].ssrc == packets[0].ssrc
    assert packets[-1].sequence == (packets[-2].sequence + 1) % 65536
    assert packets[-1].marker


def test_changing_codec_keeps_the_ssrc_and_sequence(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 0.04)
    ep.start_sending(ToneSource(), PCMA, 8, ("127.0.0.1", 5000))
    packets = sent(reactor)
    assert packets[-1].payload_type == 8
    assert packets[-1].ssrc == packets[0].ssrc
    assert packets[-1].sequence == (packets[-2].sequence + 1) % 65536


def test_source_at_another_rate_is_refused(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    with pytest.raises(ValueError):
        ep.start_sending(ToneSource(sample_rate=16000), PCMU, 0, ("127.0.0.1", 5000))


def test_source_end_stops_sending_and_tells_the_owner(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ended: list[bool] = []
    ep.on_source_end = lambda: ended.append(True)
    ep.start_sending(ToneSource(duration=0.1), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 0.5)
    assert len(reactor.wire.sent) == 5
    assert ended == [True]
    assert reactor.getDelayedCalls() == []


def test_received_packets_are_counted_per_ssrc(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    for seq in (0, 1, 3):
        reactor.protocol.datagramReceived(RtpPacket(0, seq, 160 * seq, 77).to_bytes(), ("127.0.0.1", 9))
        reactor.advance(0.02)
    report = ep.stats().sources[77]
    assert (report.received, report.lost) == (3, 1)


def test_malformed_datagrams_are_counted_and_dropped(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    seen: list[RtpPacket] = []
    ep.on_packet = lambda packet, addr, now: seen.append(packet)
    for junk in (b"", b"\x00" * 20, b"\x80\x00\x00"):
        reactor.protocol.datagramReceived(junk, ("127.0.0.1", 9))
    assert ep.stats().malformed == 3
    assert seen == []
    assert ep.stats().sources == {}


def test_a_failing_packet_handler_does_not_stop_reception(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)

    def broken(packet: RtpPacket, addr: Any, now: float) -> None:
        raise RuntimeError("handler bug")
    ep.on_packet = broken
    reactor.protocol.datagramReceived(RtpPacket(0, 1, 0, 5).to_bytes(), ("127.0.0.1", 9))
    reactor.protocol.datagramReceived(RtpPacket(0, 2, 160, 5).to_bytes(), ("127.0.0.1", 9))
    assert ep.stats().sources[5].received == 2


def test_attached_recorder_gets_decoded_audio_of_its_payload_types(reactor: FakeReactor,
                                                                   tmp_path: Path) -> None:
    ep = endpoint(reactor)
    recorder = WavRecorder(tmp_path / "r.wav")
    ep.attach_recorder(recorder, {0: PCMU})
    reactor.protocol.datagramReceived(RtpPacket(0, 1, 0, 5, b"\xff" * 160).to_bytes(), ("127.0.0.1", 9))
    reactor.protocol.datagramReceived(RtpPacket(8, 2, 160, 5, b"\xd5" * 160).to_bytes(), ("127.0.0.1", 9))
    assert recorder.samples == 160
    assert ep.detach_recorder() is recorder
    recorder.close()


def test_close_stops_the_timer_and_the_port(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    ep.close()
    assert reactor.getDelayedCalls() == []
    assert reactor.protocols == {}


# --- RTCP ------------------------------------------------------------------------------------------

def rtcp_endpoint(reactor: FakeReactor) -> RtpEndpoint:
    return RtpEndpoint(reactor, ("127.0.0.1", 0), monotonic=reactor.seconds, wallclock=reactor.seconds,
                       rtcp=True, cname="me@127.0.0.1")


def test_rtcp_binds_an_even_port_and_the_odd_one_above() -> None:
    reactor = FakeReactor()
    ep = rtcp_endpoint(reactor)
    assert (ep.port, ep.rtcp_port) == (40000, 40001)


def test_rtcp_moves_up_from_an_odd_port_to_the_next_pair() -> None:
    reactor = FakeReactor(taken=(40000,))
    ep = rtcp_endpoint(reactor)
    assert (ep.port, ep.rtcp_port) == (40002, 40003)


def test_rtcp_skips_a_pair_whose_odd_port_is_taken() -> None:
    reactor = FakeReactor(taken=(40001, 40003))
    ep = rtcp_endpoint(reactor)
    assert (ep.port, ep.rtcp_port) == (40004, 40005)
    assert sorted(reactor.protocols) == [40004, 40005]


def test_a_sender_reports_to_the_destination_port_plus_one() -> None:
    reactor = FakeReactor()
    ep = rtcp_endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 7.0)
    assert reactor.rtcp_wire.sent
    data, addr = reactor.rtcp_wire.sent[0]
    assert addr == ("127.0.0.1", 5001)
    report, sdes = parse_compound(data)
    assert isinstance(report, SenderReport) and report.ssrc == ep.ssrc
    assert isinstance(sdes, SourceDescription) and sdes.chunks[0].cname == "me@127.0.0.1"


def test_sr_timestamp_matches_the_stream_at_that_moment() -> None:
    reactor = FakeReactor()
    ep = rtcp_endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    first = sent(reactor)[0]
    run(reactor, 7.0)
    report = parse_compound(reactor.rtcp_wire.sent[0][0])[0]
    assert isinstance(report, SenderReport)
    elapsed = report.ntp_timestamp / 2**32 - 2_208_988_800
    assert (report.rtp_timestamp - first.timestamp) % 2**32 == pytest.approx(elapsed * 8000, abs=1)


def test_rtcp_timer_stops_once_the_endpoint_is_idle() -> None:
    reactor = FakeReactor()
    ep = rtcp_endpoint(reactor)
    ep.start_sending(ToneSource(duration=1.0), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 30.0, step=0.5)
    assert reactor.getDelayedCalls() == []


def test_idle_rtcp_endpoint_has_no_timer() -> None:
    reactor = FakeReactor()
    rtcp_endpoint(reactor)
    assert reactor.getDelayedCalls() == []


def test_malformed_rtcp_is_counted_and_dropped() -> None:
    reactor = FakeReactor()
    ep = rtcp_endpoint(reactor)
    reactor.protocols[ep.rtcp_port].datagramReceived(b"\x80\xc9\x00\x05", ("127.0.0.1", 9))
    assert (ep.stats().rtcp_malformed, ep.stats().rtcp_received) == (1, 0)


def test_close_says_bye_after_a_stream() -> None:
    reactor = FakeReactor()
    ep = rtcp_endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 0.1)
    ep.close()
    last = parse_compound(reactor.rtcp_wire.sent[-1][0])
    assert last[-1] == Bye((ep.ssrc,))


@pytest.mark.parametrize("destination", [("phone.local", 5000), ("::1", 5000), ("127.0.0.1", 0)])
def test_a_destination_the_socket_cannot_reach_is_refused_up_front(reactor: FakeReactor,
                                                                   destination: tuple[str, int]) -> None:
    ep = endpoint(reactor)
    with pytest.raises(ValueError):
        ep.start_sending(ToneSource(), PCMU, 0, destination)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    with pytest.raises(ValueError):
        ep.set_destination(destination)
    assert ep.destination == ("127.0.0.1", 5000)


def test_a_failing_send_is_counted_and_the_stream_goes_on(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    good_write = reactor.wire.write

    def unreachable(data: bytes, addr: tuple[str, int]) -> None:
        raise OSError(101, "Network is unreachable")
    reactor.wire.write = unreachable  # type: ignore[method-assign]
    run(reactor, 0.1)
    reactor.wire.write = good_write  # type: ignore[method-assign]
    run(reactor, 0.1)
    assert ep.send_errors == 5
    assert ep.sending
    packets = sent(reactor)
    assert (packets[-1].sequence - packets[0].sequence) % 65536 == 10


def test_events_ride_in_the_stream_with_its_ssrc_and_next_sequence(reactor: FakeReactor) -> None:
    ep = endpoint(reactor)
    assert ep.stream_timestamp() is None
    with pytest.raises(ValueError):
        ep.send_in_stream(101, b"\x01\x0a\x00\xa0", 0, True)
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    run(reactor, 0.1)
    at = ep.stream_timestamp()
    ep.stop_sending()
    ep.send_in_stream(101, b"\x01\x0a\x00\xa0", at or 0, True)
    packets = sent(reactor)
    event = packets[-1]
    assert (event.ssrc, event.payload_type, event.marker, event.timestamp) == (ep.ssrc, 101, True, at)
    assert event.sequence == (packets[-2].sequence + 1) % 65536
    assert at is not None and (at - packets[-2].timestamp) % 2**32 <= 320
    ep.start_sending(ToneSource(), PCMU, 0, ("127.0.0.1", 5000))
    assert sent(reactor)[-1].sequence == (event.sequence + 1) % 65536
