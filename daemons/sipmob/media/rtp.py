"""RTP data packets (RFC 3550 §5), sequence/timestamp arithmetic, sender pacing and receiver statistics.

`RtpPacket` is one packet as a value: `parse` turns bytes into it (raising `RtpParseError` for
anything that is not a well-formed version 2 packet), `RtpPacket.to_bytes` builds the wire form,
including CSRCs, a header extension (§5.3.1) and padding. `seq_*` and `ts_*` do modular arithmetic
on the 16-bit sequence number and the 32-bit timestamp. `RtpSender` is the sending side's state:
SSRC, next sequence number and timestamp, packet and octet counts, and the schedule saying how many
packets are due at a given time. `SourceStats` is what a receiver learns about one SSRC: packets,
loss (Appendix A.3), interarrival jitter (§6.4.1, A.8) and the longest gap between arrivals.

Not here: sockets and clocks (the Twisted adapter `sipmob.service.rtp` passes ``now``), RTCP
(`sipmob.media.rtcp`), payload formats (`sipmob.media.codecs`).
"""

from __future__ import annotations

import dataclasses
import math
import struct

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32

# Appendix A.1: a jump of more than this many packets ahead is a restart, not loss.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
_SEEN_MASK = (1 << (MAX_MISORDER + 1)) - 1

_HEADER = struct.Struct("!BBHII")


class RtpParseError(ValueError):
    """The bytes are not a well-formed RTP packet; the receiver counts and drops them."""


@dataclasses.dataclass(frozen=True, slots=True)
class RtpExtension:
    """§5.3.1: one header extension: a 16-bit profile-defined value and whole 32-bit words of data."""

    profile: int
    data: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.profile < SEQ_MOD:
            raise ValueError(f"extension profile {self.profile} is not a 16-bit value")
        if len(self.data) % 4 or len(self.data) // 4 >= SEQ_MOD:
            raise ValueError("extension data must be a whole number of 32-bit words, fewer than 65536")


