"""An RTP endpoint on the Twisted reactor: one UDP socket that sends a paced stream and receives.

`RtpEndpoint` sends frames from an audio source (`sipmob.media.sources`) encoded with a codec
(`sipmob.media.codecs`) every ``ptime`` to a destination that can change mid-stream
(`set_destination`: the session moved) without resetting SSRC, sequence number or timestamp, so
the receiver sees one unbroken stream. Pacing is a `LoopingCall` that only wakes the sender; what
to send is decided by `sipmob.media.rtp.RtpSender` against a monotonic clock, so the stream keeps
its schedule whatever the reactor's timer jitter, and catches up after a stall at most two
packets per tick. There is no timer at all while nothing is being sent.

Received packets are parsed, counted per SSRC (`stats`), handed to ``on_packet`` and, when a
recorder is attached, decoded into it. Malformed datagrams are counted and dropped.

Not here: RTCP (the endpoint sends none; `sipmob.media.rtcp` has the packets), SDP, jitter buffers.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol, task

from sipmob.media.codecs import Codec
from sipmob.media.recorder import WavRecorder
from sipmob.media.rtp import ReceptionReport, RtpPacket, RtpParseError, RtpSender, SourceStats, parse
from sipmob.media.sources import AudioSource

log = logging.getLogger("sipmob.media")

Address = tuple[str, int]
PacketCallback = Callable[[RtpPacket, Address, float], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointStats:
    ssrc: int
    sent_packets: int
    sent_octets: int
    skipped_packets: int  # frames dropped by the sender to catch up after a long stall
    malformed: int
    sources: dict[int, ReceptionReport]


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, owner: RtpEndpoint) -> None:
        self.owner = owner

    @property
    def wire(self) -> Any:
        return self.transport

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.owner._received(data, (addr[0], addr[1]))


class RtpEndpoint:
    """One RTP socket bound to ``bind``; its own SSRC; sends at most one stream at a time."""

    def __init__(self, reactor: Any, bind: Address = ("127.0.0.1", 0), clock_rate: int = 8000,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._reactor = reactor
        self._monotonic = monotonic
        self.clock_rate = clock_rate
        self.ssrc = secrets.randbits(32)
        self.on_packet: PacketCallback | None = None
        self.on_source_end: Callable[[], Any] | None = None
        self.malformed = 0
        self._protocol = _Datagrams(self)
        self._port = reactor.listenUDP(bind[1], self._protocol, interface=bind[0])
        self._sources: dict[int, SourceStats] = {}
        self._sender: RtpSender | None = None
        self._source: AudioSource | None = None
        self._codec: Codec | None = None
        self._samples = 0
        self._destination: Address | None = None
        self._loop: task.LoopingCall | None = None
        self._recorder: WavRecorder | None = None
        self._recorder_codecs: dict[int, Codec] = {}
        # §5.1: sequence number and timestamp start at random values.
        self._next_sequence = secrets.randbits(16)
        self._next_timestamp = secrets.randbits(32)

    @property
    def port(self) -> int:
        return int(self._port.getHost().port)

    @property
    def sending(self) -> bool:
        return self._loop is not None

    @property
    def destination(self) -> Address | None:
        return self._destination

    def start_sending(self, source: AudioSource, codec: Codec, payload_type: int, destination: Address,
                      ptime: float = 0.02) -> None:
        """Send ``source`` encoded with ``codec`` as ``payload_type`` to ``destination`` every ``ptime``."""
        if source.sample_rate != codec.clock_rate:
            raise ValueError(f"source at {source.sample_rate} Hz, {codec.name} needs {codec.clock_rate} Hz")
        self.stop_sending()
        samples = codec.samples_per_frame(ptime)
        sender = self._sender
        if (sender is None or sender.payload_type != payload_type or sender.samples_per_packet != samples
                or self._codec is None or self._codec.clock_rate != codec.clock_rate):
            if sender is not None:
                self._next_sequence, self._next_timestamp = sender.sequence, sender.timestamp
            # The same SSRC carries on; RFC 3550 §5.1 allows a payload type change within a stream.
            sender = RtpSender(self.ssrc, payload_type, samples, ptime,
                               self._next_sequence, self._next_timestamp)
        self._sender, self._source, self._codec, self._samples = sender, source, codec, samples
        self._destination = destination
        sender.start(self._monotonic())
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(ptime, now=True).addErrback(self._loop_failed)

    def set_destination(self, destination: Address) -> None:
        """Send the next packet to ``destination``; SSRC, sequence and timestamps carry on."""
        self._destination = destination

    def stop_sending(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()
        if self._sender is not None:
            self._sender.stop()

    def attach_recorder(self, recorder: WavRecorder, codecs: dict[int, Codec]) -> None:
        """Decode received packets whose payload type is in ``codecs`` into ``recorder``."""
        self._recorder = recorder
        self._recorder_codecs = dict(codecs)

    def detach_recorder(self) -> WavRecorder | None:
        recorder, self._recorder = self._recorder, None
        return recorder

    def stats(self) -> EndpointStats:
        sender = self._sender
        return EndpointStats(self.ssrc, sender.packet_count if sender else 0,
                             sender.octet_count if sender else 0, sender.skipped if sender else 0,
                             self.malformed, {ssrc: s.report() for ssrc, s in self._sources.items()})

    def close(self) -> Any:
        """Stop sending and release the socket; returns the Deferred of the port closing."""
        self.stop_sending()
        return self._port.stopListening()

    def _tick(self) -> None:
        sender, source, codec, destination = self._sender, self._source, self._codec, self._destination
        assert sender is not None and source is not None and codec is not None and destination is not None
        for _ in range(sender.due(self._monotonic())):
            frame = source.read(self._samples)
            if frame is None:
                self.stop_sending()
                if self.on_source_end is not None:
                    self.on_source_end()
                return
            packet = sender.packet(codec.encode(frame))
            self._protocol.wire.write(packet.to_bytes(), destination)

    def _loop_failed(self, failure: Any) -> None:
        log.error("RTP sender stopped: %s", failure.getErrorMessage())
        self._loop = None

    def _received(self, data: bytes, addr: Address) -> None:
        now = self._monotonic()
        try:
            packet = parse(data)
        except RtpParseError as exc:
            self.malformed += 1
            log.debug("dropped a malformed RTP packet from %s:%d: %s", addr[0], addr[1], exc)
            return
        stats = self._sources.get(packet.ssrc)
        if stats is None:
            stats = self._sources[packet.ssrc] = SourceStats(packet.ssrc, self.clock_rate)
        stats.receive(packet, now)
        recorder = self._recorder
        if recorder is not None:
            codec = self._recorder_codecs.get(packet.payload_type)
            if codec is not None:
                recorder.add(packet.ssrc, packet.timestamp, codec.decode(packet.payload), now)
        if self.on_packet is not None:
            try:
                self.on_packet(packet, addr, now)
            except Exception:
                log.exception("RTP packet handler failed")
