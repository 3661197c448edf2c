"""Audio sources: the tone generator and the WAV reader."""

from __future__ import annotations

import itertools
import math
import struct
import wave
from pathlib import Path

import pytest

from sipmob.media.sources import ToneSource, WavSource


def write_wav(path: Path, samples: list[int], rate: int = 8000, channels: int = 1, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        fmt = {1: "b", 2: "h"}[width]
        wav.writeframes(struct.pack(f"<{len(samples)}{fmt}", *samples))
    return path


def test_tone_frames_have_the_requested_number_of_samples() -> None:
    tone = ToneSource(1000, sample_rate=8000)
    frame = tone.read(160)
    assert frame is not None and len(frame) == 160


def test_tone_has_the_requested_frequency_and_amplitude() -> None:
    tone = ToneSource(1000, amplitude=0.5)
    frame = tone.read(8000)
    assert frame is not None
    crossings = sum(1 for a, b in itertools.pairwise(frame) if a < 0 <= b)
    assert crossings == pytest.approx(1000, abs=1)
    assert max(frame) == pytest.approx(0.5 * 32767, rel=0.01)


def test_tone_phase_continues_across_frames() -> None:
    whole = ToneSource(440).read(480)
    tone = ToneSource(440)
    pieces = [tone.read(160) for _ in range(3)]
    assert whole is not None and all(p is not None for p in pieces)
    assert list(whole) == [s for p in pieces if p is not None for s in p]


def test_tone_stays_in_phase_after_many_periods() -> None:
    tone = ToneSource(440)
    for _ in range(5000):  # 100 s of 20 ms frames
        tone.read(160)
    frame = tone.read(1)
    assert frame is not None
    expected = round(0.25 * 32767 * math.sin(2 * math.pi * 440 * 800000 / 8000))
    assert frame[0] == expected


def test_tone_with_a_duration_pads_its_last_frame_then_ends() -> None:
    tone = ToneSource(440, duration=0.025)
    assert tone.read(160) is not None
    last = tone.read(160)
    assert last is not None and len(last) == 160 and list(last[40:]) == [0] * 120
    assert tone.read(160) is None


def test_tone_above_nyquist_is_refused() -> None:
    with pytest.raises(ValueError):
        ToneSource(5000, sample_rate=8000)


def test_wav_frames_carry_the_file_samples_in_order(tmp_path: Path) -> None:
    samples = list(range(-500, 500))
    source = WavSource(write_wav(tmp_path / "a.wav", samples))
    read = []
    while (frame := source.read(160)) is not None:
        read.extend(frame)
    assert read[:1000] == samples
    assert read[1000:] == [0] * (len(read) - 1000)
    assert len(read) % 160 == 0


def test_wav_stereo_is_mixed_to_mono(tmp_path: Path) -> None:
    source = WavSource(write_wav(tmp_path / "s.wav", [100, 300, -100, -300], channels=2))
    frame = source.read(2)
    assert frame is not None and list(frame) == [200, -200]


def test_looping_wav_starts_over_at_the_end(tmp_path: Path) -> None:
    source = WavSource(write_wav(tmp_path / "l.wav", [1, 2, 3]), loop=True)
    frame = source.read(7)
    assert frame is not None and list(frame) == [1, 2, 3, 1, 2, 3, 1]


@pytest.mark.parametrize(("rate", "width", "message"), [(16000, 2, "16000 Hz"), (8000, 1, "8-bit")])
def test_wav_in_another_format_is_refused_with_the_reason(tmp_path: Path, rate: int, width: int,
                                                          message: str) -> None:
    path = write_wav(tmp_path / "x.wav", [0] * 10, rate=rate, width=width)
    with pytest.raises(ValueError, match=message):
        WavSource(path)


def test_a_file_that_is_not_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.wav"
    path.write_bytes(b"not a wave file at all")
    with pytest.raises(ValueError, match="not a PCM WAV"):
        WavSource(path)
