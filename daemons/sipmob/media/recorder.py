"""Recording received audio to a WAV file whose timeline is true to the sender's clock.

Each decoded packet is placed by its RTP timestamp: a gap in timestamps (lost packets, or a
sender that paused) becomes silence in the file, a late packet is written into the silence left
for it, a duplicate overwrites itself. A new SSRC (another device took over the call) is placed
by arrival time, never before what has already been written, and so is a timestamp jump longer
than ``max_jump`` seconds (a sender that restarted its clock). The caller passes ``now``; this
module reads no clock.

Not here: decoding (`sipmob.media.codecs`), receiving (`sipmob.service.rtp`).
"""

from __future__ import annotations

import struct
import sys
from array import array
from pathlib import Path
from typing import BinaryIO

from sipmob.media.rtp import ts_diff

_HEADER_SIZE = 44


def wav_header(sample_rate: int, data_octets: int) -> bytes:
    """The canonical 44-octet header of a 16-bit mono PCM WAV file."""
    return (b"RIFF" + struct.pack("<I", 36 + data_octets) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
            + b"data" + struct.pack("<I", data_octets))


class WavRecorder:
    """16-bit mono WAV at ``sample_rate``; `add` packets as they arrive, `close` to finish the header."""

    def __init__(self, path: str | Path, sample_rate: int = 8000, max_jump: float = 10.0) -> None:
        self.path = Path(path)
        self.sample_rate = sample_rate
        self.max_jump = round(max_jump * sample_rate)
        self._file: BinaryIO | None = open(self.path, "wb")  # lives until close()
        self._file.write(wav_header(sample_rate, 0))
        self._end = 0  # samples in the file so far
        self._start_time: float | None = None
        self._anchors: dict[int, tuple[int, int]] = {}  # ssrc -> (timestamp, position) of its last packet

    @property
    def samples(self) -> int:
        return self._end

    @property
    def duration(self) -> float:
        return self._end / self.sample_rate

    def add(self, ssrc: int, timestamp: int, pcm: array[int], now: float) -> None:
        """Place ``pcm`` (the decoded payload of a packet from ``ssrc`` with ``timestamp``)."""
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        if self._start_time is None:
            self._start_time = now
        anchor = self._anchors.get(ssrc)
        position = None
        if anchor is not None:
            position = anchor[1] + ts_diff(timestamp, anchor[0])
            if position < 0 or abs(position - self._end) > self.max_jump:
                position = None
        if position is None:
            position = max(self._end, round((now - self._start_time) * self.sample_rate))
        self._anchors[ssrc] = (timestamp, position)
        self._write_at(position, pcm)

    def _write_at(self, position: int, pcm: array[int]) -> None:
        assert self._file is not None
        if position > self._end:
            self._file.seek(_HEADER_SIZE + 2 * self._end)
            self._file.write(bytes(2 * (position - self._end)))
        else:
            self._file.seek(_HEADER_SIZE + 2 * position)
        if sys.byteorder == "big":
            pcm = array("h", pcm)
            pcm.byteswap()
        self._file.write(pcm.tobytes())
        self._end = max(self._end, position + len(pcm))

    def close(self, now: float | None = None) -> None:
        """Finish the file; with ``now``, silence up to that time first (the sender went quiet)."""
        if self._file is None:
            return
        if now is not None and self._start_time is not None:
            until = round((now - self._start_time) * self.sample_rate)
            if until > self._end:
                self._write_at(until, array("h"))
        self._file.seek(0)
        self._file.write(wav_header(self.sample_rate, 2 * self._end))
        self._file.close()
        self._file = None
