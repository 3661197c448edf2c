"""RFC 4733 event payloads and schedules, and the INFO body."""

from __future__ import annotations

import itertools

import pytest

from sipmob.media import dtmf


def test_event_payload_layout_is_section_2_3() -> None:
    assert dtmf.event_payload(11, 800, end=True, volume=10) == bytes((11, 0x80 | 10, 0x03, 0x20))
    assert dtmf.event_payload(0, 160) == bytes((0, 10, 0, 160))


def test_digits_map_to_event_codes_in_section_3_2_order() -> None:
    assert [dtmf.event_code(d) for d in "09*#aD"] == [0, 9, 10, 11, 12, 15]


@pytest.mark.parametrize("digits", ["", "12x", "1" * 33, " "])
def test_bad_digit_strings_are_refused(digits: str) -> None:
    with pytest.raises(dtmf.DtmfError):
        dtmf.check_digits(digits)


def test_one_event_grows_then_ends_three_times_on_one_timestamp() -> None:
    packets = dtmf.event_schedule("5")
    durations = [int.from_bytes(p.payload[2:], "big") for p in packets]
    assert durations == [160, 320, 480, 640, 800, 800, 800]
    assert [bool(p.payload[1] & 0x80) for p in packets] == [False] * 4 + [True] * 3
    assert [p.marker for p in packets] == [True] + [False] * 6
    assert {p.timestamp_offset for p in packets} == {0}
    assert [round(p.at, 3) for p in packets] == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12]


def test_the_next_digit_starts_after_the_gap_on_its_own_timestamp() -> None:
    packets = dtmf.event_schedule("12")
    second = [p for p in packets if p.payload[0] == 2]
    assert second[0].marker and round(second[0].at, 3) == 0.22
    assert second[0].timestamp_offset == 0.22 * 8000
    assert all(b.at > a.at for a, b in itertools.pairwise(packets))


def test_info_body_is_dtmf_relay() -> None:
    assert dtmf.info_body("#") == b"Signal=#\r\nDuration=100\r\n"
