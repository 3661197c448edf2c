"""A minimal RTP receiver and sender for measuring media in tests and benchmarks.

`RtpProbe` records the fixed RTP header (RFC 3550 §5.1) of every datagram it receives, with its
arrival time and source, and answers the questions tests ask: which streams came, how many packets
were lost by sequence number, how long the gaps between packets were. `RtpSender` sends a G.711
u-law tone paced at 20 ms to a destination that can be changed mid-stream, as a device does when a
re-INVITE moves the media. Neither knows anything about SDP or RTCP.
"""

from __future__ import annotations

import itertools
import math
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass

RTP_HEADER = struct.Struct("!BBHII")
PCMU = 0


@dataclass(frozen=True, slots=True)
class RtpPacket:
    arrival: float  # time.monotonic() when it arrived
    ssrc: int
    seq: int
    timestamp: int
    payload_type: int
    marker: bool
    source: tuple[str, int]
    payload_size: int


@dataclass(frozen=True, slots=True)
class RtpStream:
    ssrc: int
    source: tuple[str, int]
    payload_type: int
    packets: int
    first_arrival: float
    last_arrival: float


def parse_rtp(data: bytes, source: tuple[str, int], arrival: float) -> RtpPacket | None:
    """The header of an RTP version 2 packet, or None for anything else (RTCP included)."""
    if len(data) < RTP_HEADER.size:
        return None
    first, second, seq, timestamp, ssrc = RTP_HEADER.unpack_from(data)
    if first >> 6 != 2:
        return None
    payload_type = second & 0x7F
    if 64 <= payload_type <= 95:  # RTCP packet types 200-207 with the marker bit (RFC 5761 §4)
        return None
    header = RTP_HEADER.size + 4 * (first & 0x0F)
    if first & 0x10 and len(data) >= header + 4:  # header extension
        header += 4 + 4 * struct.unpack_from("!H", data, header + 2)[0]
    return RtpPacket(arrival, ssrc, seq, timestamp, payload_type, bool(second & 0x80),
                     (str(source[0]), int(source[1])), max(0, len(data) - header))


def _seq_span(seqs: list[int]) -> tuple[int, int]:
    """(expected, received) for 16-bit sequence numbers in arrival order, unwrapping rollover."""
    extended = []
    cycles = 0
    last = None
    for seq in seqs:
        if last is not None and seq < last and last - seq > 0x8000:
            cycles += 1
        elif last is not None and seq > last and seq - last > 0x8000:
            cycles -= 1  # a late packet from before the wrap
        extended.append(cycles * 0x10000 + seq)
        last = seq
    return max(extended) - min(extended) + 1, len(set(extended))


