"""DTMF digits as RFC 4733 telephone-events and as SIP INFO ``application/dtmf-relay`` bodies.

Responsible for: which digits exist (RFC 4733 §3.2 events 0-15), the 4-octet event payload
(§2.3), and the packet schedule of a run of digits (`event_schedule`): when each packet is due,
its payload, its marker bit and the offset of its timestamp. Every packet of one event carries
the timestamp of the event's start and a growing duration (§2.5.1.2); the last one has the E bit
and is sent three times (§2.5.1.4) so a lost packet does not cut the digit short. The INFO body
is the de-facto ``Signal=``/``Duration=`` format most phones and PBXs read.

Not here: sockets and the clock (the phone paces the schedule on the reactor), SDP negotiation
(whether the peer offered telephone-event).
"""

from __future__ import annotations

import dataclasses

DIGITS = "0123456789*#ABCD"  # §3.2: event codes 0-15 in this order
END_REPEATS = 3  # §2.5.1.4


class DtmfError(ValueError):
    """A digit string with something that is not a DTMF digit, or nothing at all."""


def event_code(digit: str) -> int:
    index = DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise DtmfError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)")
    return index


def check_digits(digits: str, limit: int = 32) -> str:
    """The digits upper-cased, or `DtmfError`; at most ``limit`` of them (a request's cost is bounded)."""
    if not digits:
        raise DtmfError("no digits")
    if len(digits) > limit:
        raise DtmfError(f"at most {limit} digits at a time")
    for d in digits:
        event_code(d)
    return digits.upper()


def event_payload(code: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    """§2.3: event (8 bits), E, R=0, volume (6 bits, -dBm0), duration (16 bits, in timestamp units)."""
    if not 0 <= code <= 255 or not 0 <= volume <= 63 or not 0 <= duration <= 0xFFFF:
        raise ValueError("event, volume or duration out of range")
    return bytes((code, (0x80 if end else 0) | volume)) + duration.to_bytes(2, "big")


@dataclasses.dataclass(frozen=True, slots=True)
class EventPacket:
    at: float  # seconds after the run starts
    timestamp_offset: int  # timestamp units after the run's first timestamp
    payload: bytes
    marker: bool  # §2.5.1.1: the first packet of an event


def event_schedule(digits: str, *, clock_rate: int = 8000, duration: float = 0.1,
                   interval: float = 0.02, gap: float = 0.1, volume: int = 10) -> list[EventPacket]:
    """The packets of ``digits``: each event lasts ``duration``, updated every ``interval``,
    followed by ``gap`` of silence before the next digit starts."""
    packets: list[EventPacket] = []
    start = 0.0
    step = max(1, round(interval * clock_rate))
    for digit in check_digits(digits):
        code = event_code(digit)
        ts = round(start * clock_rate)
        total = round(duration * clock_rate)
        elapsed, n = 0, 0
        while elapsed + step < total:
            elapsed += step
            packets.append(EventPacket(start + n * interval, ts, event_payload(code, elapsed, volume=volume),
                                       n == 0))
            n += 1
        for r in range(END_REPEATS):
            packets.append(EventPacket(start + (n + r) * interval, ts,
                                       event_payload(code, total, end=True, volume=volume), n + r == 0))
        start += (n + END_REPEATS - 1) * interval + gap
    return packets


def info_body(digit: str, duration_ms: int = 100) -> bytes:
    """An ``application/dtmf-relay`` body for one digit."""
    event_code(digit)
    return f"Signal={digit.upper()}\r\nDuration={duration_ms}\r\n".encode()
