"""An audio source read at another sample rate: an 8 kHz WAV sent as Opus, which runs at 48 kHz.

Responsible for: `Resampled`, which wraps a source (`sipmob.media.sources`) and gives its audio at
``sample_rate`` (8, 16 or 48 kHz, integer factors), one frame at a time, the filter's history
kept across frames so frame boundaries make no click. The filter is the transcoder's
(`sipmob.media.audioformat.Resampler`, numpy).

Not here: generating audio (a `ToneSource` is made at the rate it is sent at, which is exact and
cheaper), encoding (`sipmob.media.codecs`).
"""

from __future__ import annotations

from array import array

from sipmob.media.sources import AudioSource


class Resampled:
    """``source`` at ``sample_rate``; ends when the source ends."""

    def __init__(self, source: AudioSource, sample_rate: int) -> None:
        from sipmob.media.audioformat import Resampler

        self.source = source
        self.sample_rate = sample_rate
        self._resampler = Resampler(source.sample_rate, sample_rate)
        self._in_rate = source.sample_rate

    def read(self, samples: int) -> array[int] | None:
        import numpy as np

        wanted = samples * self._in_rate // self.sample_rate
        if wanted * self.sample_rate != samples * self._in_rate:
            raise ValueError(f"{samples} samples at {self.sample_rate} Hz are not whole samples at "
                             f"{self._in_rate} Hz")
        frame = self.source.read(wanted)
        if frame is None:
            return None
        out = self._resampler.process(np.frombuffer(frame, dtype=np.int16) if frame.typecode == "h"
                                      else np.asarray(frame, dtype=np.int16))
        result = array("h")
        result.frombytes(out.tobytes())
        return result