class RtpProbe:
    """A UDP socket on a thread that records every RTP packet it receives.

    Pass `sock` to receive on a socket made elsewhere (e.g. inside a network namespace).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, port))
        self.sock = sock
        self.sock.settimeout(0.1)
        self.host, self.port = self.sock.getsockname()[:2]
        self.packets: list[RtpPacket] = []
        self.ignored = 0
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._receive, name=f"rtp-probe-{self.port}", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._running:
            try:
                data, source = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            packet = parse_rtp(data, source, time.monotonic())
            with self._cond:
                if packet is None:
                    self.ignored += 1
                else:
                    self.packets.append(packet)
                self._cond.notify_all()

    def wait_for_packets(self, n: int, timeout: float, ssrc: int | None = None) -> bool:
        """Whether `n` packets (of `ssrc`, if given) have arrived within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for p in self.packets if ssrc is None or p.ssrc == ssrc) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def snapshot(self) -> list[RtpPacket]:
        with self._cond:
            return list(self.packets)

    def streams(self) -> list[RtpStream]:
        """One entry per (SSRC, source address), in order of first arrival."""
        grouped: dict[tuple[int, tuple[str, int]], list[RtpPacket]] = {}
        for packet in self.snapshot():
            grouped.setdefault((packet.ssrc, packet.source), []).append(packet)
        return [RtpStream(ssrc, source, ps[0].payload_type, len(ps), ps[0].arrival, ps[-1].arrival)
                for (ssrc, source), ps in grouped.items()]

    def lost(self, ssrc: int | None = None) -> int:
        """Packets missing by sequence number, summed over SSRCs (or for one SSRC)."""
        by_ssrc: dict[int, list[int]] = {}
        for packet in self.snapshot():
            if ssrc is None or packet.ssrc == ssrc:
                by_ssrc.setdefault(packet.ssrc, []).append(packet.seq)
        total = 0
        for seqs in by_ssrc.values():
            expected, received = _seq_span(seqs)
            total += expected - received
        return total

    def gaps(self, ssrc: int | None = None) -> list[float]:
        """Seconds between consecutive arrivals (of one SSRC, or of any packet at all)."""
        arrivals = [p.arrival for p in self.snapshot() if ssrc is None or p.ssrc == ssrc]
        return [b - a for a, b in itertools.pairwise(arrivals)]

    def max_gap(self, ssrc: int | None = None) -> float:
        return max(self.gaps(ssrc), default=0.0)

    def stop(self) -> None:
        self._running = False
        self._thread.join(2.0)
        self.sock.close()

    def __enter__(self) -> RtpProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ulaw_encode(sample: int) -> int:
    """One 16-bit linear sample to G.711 u-law (ITU-T G.711, with the usual bias of 0x84)."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = 7
    for exp in range(7, -1, -1):
        if magnitude & (0x4000 >> (7 - exp)):
            exponent = exp
            break
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def ulaw_tone(frequency: float = 440.0, samples: int = 160, rate: int = 8000,
              amplitude: int = 8000) -> list[bytes]:
    """A whole number of 20 ms u-law frames holding one tone, to be sent in a loop."""
    period = rate // math.gcd(rate, int(frequency))  # samples after which the tone repeats exactly
    total = math.lcm(period, samples)
    pcm = [int(amplitude * math.sin(2 * math.pi * frequency * n / rate)) for n in range(total)]
    encoded = bytes(ulaw_encode(s) for s in pcm)
    return [encoded[i:i + samples] for i in range(0, total, samples)]


class RtpSender:
    """Sends PCMU (payload type 0) every 20 ms from its own socket to `destination`.

    `retarget()` changes the destination mid-stream without a new SSRC or a jump in sequence
    number or timestamp, as one RTP session moved by a re-INVITE. Pacing is by absolute deadlines,
    so a late wake-up does not stretch the stream.
    """

    PTIME = 0.020

    def __init__(self, destination: tuple[str, int], host: str = "127.0.0.1", port: int = 0,
                 ssrc: int | None = None, frequency: float = 440.0, max_packets: int = 50 * 600,
                 sock: socket.socket | None = None) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((host, port))
        self.sock = sock
        self.host, self.port = self.sock.getsockname()[:2]
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self.destination = destination
        self.sent = 0
        self.max_packets = max_packets  # bounds the thread even if nobody calls stop()
        self._frames = ulaw_tone(frequency)
        self._seq = random.getrandbits(16)
        self._timestamp = random.getrandbits(32)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._send, name=f"rtp-sender-{self.port}", daemon=True)
        self._thread.start()

    def retarget(self, destination: tuple[str, int]) -> None:
        with self._lock:
            self.destination = destination

    def _send(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set() and self.sent < self.max_packets:
            frame = self._frames[self.sent % len(self._frames)]
            header = RTP_HEADER.pack(0x80, (0x80 if self.sent == 0 else 0) | PCMU,
                                     self._seq, self._timestamp, self.ssrc)
            with self._lock:
                destination = self.destination
            try:
                self.sock.sendto(header + frame, destination)
            except OSError:
                pass  # an ICMP error from a closed port must not stop the stream
            self.sent += 1
            self._seq = (self._seq + 1) & 0xFFFF
            self._timestamp = (self._timestamp + len(frame)) & 0xFFFFFFFF
            next_at += self.PTIME
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()

    def __enter__(self) -> RtpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
