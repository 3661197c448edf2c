"""G.711 u-law and A-law against values from the ITU-T recommendation and its reference code."""

from __future__ import annotations

import math
import warnings
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmob.media import g711


def milliwatt(peak: int) -> list[int]:
    """One period of the 1 kHz digital milliwatt at 8 kHz: phases pi/8, 3pi/8 ... (G.711 Tables 5-6)."""
    s1, s2 = round(peak * math.sin(math.pi / 8)), round(peak * math.sin(3 * math.pi / 8))
    return [-s1, -s2, -s2, -s1, s1, s2, s2, s1]


def test_ulaw_digital_milliwatt_is_the_g711_table_5_sequence() -> None:
    # 0 dBm0 is 3.17 dB below u-law's overload point of 8159 (14-bit), i.e. a 16-bit peak of 22656.
    assert g711.ulaw_encode(milliwatt(22656)) == bytes.fromhex("1e0b0b1e9e8b8b9e")


def test_alaw_digital_milliwatt_is_the_g711_table_6_sequence() -> None:
    # 0 dBm0 is 3.14 dB below A-law's overload point of 4096 (13-bit), i.e. a 16-bit peak of 22826.
    assert g711.alaw_encode(milliwatt(22826)) == bytes.fromhex("34212134b4a1a1b4")


@pytest.mark.parametrize(("code", "sample"), [
    (0xFF, 0), (0x7F, 0), (0x80, 32124), (0x00, -32124), (0x9E, 8828), (0x8B, 20860),
])
def test_ulaw_decodes_to_the_centre_of_its_interval(code: int, sample: int) -> None:
    assert g711.ulaw_to_linear(code) == sample


@pytest.mark.parametrize(("code", "sample"), [
    (0xD5, 8), (0x55, -8), (0xAA, 32256), (0x2A, -32256), (0xB4, 8960), (0xA1, 20992),
])
def test_alaw_decodes_to_the_centre_of_its_interval(code: int, sample: int) -> None:
    assert g711.alaw_to_linear(code) == sample


def test_silence_encodes_to_the_idle_codes() -> None:
    assert g711.ulaw_encode(array("h", [0] * 4)) == bytes([g711.ULAW_SILENCE]) * 4
    assert g711.alaw_encode(array("h", [0] * 4)) == bytes([g711.ALAW_SILENCE]) * 4


def test_full_scale_clips_to_the_outermost_codes() -> None:
    assert g711.ulaw_encode([32767, -32768]) == b"\x80\x00"
    assert g711.alaw_encode([32767, -32768]) == b"\xaa\x2a"


def test_every_code_survives_decode_then_encode() -> None:
    codes = bytes(range(256))
    # u-law has two zeros (0x7F and 0xFF); both decode to 0, which encodes as 0xFF.
    assert g711.ulaw_encode(g711.ulaw_decode(codes)) == codes.replace(b"\x7f", b"\xff")
    assert g711.alaw_encode(g711.alaw_decode(codes)) == codes


@given(st.integers(-32768, 32767))
def test_quantisation_error_stays_within_half_a_step(sample: int) -> None:
    # The step doubles per segment; the error bound is relative, about 1/32 of the value, plus the floor.
    laws = ((g711.linear_to_ulaw, g711.ulaw_to_linear), (g711.linear_to_alaw, g711.alaw_to_linear))
    for encode, decode in laws:
        error = abs(decode(encode(sample)) - sample)
        assert error <= max(16, abs(sample) / 16) or abs(sample) > 32124


def test_frames_match_python_audioop_for_every_sample() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    pcm = array("h", range(-32768, 32768))
    assert g711.ulaw_encode(pcm) == audioop.lin2ulaw(pcm.tobytes(), 2)
    assert g711.alaw_encode(pcm) == audioop.lin2alaw(pcm.tobytes(), 2)
    codes = bytes(range(256))
    assert g711.ulaw_decode(codes).tobytes() == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_decode(codes).tobytes() == audioop.alaw2lin(codes, 2)


def test_a_list_and_an_array_encode_alike() -> None:
    samples = [-1000, 0, 1000, 31000]
    assert g711.ulaw_encode(samples) == g711.ulaw_encode(array("h", samples))
