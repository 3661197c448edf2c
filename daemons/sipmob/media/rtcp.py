"""RTCP compound packets (RFC 3550 §6): sender and receiver reports, SDES CNAME, BYE.

Each RTCP packet is a frozen value (`SenderReport`, `ReceiverReport`, `SourceDescription`, `Bye`,
and `UnknownRtcp` for types we do not interpret, such as APP), `build_compound` lays a sequence of
them out as one datagram and `parse_compound` takes one apart, with the validity checks of
Appendix A.2 (version 2, a report first, padding only on the last packet, lengths that add up);
anything else raises `RtcpParseError`. `ntp_timestamp` and `middle_32` convert the clock for the
SR's NTP field and the LSR/DLSR arithmetic (§6.4.1).

`RtcpSession` is one participant's reporting state, sans-I/O: it builds the compound report
(SR when it has sent since the last one, else RR, with a block per source and an SDES CNAME), the
final BYE, remembers the SRs it receives for LSR/DLSR, computes the round-trip time from the blocks
others report about it, and says how long to wait before the next report (§6.3.1, for the small
sessions sipmob has, where the 5 s minimum always wins over the bandwidth share).

Not here: the statistics themselves (`sipmob.media.rtp.SourceStats`), sockets and clocks.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable

from sipmob.media.rtp import SourceStats

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
SDES_END = 0
SDES_CNAME = 1

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


class RtcpParseError(ValueError):
    """The bytes are not a valid RTCP compound packet."""


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point, seconds since 1900) for a Unix time."""
    return round((unix_time + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFF_FFFF_FFFF_FFFF


def middle_32(ntp: int) -> int:
    """§6.4.1 LSR: the middle 32 bits of an NTP timestamp."""
    return (ntp >> 16) & 0xFFFF_FFFF


@dataclasses.dataclass(frozen=True, slots=True)
class ReportBlock:
    """§6.4.1: one reception report about the source ``ssrc``."""

    ssrc: int
    fraction_lost: int = 0  # 8-bit fixed point, lost/expected since the last report
    cumulative_lost: int = 0  # signed 24 bits
    highest_sequence: int = 0  # extended
    jitter: int = 0  # timestamp units
    last_sr: int = 0
    delay_since_last_sr: int = 0  # 1/65536 s

    def __post_init__(self) -> None:
        if not 0 <= self.fraction_lost < 256:
            raise ValueError("fraction lost is an 8-bit fixed-point number")
        if not -(1 << 23) <= self.cumulative_lost < (1 << 23):
            raise ValueError("cumulative lost is a signed 24-bit number")


@dataclasses.dataclass(frozen=True, slots=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SdesChunk:
    """§6.5: the items describing one source, as (item type, value) pairs in order."""

    ssrc: int
    items: tuple[tuple[int, bytes], ...] = ()

    @property
    def cname(self) -> str | None:
        for kind, value in self.items:
            if kind == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None

    @classmethod
    def with_cname(cls, ssrc: int, cname: str) -> SdesChunk:
        return cls(ssrc, ((SDES_CNAME, cname.encode()),))


@dataclasses.dataclass(frozen=True, slots=True)
class SourceDescription:
    chunks: tuple[SdesChunk, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class UnknownRtcp:
    """A packet of a type not interpreted here (APP, feedback, XR...), kept as its body."""

    packet_type: int
    count: int
    body: bytes


RtcpPacket = SenderReport | ReceiverReport | SourceDescription | Bye | UnknownRtcp

_BLOCK = struct.Struct("!IIIIII")


def _pack_blocks(blocks: tuple[ReportBlock, ...]) -> bytes:
    if len(blocks) > 31:
        raise ValueError("at most 31 report blocks fit one report")
    return b"".join(
        _BLOCK.pack(b.ssrc, (b.fraction_lost << 24) | (b.cumulative_lost & 0xFFFFFF), b.highest_sequence,
                    b.jitter, b.last_sr, b.delay_since_last_sr)
        for b in blocks)


def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _header(count: int, packet_type: int, body: bytes) -> bytes:
    if len(body) % 4:
        raise ValueError("an RTCP body is whole 32-bit words")
    return struct.pack("!BBH", 0x80 | count, packet_type, len(body) // 4) + body


def build(packet: RtcpPacket) -> bytes:
    """One RTCP packet; `build_compound` is what goes in a datagram."""
    if isinstance(packet, SenderReport):
        body = struct.pack("!IQII I", packet.ssrc, packet.ntp_timestamp, packet.rtp_timestamp,
                           packet.packet_count & 0xFFFFFFFF, packet.octet_count & 0xFFFFFFFF)
        return _header(len(packet.reports), RTCP_SR, body + _pack_blocks(packet.reports))
    if isinstance(packet, ReceiverReport):
        return _header(len(packet.reports), RTCP_RR,
                       struct.pack("!I", packet.ssrc) + _pack_blocks(packet.reports))
    if isinstance(packet, SourceDescription):
        if len(packet.chunks) > 31:
            raise ValueError("at most 31 SDES chunks fit one packet")
        chunks = []
        for chunk in packet.chunks:
            items = b"".join(bytes((kind, len(value))) + value for kind, value in chunk.items
                             if _check_item(kind, value))
            # §6.5: the item list ends with at least one null octet, then pads to a word.
            chunks.append(_pad4(struct.pack("!I", chunk.ssrc) + items + b"\0"))
        return _header(len(packet.chunks), RTCP_SDES, b"".join(chunks))
    if isinstance(packet, Bye):
        if len(packet.ssrcs) > 31:
            raise ValueError("at most 31 sources fit one BYE")
        body = struct.pack(f"!{len(packet.ssrcs)}I", *packet.ssrcs)
        if packet.reason is not None:
            reason = packet.reason.encode()
            if len(reason) > 255:
                raise ValueError("a BYE reason is at most 255 octets")
            body += _pad4(bytes((len(reason),)) + reason)
        return _header(len(packet.ssrcs), RTCP_BYE, body)
    return _header(packet.count, packet.packet_type, packet.body)


def _check_item(kind: int, value: bytes) -> bool:
    if not 0 < kind < 256 or len(value) > 255:
        raise ValueError("an SDES item has a type 1-255 and at most 255 octets")
    return True


def build_compound(packets: list[RtcpPacket] | tuple[RtcpPacket, ...]) -> bytes:
    """§6.1: the packets one after the other in one datagram; the first must be a report."""
    if not packets or not isinstance(packets[0], SenderReport | ReceiverReport):
        raise ValueError("a compound RTCP packet starts with an SR or RR")
    return b"".join(build(p) for p in packets)


def _parse_blocks(body: bytes, offset: int, count: int) -> tuple[ReportBlock, ...]:
    if len(body) < offset + 24 * count:
        raise RtcpParseError("report blocks run past the end of the packet")
    blocks = []
    for i in range(count):
        ssrc, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(body, offset + 24 * i)
        cumulative = lost & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        blocks.append(ReportBlock(ssrc, lost >> 24, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _parse_sdes(body: bytes, count: int) -> SourceDescription:
    chunks = []
    offset = 0
    for _ in range(count):
        if offset + 4 > len(body):
            raise RtcpParseError("SDES chunk runs past the end of the packet")
        (ssrc,) = struct.unpack_from("!I", body, offset)
        offset += 4
        items = []
        while True:
            if offset >= len(body):
                raise RtcpParseError("SDES item list has no terminating null octet")
            kind = body[offset]
            if kind == SDES_END:
                offset += 1
                offset += -offset % 4
                break
            if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                raise RtcpParseError("SDES item runs past the end of the packet")
            length = body[offset + 1]
            items.append((kind, bytes(body[offset + 2:offset + 2 + length])))
            offset += 2 + length
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return SourceDescription(tuple(chunks))


def _parse_one(packet_type: int, count: int, body: bytes) -> RtcpPacket:
    if packet_type == RTCP_SR:
        if len(body) < 24:
            raise RtcpParseError("SR shorter than its sender info")
        ssrc, ntp, rtp_ts, packets, octets = struct.unpack_from("!IQIII", body)
        return SenderReport(ssrc, ntp, rtp_ts, packets, octets, _parse_blocks(body, 24, count))
    if packet_type == RTCP_RR:
        if len(body) < 4:
            raise RtcpParseError("RR without its SSRC")
        return ReceiverReport(struct.unpack_from("!I", body)[0], _parse_blocks(body, 4, count))
    if packet_type == RTCP_SDES:
        return _parse_sdes(body, count)
    if packet_type == RTCP_BYE:
        if len(body) < 4 * count:
            raise RtcpParseError("BYE source list runs past the end of the packet")
        ssrcs = struct.unpack_from(f"!{count}I", body)
        reason = None
        if len(body) > 4 * count:
            length = body[4 * count]
            if 4 * count + 1 + length > len(body):
                raise RtcpParseError("BYE reason runs past the end of the packet")
            reason = body[4 * count + 1:4 * count + 1 + length].decode("utf-8", "replace")
        return Bye(ssrcs, reason)
    return UnknownRtcp(packet_type, count, bytes(body))


def parse_compound(data: bytes, reduced_size: bool = False) -> tuple[RtcpPacket, ...]:
    """Every packet of a compound RTCP datagram (Appendix A.2 checks; RFC 5506 if ``reduced_size``)."""
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise RtcpParseError("trailing octets shorter than an RTCP header")
        first, packet_type, words = struct.unpack_from("!BBH", data, offset)
        if first >> 6 != 2:
            raise RtcpParseError(f"version {first >> 6}, not 2")
        end = offset + 4 + 4 * words
        if end > len(data):
            raise RtcpParseError("length field runs past the end of the datagram")
        if not packets and not reduced_size and packet_type not in (RTCP_SR, RTCP_RR):
            raise RtcpParseError(f"compound packet starts with type {packet_type}, not SR or RR")
        body_end = end
        if first & 0x20:
            # A.2: only the last packet of a compound may be padded.
            if end != len(data):
                raise RtcpParseError("padding on a packet that is not the last")
            pad = data[end - 1]
            if pad == 0 or pad > 4 * words:
                raise RtcpParseError(f"padding count {pad} does not fit the packet")
            body_end -= pad
        packets.append(_parse_one(packet_type, first & 0x1F, data[offset + 4:body_end]))
        offset = end
    if not packets:
        raise RtcpParseError("empty datagram")
    return tuple(packets)


# §6.3.1: the randomised interval is divided by e - 3/2 to compensate for timer reconsideration.
_COMPENSATION = 2.718281828459045 - 1.5


@dataclasses.dataclass(frozen=True, slots=True)
class SenderInfo:
    """§6.4.1: what an SR says about our own stream at the moment it is built."""

    rtp_timestamp: int
    packet_count: int
    octet_count: int


class RtcpSession:
    """One participant's RTCP reports for its SSRC; ``now`` is always Unix wall-clock seconds."""

    def __init__(self, ssrc: int, cname: str, min_interval: float = 5.0) -> None:
        self.ssrc = ssrc
        self.cname = cname
        self.min_interval = min_interval
        self.round_trip: float | None = None
        self.reports_about_us: dict[int, ReportBlock] = {}  # reporter SSRC -> its latest block on us
        self.byes: set[int] = set()
        self._last_sr: dict[int, tuple[int, float]] = {}  # source SSRC -> (LSR, arrival)

    def interval(self, random: float) -> float:
        """Seconds until the next report, for ``random`` drawn uniformly from [0, 1)."""
        return self.min_interval * (0.5 + random) / _COMPENSATION

    def report(self, now: float, sender: SenderInfo | None, sources: Iterable[SourceStats]) -> bytes:
        """The compound report: SR (if ``sender``) or RR, then SDES CNAME."""
        blocks = tuple(self._block(stats, now) for stats in sources)[:31]
        first: SenderReport | ReceiverReport
        if sender is not None:
            first = SenderReport(self.ssrc, ntp_timestamp(now), sender.rtp_timestamp,
                                 sender.packet_count, sender.octet_count, blocks)
        else:
            first = ReceiverReport(self.ssrc, blocks)
        return build_compound([first, SourceDescription((SdesChunk.with_cname(self.ssrc, self.cname),))])

    def bye(self, now: float, sender: SenderInfo | None, sources: Iterable[SourceStats],
            reason: str | None = None) -> bytes:
        """§6.6: the last compound, a report followed by BYE."""
        return self.report(now, sender, sources) + build(Bye((self.ssrc,), reason))

    def _block(self, stats: SourceStats, now: float) -> ReportBlock:
        fraction, cumulative = stats.interval_loss()
        lsr, dlsr = 0, 0
        last = self._last_sr.get(stats.ssrc)
        if last is not None:
            lsr, arrival = last
            dlsr = max(0, min(round((now - arrival) * 65536), 0xFFFFFFFF))
        return ReportBlock(stats.ssrc, fraction, cumulative, stats.extended_highest_sequence & 0xFFFFFFFF,
                           min(int(stats.jitter), 0xFFFFFFFF), lsr, dlsr)

    def receive(self, data: bytes, now: float) -> tuple[RtcpPacket, ...]:
        """Take in a compound packet that arrived at ``now``; `RtcpParseError` if it is not one."""
        packets = parse_compound(data)
        for packet in packets:
            if isinstance(packet, SenderReport):
                self._last_sr[packet.ssrc] = (middle_32(packet.ntp_timestamp), now)
            if isinstance(packet, SenderReport | ReceiverReport):
                for block in packet.reports:
                    if block.ssrc == self.ssrc:
                        self.reports_about_us[packet.ssrc] = block
                        self._round_trip(block, now)
            elif isinstance(packet, Bye):
                self.byes.update(packet.ssrcs)
        return packets

    def _round_trip(self, block: ReportBlock, now: float) -> None:
        # §6.4.1: RTT = A - LSR - DLSR, in 1/65536 s, when the reporter has had an SR from us.
        if block.last_sr == 0:
            return
        rtt = (middle_32(ntp_timestamp(now)) - block.last_sr - block.delay_since_last_sr) & 0xFFFFFFFF
        if rtt < 1 << 31:  # a "negative" round trip is a clock step or a forged block: ignore it
            self.round_trip = rtt / 65536
