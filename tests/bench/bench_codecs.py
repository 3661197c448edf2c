"""What one 20 ms frame costs through each codec and resampler, and whether libopus releases the GIL.

Run: .venv/bin/python tests/bench/bench_codecs.py [--frames N]

Prints CPU microseconds per frame (process time, median of 3 rounds) for: libopus encode at 8, 16
and 48 kHz input and decode (libavcodec's decoder always gives 48 kHz), G.722 (``g722``) encode and
decode, G.711 u-law through libavcodec, through the numpy tables of `sipmob.media.audioformat` and
through the pure-Python `sipmob.media.g711`, the numpy resampler for each rate pair, and the whole
`sipmob.media.transcode.Channel` path per packet for each conversion the benchmark of the daemon
uses. Then libopus encoding in one thread and in two at once (frames per second of wall time): a
ratio near 2 on two free cores means the encode call releases the GIL. These figures are what the
process model in `sipmob.transcoder.main` rests on.
"""

from __future__ import annotations

import argparse
import statistics
import struct
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemons"))

import numpy as np

from sipmob.media import g711
from sipmob.media.audioformat import AudioFormat, Resampler, make_decoder, make_encoder
from sipmob.media.transcode import Channel


def tone(rate: int, samples: int) -> np.ndarray:  # type: ignore[type-arg]
    return (8000 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.int16)


def per_call(fn: Callable[[], object], n: int, rounds: int = 3) -> float:
    fn()
    results = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        results.append((time.process_time() - start) / n * 1e6)
    return statistics.median(results)


def codec_rows(n: int) -> None:
    for name, pt, clock, rate in [("opus", 111, 48000, 8000), ("opus", 111, 48000, 16000),
                                  ("opus", 111, 48000, 48000), ("G722", 9, 8000, 16000),
                                  ("PCMU", 0, 8000, 8000)]:
        # maxplaybackrate=8000 is what makes the Opus encoder take 8 kHz input (see opus_input_rate).
        fmt = AudioFormat.of(name, pt, clock, fmtp=f"maxplaybackrate={rate}")
        encoder = make_encoder(fmt, rate)
        pcm = tone(encoder.rate, encoder.frame_samples)
        payload = encoder.encode(pcm) or encoder.encode(pcm)
        decoder = make_decoder(fmt)
        enc = per_call(lambda e=encoder, p=pcm: e.encode(p), n)
        dec = per_call(lambda d=decoder, p=payload: d.decode(p), n)
        print(f"  {name:5s} input {encoder.rate:5d} Hz: encode {enc:7.1f} us, decode {dec:7.1f} us "
              f"({len(payload)} octets)")
    import av  # type: ignore[import-untyped]

    ctx = av.CodecContext.create("pcm_mulaw", "w")
    ctx.sample_rate, ctx.layout, ctx.format = 8000, "mono", "s16"
    ctx.open()
    frame = av.AudioFrame(format="s16", layout="mono", samples=160)
    frame.sample_rate = 8000
    frame.planes[0].update(tone(8000, 160).tobytes())
    print(f"  PCMU via libavcodec: encode {per_call(lambda: ctx.encode(frame), n):7.1f} us")
    samples = list(tone(8000, 160))
    print(f"  PCMU via sipmob.media.g711 (pure Python): encode "
          f"{per_call(lambda: g711.ulaw_encode(samples), max(1, n // 10)):7.1f} us")


def resampler_rows(n: int) -> None:
    for a, b in [(8000, 16000), (16000, 8000), (8000, 48000), (48000, 8000), (16000, 48000),
                 (48000, 16000)]:
        r = Resampler(a, b)
        pcm = tone(a, a // 50)
        print(f"  {a:5d} -> {b:5d} Hz: {per_call(lambda r=r, p=pcm: r.process(p), n):7.1f} us")


def channel_rows(n: int) -> None:
    formats = {"PCMU": ("PCMU", 0, 8000), "G722": ("G722", 9, 8000), "opus": ("opus", 111, 48000)}
    pairs = [("PCMU", "opus"), ("opus", "PCMU"), ("PCMU", "G722"), ("G722", "PCMU"), ("PCMU", "PCMU")]
    for src, dst in pairs:
        source, sink = AudioFormat.of(*formats[src]), AudioFormat.of(*formats[dst])
        encoder = make_encoder(source, source.sample_rate)
        pcm = tone(source.sample_rate, source.sample_rate)
        k = source.frame_samples
        payloads = [encoder.encode(pcm[i * k:(i + 1) * k]) for i in range(50)]
        packets = [struct.pack("!BBHII", 0x80, source.payload_type, i % 65536,
                               i * source.frame_ticks % 2**32, 7) + payloads[i % 50] for i in range(n)]
        channel = Channel(source, sink)
        it = iter(packets)
        cost = per_call(lambda c=channel, it=it: c.receive(next(it)), n // 4, rounds=3)
        print(f"  {src:4s} -> {dst:4s}: {cost:7.1f} us a packet")


def gil_rows(frames: int) -> None:
    def work() -> None:
        fmt = AudioFormat.of("opus", 111, 48000)
        encoder = make_encoder(fmt, 48000)
        pcm = tone(48000, 960)
        for _ in range(frames):
            encoder.encode(pcm)

    for count in (1, 2):
        threads = [threading.Thread(target=work) for _ in range(count)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        print(f"  libopus 48 kHz encode in {count} thread(s): {count * frames / wall:8.0f} frames/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    args = parser.parse_args()
    print("codecs, per 20 ms frame (CPU time):")
    codec_rows(args.frames)
    print("resampling, per 20 ms frame:")
    resampler_rows(args.frames)
    print("the whole channel (split, reorder, decode, resample, re-frame, encode, header), per packet:")
    channel_rows(args.frames)
    print("GIL (wall time, two threads on two cores):")
    gil_rows(args.frames)


if __name__ == "__main__":
    main()
