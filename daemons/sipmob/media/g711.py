"""G.711 u-law and A-law (ITU-T G.711): 16-bit linear PCM to and from 8-bit companded samples.

The per-sample functions follow the ITU reference algorithm as published in the widely used Sun
``g711.c`` (u-law on the top 14 bits with bias 0x84, A-law on the top 13 bits, even bits of A-law
inverted), so our bytes equal every other implementation's. Whole frames go through lookup
tables built once from those functions: a frame is an ``array('h')`` of native-endian samples
one way and ``bytes`` the other, and a 20 ms frame costs one table lookup per sample.

Not here: RTP payload framing and the codec registry (`sipmob.media.codecs`).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5

_BIAS = 0x84
_CLIP = 8159
_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def linear_to_ulaw(sample: int) -> int:
    """One 16-bit signed sample to its u-law byte."""
    value = sample >> 2
    if value < 0:
        value, mask = -value, 0x7F
    else:
        mask = 0xFF
    value = min(value, _CLIP) + (_BIAS >> 2)
    seg = _segment(value, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def ulaw_to_linear(code: int) -> int:
    """One u-law byte to its 16-bit signed sample (the centre of its quantisation interval)."""
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + _BIAS) << ((code & 0x70) >> 4)
    return _BIAS - t if code & 0x80 else t - _BIAS


def linear_to_alaw(sample: int) -> int:
    """One 16-bit signed sample to its A-law byte (even bits inverted, as sent on the wire)."""
    value = sample >> 3
    if value >= 0:
        mask = 0xD5
    else:
        mask, value = 0x55, -value - 1
    seg = _segment(value, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    quant = (value >> 1) if seg < 2 else (value >> seg)
    return ((seg << 4) | (quant & 0x0F)) ^ mask


def alaw_to_linear(code: int) -> int:
    """One A-law byte to its 16-bit signed sample."""
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


# Encoding tables are indexed by the sample as an unsigned 16-bit number.
_ULAW_ENCODE = bytes(linear_to_ulaw(u - 0x10000 if u & 0x8000 else u) for u in range(0x10000))
_ALAW_ENCODE = bytes(linear_to_alaw(u - 0x10000 if u & 0x8000 else u) for u in range(0x10000))
_ULAW_DECODE = tuple(ulaw_to_linear(c) for c in range(256))
_ALAW_DECODE = tuple(alaw_to_linear(c) for c in range(256))


def _unsigned(pcm: Sequence[int]) -> Sequence[int]:
    if isinstance(pcm, array) and pcm.typecode == "h":
        # Reinterpreting the buffer as unsigned is a copy-free way to index the 64 Ki tables.
        return memoryview(pcm).cast("B").cast("H")
    return [s & 0xFFFF for s in pcm]


def ulaw_encode(pcm: Sequence[int]) -> bytes:
    """16-bit signed samples (an ``array('h')`` is fastest) to u-law bytes."""
    return bytes(map(_ULAW_ENCODE.__getitem__, _unsigned(pcm)))


def ulaw_decode(data: bytes) -> array[int]:
    return array("h", map(_ULAW_DECODE.__getitem__, data))


def alaw_encode(pcm: Sequence[int]) -> bytes:
    """16-bit signed samples (an ``array('h')`` is fastest) to A-law bytes."""
    return bytes(map(_ALAW_ENCODE.__getitem__, _unsigned(pcm)))


def alaw_decode(data: bytes) -> array[int]:
    return array("h", map(_ALAW_DECODE.__getitem__, data))
