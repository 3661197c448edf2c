"""RtpEndpoint on a fake reactor: pacing by schedule, destination switch, idle timers, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task

from sipmob.media.codecs import PCMA, PCMU
from sipmob.media.recorder import WavRecorder
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
    def __init__(self) -> None:
        super().__init__()
        self.wire = FakeUdp()
        self.protocol: Any = None

    def listenUDP(self, port: int, protocol: Any, interface: str = "") -> FakePort:
        self.protocol = protocol
        protocol.transport = self.wire
        return FakePort(port or 40000)


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
    assert ep._port.closed
