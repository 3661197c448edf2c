"""Opus as the phone's own codec: RFC 7587 naming, one encoder/decoder state per stream, audio
through it, and an 8 kHz source resampled to Opus' 48 kHz."""

from __future__ import annotations

from array import array

import pytest

from sipmob.media import codecs
from sipmob.media.codecs import OPUS, UnknownCodec, opus_available
from sipmob.media.sources import ToneSource

np = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not opus_available(), reason="libopus0 is not installed")


def peak(samples: list[int] | array[int], rate: int) -> float:
    y = np.asarray(samples, dtype=float)
    return float(np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y))))) * rate / len(y))


def snr(samples: list[int] | array[int], rate: int, freq: float) -> float:
    """SNR in dB of a least-squares sine fit at `freq` (phase and delay free)."""
    y = np.asarray(samples, dtype=float)
    t = np.arange(len(y)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    fit = basis @ coef
    return float(10 * np.log10(np.sum(fit ** 2) / np.sum((y - fit) ** 2)))


def test_opus_is_named_as_rfc_7587_says_and_looked_up_at_48_khz_only() -> None:
    assert codecs.lookup("opus", 48000) is OPUS
    assert codecs.lookup("OPUS", 48000) is OPUS
    assert OPUS.rtpmap == "opus/48000/2"  # §7: always 48000/2, whatever is sent
    assert OPUS.static_payload_type is None  # dynamic
    assert "useinbandfec=1" in (OPUS.fmtp or "")
    with pytest.raises(UnknownCodec):
        codecs.lookup("opus", 8000)
    with pytest.raises(UnknownCodec):
        codecs.by_static_payload_type(111)


def test_a_20_ms_frame_is_960_samples_on_the_48_khz_clock() -> None:
    assert OPUS.samples_per_frame(0.02) == 960


def test_the_template_has_no_state_and_each_stream_gets_its_own() -> None:
    with pytest.raises(ValueError):
        OPUS.encode(array("h", bytes(1920)))
    a, b = OPUS.fresh(), OPUS.fresh()
    assert a is not b and a.encode is not b.encode
    # equal by format: a running stream's codec still compares equal to what the phone offers
    assert a == OPUS == b and hash(a) == hash(OPUS)
    assert codecs.PCMU.fresh() is codecs.PCMU  # stateless: shared


def test_a_tone_survives_opus_at_its_frequency_and_level() -> None:
    stream = OPUS.fresh()
    tone = ToneSource(1000.0, sample_rate=48000)
    out: list[int] = []
    for _ in range(50):  # 1 s
        payload = stream.encode(tone.read(960))
        assert 0 < len(payload) < 400  # ~32 kbit/s: about 80 octets per 20 ms
        out.extend(stream.decode(payload))
    assert len(out) == 48000
    last = out[-9600:]  # the encoder's start-up is over
    assert abs(peak(last, 48000) - 1000) < 10
    assert snr(last, 48000, 1000.0) > 15
    level = 20 * np.log10(np.sqrt(np.mean(np.asarray(last, dtype=float) ** 2)) / 32768)
    assert -18 < level < -12  # a 0.25 full-scale sine is -15 dBFS


def test_two_streams_do_not_share_their_state() -> None:
    """Frames of one stream decoded by another's decoder would be garbled if state were shared:
    two streams of different tones at once each decode to their own tone."""
    low, high = OPUS.fresh(), OPUS.fresh()
    tones = (ToneSource(440.0, sample_rate=48000), ToneSource(2000.0, sample_rate=48000))
    heard: tuple[list[int], list[int]] = ([], [])
    for _ in range(25):
        for stream, tone, out in zip((low, high), tones, heard, strict=True):
            out.extend(stream.decode(stream.encode(tone.read(960))))
    assert abs(peak(heard[0][-9600:], 48000) - 440) < 10
    assert abs(peak(heard[1][-9600:], 48000) - 2000) < 10


def test_a_lost_or_corrupt_payload_is_concealed_not_dropped() -> None:
    stream = OPUS.fresh()
    tone = ToneSource(440.0, sample_rate=48000)
    for _ in range(5):
        stream.decode(stream.encode(tone.read(960)))
    assert len(stream.decode(b"")) == 960  # the frame's time is filled


def test_silence_is_a_valid_opus_frame() -> None:
    payload = OPUS.silence(960)
    assert payload and len(OPUS.fresh().decode(payload)) == 960


def test_an_8_khz_source_is_resampled_to_48_khz_at_the_same_frequency() -> None:
    from sipmob.media.resampled import Resampled

    source = Resampled(ToneSource(440.0, sample_rate=8000), 48000)
    assert source.sample_rate == 48000
    out: list[int] = []
    for _ in range(25):
        frame = source.read(960)
        assert frame is not None and len(frame) == 960
        out.extend(frame)
    assert abs(peak(out[-9600:], 48000) - 440) < 10
    assert snr(out[-9600:], 48000, 440.0) > 30


def test_a_resampled_source_ends_when_its_source_ends() -> None:
    from sipmob.media.resampled import Resampled

    source = Resampled(ToneSource(440.0, sample_rate=8000, duration=0.03), 48000)
    assert source.read(960) is not None
    assert source.read(960) is not None  # the last 10 ms, padded
    assert source.read(960) is None
    with pytest.raises(ValueError):
        Resampled(ToneSource(sample_rate=8000), 48000).read(1000)  # not whole 8 kHz samples


def test_the_phones_answer_states_our_opus_fmtp_not_the_offers() -> None:
    """RFC 7587 §7.1: an answer's fmtp says what the answerer receives and sends; the offer's
    ``stereo=1; sprop-stereo=1`` echoed back would claim we send stereo."""
    from sipmob.mn.remote_offer import own_fmtp
    from sipmob.sdp import parse

    answer = parse("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                   "m=audio 4000 RTP/AVP 96 0 101\r\na=rtpmap:96 opus/48000/2\r\n"
                   "a=fmtp:96 stereo=1;sprop-stereo=1\r\na=rtpmap:0 PCMU/8000\r\n"
                   "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n")
    mine = own_fmtp(answer, (codecs.PCMU, OPUS))
    media = mine.media[0]
    assert media.fmtp(96) == "useinbandfec=1"
    assert media.fmtp(101) == "0-15" and media.formats == answer.media[0].formats
    # without Opus among our codecs the answer is left as it is
    assert own_fmtp(answer, (codecs.PCMU,)) == answer
