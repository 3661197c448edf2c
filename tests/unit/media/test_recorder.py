"""The WAV recorder: packets placed by timestamp, gaps filled with silence, SSRC changes by arrival."""

from __future__ import annotations

import wave
from array import array
from pathlib import Path

import pytest

from sipmob.media.recorder import WavRecorder


def frame(value: int, n: int = 160) -> array[int]:
    return array("h", [value] * n)


def read_wav(path: Path) -> tuple[int, list[int]]:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        data = array("h")
        data.frombytes(wav.readframes(wav.getnframes()))
        return wav.getframerate(), list(data)


def test_consecutive_packets_are_written_back_to_back(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    for i in range(3):
        rec.add(1, 1000 + 160 * i, frame(i + 1), now=0.02 * i)
    rec.close()
    rate, samples = read_wav(tmp_path / "r.wav")
    assert rate == 8000
    assert samples == [1] * 160 + [2] * 160 + [3] * 160


def test_a_lost_packet_leaves_a_frame_of_silence(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    rec.add(1, 0, frame(1), now=0.0)
    rec.add(1, 320, frame(3), now=0.04)
    rec.close()
    assert read_wav(tmp_path / "r.wav")[1] == [1] * 160 + [0] * 160 + [3] * 160


def test_a_late_packet_fills_the_silence_left_for_it(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    rec.add(1, 0, frame(1), now=0.0)
    rec.add(1, 320, frame(3), now=0.04)
    rec.add(1, 160, frame(2), now=0.05)
    rec.close()
    assert read_wav(tmp_path / "r.wav")[1] == [1] * 160 + [2] * 160 + [3] * 160


def test_timestamps_wrapping_stay_contiguous(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    rec.add(1, 0xFFFFFF60, frame(1), now=0.0)
    rec.add(1, 0, frame(2), now=0.02)
    rec.close()
    assert read_wav(tmp_path / "r.wav")[1] == [1] * 160 + [2] * 160


def test_a_new_ssrc_is_placed_by_arrival_time(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    rec.add(1, 0, frame(1), now=10.0)
    rec.add(2, 987654, frame(2), now=10.1)  # another sender, 100 ms later, unrelated timestamps
    rec.close()
    samples = read_wav(tmp_path / "r.wav")[1]
    assert samples == [1] * 160 + [0] * 640 + [2] * 160


def test_a_new_ssrc_never_overwrites_what_was_recorded(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    rec.add(1, 0, frame(1), now=10.0)
    rec.add(2, 5, frame(2), now=10.0)
    rec.close()
    assert read_wav(tmp_path / "r.wav")[1] == [1] * 160 + [2] * 160


def test_a_huge_timestamp_jump_is_placed_by_arrival_time(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav", max_jump=10.0)
    rec.add(1, 0, frame(1), now=0.0)
    rec.add(1, 8000 * 3600, frame(2), now=0.02)  # an hour ahead by timestamp, 20 ms by the clock
    rec.close()
    assert rec.samples == 320


def test_close_with_now_pads_silence_up_to_that_time(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    rec.add(1, 0, frame(1), now=5.0)
    rec.close(now=6.0)
    samples = read_wav(tmp_path / "r.wav")[1]
    assert len(samples) == 8000
    assert samples[160:] == [0] * (8000 - 160)


def test_duration_is_the_recorded_length_in_seconds(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    for i in range(50):
        rec.add(1, 160 * i, frame(1), now=0.02 * i)
    assert rec.duration == pytest.approx(1.0)
    rec.close()


def test_adding_after_close_is_an_error(tmp_path: Path) -> None:
    rec = WavRecorder(tmp_path / "r.wav")
    rec.close()
    with pytest.raises(ValueError):
        rec.add(1, 0, frame(1), now=0.0)
