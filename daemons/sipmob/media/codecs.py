"""The audio codecs sipmob can send, receive and convert, by the names SDP uses for them.

A `Codec` pairs an encoding name and clock rate (the ``a=rtpmap`` pair, RFC 4566 §6) with an
encoder (16-bit PCM samples to an RTP payload), a decoder (payload to samples) and what a frame is
(samples per packet for a given ptime, silence). `lookup` finds one by name and rate, as an SDP
answer names it; `by_static_payload_type` by the RFC 3551 §6 static numbers.

PCMU and PCMA (G.711, RFC 3551 §4.5.14) and L16 (§4.5.11, network byte order) at 8 kHz mono are
here. G.722 is not: its sub-band ADPCM is not in the standard library nor in Debian's python3
packages, and a hand-written one would need the ITU test vectors to be trusted.

Opus (RFC 7587) is here when libopus0 and numpy are installed (`opus_available`): libopus called
through `sipmob.media.native`, mono audio at 48 kHz, the RTP clock Opus always has (§4.1), so a
20 ms frame is 960 samples and the source runs at 48 kHz too (no resampling between our tone and
the encoder). SDP names it ``opus/48000/2`` whatever the channel count sent (§7), hence
``channels=2`` here; we send mono, which every Opus decoder takes. Opus keeps state from frame to
frame (prediction, FEC, concealment), so the `OPUS` entry is a template: `Codec.fresh` gives each
stream its own encoder and decoder. Equality of codecs is by format (name, rate, channels, fmtp),
not by those functions, so a stream's own instance still equals the template. Without libopus,
`lookup` does not know Opus, and a phone simply does not offer it.

Not here either: codecs the phone does not speak itself (G.722, Opus at other rates, the
transcoder's converters: `sipmob.media.audioformat`).

Not here: packetisation (`sipmob.media.rtp`), payload-type numbering for a session (SDP's job).
"""

from __future__ import annotations

import dataclasses
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Any

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
    encode: Callable[[Sequence[int]], bytes] = dataclasses.field(compare=False)
    decode: Callable[[bytes], array[int]] = dataclasses.field(compare=False)
    bytes_per_sample: int
    silence_byte: int
    static_payload_type: int | None = None
    channels: int = 1
    # the a=fmtp parameters we state for it (what we want to receive), None for none
    fmtp: str | None = None
    # a codec with state per stream (Opus): how to make one stream's instance of it
    factory: Callable[[], Codec] | None = dataclasses.field(default=None, compare=False, repr=False)

    def fresh(self) -> Codec:
        """The instance one stream encodes or decodes with: itself for a stateless codec (G.711),
        a new encoder and decoder for one with state (Opus)."""
        return self if self.factory is None else self.factory()

    def samples_per_frame(self, ptime: float) -> int:
        """Samples in one packet of ``ptime`` seconds (20 ms at 8 kHz: 160)."""
        samples = round(self.clock_rate * ptime)
        if samples <= 0:
            raise ValueError(f"ptime {ptime} s is shorter than one sample at {self.clock_rate} Hz")
        return samples

    def silence(self, samples: int) -> bytes:
        """The payload for ``samples`` samples of digital silence."""
        if self.factory is not None:
            return self.fresh().encode(array("h", bytes(2 * samples)))
        return bytes((self.silence_byte,)) * (samples * self.bytes_per_sample)

    @property
    def rtpmap(self) -> str:
        return f"{self.name}/{self.clock_rate}" + (f"/{self.channels}" if self.channels != 1 else "")


PCMU = Codec("PCMU", 8000, g711.ulaw_encode, g711.ulaw_decode, 1, g711.ULAW_SILENCE, 0)
PCMA = Codec("PCMA", 8000, g711.alaw_encode, g711.alaw_decode, 1, g711.ALAW_SILENCE, 8)
L16 = Codec("L16", 8000, _l16_encode, _l16_decode, 2, 0)

CODECS: dict[tuple[str, int], Codec] = {(c.name.upper(), c.clock_rate): c for c in (PCMU, PCMA, L16)}

OPUS_RATE = 48000
OPUS_BIT_RATE = 32000  # wideband speech, mono: RFC 7587 §3.1.1 puts full-band speech at 28-40 kbit/s
OPUS_FMTP = "useinbandfec=1"  # we decode the FEC a later packet carries (native.OpusDecoder.conceal)


def opus_available() -> bool:
    """Whether libopus (and numpy, which `sipmob.media.native` needs) can be used here."""
    try:
        from sipmob.media import native
    except ImportError:
        return False
    return native.available("OPUS")


def _opus_stream(frame_ms: int = 20) -> Codec:
    import numpy as np

    from sipmob.media import native

    frame = OPUS_RATE * frame_ms // 1000
    # FEC on: a receiver that asks for it (useinbandfec=1) gets it, one that does not ignores it.
    encoder = native.OpusEncoder(OPUS_RATE, frame, OPUS_BIT_RATE, fec=True)
    decoder = native.OpusDecoder(OPUS_RATE)

    def encode(pcm: Sequence[int]) -> bytes:
        samples: Any = (np.frombuffer(pcm, dtype=np.int16) if isinstance(pcm, array) and pcm.typecode == "h"
                        else np.asarray(pcm, dtype=np.int16))
        if len(samples) != frame:  # libopus takes whole frames only: pad or cut to one
            samples = np.resize(np.append(samples, np.zeros(max(frame - len(samples), 0), np.int16)), frame)
        return encoder.encode(samples)

    def decode(payload: bytes) -> array[int]:
        # An empty or corrupt payload is concealed by libopus for one frame's time rather than
        # dropped (an empty one would otherwise be taken as a lost 120 ms, libopus' longest).
        pcm = decoder.decode(payload) if payload else decoder.conceal(frame)
        out = array("h")
        out.frombytes(pcm.tobytes())
        return out

    return dataclasses.replace(OPUS, encode=encode, decode=decode, factory=None)


def _no_stream(_: Any) -> Any:
    raise ValueError("the Opus template has no state: use OPUS.fresh() for a stream")


# The template: `fresh()` makes each stream's encoder and decoder.
OPUS = Codec("opus", OPUS_RATE, _no_stream, _no_stream, 0, 0, None, channels=2, fmtp=OPUS_FMTP,
             factory=_opus_stream)
if opus_available():
    CODECS[(OPUS.name.upper(), OPUS.clock_rate)] = OPUS


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
