"""DTMF digits as RFC 4733 telephone-events and as SIP INFO ``application/dtmf-relay`` bodies.

Responsible for: which digits exist (RFC 4733 §3.2 events 0-15), the 4-octet event payload
(§2.3), and the packet schedule of a run of digits (`event_schedule`): when each packet is due,
its payload, its marker bit and the offset of its timestamp. Every packet of one event carries
the timestamp of the event's start and a growing duration (§2.5.1.2); the last one has the E bit
and is sent three times (§2.5.1.4) so a lost packet does not cut the digit short. The INFO body
is the de-facto ``Signal=``/``Duration=`` format most phones and PBXs read.

Also the way back, for the transcoder and its controller: an INFO body to a digit (`parse_info`:
``application/dtmf-relay`` and ``application/dtmf``), an incoming event stream to digits each
reported once (`DigitDetector`), the transcoder's ``Side=`` line (`relay_body`, `info_side`), and
the token bucket that bounds what one party's digits may cost (`TokenBucket`).

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


# SIP INFO bodies in, digits out; RFC 4733 events in, digits out --------------------------------

INFO_TYPES = ("application/dtmf-relay", "application/dtmf")
DEFAULT_DURATION_MS = 250  # what PJSIP and most PBXs assume when an INFO gives none
MIN_DURATION_MS = 40  # ITU-T Q.24: shorter than this is not recognised as a digit
MAX_DURATION_MS = 5000  # longer presses are clipped: one INFO never makes more than 5 s of events
MAX_INFO_BODY = 256


@dataclasses.dataclass(frozen=True, slots=True)
class Digit:
    digit: str
    duration_ms: int


def parse_info(body: bytes, content_type: str) -> Digit:
    """The digit of a DTMF INFO body; `DtmfError` for anything else.

    ``application/dtmf-relay`` is the de-facto ``Signal=5`` / ``Duration=160`` lines (PJSIP, Cisco,
    Asterisk, our own `info_body`; duration in ms, optional). ``application/dtmf`` carries the
    digit alone (the RFC 2976-era draft usage: ``5``), or its event code (``11`` for ``#``).
    Unknown lines are ignored, a digit outside 0-9*#A-D, a body over `MAX_INFO_BODY` octets or one
    without a signal is refused.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind not in INFO_TYPES:
        raise DtmfError(f"{content_type or 'no Content-Type'} is not a DTMF INFO body")
    if len(body) > MAX_INFO_BODY:
        raise DtmfError(f"a DTMF body of {len(body)} octets")
    try:
        text = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DtmfError("a DTMF body that is not ASCII") from None
    duration = DEFAULT_DURATION_MS
    if kind == "application/dtmf":
        signal = text.splitlines()[0].strip() if text else ""  # (the transcoder's Side= may follow)
    else:
        signal = ""
        for line in text.splitlines():
            key, _, value = line.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "signal":
                signal = value
            elif key == "duration":
                if not value.isdigit() or len(value) > 6:
                    raise DtmfError(f"Duration={value!r} is not a number of milliseconds")
                duration = int(value)
    if signal.isdigit() and len(signal) <= 2 and 10 <= int(signal) <= 15:
        signal = DIGITS[int(signal)]  # an event code (RFC 4733 §3.2) rather than the key
    event_code(signal)
    return Digit(signal.upper(), max(MIN_DURATION_MS, min(MAX_DURATION_MS, duration)))


class DigitDetector:
    """The digits of one incoming RFC 4733 stream, each once, with its duration.

    A digit is reported at its first end packet (§2.5.1.4: the end is sent three times; the
    repeats carry the same timestamp and are dropped), or, should every end packet be lost, when
    the next event starts (with the longest duration seen). Events above 15 (tones other than DTMF)
    are not digits and are ignored.
    """

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self._current: tuple[int, int] | None = None  # (timestamp, code) of the event under way
        self._duration = 0
        self._reported: list[tuple[int, int]] = []  # the last few events reported (late repeats)

    def feed(self, timestamp: int, payload: bytes) -> list[Digit]:
        """The digits this event packet completes (none, one, or two when an end was lost)."""
        if len(payload) < 4 or payload[0] >= len(DIGITS):
            return []
        code, end = payload[0], bool(payload[1] & 0x80)
        duration = int.from_bytes(payload[2:4], "big")
        key = (timestamp, code)
        found: list[Digit] = []
        if key in self._reported:
            return found  # a repeated end, or a late packet of a digit already given
        if key != self._current:
            if self._current is not None:
                found.append(self._done(self._current, self._duration))  # its end never came
            self._current, self._duration = key, 0
        self._duration = max(self._duration, duration)
        if end:
            found.append(self._done(key, self._duration))
            self._current = None
        return found

    def _done(self, key: tuple[int, int], duration: int) -> Digit:
        self._reported = [*self._reported[-7:], key]
        return self._digit(key[1], duration)

    def _digit(self, code: int, duration: int) -> Digit:
        ms = round(duration * 1000 / self.clock_rate)
        return Digit(DIGITS[code], max(MIN_DURATION_MS, min(MAX_DURATION_MS, ms)))


def relay_body(digit: Digit, side: str | None = None) -> bytes:
    """``application/dtmf-relay`` for ``digit``; with ``side`` the transcoder's ``Side=`` line
    (`sipmob.transcoder.invocation`): which party pressed it, A or B."""
    body = f"Signal={digit.digit}\r\nDuration={digit.duration_ms}\r\n"
    if side is not None:
        body += f"Side={side}\r\n"
    return body.encode()


def info_side(body: bytes) -> str | None:
    """The ``Side=`` line of a transcoder's INFO body (A or B), None without one."""
    for line in body.decode("ascii", "replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() == "side" and value.strip().upper() in ("A", "B"):
            return value.strip().upper()
    return None


class TokenBucket:
    """At most ``burst`` at once and ``rate`` a second after that; sans-I/O (the caller gives the
    time). Bounds what one party's digits may cost whoever forwards them."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at: float | None = None

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
