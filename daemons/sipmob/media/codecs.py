"""The audio codecs sipmob can send, receive and convert, by the names SDP uses for them.

A `Codec` pairs an encoding name and clock rate (the ``a=rtpmap`` pair, RFC 4566 §6) with an
encoder (16-bit PCM samples to an RTP payload), a decoder (payload to samples) and what a frame is
(samples per packet for a given ptime, silence). `lookup` finds one by name and rate, as an SDP
answer names it; `by_static_payload_type` by the RFC 3551 §6 static numbers.

PCMU and PCMA (G.711, RFC 3551 §4.5.14) and L16 (§4.5.11, network byte order) at 8 kHz mono are
here. G.722 is not: its sub-band ADPCM is not in the standard library nor in Debian's python3
packages, and a hand-written one would need the ITU test vectors to be trusted.

Not here: packetisation (`sipmob.media.rtp`), payload-type numbering for a session (SDP's job).
"""

from __future__ import annotations

import dataclasses
import sys
from array import array
from collections.abc import Callable, Sequence

from sipmob.media import g711


class UnknownCodec(LookupError):
    """No codec of that name and clock rate is known here."""


def _l16_encode(pcm: Sequence[int]) -> bytes:
    samples = pcm if isinstance(pcm, array) and pcm.typecode == "h" else array("h", pcm)
    if sys.byteorder == "little":
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def _l16_decode(payload: bytes) -> array[int]:
    samples = array("h")
    # An odd trailing octet is half a sample: drop it rather than fail the whole packet.
    samples.frombytes(payload[: len(payload) & ~1])
    if sys.byteorder == "little":
        samples.byteswap()
    return samples


@dataclasses.dataclass(frozen=True, slots=True)
class Codec:
    name: str
    clock_rate: int
    encode: Callable[[Sequence[int]], bytes]
    decode: Callable[[bytes], array[int]]
    bytes_per_sample: int
    silence_byte: int
    static_payload_type: int | None = None
    channels: int = 1

    def samples_per_frame(self, ptime: float) -> int:
        """Samples in one packet of ``ptime`` seconds (20 ms at 8 kHz: 160)."""
        samples = round(self.clock_rate * ptime)
        if samples <= 0:
            raise ValueError(f"ptime {ptime} s is shorter than one sample at {self.clock_rate} Hz")
        return samples

    def silence(self, samples: int) -> bytes:
        """The payload for ``samples`` samples of digital silence."""
        return bytes((self.silence_byte,)) * (samples * self.bytes_per_sample)

    @property
    def rtpmap(self) -> str:
        return f"{self.name}/{self.clock_rate}" + (f"/{self.channels}" if self.channels != 1 else "")


PCMU = Codec("PCMU", 8000, g711.ulaw_encode, g711.ulaw_decode, 1, g711.ULAW_SILENCE, 0)
PCMA = Codec("PCMA", 8000, g711.alaw_encode, g711.alaw_decode, 1, g711.ALAW_SILENCE, 8)
L16 = Codec("L16", 8000, _l16_encode, _l16_decode, 2, 0)

CODECS: dict[tuple[str, int], Codec] = {(c.name.upper(), c.clock_rate): c for c in (PCMU, PCMA, L16)}


def lookup(name: str, clock_rate: int) -> Codec:
    """The codec SDP calls ``name/clock_rate``; encoding names are case-insensitive (RFC 4855 §3)."""
    try:
        return CODECS[(name.upper(), clock_rate)]
    except KeyError:
        raise UnknownCodec(f"no codec {name}/{clock_rate}") from None


def by_static_payload_type(payload_type: int) -> Codec:
    """The codec RFC 3551 §6 assigns to a static payload type (0 PCMU, 8 PCMA)."""
    for codec in CODECS.values():
        if codec.static_payload_type == payload_type:
            return codec
    raise UnknownCodec(f"no static payload type {payload_type} known")
