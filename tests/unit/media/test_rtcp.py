"""RTCP compound packets (RFC 3550 §6, Appendix A.2)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.media.rtcp import (
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpParseError,
    RtcpSession,
    SdesChunk,
    SenderInfo,
    SenderReport,
    SourceDescription,
    UnknownRtcp,
    build,
    build_compound,
    middle_32,
    ntp_timestamp,
    parse_compound,
)
from sipmob.media.rtp import RtpPacket, SourceStats

BLOCK = ReportBlock(0x11111111, fraction_lost=64, cumulative_lost=-3, highest_sequence=0x10005,
                    jitter=42, last_sr=0xAABBCCDD, delay_since_last_sr=0x10000)


def test_receiver_report_with_one_block_has_the_section_6_4_2_layout() -> None:
    data = build(ReceiverReport(0xCAFEBABE, (BLOCK,)))
    assert data[:4] == bytes([0x81, 201, 0, 7])  # V=2 RC=1, PT=RR, length 7 words after the first
    assert data[4:8] == bytes.fromhex("cafebabe")
    assert data[8:12] == bytes.fromhex("11111111")
    assert data[12:16] == bytes([64, 0xFF, 0xFF, 0xFD])  # fraction, then -3 in 24 bits
    assert struct.unpack("!IIII", data[16:32]) == (0x10005, 42, 0xAABBCCDD, 0x10000)


def test_sender_report_carries_ntp_rtp_and_counts() -> None:
    sr = SenderReport(1, ntp_timestamp(0.0), 160, 10, 1600)
    data = build(sr)
    assert data[:4] == bytes([0x80, 200, 0, 6])
    assert struct.unpack("!IIIIII", data[4:]) == (1, 2_208_988_800, 0, 160, 10, 1600)


def test_sdes_cname_chunk_is_null_terminated_and_word_aligned() -> None:
    data = build(SourceDescription((SdesChunk.with_cname(5, "a@b"),)))
    assert data == bytes([0x81, 202, 0, 3]) + bytes.fromhex("00000005") + b"\x01\x03a@b\x00\x00\x00"


def test_bye_with_a_reason_is_padded_to_a_word() -> None:
    data = build(Bye((9,), "moved"))
    assert data == bytes([0x81, 203, 0, 3]) + bytes.fromhex("00000009") + b"\x05moved\x00\x00"


def test_compound_of_sr_sdes_bye_round_trips() -> None:
    packets = (SenderReport(1, ntp_timestamp(1_700_000_000.25), 8000, 50, 8000, (BLOCK,)),
               SourceDescription((SdesChunk.with_cname(1, "phone@192.0.2.1"),)), Bye((1,), None))
    assert parse_compound(build_compound(packets)) == packets


def test_cname_is_read_from_the_chunk() -> None:
    assert SdesChunk(1, ((2, b"Alice"), (1, b"alice@host"))).cname == "alice@host"


blocks = st.builds(ReportBlock, st.integers(0, 2**32 - 1), st.integers(0, 255),
                   st.integers(-(2**23), 2**23 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                   st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
ssrcs = st.integers(0, 2**32 - 1)
reports = st.one_of(
    st.builds(SenderReport, ssrcs, st.integers(0, 2**64 - 1), ssrcs, ssrcs, ssrcs,
              st.lists(blocks, max_size=3).map(tuple)),
    st.builds(ReceiverReport, ssrcs, st.lists(blocks, max_size=3).map(tuple)))
items = st.tuples(st.integers(1, 255), st.binary(max_size=20))
others = st.one_of(
    st.builds(SourceDescription, st.lists(st.builds(SdesChunk, ssrcs, st.lists(items, max_size=3).map(tuple)),
                                          max_size=3).map(tuple)),
    st.builds(Bye, st.lists(ssrcs, max_size=4).map(tuple),
              st.none() | st.text(max_size=20).filter(lambda t: len(t.encode()) < 256)),
    st.builds(UnknownRtcp, st.integers(204, 210), st.integers(0, 31),
              st.binary(max_size=16).map(lambda b: b[: len(b) & ~3])))


@settings(max_examples=150)
@given(reports, st.lists(others, max_size=4))
def test_any_compound_round_trips(first: SenderReport | ReceiverReport,
                                  rest: list[SourceDescription]) -> None:
    packets = (first, *rest)
    assert parse_compound(build_compound(packets)) == packets


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_arbitrary_bytes_parse_or_raise_rtcp_parse_error(data: bytes) -> None:
    try:
        parse_compound(data)
    except RtcpParseError:
        pass


RR = build(ReceiverReport(1))


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (RR[:3], "shorter"),
    (bytes([0x40]) + RR[1:], "version"),
    (RR[:3] + b"\x05" + RR[4:], "length"),
    (build(Bye((1,))) + RR, "not SR or RR"),
    (bytes([0xA0]) + RR[1:] + RR, "padding"),
    (RR[:2] + b"\x00\x00", "RR without"),
    (bytes([0x81]) + RR[1:], "report blocks"),
])
def test_invalid_compounds_raise_with_the_reason(data: bytes, reason: str) -> None:
    with pytest.raises(RtcpParseError, match=reason):
        parse_compound(data)


def test_padding_on_the_last_packet_is_removed() -> None:
    padded = bytes([0xA0]) + RR[1:3] + bytes([2]) + RR[4:] + b"\0\0\0\4"
    assert parse_compound(padded) == (ReceiverReport(1),)


def test_reduced_size_rtcp_may_start_with_any_packet() -> None:
    assert parse_compound(build(Bye((3,))), reduced_size=True) == (Bye((3,)),)


def test_a_compound_must_start_with_a_report_when_built() -> None:
    with pytest.raises(ValueError):
        build_compound([Bye((1,))])


def test_ntp_timestamp_middle_32_bits_are_seconds_low_16_and_fraction_high_16() -> None:
    ntp = ntp_timestamp(0.5)
    assert middle_32(ntp) == ((2_208_988_800 & 0xFFFF) << 16) | 0x8000


# --- RtcpSession -----------------------------------------------------------------------------------

def heard(ssrc: int, seqs: range) -> SourceStats:
    stats = SourceStats(ssrc, 8000)
    for seq in seqs:
        stats.receive(RtpPacket(0, seq, 160 * seq, ssrc), 0.02 * seq)
    return stats


def test_a_sender_reports_with_an_sr_and_its_cname() -> None:
    session = RtcpSession(1, "phone@host")
    packets = parse_compound(session.report(1_700_000_000.0, SenderInfo(8000, 50, 8000), []))
    assert packets == (SenderReport(1, ntp_timestamp(1_700_000_000.0), 8000, 50, 8000),
                       SourceDescription((SdesChunk.with_cname(1, "phone@host"),)))


def test_a_receiver_reports_with_an_rr_carrying_a_block_per_source() -> None:
    session = RtcpSession(1, "tv@host")
    (rr, _) = parse_compound(session.report(0.0, None, [heard(7, range(0, 10)), heard(8, range(5))]))
    assert isinstance(rr, ReceiverReport)
    assert [(b.ssrc, b.highest_sequence, b.cumulative_lost) for b in rr.reports] == [(7, 9, 0), (8, 4, 0)]


def test_report_blocks_carry_the_loss_since_the_last_report() -> None:
    stats = heard(7, range(0, 8))
    stats.receive(RtpPacket(0, 10, 1600, 7), 0.2)  # 8 and 9 lost: 2 of 11
    session = RtcpSession(1, "x")
    (rr, _) = parse_compound(session.report(0.0, None, [stats]))
    assert isinstance(rr, ReceiverReport)
    assert (rr.reports[0].fraction_lost, rr.reports[0].cumulative_lost) == ((2 << 8) // 11, 2)


def test_lsr_and_dlsr_echo_the_last_sr_from_that_source() -> None:
    alice, bob = RtcpSession(1, "alice"), RtcpSession(2, "bob")
    bob.receive(alice.report(1000.0, SenderInfo(0, 1, 160), []), now=1000.010)
    (rr, _) = parse_compound(bob.report(1000.510, None, [heard(1, range(3))]))
    assert isinstance(rr, ReceiverReport)
    block = rr.reports[0]
    assert block.last_sr == middle_32(ntp_timestamp(1000.0))
    assert block.delay_since_last_sr == pytest.approx(0.5 * 65536, abs=1)


def test_round_trip_is_computed_from_a_report_about_us() -> None:
    alice, bob = RtcpSession(1, "alice"), RtcpSession(2, "bob")
    # 10 ms each way, Bob holds the SR for 500 ms before reporting.
    bob.receive(alice.report(1000.0, SenderInfo(0, 1, 160), []), now=1000.010)
    alice.receive(bob.report(1000.510, None, [heard(1, range(3))]), now=1000.520)
    assert alice.round_trip == pytest.approx(0.020, abs=0.0001)
    assert 2 in alice.reports_about_us


def test_no_round_trip_before_the_peer_has_an_sr_from_us() -> None:
    alice, bob = RtcpSession(1, "alice"), RtcpSession(2, "bob")
    alice.receive(bob.report(5.0, None, [heard(1, range(3))]), now=5.0)
    assert alice.round_trip is None


def test_bye_follows_a_report_and_is_noted_by_the_peer() -> None:
    alice, bob = RtcpSession(1, "alice"), RtcpSession(2, "bob")
    packets = bob.receive(alice.bye(0.0, None, [], reason="moved"), now=0.0)
    assert isinstance(packets[0], ReceiverReport)
    assert packets[-1] == Bye((1,), "moved")
    assert bob.byes == {1}


def test_report_interval_is_randomised_around_the_5_s_minimum() -> None:
    session = RtcpSession(1, "x")
    low, high = session.interval(0.0), session.interval(0.999999)
    # §6.3.1: [0.5, 1.5] x 5 s, divided by e - 3/2.
    assert low == pytest.approx(2.5 / 1.21828, rel=1e-4)
    assert high == pytest.approx(7.5 / 1.21828, rel=1e-4)
