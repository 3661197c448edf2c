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

With ``rtcp=True`` the endpoint binds an even RTP port and the odd port above it (RFC 3550 §11),
sends a compound report (`sipmob.media.rtcp.RtcpSession`) to the destination's port + 1 (or where
``set_rtcp_destination`` says: the peer's ``a=rtcp``, RFC 3605) about
every 5 s while it sends or hears RTP, and a BYE when it closes; received RTCP gives the round
trip and the reports others make about us. The report timer stops when the endpoint falls idle.

On Linux the RTP socket asks for ICMP errors (``IP_RECVERR``): a destination that answers with
port or host unreachable sets `unreachable_since` (cleared by any packet heard or a new
destination) and calls ``on_unreachable``; what to do about it (end the call) is the application's.

Not here: SDP, jitter buffers, RTCP feedback or XR.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
import secrets
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import error, posixbase, protocol, task, udp

from sipmob.media.codecs import Codec
from sipmob.media.recorder import WavRecorder
from sipmob.media.rtcp import RtcpPacket, RtcpParseError, RtcpSession, SenderInfo
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
    rtcp_sent: int = 0
    rtcp_received: int = 0
    rtcp_malformed: int = 0
    round_trip: float | None = None  # seconds, from the last report about us (§6.4.1)


_IP_RECVERR, _IPV6_RECVERR = 11, 25  # linux/in.h, linux/in6.h
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3
_UNREACHABLE = {111, 113, 101}  # ECONNREFUSED (port), EHOSTUNREACH, ENETUNREACH


class _ReportingPort(udp.Port):
    """A UDP port that hears ICMP errors about what it sent (Linux ``IP_RECVERR``).

    An unconnected UDP socket is told nothing of ICMP port or host unreachable unless it asks;
    once it asks, the errors wait in the socket's error queue and epoll says EPOLLERR, on which
    the reactor would close the port as if the connection were lost. Here that moment drains the
    queue, hands each failed destination to `on_unreachable` and goes on reading: the socket
    itself is fine."""

    on_unreachable: Callable[[Address], Any] | None = None

    def startListening(self) -> None:
        super().startListening()
        try:
            if self.addressFamily == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
            else:
                self.socket.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
        except OSError:
            pass  # not Linux: ICMP errors stay unheard, the media timeout still applies

    def connectionLost(self, reason: Any = None) -> None:
        if reason is not None and self.connected and self._drain_errors():
            self.startReading()
            return
        super().connectionLost(reason)

    def _drain_errors(self) -> bool:
        drained = False
        for _ in range(256):
            try:
                _, ancdata, _, addr = self.socket.recvmsg(1, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except OSError:
                break
            drained = True
            for _level, _type, data in ancdata:
                if len(data) < 8:
                    continue
                errno, origin = struct.unpack_from("=IB", data)
                if origin in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6) and errno in _UNREACHABLE \
                        and addr and self.on_unreachable is not None:
                    try:
                        self.on_unreachable((addr[0], addr[1]))
                    except Exception:
                        log.exception("ICMP error handler failed")
        return drained


def _listen_udp(reactor: Any, port: int, proto: protocol.DatagramProtocol, interface: str,
                on_unreachable: Callable[[Address], Any] | None = None) -> Any:
    if not isinstance(reactor, posixbase.PosixReactorBase):
        return reactor.listenUDP(port, proto, interface=interface)
    listening = _ReportingPort(port, proto, interface, reactor=reactor)
    listening.on_unreachable = on_unreachable
    listening.startListening()
    return listening


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, owner: RtpEndpoint, rtcp: bool = False) -> None:
        self.owner = owner
        self.rtcp = rtcp

    @property
    def wire(self) -> Any:
        return self.transport

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.rtcp:
            self.owner._rtcp_received(data, (addr[0], addr[1]))
        else:
            self.owner._received(data, (addr[0], addr[1]))


