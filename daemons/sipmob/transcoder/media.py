"""The transcoder's media on the reactor: port pairs, one `CallMedia` per call, RTCP per side.

`PortPool` hands out even RTP ports with RTCP on the next one (RFC 3550 §11) from the configured
range, binding both before saying yes. `CallMedia` owns two pairs (side A, side B) and two
`sipmob.media.transcode.Channel`s (A to B, B to A). A datagram on A's RTP port is taken only from
A's declared address (the controller said where A is; anything else is a stranger and is counted
and dropped), converted, and sent from B's port to B, so each party sees one symmetric peer.

RTCP per side: a `sipmob.media.rtp.SourceStats` of what the side sends us (loss, jitter, RFC 3550
A.3/A.8) and an `RtcpSession` whose SR describes the stream we send that side (our SSRC, packet
and octet counts, the RTP timestamp of "now" on that stream), every 5 s with the §6.3.1
randomisation, and a BYE when the call ends. RTCP from the parties is parsed (round-trip time, BYE)
and not forwarded: each leg is its own RTP session, as in RFC 3550 §7.2 for a translator that
changes the encoding.

Not here: SIP and SDP (`sipmob.transcoder.app`, `sipmob.transcoder.invocation`), the conversion.
"""

from __future__ import annotations

import logging
import random
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import protocol

from sipmob.media.audioformat import AudioFormat
from sipmob.media.rtcp import RtcpParseError, RtcpSession, SenderInfo
from sipmob.media.rtp import SourceStats
from sipmob.media.transcode import Channel

log = logging.getLogger("sipmob.transcoder")

_HEADER = struct.Struct("!BBHII")
Address = tuple[str, int]


class _Seen:
    """The three fields `SourceStats.receive` reads, without building a whole `RtpPacket`."""

    __slots__ = ("payload_type", "sequence", "timestamp")

    def __init__(self, payload_type: int, sequence: int, timestamp: int) -> None:
        self.payload_type = payload_type
        self.sequence = sequence
        self.timestamp = timestamp


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.datagramReceived = on_datagram  # type: ignore[method-assign,assignment]