@dataclasses.dataclass(frozen=True, slots=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: RtpExtension | None = None
    padding: int = 0  # octets of padding, including the count octet; 0 for none

    def __post_init__(self) -> None:
        if not 0 <= self.payload_type < 128:
            raise ValueError(f"payload type {self.payload_type} is not 7 bits")
        if not 0 <= self.sequence < SEQ_MOD:
            raise ValueError(f"sequence number {self.sequence} is not 16 bits")
        if not 0 <= self.timestamp < TS_MOD:
            raise ValueError(f"timestamp {self.timestamp} is not 32 bits")
        if not 0 <= self.ssrc < TS_MOD:
            raise ValueError(f"SSRC {self.ssrc} is not 32 bits")
        if len(self.csrcs) > 15 or any(not 0 <= c < TS_MOD for c in self.csrcs):
            raise ValueError("at most 15 CSRCs, each 32 bits")
        if not 0 <= self.padding < 256:
            raise ValueError(f"padding of {self.padding} octets does not fit its count octet")

    def to_bytes(self) -> bytes:
        first = (RTP_VERSION << 6) | (0x20 if self.padding else 0) | (0x10 if self.extension else 0)
        first |= len(self.csrcs)
        parts = [_HEADER.pack(first, (0x80 if self.marker else 0) | self.payload_type,
                              self.sequence, self.timestamp, self.ssrc)]
        if self.csrcs:
            parts.append(struct.pack(f"!{len(self.csrcs)}I", *self.csrcs))
        if self.extension is not None:
            parts.append(struct.pack("!HH", self.extension.profile, len(self.extension.data) // 4))
            parts.append(self.extension.data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes((self.padding,)))
        return b"".join(parts)


def parse(data: bytes) -> RtpPacket:
    """Decode one RTP packet; `RtpParseError` says what is wrong with bytes that are not one."""
    if len(data) < RTP_HEADER_SIZE:
        raise RtpParseError(f"{len(data)} octets is shorter than the fixed header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    if first >> 6 != RTP_VERSION:
        raise RtpParseError(f"version {first >> 6}, not 2")
    payload_type = second & 0x7F
    # RFC 5761 §4: types 72-76 with the marker are RTCP SR/RR/SDES/BYE/APP sent to the RTP port.
    if 72 <= payload_type <= 76:
        raise RtpParseError(f"payload type {payload_type} collides with RTCP")
    end = len(data)
    padding = 0
    if first & 0x20:
        padding = data[-1]
        if padding == 0:
            raise RtpParseError("padding bit set with a zero padding count")
        if padding > len(data) - RTP_HEADER_SIZE:
            raise RtpParseError(f"padding count {padding} runs into the fixed header")
        end -= padding
    offset = RTP_HEADER_SIZE + 4 * (first & 0x0F)
    if offset > end:
        raise RtpParseError("CSRC list runs past the end of the packet")
    csrcs = struct.unpack_from(f"!{first & 0x0F}I", data, RTP_HEADER_SIZE)
    extension = None
    if first & 0x10:
        if offset + 4 > end:
            raise RtpParseError("header extension runs past the end of the packet")
        profile, words = struct.unpack_from("!HH", data, offset)
        offset += 4
        if offset + 4 * words > end:
            raise RtpParseError("header extension runs past the end of the packet")
        extension = RtpExtension(profile, bytes(data[offset:offset + 4 * words]))
        offset += 4 * words
    return RtpPacket(payload_type, sequence, timestamp, ssrc, bytes(data[offset:end]),
                     bool(second & 0x80), csrcs, extension, padding)


def seq_add(seq: int, n: int) -> int:
    return (seq + n) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """How far sequence number ``a`` is after ``b``, in -32768..32767 (negative: before)."""
    return (a - b + SEQ_MOD // 2) % SEQ_MOD - SEQ_MOD // 2


def ts_add(ts: int, n: int) -> int:
    return (ts + n) % TS_MOD


def ts_diff(a: int, b: int) -> int:
    """How far timestamp ``a`` is after ``b``, as a signed 32-bit difference."""
    return (a - b + TS_MOD // 2) % TS_MOD - TS_MOD // 2


class RtpSender:
    """One outgoing stream: its SSRC, sequence numbers, timestamps and when each packet is due.

    Packet n of the stream is due at ``start + n * ptime`` and carries timestamp
    ``initial_timestamp + n * samples_per_packet``, so a late sender neither drifts nor lies about
    time. When the caller has fallen behind it may send at most `max_per_tick` packets at once (the
    backlog drains at that rate rather than in one burst); a backlog longer than `max_backlog`
    packets is skipped, keeping timestamps true to the schedule and sequence numbers contiguous
    (§5.1: the sequence number counts packets sent, the timestamp counts sampling instants).
    """

    def __init__(self, ssrc: int, payload_type: int, samples_per_packet: int, ptime: float,
                 initial_sequence: int = 0, initial_timestamp: int = 0,
                 max_per_tick: int = 2, max_backlog: int = 10) -> None:
        if ptime <= 0 or samples_per_packet <= 0:
            raise ValueError("ptime and samples per packet must be positive")
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.samples_per_packet = samples_per_packet
        self.ptime = ptime
        self.sequence = initial_sequence % SEQ_MOD
        self.timestamp = initial_timestamp % TS_MOD
        self.max_per_tick = max_per_tick
        self.max_backlog = max_backlog
        self.packet_count = 0
        self.octet_count = 0
        self.skipped = 0
        self._start: float | None = None
        self._slot = 0  # schedule slot of the next packet
        self._paused_at: float | None = None  # when the next packet was due as the stream stopped
        self._marker = True  # §5.1 and RFC 3551 §4.1: the first packet of a talkspurt

    def start(self, now: float) -> None:
        """(Re)start the schedule at ``now``; the stream's SSRC and sequence carry on."""
        # On a resume the next packet's slot is now and it starts a talkspurt; its timestamp moves on
        # by the time the stream was stopped, since the timestamp is the sampling instant (§5.1), and a
        # receiver's jitter buffer would otherwise take the resumed packets for very late ones.
        if self._paused_at is not None and now > self._paused_at:
            self.timestamp = ts_add(self.timestamp,
                                    round((now - self._paused_at) / self.ptime * self.samples_per_packet))
        self._paused_at = None
        self._marker = True
        self._start = now - self._slot * self.ptime

    def stop(self, now: float | None = None) -> None:
        """Stop the schedule; given ``now``, a later `start` moves the timestamp on by the pause."""
        if self._start is not None and now is not None:
            self._paused_at = max(now, self._start + self._slot * self.ptime)
        self._start = None

    @property
    def running(self) -> bool:
        return self._start is not None

    def due(self, now: float) -> int:
        """How many packets to send now (0 if none are due yet); skips a backlog that is too long."""
        if self._start is None:
            return 0
        # A packet counts as due from half an interval before its slot: a timer that fires a hair
        # early (another clock, rounding) then sends one packet, not none now and two next time.
        behind = math.floor((now - self._start) / self.ptime + 0.5) + 1 - self._slot
        if behind > self.max_backlog:
            skip = behind - 1
            self._slot += skip
            self.timestamp = ts_add(self.timestamp, skip * self.samples_per_packet)
            self.skipped += skip
            self._marker = True
            behind = 1
        return max(0, min(behind, self.max_per_tick))

    def next_due_time(self) -> float | None:
        return None if self._start is None else self._start + self._slot * self.ptime

    def timestamp_at(self, now: float) -> int:
        """§6.4.1: the RTP timestamp of the sampling instant ``now`` on this stream's schedule (for SRs)."""
        due = self.next_due_time()
        if due is None:
            return self.timestamp
        return ts_add(self.timestamp, round((now - due) / self.ptime * self.samples_per_packet))

    def packet(self, payload: bytes) -> RtpPacket:
        """The next packet of the stream, carrying ``payload``; advances sequence, timestamp and slot."""
        packet = RtpPacket(self.payload_type, self.sequence, self.timestamp, self.ssrc, payload,
                           marker=self._marker)
        self._marker = False
        self.sequence = seq_add(self.sequence, 1)
        self.timestamp = ts_add(self.timestamp, self.samples_per_packet)
        self._slot += 1
        self.packet_count += 1
        self.octet_count += len(payload)
        return packet


@dataclasses.dataclass(frozen=True, slots=True)
class ReceptionReport:
    """A snapshot of `SourceStats`, with jitter in seconds and the longest gap between arrivals."""

    ssrc: int
    received: int
    expected: int
    lost: int
    extended_highest_sequence: int
    jitter: float
    max_gap: float
    duplicates: int
    payload_types: frozenset[int]


class SourceStats:
    """What a receiver knows about one SSRC (RFC 3550 Appendix A.1, A.3, A.8).

    Loss is ``expected - received``: expected from the extended highest sequence number, so a
    duplicate makes it smaller and a late packet repairs an earlier gap, as §6.4.1 defines
    "cumulative number of packets lost". A jump of more than `MAX_DROPOUT` that is then followed
    in sequence is taken as the source restarting (A.1) and re-bases the count.
    """

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self.received = 0
        self.duplicates = 0
        self.base_seq = 0
        self.max_seq = 0
        self.cycles = 0
        self.jitter = 0.0  # in timestamp units, A.8
        self.max_gap = 0.0
        self.payload_types: set[int] = set()
        self._bad_seq: int | None = None
        self._transit: float | None = None
        self._last_arrival: float | None = None
        self._seen = 0  # bit k set: max_seq - k arrived (k <= MAX_MISORDER), for duplicates
        self._expected_prior = 0
        self._received_prior = 0

    def receive(self, packet: RtpPacket, arrival: float) -> None:
        """Account for ``packet`` arriving at ``arrival`` seconds (any clock, as long as it is one)."""
        self.receive_header(packet.payload_type, packet.sequence, packet.timestamp, arrival)

    def receive_header(self, payload_type: int, seq: int, timestamp: int, arrival: float) -> None:
        """`receive` from the three header fields it reads, for a relay that builds no packet.

        Called for every packet a relay forwards, so the sequence arithmetic is written out here
        and recent arrivals are a bit mask rather than a set: the in-order packet costs a shift.
        """
        if self.received == 0 and self._bad_seq is None:
            self.base_seq = self.max_seq = seq
            self._seen = 1
        else:
            max_seq = self.max_seq
            delta = (seq - max_seq + 32768) % SEQ_MOD - 32768  # seq_diff
            if 0 < delta < MAX_DROPOUT:
                if seq < max_seq:
                    self.cycles += SEQ_MOD
                self.max_seq = seq
                self._bad_seq = None
                self._seen = ((self._seen << delta) | 1) & _SEEN_MASK
            elif delta == 0 or (delta < 0 and -delta <= MAX_MISORDER):
                bit = 1 << -delta
                if self._seen & bit:
                    self.duplicates += 1
                    return
                self._seen |= bit
            elif self._bad_seq is not None and seq == self._bad_seq:
                # Two packets in sequence after a big jump: the source restarted (A.1).
                self.base_seq = self.max_seq = seq
                self.cycles = 0
                self.received = 0
                self._expected_prior = self._received_prior = 0
                self._seen = 1
                self._bad_seq = None
            else:
                self._bad_seq = seq_add(seq, 1)
                return
        self.received += 1
        self.payload_types.add(payload_type)
        # A.8: transit time in timestamp units; its absolute value does not matter, only differences.
        transit = arrival * self.clock_rate - timestamp
        last = self._transit
        if last is not None:
            d = abs(transit - last)
            # Timestamps wrap at 2^32; a difference that large is the wrap, not jitter.
            if d > TS_MOD / 2:
                d = abs(d - TS_MOD)
            self.jitter += (d - self.jitter) / 16.0
        self._transit = transit
        if self._last_arrival is not None:
            gap = arrival - self._last_arrival
            if gap > self.max_gap:
                self.max_gap = gap
        self._last_arrival = arrival

    @property
    def extended_highest_sequence(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        if self.received == 0:
            return 0
        return self.extended_highest_sequence - self.base_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received

    def interval_loss(self) -> tuple[int, int]:
        """A.3: (fraction lost as an 8-bit fixed-point number, cumulative lost) since the last call."""
        expected_interval = self.expected - self._expected_prior
        received_interval = self.received - self._received_prior
        self._expected_prior = self.expected
        self._received_prior = self.received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = (lost_interval << 8) // expected_interval
        # §6.4.1: the cumulative count is a signed 24-bit field; clamp rather than wrap.
        return min(fraction, 255), max(-(1 << 23), min(self.lost, (1 << 23) - 1))

    def report(self) -> ReceptionReport:
        return ReceptionReport(self.ssrc, self.received, self.expected, self.lost,
                               self.extended_highest_sequence, self.jitter / self.clock_rate,
                               self.max_gap, self.duplicates, frozenset(self.payload_types))
