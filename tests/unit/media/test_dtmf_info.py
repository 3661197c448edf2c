"""DTMF the way back: INFO bodies to digits, RFC 4733 streams to digits each once, generated events.

The INFO bodies are the ones the peers send: PJSIP's ``application/dtmf-relay`` (``Signal=5`` and
``Duration=160``), the phone's own, and ``application/dtmf`` with the bare digit (the RFC 2976-era
usage). An event stream gives one digit per event however many end packets are repeated, and a
digit whose end packets were all lost is still given once, when the next one starts.
"""

from __future__ import annotations

import struct

import pytest

from sipmob.media import dtmf
from sipmob.media.audioformat import AudioFormat
from sipmob.media.transcode import Channel


@pytest.mark.parametrize(("body", "kind", "expected"), [
    (b"Signal=5\r\nDuration=160\r\n", "application/dtmf-relay", ("5", 160)),
    (b"Signal=#\nDuration=100\n", "application/dtmf-relay; charset=us-ascii", ("#", 100)),
    (b"Signal=11\r\nDuration=250\r\n", "application/dtmf-relay", ("#", 250)),  # an event code
    (b"Signal=a\r\n", "application/dtmf-relay", ("A", dtmf.DEFAULT_DURATION_MS)),
    (b"7", "application/dtmf", ("7", dtmf.DEFAULT_DURATION_MS)),
    (b"Signal=1\r\nDuration=99999\r\n", "application/dtmf-relay", ("1", dtmf.MAX_DURATION_MS)),
    (b"Signal=1\r\nDuration=1\r\n", "application/dtmf-relay", ("1", dtmf.MIN_DURATION_MS)),
    (b"Signal=9\r\nDuration=100\r\nSide=B\r\n", "application/dtmf-relay", ("9", 100)),
])
def test_info_bodies_the_peers_send_give_their_digit(body: bytes, kind: str,
                                                    expected: tuple[str, int]) -> None:
    digit = dtmf.parse_info(body, kind)
    assert (digit.digit, digit.duration_ms) == expected


@pytest.mark.parametrize(("body", "kind"), [
    (b"Signal=5\r\n", "text/plain"),
    (b"Signal=X\r\n", "application/dtmf-relay"),
    (b"Duration=100\r\n", "application/dtmf-relay"),
    (b"Signal=5\r\nDuration=-3\r\n", "application/dtmf-relay"),
    (b"Signal=5\r\n" + b"x" * 300, "application/dtmf-relay"),
    (b"\xff", "application/dtmf"),
])
def test_anything_else_is_refused(body: bytes, kind: str) -> None:
    with pytest.raises(dtmf.DtmfError):
        dtmf.parse_info(body, kind)


def test_the_side_line_round_trips() -> None:
    body = dtmf.relay_body(dtmf.Digit("*", 120), "A")
    assert dtmf.info_side(body) == "A"
    assert dtmf.parse_info(body, "application/dtmf-relay") == dtmf.Digit("*", 120)
    assert dtmf.info_side(dtmf.relay_body(dtmf.Digit("1", 100))) is None


def events(code: int, ts: int, durations: list[int], ends: int = 3) -> list[tuple[int, bytes]]:
    out = [(ts, dtmf.event_payload(code, d)) for d in durations]
    return out + [(ts, dtmf.event_payload(code, durations[-1] + 160, end=True))] * ends


def test_an_event_stream_gives_each_digit_once_with_its_duration() -> None:
    detector = dtmf.DigitDetector(8000)
    stream = events(1, 1000, [160, 320, 480]) + events(11, 5000, [160, 320])
    found = [d for ts, p in stream for d in detector.feed(ts, p)]
    assert found == [dtmf.Digit("1", 80), dtmf.Digit("#", 60)]
    # A late repeat of an end already given is not a new digit.
    assert detector.feed(1000, dtmf.event_payload(1, 640, end=True)) == []


def test_a_digit_whose_ends_were_all_lost_is_given_when_the_next_starts() -> None:
    detector = dtmf.DigitDetector(8000)
    stream = events(4, 0, [160, 800], ends=0) + events(5, 8000, [160])
    found = [d for ts, p in stream for d in detector.feed(ts, p)]
    assert found == [dtmf.Digit("4", 100), dtmf.Digit("5", 40)]


def test_the_same_digit_twice_is_two_digits_and_tones_above_15_are_ignored() -> None:
    detector = dtmf.DigitDetector(48000)
    stream = events(3, 0, [960]) + events(3, 96000, [960]) + events(32, 200000, [960])
    assert [d.digit for ts, p in stream for d in detector.feed(ts, p)] == ["3", "3"]


def test_the_bucket_bounds_a_flood() -> None:
    bucket = dtmf.TokenBucket(rate=8, burst=16)
    assert sum(bucket.take(0.0) for _ in range(1000)) == 16
    assert sum(bucket.take(1.0) for _ in range(1000)) == 8


def rtp(pt: int, seq: int, ts: int, payload: bytes, marker: bool = False, ssrc: int = 0x1111) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload


@pytest.mark.parametrize("sink", [AudioFormat.of("PCMU", 0, 8000), AudioFormat.of("PCMA", 8, 8000)])
def test_a_channel_to_a_side_without_telephone_event_tells_each_digit_once(sink: AudioFormat) -> None:
    """Relayed (PCMU to PCMU) and converted (PCMU to PCMA) alike."""
    source = AudioFormat.of("PCMU", 0, 8000, dtmf_payload_type=101)
    channel = Channel(source, AudioFormat.of(sink.name, sink.payload_type, 8000))
    heard: list[dtmf.Digit] = []
    channel.on_digit = heard.append
    seq = 0
    for i in range(5):
        assert channel.receive(rtp(0, seq, i * 160, b"\xff" * 160))
        seq += 1
    for ts, payload in events(9, 800, [160, 320, 480]):
        assert channel.receive(rtp(101, seq, ts, payload)) == []  # nothing of it goes out
        seq += 1
    assert heard == [dtmf.Digit("9", 80)]


def test_generated_events_are_numbered_in_the_output_stream() -> None:
    fmt = AudioFormat.of("PCMU", 0, 8000, dtmf_payload_type=101)
    channel = Channel(fmt, fmt)  # a relay
    out = [channel.receive(rtp(0, s, s * 160, b"\xff" * 160))[0] for s in range(3)]
    ts = channel.out_ts
    out.append(channel.event_packet(dtmf.event_payload(5, 160), ts, True))
    out.append(channel.event_packet(dtmf.event_payload(5, 800, end=True), ts, False))
    out += channel.receive(rtp(0, 3, 3 * 160, b"\xff" * 160))
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in out]
    assert [(s - seqs[0]) % 65536 for s in seqs] == list(range(6))
    assert len({struct.unpack_from("!I", p, 8)[0] for p in out}) == 1
    assert out[3][1] == 0x80 | 101 and out[4][1] == 101
    assert struct.unpack_from("!I", out[3], 4)[0] == ts == struct.unpack_from("!I", out[5], 4)[0]
