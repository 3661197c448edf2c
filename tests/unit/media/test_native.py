"""libopus and spandsp called directly: their bytes are the codec's (libavcodec decodes them and
they decode libavcodec's), Opus decodes at the rate asked, and a lost Opus frame is recovered from
the next packet's FEC copy better than concealed.

SNR thresholds as in test_transcode: G.722 >= 25 dB, Opus >= 18 dB on a steady tone.
"""

from __future__ import annotations

import numpy as np
import pytest

from sipmob.media import native
from sipmob.media.audioformat import AvDecoder, AvEncoder

from .test_transcode import snr_and_peak, tone

pytestmark = pytest.mark.skipif(not (native.available("OPUS") and native.available("G722")),
                                reason="libopus0 or libspandsp2 missing")

def frames(pcm: np.ndarray, n: int) -> list[np.ndarray]:
    return [pcm[i * n:(i + 1) * n] for i in range(len(pcm) // n)]

def test_spandsp_g722_and_libavcodec_g722_decode_each_other() -> None:
    pcm = tone(16000, 1000, 16000)
    ours = native.G722Encoder(320)
    theirs = AvDecoder("g722", 16000)
    out = np.concatenate([theirs.decode(ours.encode(f)) for f in frames(pcm, 320)])
    snr, peak = snr_and_peak(out, 16000, 1000)
    assert snr >= 25 and abs(peak - 1000) < 2, (snr, peak)
    av_encoder = AvEncoder("g722", 16000, 320, {})
    decoder = native.G722Decoder()
    payloads = [av_encoder.encode(f) for f in frames(pcm, 320)]
    out = np.concatenate([decoder.decode(p) for p in payloads if p])
    snr, peak = snr_and_peak(out, 16000, 1000)
    assert snr >= 25 and abs(peak - 1000) < 2, (snr, peak)

@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_libopus_output_decodes_in_libavcodec_and_decodes_at_the_rate_asked(rate: int) -> None:
    pcm = tone(16000, 440, 16000)
    encoder = native.OpusEncoder(16000, 320, 24000, fec=False)
    payloads = [encoder.encode(f) for f in frames(pcm, 320)]
    assert all(payloads)
    decoder = native.OpusDecoder(rate)
    out = np.concatenate([decoder.decode(p) for p in payloads])
    assert len(out) == len(payloads) * rate // 50
    snr, peak = snr_and_peak(out, rate, 440)
    assert snr >= 18 and abs(peak - 440) < 2, (snr, peak)
    theirs = AvDecoder("libopus", 48000)
    out = np.concatenate([theirs.decode(p) for p in payloads])
    snr, peak = snr_and_peak(out, 48000, 440)
    assert snr >= 18 and abs(peak - 440) < 2, (snr, peak)

def test_a_lost_opus_frame_is_decoded_from_the_next_packets_fec_copy() -> None:
    # Voiced-speech-like (a 120 Hz pulse train through a 700 Hz resonance, level moving at 4 Hz):
    # libopus codes FEC only for frames its voice detector calls active, which a pure tone is not.
    t = np.arange(16000) / 16000
    pulses = np.zeros(16000)
    pulses[::133] = 1.0
    ring = np.exp(-np.arange(200) / 30) * np.sin(2 * np.pi * 700 * np.arange(200) / 16000)
    voiced = np.convolve(pulses, ring)[:16000] + 0.05 * np.random.default_rng(1).standard_normal(16000)
    pcm = (voiced / np.abs(voiced).max() * 8000 * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))).astype(np.int16)
    encoder = native.OpusEncoder(16000, 320, 24000, fec=True)
    payloads = [encoder.encode(f) for f in frames(pcm, 320)]
    lost = 30
    clean = np.concatenate([native.OpusDecoder(16000).decode(p) for p in payloads]).astype(float)

    def lost_frame(use_fec: bool) -> np.ndarray:
        decoder = native.OpusDecoder(16000)
        for p in payloads[:lost]:
            decoder.decode(p)
        return decoder.conceal(320, payloads[lost + 1] if use_fec else None).astype(float)

    fec, plc = lost_frame(True), lost_frame(False)
    assert not np.array_equal(fec, plc)  # the FEC copy was decoded, not libopus' concealment
    reference = clean[lost * 320:(lost + 1) * 320]
    assert np.corrcoef(fec, reference)[0, 1] > 0.5


def test_an_opus_decoder_given_garbage_conceals_and_counts_it() -> None:
    decoder = native.OpusDecoder(8000)
    out = decoder.decode(b"\xff\xff\xff")
    assert len(out) == 160 and decoder.errors == 1
