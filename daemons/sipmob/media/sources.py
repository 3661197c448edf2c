"""Where sent audio comes from: a generated tone or a WAV file, read one frame of samples at a time.

A source has a ``sample_rate`` and ``read(samples) -> array('h') | None``: exactly ``samples``
16-bit mono samples, or None once it has ended (a short last frame is padded with silence, so
every packet carries a whole frame). `ToneSource` keeps its phase across frames, so the tone has no
click at frame boundaries. `WavSource` reads 16-bit PCM WAV at the codec's rate; stereo is mixed
down to mono. Other rates are refused with a clear error rather than resampled badly.

Not here: encoding (`sipmob.media.codecs`), pacing (`sipmob.media.rtp.RtpSender`).
"""

from __future__ import annotations

import math
import sys
import wave
from array import array
from pathlib import Path
from typing import Protocol


class AudioSource(Protocol):
    sample_rate: int

    def read(self, samples: int) -> array[int] | None: ...


class ToneSource:
    """A sine tone at ``frequency`` Hz; ``amplitude`` is a fraction of full scale; endless by default."""

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.25, sample_rate: int = 8000,
                 duration: float | None = None) -> None:
        if not 0 < frequency < sample_rate / 2:
            raise ValueError(f"a {frequency} Hz tone cannot be sampled at {sample_rate} Hz")
        if not 0 <= amplitude <= 1:
            raise ValueError("amplitude is a fraction of full scale, 0 to 1")
        self.frequency = frequency
        self.amplitude = amplitude
        self.sample_rate = sample_rate
        self._remaining = None if duration is None else round(duration * sample_rate)
        self._n = 0
        # With a whole-number frequency the waveform repeats every `_period` samples.
        self._period = sample_rate // math.gcd(int(frequency), sample_rate) \
            if float(frequency).is_integer() else None

    def read(self, samples: int) -> array[int] | None:
        if self._remaining is not None:
            if self._remaining <= 0:
                return None
            count = min(samples, self._remaining)
            self._remaining -= count
        else:
            count = samples
        step = 2 * math.pi * self.frequency / self.sample_rate
        peak = self.amplitude * 32767
        n0 = self._n
        frame = array("h", (round(peak * math.sin(step * (n0 + i))) for i in range(count)))
        self._n = n0 + count
        if self._period is not None:
            # Keep the sample index small so the phase stays exact over hours of tone.
            self._n %= self._period
        if count < samples:
            frame.extend([0] * (samples - count))
        return frame


class WavSource:
    """16-bit PCM from a WAV file at ``sample_rate``; with ``loop`` it starts over at the end."""

    def __init__(self, path: str | Path, sample_rate: int = 8000, loop: bool = False) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.loop = loop
        try:
            self._wav = wave.open(str(self.path), "rb")
        except (wave.Error, EOFError) as exc:
            raise ValueError(f"{self.path}: not a PCM WAV file ({exc})") from None
        width, rate, channels = self._wav.getsampwidth(), self._wav.getframerate(), self._wav.getnchannels()
        problem = None
        if width != 2:
            problem = f"{8 * width}-bit samples, only 16-bit are read"
        elif rate != sample_rate:
            problem = f"{rate} Hz, the codec needs {sample_rate} Hz"
        elif channels not in (1, 2):
            problem = f"{channels} channels, only mono or stereo are read"
        if problem:
            self._wav.close()
            raise ValueError(f"{self.path}: {problem}")
        self._channels = channels
        self._ended = self._wav.getnframes() == 0

    def read(self, samples: int) -> array[int] | None:
        if self._ended:
            return None
        frame = self._read_samples(samples)
        while len(frame) < samples and self.loop:
            self._wav.rewind()
            more = self._read_samples(samples - len(frame))
            if not more:
                break
            frame.extend(more)
        if not frame:
            self._ended = True
            self._wav.close()
            return None
        if len(frame) < samples:
            frame.extend(array("h", bytes(2 * (samples - len(frame)))))
        return frame

    def _read_samples(self, samples: int) -> array[int]:
        raw = self._wav.readframes(samples)
        data = array("h")
        data.frombytes(raw[: len(raw) & ~1])
        if sys.byteorder == "big":
            data.byteswap()  # WAV is little-endian
        if self._channels == 2:
            data = array("h", ((data[i] + data[i + 1]) >> 1 for i in range(0, len(data) - 1, 2)))
        return data

    def close(self) -> None:
        self._ended = True
        self._wav.close()
