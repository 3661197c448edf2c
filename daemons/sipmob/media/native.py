"""Opus and G.722 called in their own libraries (libopus, spandsp) through ctypes, without PyAV.

Responsible for: `OpusEncoder`, `OpusDecoder` (with libopus' own packet-loss concealment and its
in-band FEC), `G722Encoder`, `G722Decoder`, and `available()` saying whether the libraries load.

Why not PyAV here: libavcodec's codecs are the same C, but PyAV 10 wraps each call in objects of
its own and, for an encoder with a fixed frame size (libopus, g722), passes every frame through an
``AudioResampler`` filter graph even when nothing is converted. Measured on the build machine
(CPU per 20 ms frame, ``.venv/bin/python tests/bench/bench_codecs.py``): libopus encoding 16 kHz
input 126 us through PyAV, 67 us called directly; G.722 encoding 33 us against 22 us. The decoder
side gains more: libavcodec's libopus wrapper always decodes to 48 kHz, libopus itself decodes at
8/16 kHz for a G.711 or G.722 receiver (no 48 kHz resampling afterwards), and only libopus can be
asked for its concealment of a lost frame or for the FEC copy a later packet carries (RFC 6716
§2.1.7, RFC 7587 §3.3), which libavcodec's API cannot reach.

The libraries are libopus0 (already under libavcodec) and libspandsp2 (its G.722 is the one
FreeSWITCH and Asterisk use), both in Debian 12. ctypes drops the GIL during each call, as PyAV
does. When a library cannot be loaded `sipmob.media.audioformat` falls back to PyAV.

Not here: choosing rates and bit rates (`sipmob.media.audioformat`), RTP.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

# opus_defines.h
OPUS_APPLICATION_VOIP = 2048
OPUS_SET_BITRATE = 4002
OPUS_SET_VBR = 4006
OPUS_SET_COMPLEXITY = 4010
OPUS_SET_INBAND_FEC = 4012
OPUS_SET_PACKET_LOSS_PERC = 4014
OPUS_DECODER_RATES = (8000, 12000, 16000, 24000, 48000)
G722_SAMPLE_RATE_8000 = 0x0001  # spandsp g722.h
MAX_PACKET = 1500

_opus: Any = None
_spandsp: Any = None


def _load(names: tuple[str, ...]) -> Any:
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _libopus() -> Any:
    global _opus
    if _opus is None:
        lib = _load(("libopus.so.0", ctypes.util.find_library("opus") or "libopus.so"))
        if lib is None:
            _opus = False
            return None
        vp, ci = ctypes.c_void_p, ctypes.c_int
        lib.opus_encoder_create.restype = vp
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ci, ci, ctypes.POINTER(ci)]
        lib.opus_encoder_destroy.argtypes = [vp]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [vp, ctypes.c_char_p, ci, ctypes.c_char_p, ctypes.c_int32]
        lib.opus_decoder_create.restype = vp
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ci, ctypes.POINTER(ci)]
        lib.opus_decoder_destroy.argtypes = [vp]
        lib.opus_decode.restype = ci
        lib.opus_decode.argtypes = [vp, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ci, ci]
        _opus = lib
    return _opus or None


def _libspandsp() -> Any:
    global _spandsp
    if _spandsp is None:
        lib = _load(("libspandsp.so.2", ctypes.util.find_library("spandsp") or "libspandsp.so"))
        if lib is None:
            _spandsp = False
            return None
        vp, ci = ctypes.c_void_p, ctypes.c_int
        lib.g722_encode_init.restype = vp
        lib.g722_encode_init.argtypes = [vp, ci, ci]
        lib.g722_encode_free.argtypes = [vp]
        lib.g722_encode.restype = ci
        lib.g722_encode.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p, ci]
        lib.g722_decode_init.restype = vp
        lib.g722_decode_init.argtypes = [vp, ci, ci]
        lib.g722_decode_free.argtypes = [vp]
        lib.g722_decode.restype = ci
        lib.g722_decode.argtypes = [vp, ctypes.c_void_p, ctypes.c_char_p, ci]
        _spandsp = lib
    return _spandsp or None


def available(codec: str) -> bool:
    """Whether `codec` ("OPUS" or "G722") can be called here without PyAV."""
    if codec == "OPUS":
        return _libopus() is not None
    if codec == "G722":
        return _libspandsp() is not None
    return False


class NativeError(RuntimeError):
    """A library refused to create a codec state (bad rate, out of memory)."""


class OpusEncoder:
    """libopus at `rate` (8/16/48 kHz input), mono, VoIP mode, VBR, one frame per call."""

    def __init__(self, rate: int, frame_samples: int, bit_rate: int, fec: bool) -> None:
        lib = _libopus()
        error = ctypes.c_int()
        self._state = lib.opus_encoder_create(rate, 1, OPUS_APPLICATION_VOIP, ctypes.byref(error))
        if not self._state or error.value:
            raise NativeError(f"opus_encoder_create({rate}): error {error.value}")
        self._lib = lib
        state = ctypes.c_void_p(self._state)
        lib.opus_encoder_ctl(state, ctypes.c_int(OPUS_SET_BITRATE), ctypes.c_int32(bit_rate))
        lib.opus_encoder_ctl(state, ctypes.c_int(OPUS_SET_VBR), ctypes.c_int32(1))
        if fec:
            lib.opus_encoder_ctl(state, ctypes.c_int(OPUS_SET_INBAND_FEC), ctypes.c_int32(1))
            lib.opus_encoder_ctl(state, ctypes.c_int(OPUS_SET_PACKET_LOSS_PERC), ctypes.c_int32(10))
        self.rate = rate
        self.frame_samples = frame_samples
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        self._encode = lib.opus_encode
        self._string_at = ctypes.string_at

    def encode(self, pcm: Pcm) -> bytes:
        size = self._encode(self._state, pcm.tobytes(), self.frame_samples, self._out, MAX_PACKET)
        return self._string_at(self._out, size) if size > 0 else b""

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self._lib.opus_encoder_destroy(self._state)
            self._state = None


class OpusDecoder:
    """libopus decoding to mono at `rate` (any of 8/12/16/24/48 kHz, whatever the sender coded)."""

    def __init__(self, rate: int) -> None:
        lib = _libopus()
        error = ctypes.c_int()
        self._state = lib.opus_decoder_create(rate, 1, ctypes.byref(error))
        if not self._state or error.value:
            raise NativeError(f"opus_decoder_create({rate}): error {error.value}")
        self._lib = lib
        self.rate = rate
        self.errors = 0
        self._max = rate * 120 // 1000  # the longest Opus packet: 120 ms
        self._pcm = np.zeros(self._max, dtype=np.int16)
        self._pointer = self._pcm.ctypes.data
        self._decode = lib.opus_decode
        self._last = rate // 50

    def decode(self, payload: bytes) -> Pcm:
        n = self._decode(self._state, payload, len(payload), self._pointer, self._max, 0)
        if n <= 0:  # a corrupt payload: conceal it like a lost one
            self.errors += 1
            return self.conceal(self._last)
        self._last = n
        return self._pcm[:n].copy()

    def conceal(self, samples: int, next_payload: bytes | None = None) -> Pcm:
        """`samples` made up for a lost frame: from the FEC copy in `next_payload` (the packet
        after the loss) when it has one, else libopus' concealment."""
        samples = min(samples, self._max)
        if next_payload:
            n = self._decode(self._state, next_payload, len(next_payload), self._pointer, samples, 1)
            if n == samples:
                return self._pcm[:n].copy()
        n = self._decode(self._state, None, 0, self._pointer, samples, 0)
        if n <= 0:
            return np.zeros(samples, dtype=np.int16)
        return self._pcm[:n].copy()

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self._lib.opus_decoder_destroy(self._state)
            self._state = None