class PortPool:
    """Even RTP ports with RTCP on port + 1, from ``[low, high]``, bound on `address`."""

    def __init__(self, reactor: Any, address: str, low: int, high: int) -> None:
        self.reactor = reactor
        self.address = address
        self.low = low + (low & 1)
        self.high = high
        self._used: set[int] = set()
        self._next = self.low

    def bind(self, on_rtp: Callable[[bytes, Address], None],
             on_rtcp: Callable[[bytes, Address], None]) -> tuple[Any, Any]:
        """Listening ports for RTP and RTCP; OSError when the range is exhausted."""
        span = (self.high - self.low + 1) // 2
        for _ in range(span):
            port = self._next
            self._next = port + 2 if port + 3 <= self.high else self.low
            if port in self._used:
                continue
            try:
                rtp = self.reactor.listenUDP(port, _Datagrams(on_rtp), interface=self.address)
            except Exception:
                continue
            try:
                rtcp = self.reactor.listenUDP(port + 1, _Datagrams(on_rtcp), interface=self.address)
            except Exception:
                rtp.stopListening()
                continue
            self._used.add(port)
            return rtp, rtcp
        raise OSError(f"no free RTP port pair in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        self._used.discard(port)

    @property
    def in_use(self) -> int:
        return len(self._used)


class Leg:
    """One party's side: its ports, where it is, what it sends us, and RTCP about both."""

    def __init__(self, media: CallMedia, name: str, pool: PortPool, cname: str) -> None:
        self.media = media
        self.name = name
        self.destination: Address | None = None
        self.stats: SourceStats | None = None
        self.strangers = 0
        self.last_heard: float | None = None
        self.rtcp_session: RtcpSession | None = None
        self._cname = cname
        self.rtp_port, self.rtcp_port = pool.bind(self._rtp, self._rtcp)
        self.port = int(self.rtp_port.getHost().port)
        self.rtp_socket = self.rtp_port.socket
        self.send_errors = 0
        self.out: Channel | None = None  # the channel whose output goes to this side
        self.into: Channel | None = None  # the channel this side's packets feed
        self.peer: Leg | None = None

    def _rtp(self, data: bytes, addr: Address) -> None:
        destination = self.destination
        if destination is None or addr[0] != destination[0]:
            self.strangers += 1
            return
        channel, peer = self.into, self.peer
        assert channel is not None and peer is not None
        now = time.monotonic()
        self.last_heard = now
        if len(data) >= 12:
            _, second, seq, ts, ssrc = _HEADER.unpack_from(data)
            stats = self.stats
            if stats is None or stats.ssrc != ssrc:
                stats = self.stats = SourceStats(ssrc, channel.source.clock_rate)
            stats.receive(_Seen(second & 0x7F, seq, ts), now)  # type: ignore[arg-type]
        target = peer.destination
        if target is None:
            return
        # The socket itself rather than Port.write: Twisted checks the address three times a write,
        # a fifth of the per-packet cost of a G.711 relay.
        sendto = peer.rtp_socket.sendto
        for packet in channel.receive(data):
            try:
                sendto(packet, target)
            except OSError:  # ICMP port unreachable from an earlier send, a full buffer: drop it
                peer.send_errors += 1

    def _rtcp(self, data: bytes, addr: Address) -> None:
        if self.destination is None or addr[0] != self.destination[0] or self.rtcp_session is None:
            self.strangers += 1
            return
        try:
            self.rtcp_session.receive(data, time.time())
        except RtcpParseError as exc:
            log.debug("dropped malformed RTCP from %s:%d: %s", addr[0], addr[1], exc)

    def start_rtcp(self) -> None:
        assert self.out is not None
        if self.rtcp_session is None or self.rtcp_session.ssrc != self.out.ssrc:
            self.rtcp_session = RtcpSession(self.out.ssrc, self._cname)

    def rtcp_report(self, bye: bool = False) -> None:
        """Send our SR/RR for this side (and BYE at the end), if we know where the side is."""
        if self.destination is None or self.rtcp_session is None or self.out is None:
            return
        out = self.out
        sender = None
        if out.stats.sent:
            sender = SenderInfo(out.out_ts, out.stats.sent, out.stats.octets)
        sources = [self.stats] if self.stats is not None else []
        now = time.time()
        data = self.rtcp_session.bye(now, sender, sources) if bye else \
            self.rtcp_session.report(now, sender, sources)
        try:
            self.rtcp_port.write(data, (self.destination[0], self.destination[1] + 1))
        except OSError as exc:
            log.debug("RTCP to %s not sent: %s", self.destination, exc)

    def close(self) -> None:
        self.rtp_port.stopListening()
        self.rtcp_port.stopListening()


class CallMedia:
    """The media of one transcoded (or relayed) call: two legs, two channels, an RTCP timer."""

    def __init__(self, reactor: Any, pool: PortPool, cname: str, format_a: AudioFormat,
                 format_b: AudioFormat) -> None:
        self.reactor = reactor
        self.pool = pool
        self.a = Leg(self, "A", pool, cname)
        try:
            self.b = Leg(self, "B", pool, cname)
        except OSError:
            self.a.close()
            pool.release(self.a.port)
            raise
        self.a.peer, self.b.peer = self.b, self.a
        self.a_to_b = Channel(format_a, format_b)
        self.b_to_a = Channel(format_b, format_a)
        self.a.into, self.a.out = self.a_to_b, self.b_to_a
        self.b.into, self.b.out = self.b_to_a, self.a_to_b
        self.a.start_rtcp()
        self.b.start_rtcp()
        self.started = time.monotonic()
        self._rtcp_call: Any = reactor.callLater(self._interval(), self._rtcp_due)
        self.closed = False

    def _interval(self) -> float:
        assert self.a.rtcp_session is not None
        return self.a.rtcp_session.interval(random.random())

    def _rtcp_due(self) -> None:
        self.a.rtcp_report()
        self.b.rtcp_report()
        self._rtcp_call = self.reactor.callLater(self._interval(), self._rtcp_due)

    def update(self, format_a: AudioFormat, format_b: AudioFormat, destination_a: Address | None,
               destination_b: Address | None) -> None:
        """A re-INVITE's plan: new destinations and, if they changed, formats (streams carry on)."""
        self.a.destination, self.b.destination = destination_a, destination_b
        if (self.a_to_b.source, self.a_to_b.sink) != (format_a, format_b):
            self.a_to_b.set_formats(format_a, format_b)
            self.b_to_a.set_formats(format_b, format_a)

    def last_activity(self) -> float:
        return max(self.started, self.a.last_heard or 0.0, self.b.last_heard or 0.0)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._rtcp_call.active():
            self._rtcp_call.cancel()
        for leg in (self.a, self.b):
            leg.rtcp_report(bye=True)
            leg.close()
            self.pool.release(leg.port)