class RtpEndpoint:
    """One RTP socket bound to ``bind``; its own SSRC; sends at most one stream at a time."""

    def __init__(self, reactor: Any, bind: Address = ("127.0.0.1", 0), clock_rate: int = 8000,
                 monotonic: Callable[[], float] = time.monotonic, rtcp: bool = False,
                 cname: str | None = None, wallclock: Callable[[], float] = time.time,
                 rtcp_interval: float = 5.0) -> None:
        self._reactor = reactor
        self._monotonic = monotonic
        self._wallclock = wallclock
        self.clock_rate = clock_rate
        self.ssrc = secrets.randbits(32)
        self.on_packet: PacketCallback | None = None
        self.on_rtcp: Callable[[tuple[RtcpPacket, ...], Address, float], Any] | None = None
        self.on_source_end: Callable[[], Any] | None = None
        self.malformed = 0
        self.send_errors = 0
        self._family = 6 if ":" in bind[0] else 4
        self.rtcp: RtcpSession | None = None
        self._rtcp_port: Any = None
        self._rtcp_protocol: _Datagrams | None = None
        self._rtcp_call: Any = None
        self._rtcp_counts = [0, 0, 0]  # sent, received, malformed
        self._heard: set[int] = set()  # SSRCs heard since the last report
        self._packets_at_report = 0
        self._last_source: Address | None = None
        # monotonic times of the last RTP or RTCP packet received, and of the start of sending:
        # what a media timeout measures silence from
        self.last_heard: float | None = None
        self.sending_since: float | None = None
        # when ICMP first said our destination is unreachable, since the last packet heard from
        # anyone and the last change of destination; None while it has not
        self.unreachable_since: float | None = None
        self.on_unreachable: Callable[[Address], Any] | None = None
        self._closed = False
        if rtcp:
            self._port = self._listen_pair(bind)
            self.rtcp = RtcpSession(self.ssrc, cname or f"sipmob@{bind[0]}", rtcp_interval)
        else:
            self._protocol = _Datagrams(self)
            self._port = _listen_udp(reactor, bind[1], self._protocol, bind[0], self._unreachable)
        self._sources: dict[int, SourceStats] = {}
        self._sender: RtpSender | None = None
        self._source: AudioSource | None = None
        self._codec: Codec | None = None
        self._samples = 0
        self._destination: Address | None = None
        self._rtcp_destination: Address | None = None  # a=rtcp (RFC 3605); None: destination port + 1
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

    @property
    def sending_as(self) -> tuple[Codec, int] | None:
        """The codec and payload type number we send with (None before the first start)."""
        if self._codec is None or self._sender is None:
            return None
        return (self._codec, self._sender.payload_type)

    def start_sending(self, source: AudioSource, codec: Codec, payload_type: int, destination: Address,
                      ptime: float = 0.02) -> None:
        """Send ``source`` encoded with ``codec`` as ``payload_type`` to ``destination`` every ``ptime``."""
        if source.sample_rate != codec.clock_rate:
            raise ValueError(f"source at {source.sample_rate} Hz, {codec.name} needs {codec.clock_rate} Hz")
        self.stop_sending()
        self._arm_rtcp()
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
        self._destination = self._checked(destination)
        self.unreachable_since = None
        self.sending_since = self._monotonic()
        sender.start(self.sending_since)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self._reactor
        self._loop.start(ptime, now=True).addErrback(self._loop_failed)

    def set_destination(self, destination: Address) -> None:
        """Send the next packet to ``destination`` (and RTCP to its port + 1); the stream carries on."""
        self._destination = self._checked(destination)
        self.unreachable_since = None

    def set_rtcp_destination(self, destination: Address | None) -> None:
        """Send RTCP to ``destination`` (the peer's ``a=rtcp``, RFC 3605) rather than to the RTP
        destination's port + 1; None goes back to port + 1."""
        self._rtcp_destination = None if destination is None else self._checked(destination)

    def _checked(self, destination: Address) -> Address:
        # Refuse here what the socket would refuse on every packet: a name, or the other IP family.
        host, port = destination
        try:
            family = ipaddress.ip_address(host).version
        except ValueError:
            raise ValueError(f"RTP destination {host!r} is not an IP address") from None
        if family != self._family or not 0 < port < 65536:
            raise ValueError(f"cannot send RTP from an IPv{self._family} socket to {host} port {port}")
        return (host, port)

    def stop_sending(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if loop.running:
                loop.stop()
        if self._sender is not None:
            self._sender.stop(self._monotonic())

    def attach_recorder(self, recorder: WavRecorder, codecs: dict[int, Codec]) -> None:
        """Decode received packets whose payload type is in ``codecs`` into ``recorder``."""
        self._recorder = recorder
        self._recorder_codecs = dict(codecs)

    def detach_recorder(self) -> WavRecorder | None:
        recorder, self._recorder = self._recorder, None
        return recorder

    def stream_timestamp(self) -> int | None:
        """The timestamp of the sampling instant now on our stream's clock; None before any stream."""
        return None if self._sender is None else self._sender.timestamp_at(self._monotonic())

    def send_in_stream(self, payload_type: int, payload: bytes, timestamp: int, marker: bool) -> None:
        """One packet of another payload format within our stream (RFC 4733 events ride in the
        audio's RTP session: same SSRC, the next sequence number); the caller gives the timestamp."""
        sender, destination = self._sender, self._destination
        if sender is None or destination is None:
            raise ValueError("no stream to send in")
        packet = RtpPacket(payload_type, sender.sequence, timestamp, self.ssrc, payload, marker=marker)
        sender.sequence = (sender.sequence + 1) % 65536
        sender.packet_count += 1
        sender.octet_count += len(payload)
        try:
            self._protocol.wire.write(packet.to_bytes(), destination)
        except OSError:
            self.send_errors += 1

    def hello(self, destination: Address) -> None:
        """An empty datagram to `destination` from our RTP socket: tells a relay (or a NAT) where
        we receive, when we send nothing ourselves. RTP receivers drop it (no header)."""
        try:
            self._protocol.wire.write(b"", destination)
        except OSError:
            self.send_errors += 1

    def stats(self) -> EndpointStats:
        sender = self._sender
        return EndpointStats(self.ssrc, sender.packet_count if sender else 0,
                             sender.octet_count if sender else 0, sender.skipped if sender else 0,
                             self.malformed, {ssrc: s.report() for ssrc, s in self._sources.items()},
                             rtcp_sent=self._rtcp_counts[0], rtcp_received=self._rtcp_counts[1],
                             rtcp_malformed=self._rtcp_counts[2],
                             round_trip=self.rtcp.round_trip if self.rtcp else None)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> Any:
        """Stop sending (with RTCP, say BYE) and release the sockets; returns the RTP port's Deferred.
        Closing again does nothing."""
        if self._closed:
            return None
        self._closed = True
        self.stop_sending()
        if self._rtcp_call is not None and self._rtcp_call.active():
            self._rtcp_call.cancel()
        self._rtcp_call = None
        if self.rtcp is not None and self._rtcp_port is not None:
            if self._sender is not None or self._sources:
                self._send_rtcp(bye=True)
            self._rtcp_port.stopListening()
            self._rtcp_port = None
        return self._port.stopListening()

    def _listen_pair(self, bind: Address) -> Any:
        """§11: RTP on an even port, RTCP on the next one; with port 0, any free pair."""
        host, wanted = bind
        for _ in range(50 if wanted == 0 else 1):
            rtp_protocol = _Datagrams(self)
            try:
                port = _listen_udp(self._reactor, wanted, rtp_protocol, host, self._unreachable)
                number = port.getHost().port
                if number % 2 and not wanted:
                    # The system gave an odd port: try the even one above it instead.
                    port.stopListening()
                    rtp_protocol = _Datagrams(self)
                    number += 1
                    port = _listen_udp(self._reactor, number, rtp_protocol, host, self._unreachable)
            except error.CannotListenError:
                if wanted:
                    raise
                continue
            rtcp_protocol = _Datagrams(self, rtcp=True)
            try:
                self._rtcp_port = self._reactor.listenUDP(number + 1, rtcp_protocol, interface=host)
            except error.CannotListenError:
                port.stopListening()
                if wanted:
                    raise
                continue
            self._protocol, self._rtcp_protocol = rtp_protocol, rtcp_protocol
            return port
        raise OSError(f"no free even/odd UDP port pair on {host}")

    @property
    def rtcp_port(self) -> int | None:
        return None if self._rtcp_port is None else int(self._rtcp_port.getHost().port)

    def _arm_rtcp(self) -> None:
        if self.rtcp is None or (self._rtcp_call is not None and self._rtcp_call.active()):
            return
        self._rtcp_call = self._reactor.callLater(self.rtcp.interval(random.random()), self._rtcp_due)

    def _rtcp_due(self) -> None:
        self._rtcp_call = None
        active = self.sending or bool(self._heard)
        self._send_rtcp()
        # Keep reporting while there is a stream either way; an idle endpoint keeps no timer.
        if active:
            self._arm_rtcp()

    def _send_rtcp(self, bye: bool = False) -> None:
        assert self.rtcp is not None and self._rtcp_protocol is not None
        target = self._destination or self._last_source
        if target is None:
            return
        sender = self._sender
        info = None
        if sender is not None and sender.packet_count > self._packets_at_report:
            # §6.4: an SR only from a participant that sent RTP since the last report.
            info = SenderInfo(sender.timestamp_at(self._monotonic()), sender.packet_count, sender.octet_count)
            self._packets_at_report = sender.packet_count
        sources = [self._sources[ssrc] for ssrc in sorted(self._heard) if ssrc in self._sources]
        self._heard.clear()
        now = self._wallclock()
        data = self.rtcp.bye(now, info, sources) if bye else self.rtcp.report(now, info, sources)
        stated = self._rtcp_destination if self._destination is not None else None
        to = stated or (target[0], target[1] + 1)
        try:
            self._rtcp_protocol.wire.write(data, to)
        except OSError as exc:
            # Reports are best effort: a route gone mid-handover (the BYE of an endpoint closed
            # because its link went down) must not break the caller that closes it.
            log.info("RTCP to %s:%d failed: %s", to[0], to[1], exc)
            return
        self._rtcp_counts[0] += 1

    def _rtcp_received(self, data: bytes, addr: Address) -> None:
        assert self.rtcp is not None
        try:
            packets = self.rtcp.receive(data, self._wallclock())
        except RtcpParseError as exc:
            self._rtcp_counts[2] += 1
            log.debug("dropped a malformed RTCP packet from %s:%d: %s", addr[0], addr[1], exc)
            return
        self._rtcp_counts[1] += 1
        self.last_heard = self._monotonic()
        if self.on_rtcp is not None:
            try:
                self.on_rtcp(packets, addr, self._monotonic())
            except Exception:
                log.exception("RTCP packet handler failed")

    def _unreachable(self, destination: Address) -> None:
        if destination != self._destination:
            return  # about an earlier destination of the stream
        if self.unreachable_since is None:
            self.unreachable_since = self._monotonic()
            log.info("RTP to %s:%d: ICMP says unreachable", destination[0], destination[1])
        if self.on_unreachable is not None:
            self.on_unreachable(destination)

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
            try:
                self._protocol.wire.write(packet.to_bytes(), destination)
            except OSError as exc:
                # A route that is gone for now (a link went down mid-handover) must not end the stream.
                self.send_errors += 1
                if self.send_errors == 1 or self.send_errors % 500 == 0:
                    log.info("RTP to %s:%d failed (%d so far): %s", destination[0], destination[1],
                             self.send_errors, exc)

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
        self.last_heard = now
        self.unreachable_since = None
        stats = self._sources.get(packet.ssrc)
        if stats is None:
            stats = self._sources[packet.ssrc] = SourceStats(packet.ssrc, self.clock_rate)
        stats.receive(packet, now)
        if self.rtcp is not None:
            self._heard.add(packet.ssrc)
            self._last_source = addr
            self._arm_rtcp()
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
