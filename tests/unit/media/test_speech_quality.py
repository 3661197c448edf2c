"""Speech through each conversion, scored by PESQ (ITU-T P.862, the `pesq` package of tests/requirements.txt).

There is no recorded speech in the project, so the talker is synthetic but built like speech: a
glottal pulse train whose pitch glides (100-220 Hz) through three formant resonators that move
from syllable to syllable, unvoiced (noise) consonants, syllables of 120-300 ms under a smooth
envelope and pauses between words, at about -22 dBFS. It is encoded as the sending party would
(at its codec's rate), sent through `sipmob.media.transcode.Channel`, decoded as the receiving
party would, brought to 8 kHz and scored narrow-band (P.862, MOS-LQO 1.0-4.5) against the clean
talker: what a listener on the far side hears, relative to what the near side said, through both
codecs and our resampling.

Thresholds, MOS-LQO (measured here, and the same on every run: the talker and the codecs are
deterministic): G.711 relayed 4.25, PCMU to PCMA 4.10, PCMU to G.722 4.23, G.722 to PCMU 4.22,
PCMU to Opus 3.84, Opus to PCMU 3.93, G.722 to Opus 4.12, Opus to G.722 4.04. A tenth of the
frames lost costs more than 0.5 (the last test), so these catch a lost or misplaced frame, a wrong
gain or a resampler that aliases:

- G.711 only: >= 4.0; through G.722: >= 3.8; through Opus: >= 3.5
"""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest

from sipmob.media.audioformat import AudioFormat, Resampler, make_decoder, make_encoder
from sipmob.media.transcode import Channel, split

pesq = pytest.importorskip("pesq", reason="pesq (tests/requirements.txt) is not installed")

FORMATS = {
    "PCMU": AudioFormat.of("PCMU", 0, 8000),
    "PCMA": AudioFormat.of("PCMA", 8, 8000),
    "G722": AudioFormat.of("G722", 9, 8000),
    "opus": AudioFormat.of("opus", 111, 48000),
}
CASES = [("PCMU", "PCMU", 4.0), ("PCMU", "PCMA", 4.0), ("PCMU", "G722", 3.8), ("G722", "PCMU", 3.8),
         ("PCMU", "opus", 3.5), ("opus", "PCMU", 3.5), ("G722", "opus", 3.5), ("opus", "G722", 3.5)]
RATE = 16000  # the talker is made at 16 kHz, then brought to each codec's rate


def resonate(x: np.ndarray, freq: float, bandwidth: float, rate: int) -> np.ndarray:
    """A two-pole resonator (a formant), y[n] = x[n] + a1 y[n-1] + a2 y[n-2], unit gain at DC."""
    r = np.exp(-np.pi * bandwidth / rate)
    a1, a2 = 2 * r * np.cos(2 * np.pi * freq / rate), -r * r
    y = np.zeros(len(x))
    y1 = y2 = 0.0
    for n, v in enumerate(x):
        y0 = v + a1 * y1 + a2 * y2
        y[n] = y0
        y2, y1 = y1, y0
    return y * (1 - a1 - a2)


def talker(seconds: float = 6.0, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    total = int(seconds * RATE)
    done = 0
    while done < total:
        for _ in range(rng.integers(2, 5)):  # a word: 2-4 syllables
            n = int(rng.uniform(0.12, 0.30) * RATE)
            t = np.arange(n) / RATE
            if rng.random() < 0.25:  # an unvoiced consonant: shaped noise
                source = np.convolve(rng.standard_normal(n), np.ones(3) / 3, "same") * 0.3
                formants = [(rng.uniform(2500, 4500), 600.0)]
            else:
                f0 = rng.uniform(100, 220) * (1 + 0.15 * t / t[-1] * rng.choice([-1, 1]))
                phase = np.cumsum(f0 / RATE)
                pulses = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(float)
                # A glottal pulse is a smooth puff (a few ms), not an impulse, and the lips radiate
                # its derivative: no DC, a spectrum falling about 6 dB an octave, as a voice's does.
                puffs = np.convolve(pulses, np.hanning(int(0.004 * RATE)), "same")
                source = np.diff(puffs, prepend=0.0) * 8
                formants = [(rng.uniform(300, 800), 80.0), (rng.uniform(900, 2200), 120.0),
                            (rng.uniform(2400, 3200), 200.0)]
            voice = sum(resonate(source, f, b, RATE) for f, b in formants)
            envelope = np.sin(np.pi * t / t[-1]) ** 0.7
            out.append(voice * envelope)
        out.append(np.zeros(int(rng.uniform(0.08, 0.25) * RATE)))  # a pause between words
        done = sum(len(o) for o in out)
    speech = np.concatenate(out)[:total]
    speech *= 10 ** (-22 / 20) * 32767 / np.sqrt(np.mean(speech ** 2))
    return np.clip(speech, -32768, 32767).astype(np.int16)


def at(pcm: np.ndarray, source: int, target: int) -> np.ndarray:
    return Resampler(source, target).process(pcm) if source != target else pcm


def encode(fmt: AudioFormat, pcm16k: np.ndarray) -> list[bytes]:
    encoder = make_encoder(fmt, fmt.sample_rate)
    pcm = at(pcm16k, RATE, encoder.rate)
    n = encoder.frame_samples
    return [struct.pack("!BBHII", 0x80, fmt.payload_type, i % 65536, (i * fmt.frame_ticks) % 2**32, 0x77)
            + encoder.encode(pcm[i * n:(i + 1) * n]) for i in range(len(pcm) // n)]


def heard(fmt: AudioFormat, datagrams: list[bytes]) -> np.ndarray:
    decoder = make_decoder(fmt, fmt.sample_rate)
    pcm = np.concatenate([decoder.decode(split(d)[5]) for d in datagrams])
    return at(pcm, decoder.rate, 8000)


@pytest.mark.parametrize(("src", "dst", "threshold"), CASES, ids=[f"{s}-{d}" for s, d, _ in CASES])
def test_speech_keeps_its_quality_through_the_conversion(src: str, dst: str, threshold: float) -> None:
    speech = talker()
    channel = Channel(FORMATS[src], FORMATS[dst], rng=random.Random(5))
    out = [o for d in encode(FORMATS[src], speech) for o in channel.receive(d)]
    degraded = heard(FORMATS[dst], out)
    reference = at(speech, RATE, 8000)
    n = min(len(reference), len(degraded))
    score = pesq.pesq(8000, reference[:n].astype(np.float64), degraded[:n].astype(np.float64), "nb")
    print(f"{src} -> {dst}: PESQ MOS-LQO {score:.2f}")
    assert score >= threshold, f"{src} -> {dst}: MOS-LQO {score:.2f} under {threshold}"


def test_the_score_falls_when_frames_are_lost() -> None:
    # The check can fail: the same talker with every tenth packet dropped before G.711 decoding
    # (each loss concealed by repetition) must score clearly lower than without loss.
    speech = talker()
    fmt = FORMATS["PCMU"]
    sent = encode(fmt, speech)
    clean = heard(fmt, sent)
    decoder = make_decoder(fmt)
    lossy = np.concatenate([decoder.conceal(160) if i % 10 == 5 else decoder.decode(split(d)[5])
                            for i, d in enumerate(sent)])
    reference = at(speech, RATE, 8000)
    n = min(len(reference), len(clean), len(lossy))
    good = pesq.pesq(8000, reference[:n].astype(np.float64), clean[:n].astype(np.float64), "nb")
    bad = pesq.pesq(8000, reference[:n].astype(np.float64), lossy[:n].astype(np.float64), "nb")
    assert bad < good - 0.5, (good, bad)
