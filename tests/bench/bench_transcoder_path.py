"""Where a packet's CPU goes in sipmob-transcoder, without the network's noise: codecs, channel, loop.

Run: .venv/bin/python tests/bench/bench_transcoder_path.py [--packets N] [--profile CASE]

Three tables, CPU time (process time) per 20 ms packet, median of 3 rounds:

1. **Codecs**: each codec call through PyAV 10 (libavcodec) and called directly
   (`sipmob.media.native`: libopus, spandsp's G.722), encode and decode.
2. **Channel**: `sipmob.media.transcode.Channel.receive` for each conversion of
   ``tests/bench/bench_transcoder.py`` (header, reorder, decode, resample, re-frame, encode,
   packetise), N packets of a 440 Hz tone fed in a loop; ``--profile CASE`` prints cProfile's
   top entries for one case.
3. **Loop**: a real media worker process (``python -m sipmob.transcoder.worker``) given one call's
   sockets, N packets sent to it on loopback in bursts and received back; its CPU from /proc per
   packet, which is everything the worker does for a packet (epoll, recvfrom, the channel, sendto,
   RTCP statistics). ``sendto`` on loopback also carries the kernel's delivery to the receiver.
   The worker serves each packet as it comes (``--gather-ms 0``): here the sender waits for each
   packet to come back, so a pause to let packets gather would only be waited out.
   ``--syscalls`` runs the worker under ``strace -c -f`` and prints its system calls per packet;
   ``--profile-worker`` runs it under cProfile and prints its top entries (both slow the worker:
   their CPU figures are not comparable with a plain run's).

Every loop is bounded by count and time; the worker is stopped by closing its control socket and
waited for by PID.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pickle
import pstats
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "daemons")]

import numpy as np  # noqa: E402

from sipmob.media import native  # noqa: E402
from sipmob.media.audioformat import AudioFormat, AvDecoder, AvEncoder, make_encoder  # noqa: E402
from sipmob.media.transcode import Channel  # noqa: E402

HOST = "127.0.0.1"
FORMATS = {"PCMU": AudioFormat.of("PCMU", 0, 8000), "G722": AudioFormat.of("G722", 9, 8000),
           "opus": AudioFormat.of("opus", 111, 48000)}
CASES = {"pcmu-opus": ("PCMU", "opus"), "opus-pcmu": ("opus", "PCMU"), "pcmu-g722": ("PCMU", "G722"),
         "g722-pcmu": ("G722", "PCMU"), "relay": ("PCMU", "PCMU")}


def tone(rate: int, samples: int) -> np.ndarray:  # type: ignore[type-arg]
    return (0.3 * 32767 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.int16)


def per_call(fn: Callable[[int], object], n: int, rounds: int = 3) -> float:
    """Median over `rounds` of the CPU microseconds one call of fn(i) takes."""
    fn(0)
    results = []
    for _ in range(rounds):
        t = time.process_time()
        for i in range(n):
            fn(i)
        results.append((time.process_time() - t) / n * 1e6)
    return statistics.median(results)


def packets(codec: str, n: int) -> list[bytes]:
    fmt = FORMATS[codec]
    encoder = make_encoder(fmt, fmt.sample_rate)
    k = encoder.frame_samples
    pcm = tone(encoder.rate, k * 50)
    payloads = [encoder.encode(pcm[i * k:(i + 1) * k]) for i in range(50)]
    return [struct.pack("!BBHII", 0x80, fmt.payload_type, i % 65536, (i * fmt.frame_ticks) % 2**32, 0x1234)
            + payloads[i % 50] for i in range(n)]


def codecs(n: int) -> None:
    print(f"{'codec call, us per 20 ms frame':46s}  PyAV 10   direct")
    frames16 = [tone(16000, 320 * 50)[i * 320:(i + 1) * 320] for i in range(50)]
    frames48 = [tone(48000, 960 * 50)[i * 960:(i + 1) * 960] for i in range(50)]
    rows: list[tuple[str, float, float]] = []
    if native.available("OPUS"):
        options = {"application": "voip", "frame_duration": "20", "vbr": "on"}
        for rate, frames, bit_rate in ((16000, frames16, 24000), (48000, frames48, 32000)):
            k = len(frames[0])
            av_enc = AvEncoder("libopus", rate, k, options, bit_rate)
            ours = native.OpusEncoder(rate, k, bit_rate, False)
            rows.append((f"libopus encode, {rate // 1000} kHz input",
                         per_call(lambda i, e=av_enc, f=frames: e.encode(f[i % 50]), n),
                         per_call(lambda i, e=ours, f=frames: e.encode(f[i % 50]), n)))
        encoded = [native.OpusEncoder(48000, 960, 32000, False).encode(f) for f in frames48]
        av_dec = AvDecoder("libopus", 48000)
        dec48, dec8 = native.OpusDecoder(48000), native.OpusDecoder(8000)
        rows.append(("libopus decode to 48 kHz", per_call(lambda i: av_dec.decode(encoded[i % 50]), n),
                     per_call(lambda i: dec48.decode(encoded[i % 50]), n)))
        rows.append(("libopus decode to 8 kHz", float("nan"),
                     per_call(lambda i: dec8.decode(encoded[i % 50]), n)))
    if native.available("G722"):
        av_enc = AvEncoder("g722", 16000, 320, {})
        ours_g = native.G722Encoder(320)
        rows.append(("G.722 encode", per_call(lambda i: av_enc.encode(frames16[i % 50]), n),
                     per_call(lambda i: ours_g.encode(frames16[i % 50]), n)))
        g722 = [ours_g.encode(f) for f in frames16]
        av_dec_g = AvDecoder("g722", 16000)
        dec_g = native.G722Decoder()
        rows.append(("G.722 decode", per_call(lambda i: av_dec_g.decode(g722[i % 50]), n),
                     per_call(lambda i: dec_g.decode(g722[i % 50]), n)))
    for name, theirs, ours in rows:
        print(f"  {name:44s} {theirs:8.1f} {ours:8.1f}")


def channels(n: int, profile: str | None) -> None:
    print(f"\nChannel.receive, us per packet ({n} packets of a 440 Hz tone)")
    for case, (source, sink) in CASES.items():
        data = packets(source, n)
        results = []
        for _ in range(3):
            channel = Channel(FORMATS[source], FORMATS[sink])
            t = time.process_time()
            for d in data:
                channel.receive(d)
            results.append((time.process_time() - t) / n * 1e6)
        print(f"  {case:10s} {statistics.median(results):8.1f}")
        if profile == case:
            channel = Channel(FORMATS[source], FORMATS[sink])
            prof = cProfile.Profile()
            prof.enable()
            for d in data:
                channel.receive(d)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def cpu_of(pid: int) -> float:
    """Seconds on a CPU of all of `pid`'s threads, from schedstat (nanoseconds; /proc/PID/stat counts
    10 ms ticks, too coarse for a few thousand packets)."""
    return sum(int((task / "schedstat").read_text().split()[0])
               for task in Path(f"/proc/{pid}/task").iterdir()) / 1e9


def syscalls_per_packet(path: Path, n: int) -> str:
    """The worker's most frequent system calls from an ``strace -c`` summary, per packet."""
    rows = []
    for line in path.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[3].isdigit() and fields[-1] != "total":
            rows.append((int(fields[3]), fields[-1]))
    return ", ".join(f"{name} {calls / n:.2f}" for calls, name in sorted(rows, reverse=True)[:4])


