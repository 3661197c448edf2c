"""What RTP costs on one core: packets/s through the sans-I/O path and through RtpEndpoint on loopback.

Run: .venv/bin/python tests/bench/bench_rtp.py [--rounds N] [--streams K] [--seconds S]
Prints, as the median of several rounds (the machine is shared and noisy):
  - µs per packet to build (G.711 encode + header) and to take apart (parse + statistics + decode);
  - packets/s one core can send and receive through two RtpEndpoints on 127.0.0.1 (unpaced, in
    bursts of 50), from process CPU time, and what that makes the CPU share of one 50 packet/s stream;
  - K real paced streams (20 ms) for S seconds: CPU share per stream, loss, jitter, longest gap, and
    the arrival gap at a destination switch half way through;
  - the CPU time an idle endpoint (bound, not sending, with RTCP) uses over S seconds.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemons"))

from twisted.internet import reactor

from sipmob.media.codecs import PCMU
from sipmob.media.rtp import RtpPacket, RtpSender, SourceStats, parse
from sipmob.media.sources import ToneSource
from sipmob.service.rtp import RtpEndpoint


def per_op(fn: Callable[[], object], n: int) -> float:
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n * 1e6


def sans_io(rounds: int, n: int) -> None:
    frame = ToneSource(440).read(160)
    assert frame is not None
    sender = RtpSender(1, 0, 160, 0.02)
    sender.start(0.0)
    build = [per_op(lambda: sender.packet(PCMU.encode(frame)).to_bytes(), n) for _ in range(rounds)]
    wire = sender.packet(PCMU.encode(frame)).to_bytes()
    stats = SourceStats(1, 8000)
    clock = [0.0]

    def take_apart() -> None:
        packet = parse(wire)
        clock[0] += 0.02
        stats.receive(packet, clock[0])
        PCMU.decode(packet.payload)
    receive = [per_op(take_apart, n) for _ in range(rounds)]
    print(f"build  (encode+header):        {statistics.median(build):7.1f} µs/packet")
    print(f"receive (parse+stats+decode):  {statistics.median(receive):7.1f} µs/packet")


def spin(seconds: float) -> None:
    """Run the reactor for ``seconds`` as its own main loop does: sleep until the next timer or I/O."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        reactor.runUntilCurrent()
        timeout = reactor.timeout()
        reactor.doIteration(left if timeout is None else min(timeout, left))


def unpaced(rounds: int, packets: int) -> None:
    """Send as fast as one core allows, in bursts the socket buffers can hold, and count arrivals."""
    results = []
    for _ in range(rounds):
        a, b = RtpEndpoint(reactor), RtpEndpoint(reactor)
        got = [0]

        def count(packet: RtpPacket, addr: object, now: float, got: list[int] = got) -> None:
            got[0] += 1
        b.on_packet = count
        source = ToneSource(440)
        sender = RtpSender(a.ssrc, 0, 160, 0.02)
        sender.start(0.0)
        wire = a._protocol.wire
        dest = ("127.0.0.1", b.port)
        start = time.process_time()
        wall = time.monotonic()
        sent = 0
        while sent < packets and time.monotonic() - wall < 60:
            for _ in range(50):
                frame = source.read(160)
                assert frame is not None
                wire.write(sender.packet(PCMU.encode(frame)).to_bytes(), dest)
                sent += 1
            deadline = time.monotonic() + 1.0
            while got[0] < sent and time.monotonic() < deadline:
                reactor.iterate(0)
        cpu = time.process_time() - start
        results.append((got[0] / cpu, sent - got[0]))
        a.close()
        b.close()
        spin(0.01)
    rate = statistics.median(r for r, _ in results)
    print(f"endpoint send+receive, one core: {rate:8.0f} packets/s "
          f"(lost in the socket buffer: {max(lost for _, lost in results)})")
    print(f"  => one 50 packet/s G.711 stream sent and received costs {100 * 50 / rate:.2f} % of a core")


def paced(streams: int, seconds: float) -> None:
    senders = [RtpEndpoint(reactor) for _ in range(streams)]
    receivers = [RtpEndpoint(reactor) for _ in range(streams)]
    spare = [RtpEndpoint(reactor) for _ in range(streams)]
    arrivals: dict[int, list[float]] = {}

    def note(ep: RtpEndpoint) -> None:
        def on_packet(packet: RtpPacket, addr: object, now: float) -> None:
            arrivals.setdefault(packet.ssrc, []).append(now)
        ep.on_packet = on_packet
    for ep in receivers + spare:
        note(ep)
    cpu0 = time.process_time()
    for s, r in zip(senders, receivers, strict=True):
        s.start_sending(ToneSource(440), PCMU, 0, ("127.0.0.1", r.port))
    spin(seconds / 2)
    for s, r in zip(senders, spare, strict=True):
        s.set_destination(("127.0.0.1", r.port))
    spin(seconds / 2)
    for s in senders:
        s.stop_sending()
    spin(0.1)
    cpu = time.process_time() - cpu0
    sent = sum(s.stats().sent_packets for s in senders)
    got = sum(len(v) for v in arrivals.values())
    reports = [r.stats().sources.get(s.ssrc) for s, r in zip(senders, receivers, strict=True)]
    jitter = max((r.jitter for r in reports if r), default=0.0)
    max_gap = max(max(b - a for a, b in itertools.pairwise(v)) for v in arrivals.values())
    print(f"{streams} paced stream(s), {seconds:.0f} s, switch half way: sent {sent}, received {got}, "
          f"lost {sent - got}")
    print(f"  CPU {100 * cpu / seconds / streams:.2f} % of a core per stream (sender and receiver); "
          f"jitter up to {1000 * jitter:.2f} ms; longest arrival gap (incl. switch) {1000 * max_gap:.1f} ms")
    for ep in senders + receivers + spare:
        ep.close()
    spin(0.01)


def idle(seconds: float) -> None:
    ep = RtpEndpoint(reactor, rtcp=True)
    cpu0 = time.process_time()
    spin(seconds)
    cpu = time.process_time() - cpu0
    print(f"idle endpoint (RTP+RTCP sockets, not sending): {1000 * cpu:.1f} ms CPU in {seconds:.0f} s, "
          f"{len(reactor.getDelayedCalls())} timer(s) pending")
    ep.close()
    spin(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    frame = array("h", [0] * 160)
    PCMU.encode(frame)  # build the tables before timing
    sans_io(args.rounds, 5000)
    unpaced(args.rounds, 20000)
    paced(args.streams, args.seconds)
    idle(args.seconds)


if __name__ == "__main__":
    main()
