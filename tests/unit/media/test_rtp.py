"""RTP packets, sequence/timestamp arithmetic, the sender's schedule and receiver statistics (RFC 3550)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.media.rtp import (
    MAX_DROPOUT,
    MAX_MISORDER,
    RtpExtension,
    RtpPacket,
    RtpParseError,
    RtpSender,
    SourceStats,
    parse,
    seq_add,
    seq_diff,
    ts_add,
    ts_diff,
)

# V=2 P=0 X=0 CC=0 | M=1 PT=0 | seq 0x1234 | ts 0x000a0b0c | SSRC 0xdeadbeef | payload
KNOWN = bytes.fromhex("80801234000a0b0cdeadbeef") + b"\xff\xfe"


def test_known_header_parses_field_by_field() -> None:
    packet = parse(KNOWN)
    assert (packet.payload_type, packet.marker, packet.sequence, packet.timestamp, packet.ssrc) == (
        0, True, 0x1234, 0x000A0B0C, 0xDEADBEEF)
    assert packet.payload == b"\xff\xfe"


def test_known_header_serialises_to_the_same_bytes() -> None:
    assert RtpPacket(0, 0x1234, 0x000A0B0C, 0xDEADBEEF, b"\xff\xfe", marker=True).to_bytes() == KNOWN


def test_csrcs_extension_and_padding_are_laid_out_as_section_5_1_says() -> None:
    packet = RtpPacket(8, 1, 2, 3, b"ab", csrcs=(4, 5), extension=RtpExtension(0xBEDE, b"\1\2\3\4"),
                       padding=3)
    data = packet.to_bytes()
    assert data[0] == 0x80 | 0x20 | 0x10 | 2
    assert data[12:20] == bytes.fromhex("0000000400000005")
    assert data[20:28] == bytes.fromhex("bede0001") + b"\1\2\3\4"
    assert data[28:] == b"ab\0\0\3"


packets = st.builds(
    RtpPacket,
    payload_type=st.integers(0, 127).filter(lambda pt: not 72 <= pt <= 76),
    sequence=st.integers(0, 0xFFFF),
    timestamp=st.integers(0, 0xFFFFFFFF),
    ssrc=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=64),
    marker=st.booleans(),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
    extension=st.none() | st.builds(RtpExtension, st.integers(0, 0xFFFF),
                                    st.binary(max_size=12).map(lambda b: b[: len(b) & ~3])),
    padding=st.integers(0, 255),
)


@settings(max_examples=200)
@given(packets)
def test_any_packet_round_trips(packet: RtpPacket) -> None:
    assert parse(packet.to_bytes()) == packet


@settings(max_examples=300)
@given(st.binary(max_size=40))
def test_arbitrary_bytes_parse_or_raise_rtp_parse_error(data: bytes) -> None:
    try:
        parse(data)
    except RtpParseError:
        pass


@pytest.mark.parametrize(("data", "reason"), [
    (KNOWN[:11], "shorter"),
    (b"\x40" + KNOWN[1:], "version"),
    (bytes([0x81]) + KNOWN[1:12], "CSRC"),
    (bytes([0x90]) + KNOWN[1:12] + b"\0\0", "extension"),
    (bytes([0x90]) + KNOWN[1:12] + b"\0\0\0\5", "extension"),
    (bytes([0xA0]) + KNOWN[1:12] + b"\0", "zero padding"),
    (bytes([0xA0]) + KNOWN[1:12] + b"\x20", "padding count 32"),
    (bytes([0xA1]) + KNOWN[1:12] + b"\0\0\0\2", "CSRC"),
    (bytes([0x80, 0xC8]) + KNOWN[2:], "RTCP"),
])
def test_malformed_packets_raise_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RtpParseError, match=reason):
        parse(data)


def test_field_out_of_range_is_refused_when_building() -> None:
    with pytest.raises(ValueError):
        RtpPacket(128, 0, 0, 0)
    with pytest.raises(ValueError):
        RtpPacket(0, 0x10000, 0, 0)
    with pytest.raises(ValueError):
        RtpExtension(1, b"abc")


def test_sequence_arithmetic_wraps() -> None:
    assert seq_add(0xFFFF, 1) == 0
    assert seq_diff(0, 0xFFFF) == 1
    assert seq_diff(0xFFFF, 0) == -1
    assert seq_diff(5, 5) == 0


def test_timestamp_arithmetic_wraps() -> None:
    assert ts_add(0xFFFFFF60, 160) == 0
    assert ts_diff(0, 0xFFFFFF60) == 160
    assert ts_diff(0xFFFFFF60, 0) == -160


@given(st.integers(0, 0xFFFF), st.integers(-0x8000, 0x7FFF))
def test_seq_diff_inverts_seq_add(base: int, n: int) -> None:
    assert seq_diff(seq_add(base, n), base) == n


# --- the sender's schedule -------------------------------------------------------------------------

def test_sender_numbers_packets_consecutively_and_advances_timestamps_by_a_frame() -> None:
    sender = RtpSender(7, 0, 160, 0.02, initial_sequence=0xFFFE, initial_timestamp=0xFFFFFF00)
    sender.start(0.0)
    sent = [sender.packet(b"x") for _ in range(3)]
    assert [p.sequence for p in sent] == [0xFFFE, 0xFFFF, 0]
    assert [p.timestamp for p in sent] == [0xFFFFFF00, 0xFFFFFFA0, 0x40]
    assert [p.marker for p in sent] == [True, False, False]


def test_sender_has_one_packet_due_per_interval_on_schedule() -> None:
    sender = RtpSender(7, 0, 160, 0.02)
    sender.start(100.0)
    counts = []
    for n in range(50):
        due = sender.due(100.0 + n * 0.02)
        counts.append(due)
        for _ in range(due):
            sender.packet(b"")
    assert counts == [1] * 50


def test_sender_counts_a_tick_slightly_early_as_due() -> None:
    sender = RtpSender(7, 0, 160, 0.02)
    sender.start(0.0)
    sender.packet(b"")
    assert sender.due(0.0195) == 1


def test_sender_has_nothing_due_before_the_next_slot() -> None:
    sender = RtpSender(7, 0, 160, 0.02)
    sender.start(0.0)
    sender.packet(b"")
    assert sender.due(0.005) == 0


def test_sender_catches_up_at_most_two_packets_per_tick() -> None:
    sender = RtpSender(7, 0, 160, 0.02)
    sender.start(0.0)
    sender.packet(b"")
    # Four intervals late: the backlog drains two at a time, not in one burst.
    assert sender.due(0.1) == 2


def test_sender_skips_a_long_backlog_and_keeps_timestamps_on_schedule() -> None:
    sender = RtpSender(7, 0, 160, 0.02, initial_timestamp=0)
    sender.start(0.0)
    first = sender.packet(b"")
    assert sender.due(1.0) == 1  # 50 slots late
    late = sender.packet(b"")
    assert late.sequence == first.sequence + 1
    assert late.timestamp == 50 * 160
    assert late.marker
    assert sender.skipped == 49


def test_stopped_sender_has_nothing_due() -> None:
    sender = RtpSender(7, 0, 160, 0.02)
    sender.start(0.0)
    sender.stop()
    assert sender.due(5.0) == 0
    assert sender.next_due_time() is None


def test_resumed_sender_continues_sequence_and_timestamp() -> None:
    sender = RtpSender(7, 0, 160, 0.02, initial_sequence=10, initial_timestamp=1000)
    sender.start(0.0)
    sender.packet(b"")
    sender.stop()
    sender.start(30.0)
    assert sender.due(30.0) == 1
    resumed = sender.packet(b"")
    assert (resumed.sequence, resumed.timestamp, resumed.marker) == (11, 1160, True)


def test_resumed_sender_timestamp_moves_on_by_the_pause() -> None:
    # RFC 3550 §5.1: the timestamp is the sampling instant; sequence numbers stay contiguous.
    sender = RtpSender(7, 0, 160, 0.02, initial_sequence=10, initial_timestamp=1000)
    sender.start(0.0)
    sender.packet(b"")  # the next one was due at 0.02 s, with timestamp 1160
    sender.stop(1.0)
    sender.start(3.0)
    resumed = sender.packet(b"")
    assert (resumed.sequence, resumed.timestamp, resumed.marker) == (11, 1160 + 2 * 8000, True)


def test_stop_before_the_next_packet_was_due_moves_nothing_on() -> None:
    sender = RtpSender(7, 0, 160, 0.02, initial_sequence=10, initial_timestamp=1000)
    sender.start(0.0)
    sender.packet(b"")
    sender.stop(0.01)
    sender.start(0.015)
    assert sender.packet(b"").timestamp == 1160


def test_sender_counts_packets_and_payload_octets() -> None:
    sender = RtpSender(7, 0, 160, 0.02)
    sender.start(0.0)
    sender.packet(b"a" * 160)
    sender.packet(b"b" * 160)
    assert (sender.packet_count, sender.octet_count) == (2, 320)


# --- receiver statistics ---------------------------------------------------------------------------

def feed(stats: SourceStats, seqs: list[int], ts_step: int = 160, ptime: float = 0.02) -> None:
    for i, seq in enumerate(seqs):
        stats.receive(RtpPacket(0, seq % 0x10000, (seq * ts_step) % 2**32, 1), i * ptime)


def test_in_order_stream_has_no_loss() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, list(range(100)))
    assert (stats.received, stats.expected, stats.lost) == (100, 100, 0)


def test_missing_packets_count_as_lost() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, [0, 1, 2, 5, 6, 9])
    assert stats.lost == 4


def test_late_packet_repairs_the_loss() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, [0, 1, 3, 2, 4])
    assert stats.lost == 0
    assert stats.extended_highest_sequence == 4


def test_duplicate_is_counted_apart_and_not_as_received() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, [0, 1, 1, 2])
    assert (stats.received, stats.duplicates, stats.lost) == (3, 1, 0)


def test_a_late_packet_repeated_and_a_repeat_across_the_wrap_are_duplicates() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, [0xFFFC, 0xFFFD, 0xFFFF, 0xFFFE, 0xFFFE, 0x10000, 0xFFFF, 0x10001])
    assert (stats.received, stats.duplicates, stats.lost) == (6, 2, 0)


@given(st.lists(st.tuples(st.booleans(), st.integers(1, MAX_MISORDER)), min_size=1, max_size=60),
       st.integers(0, 0xFFFF))
@settings(max_examples=60, deadline=None)
def test_repeats_within_the_reorder_window_are_each_one_duplicate(
        repeats: list[tuple[bool, int]], start: int) -> None:
    # An in-order stream, with some packets sent again up to MAX_MISORDER packets later.
    seqs: list[int] = []
    for i, (again, back) in enumerate(repeats):
        seqs.append(start + i)
        if again and back <= i:
            seqs.append(start + i - back)
    stats = SourceStats(1, 8000)
    feed(stats, seqs)
    assert stats.received == len(repeats)
    assert stats.duplicates == len(seqs) - len(repeats)
    assert stats.lost == 0


def test_sequence_wrap_extends_the_highest_sequence() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, list(range(0xFFF0, 0x10010)))
    assert stats.extended_highest_sequence == 0x1000F
    assert stats.lost == 0


def test_one_wild_sequence_number_is_ignored() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, [0, 1, 2, 2 + MAX_DROPOUT + 500, 3])
    assert (stats.received, stats.lost) == (4, 0)


def test_two_sequential_packets_after_a_big_jump_restart_the_count() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, [0, 1, 2, 20000, 20001, 20002])
    assert stats.expected == 2
    assert stats.lost == 0


def test_jitter_is_zero_for_perfectly_paced_packets() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, list(range(50)))
    assert stats.report().jitter == pytest.approx(0.0, abs=1e-9)


def test_jitter_follows_the_a8_recurrence() -> None:
    stats = SourceStats(1, 8000)
    stats.receive(RtpPacket(0, 0, 0, 1), 0.0)
    stats.receive(RtpPacket(0, 1, 160, 1), 0.030)  # 10 ms late: D = 80 timestamp units
    assert stats.jitter == pytest.approx(80 / 16)
    stats.receive(RtpPacket(0, 2, 320, 1), 0.040)  # back on time: D = 80 again
    assert stats.jitter == pytest.approx(80 / 16 + (80 - 80 / 16) / 16)


def test_jitter_ignores_a_timestamp_wrap() -> None:
    stats = SourceStats(1, 8000)
    stats.receive(RtpPacket(0, 0, 0xFFFFFF60, 1), 0.0)
    stats.receive(RtpPacket(0, 1, 0, 1), 0.02)
    assert stats.jitter == pytest.approx(0.0, abs=1e-6)


def test_longest_gap_between_arrivals_is_reported() -> None:
    stats = SourceStats(1, 8000)
    for seq, arrival in enumerate([0.0, 0.02, 0.04, 0.13, 0.15]):
        stats.receive(RtpPacket(0, seq, seq * 160, 1), arrival)
    assert stats.report().max_gap == pytest.approx(0.09)


def test_interval_loss_is_the_fraction_since_the_last_report() -> None:
    stats = SourceStats(1, 8000)
    feed(stats, [0, 1, 3])  # 1 of 4 lost
    assert stats.interval_loss() == (64, 1)
    stats.receive(RtpPacket(0, 4, 640, 1), 1.0)
    assert stats.interval_loss() == (0, 1)


def test_timestamp_at_a_moment_follows_the_schedule() -> None:
    sender = RtpSender(7, 0, 160, 0.02, initial_timestamp=1000)
    sender.start(10.0)
    sender.packet(b"")  # slot 0 at t=10.00, the next (timestamp 1160) is due at 10.02
    assert sender.timestamp_at(10.01) == 1080
    assert sender.timestamp_at(10.10) == 1800
