"""Digits played as RFC 4733 events into a channel's output (the worker's `Tones`), sans sockets.

Each digit: a marked first packet, updates every ptime with a growing duration, three end packets
with the full duration, all with one timestamp, numbered next in the output stream. Two digits in
a row with no audio between them still get two timestamps (the same one would make them one event
to the receiver), and the queue is bounded.
"""

from __future__ import annotations

import struct

from sipmob.media import dtmf
from sipmob.media.audioformat import AudioFormat
from sipmob.media.transcode import Channel
from sipmob.transcoder.worker import DIGIT_GAP, MAX_QUEUED_DIGITS, Tones


def play(tones: Tones, start: float = 100.0) -> list[tuple[float, bytes]]:
    out = []
    now = start
    for _ in range(1000):
        if not tones.due:
            break
        now = max(now, tones.due)
        packet = tones.step(now)
        if packet is not None:
            out.append((now, packet))
    return out


def test_two_digits_are_two_events_with_their_durations_and_three_ends_each() -> None:
    fmt = AudioFormat.of("PCMU", 0, 8000, dtmf_payload_type=101)
    channel = Channel(fmt, fmt)
    tones = Tones(channel)
    first_seq = channel.out_seq
    assert tones.add(dtmf.Digit("1", 100), 100.0) and tones.add(dtmf.Digit("#", 60), 100.0)
    packets = play(tones)
    heads = [struct.unpack_from("!BBHII", p) for _, p in packets]
    assert [(h[2] - first_seq) % 65536 for h in heads] == list(range(len(heads)))
    events: dict[int, list[bytes]] = {}
    for h, (_, p) in zip(heads, packets, strict=True):
        assert h[1] & 0x7F == 101 and h[4] == channel.ssrc
        events.setdefault(h[3], []).append(p[12:])
    assert len(events) == 2
    (ts1, one), (ts2, pound) = events.items()
    assert [p[0] for p in one] == [1] * len(one) and [p[0] for p in pound] == [11] * len(pound)
    assert [p[1] >> 7 for p in one] == [0] * (len(one) - 3) + [1] * 3
    assert int.from_bytes(one[-1][2:4], "big") == 800 and int.from_bytes(pound[-1][2:4], "big") == 480
    assert (ts2 - ts1) % 2**32 >= 800 + round(DIGIT_GAP * 8000)  # after the first one's end
    markers = [h[1] >> 7 for h in heads]
    assert markers == [1] + [0] * (len(one) - 1) + [1] + [0] * (len(pound) - 1)
    times = [t for t, _ in packets]
    assert times == sorted(times) and times[len(one)] - times[len(one) - 1] >= DIGIT_GAP - 1e-9


def test_a_full_queue_refuses_more_digits() -> None:
    fmt = AudioFormat.of("PCMA", 8, 8000, dtmf_payload_type=101)
    tones = Tones(Channel(fmt, fmt))
    assert all(tones.add(dtmf.Digit("5", 100), 0.0) for _ in range(MAX_QUEUED_DIGITS))
    assert not tones.add(dtmf.Digit("5", 100), 0.0)
