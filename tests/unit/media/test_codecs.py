"""The codec registry: lookup by SDP name and rate, static payload types, frames and silence."""

from __future__ import annotations

import struct
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmob.media import codecs
from sipmob.media.codecs import L16, PCMA, PCMU, UnknownCodec


def test_lookup_is_case_insensitive_on_the_encoding_name() -> None:
    assert codecs.lookup("pcmu", 8000) is PCMU
    assert codecs.lookup("PCMA", 8000) is PCMA


def test_lookup_of_an_unknown_name_or_rate_raises() -> None:
    with pytest.raises(UnknownCodec):
        codecs.lookup("PCMU", 16000)
    with pytest.raises(UnknownCodec):
        codecs.lookup("G722", 8000)


def test_static_payload_types_follow_rfc_3551() -> None:
    assert codecs.by_static_payload_type(0) is PCMU
    assert codecs.by_static_payload_type(8) is PCMA
    with pytest.raises(UnknownCodec):
        codecs.by_static_payload_type(9)


def test_twenty_ms_at_8_khz_is_160_samples() -> None:
    assert PCMU.samples_per_frame(0.02) == 160
    assert PCMA.samples_per_frame(0.03) == 240


def test_a_ptime_shorter_than_a_sample_is_refused() -> None:
    with pytest.raises(ValueError):
        PCMU.samples_per_frame(0.00001)


def test_g711_payload_has_one_octet_per_sample() -> None:
    assert len(PCMU.encode(array("h", [0] * 160))) == 160


def test_l16_is_big_endian_on_the_wire() -> None:
    assert L16.encode(array("h", [1, -2])) == struct.pack("!hh", 1, -2)


@given(st.lists(st.integers(-32768, 32767), max_size=200))
def test_l16_round_trips_exactly(samples: list[int]) -> None:
    assert list(L16.decode(L16.encode(samples))) == samples


def test_l16_decode_drops_an_odd_trailing_octet() -> None:
    assert list(L16.decode(b"\x00\x01\x02")) == [1]


@pytest.mark.parametrize("codec", [PCMU, PCMA, L16])
def test_silence_is_the_encoding_of_zero_samples(codec: codecs.Codec) -> None:
    assert codec.silence(160) == codec.encode(array("h", [0] * 160))


def test_rtpmap_names_the_codec_as_sdp_does() -> None:
    assert PCMA.rtpmap == "PCMA/8000"