class G722Encoder:
    """spandsp G.722 at 64 kbit/s: 16 kHz samples in (one octet per two samples out), or 8 kHz
    samples for a narrow-band source: spandsp then codes the lower sub-band only (one octet per
    sample, the upper band silent), skipping the QMF analysis and our 8 to 16 kHz resampling. The
    stream is ordinary G.722 either way."""

    def __init__(self, frame_samples: int, rate: int = 16000) -> None:
        lib = _libspandsp()
        self.rate = rate
        self._state = lib.g722_encode_init(None, 64000, G722_SAMPLE_RATE_8000 if rate == 8000 else 0)
        if not self._state:
            raise NativeError("g722_encode_init failed")
        self._lib = lib
        self.frame_samples = frame_samples
        self._out = ctypes.create_string_buffer(frame_samples)
        self._encode = lib.g722_encode
        self._string_at = ctypes.string_at

    def encode(self, pcm: Pcm) -> bytes:
        size = self._encode(self._state, self._out, pcm.tobytes(), len(pcm))
        return self._string_at(self._out, size)

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self._lib.g722_encode_free(self._state)
            self._state = None


class G722Decoder:
    """spandsp G.722 at 64 kbit/s to 16 kHz samples, or to 8 kHz for a narrow-band receiver (the
    lower sub-band only: no QMF synthesis, no resampling down afterwards)."""

    def __init__(self, rate: int = 16000) -> None:
        lib = _libspandsp()
        self.rate = rate
        self._state = lib.g722_decode_init(None, 64000, G722_SAMPLE_RATE_8000 if rate == 8000 else 0)
        if not self._state:
            raise NativeError("g722_decode_init failed")
        self._lib = lib
        self._size = 0
        self._pcm = np.zeros(0, dtype=np.int16)
        self._pointer = 0
        self._decode = lib.g722_decode

    def decode(self, payload: bytes) -> Pcm:
        size = 2 * len(payload)
        if size > self._size:
            self._pcm = np.zeros(size, dtype=np.int16)
            self._pointer = self._pcm.ctypes.data
            self._size = size
        n = self._decode(self._state, self._pointer, payload, len(payload))
        return self._pcm[:n].copy()

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self._lib.g722_decode_free(self._state)
            self._state = None