def loop(n: int, burst: int, cases: list[str], syscalls: bool, profile: bool, gather_ms: float) -> None:
    print(f"\nmedia worker process, us of its CPU per packet ({n} packets in bursts of {burst}, one call, "
          f"gather {gather_ms:g} ms)")
    for case in cases:
        source, sink = CASES[case]
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "daemons")}
        command = [sys.executable, "-m", "sipmob.transcoder.worker", "--fd", str(theirs.fileno()),
                   "--log-level", "warning", "--gather-ms", str(gather_ms)]
        tmp = Path(tempfile.mkdtemp(prefix="bench-path-"))
        if profile:
            command[1:3] = ["-m", "cProfile", "-o", str(tmp / "worker.prof"),
                            "-m", "sipmob.transcoder.worker"]
        if syscalls:
            command = ["strace", "-c", "-f", "-o", str(tmp / "strace.txt"), *command]
        proc = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        socks = []
        try:
            ours.settimeout(30)
            assert pickle.loads(ours.recv(1000))[0] == "ready"
            for _ in range(4):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((HOST, 0))
                socks.append(s)
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            a.bind((HOST, 0))
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b.bind((HOST, 0))
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            b.settimeout(2.0)
            target = socks[0].getsockname()
            socket.send_fds(ours, [pickle.dumps(("open", 1, FORMATS[source], FORMATS[sink], a.getsockname(),
                                                 b.getsockname(), "bench", 3600))],
                            [s.fileno() for s in socks])
            for s in socks:
                s.close()
            # Warm-up (the codecs' first frames), then the measured run, numbered on from it.
            data = packets(source, n + 50)
            for d in data[:50]:
                a.sendto(d, target)
            b.settimeout(0.5)
            try:
                while True:
                    b.recv(4096)
            except TimeoutError:
                pass
            data = data[50:]
            cpu0 = cpu_of(proc.pid)
            received = 0
            deadline = time.monotonic() + 120
            for start in range(0, n, burst):
                for d in data[start:start + burst]:
                    a.sendto(d, target)
                want = min(start + burst, n)
                while received < want and time.monotonic() < deadline:
                    try:
                        b.recv(4096)
                    except TimeoutError:  # lost: counted below
                        break
                    received += 1
            cpu1 = cpu_of(proc.pid)
            print(f"  {case:10s} {(cpu1 - cpu0) / n * 1e6:8.1f}   ({received} of {n} came back)")
            a.close()
            b.close()
        finally:
            ours.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        # Both summaries cover the worker's whole life: start-up (imports) shows beside the
        # per-packet calls, which are the ones counted about n (+ the 50 of the warm-up) times.
        if syscalls and (tmp / "strace.txt").exists():
            print(f"             system calls per packet: {syscalls_per_packet(tmp / 'strace.txt', n + 50)}")
        if profile and (tmp / "worker.prof").exists():
            pstats.Stats(str(tmp / "worker.prof")).sort_stats("tottime").print_stats(12)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--profile", choices=list(CASES), help="cProfile one case's Channel.receive")
    parser.add_argument("--only", choices=["codecs", "channel", "loop"])
    parser.add_argument("--cases", default=",".join(CASES), help="the worker loop's cases, comma-separated")
    parser.add_argument("--syscalls", action="store_true",
                        help="the worker under strace -c: its system calls per packet")
    parser.add_argument("--profile-worker", action="store_true",
                        help="the worker under cProfile: its top entries")
    parser.add_argument("--gather-ms", type=float, default=0.0,
                        help="the worker's [media] gather_ms (default 0: each packet served as it comes, "
                             "the path alone; the pacing is measured beside rtpengine by "
                             "bench_transcoder.py)")
    parser.add_argument("--burst", type=int, default=1,
                        help="packets sent to the worker at once (1: each wakes it, as calls spread "
                             "over the 20 ms do)")
    args = parser.parse_args()
    if args.only in (None, "codecs"):
        codecs(min(args.packets, 2000))
    if args.only in (None, "channel"):
        channels(args.packets, args.profile)
    if args.only in (None, "loop"):
        cases = args.cases.split(",")
        if unknown := [c for c in cases if c not in CASES]:
            parser.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
        loop(args.packets, args.burst, cases, args.syscalls, args.profile_worker, args.gather_ms)


if __name__ == "__main__":
    main()
