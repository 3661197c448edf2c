"""How long SDP handling takes per call: parse, serialise, answer, stitch (prints µs per operation).

Run: .venv/bin/python tests/bench/bench_sdp.py [--rounds N]
The figure that matters is the median of several rounds (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemons"))

from sipmob.sdp import (
    Codec,
    LocalCapabilities,
    MediaCapability,
    Origin,
    answer,
    parse,
    split,
    stitch,
)

# A typical audio+video offer from a desk video phone: several codecs, DTMF, RTCP, ptime, H.264.
TYPICAL = (
    "v=0\r\n"
    "o=- 3868375318 3868375318 IN IP4 192.168.1.20\r\n"
    "s=-\r\n"
    "c=IN IP4 192.168.1.20\r\n"
    "t=0 0\r\n"
    "m=audio 16384 RTP/AVP 9 0 8 18 101\r\n"
    "a=rtpmap:9 G722/8000\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:18 G729/8000\r\n"
    "a=fmtp:18 annexb=no\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=rtcp:16385\r\n"
    "a=sendrecv\r\n"
    "m=video 16386 RTP/AVP 96 34\r\n"
    "b=AS:1024\r\n"
    "a=rtpmap:96 H264/90000\r\n"
    "a=fmtp:96 profile-level-id=42e01f;packetization-mode=1\r\n"
    "a=rtpmap:34 H263/90000\r\n"
    "a=rtcp-fb:96 nack pli\r\n"
    "a=sendrecv\r\n"
)


def per_call_us(fn: Callable[[], object], calls: int, rounds: int) -> tuple[float, float]:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples), min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()

    sdp = parse(TYPICAL)
    data = TYPICAL.encode()
    caps = LocalCapabilities((MediaCapability("audio", (Codec("G722", 8000), Codec("PCMU", 8000),
                                                         Codec("telephone-event", 8000))),
                              MediaCapability("video", (Codec("H263", 90000),))))
    origin = Origin("mn", 1, 1, "IN", "IP4", "192.168.1.2")
    offers = split(sdp, {0: "speaker", 1: "tv"})
    speaker = answer(offers["speaker"], caps, origin=origin, connection_address="192.168.1.30",
                     ports={"audio": 4000})
    tv = answer(offers["tv"], caps, origin=origin, connection_address="192.168.1.40", ports={"video": 5000})

    cases: list[tuple[str, Callable[[], object]]] = [
        ("parse (bytes)", lambda: parse(data)),
        ("serialise (to_bytes)", sdp.to_bytes),
        ("parse + serialise", lambda: parse(data).to_bytes()),
        ("answer", lambda: answer(sdp, caps, origin=origin, connection_address="192.168.1.30",
                                  ports={"audio": 4000, "video": 4002})),
        ("split into 2 devices", lambda: split(sdp, {0: "speaker", 1: "tv"})),
        ("stitch 2 devices", lambda: stitch([(0, speaker, 0), (1, tv, 1)], sdp, origin)),
    ]
    print(f"typical audio+video SDP: {len(data)} bytes, {len(TYPICAL.splitlines())} lines; "
          f"{args.rounds} rounds x {args.calls} calls; Python {sys.version.split()[0]}")
    for name, fn in cases:
        median, best = per_call_us(fn, args.calls, args.rounds)
        print(f"  {name:24s} median {median:8.1f} µs   best {best:8.1f} µs")


if __name__ == "__main__":
    main()
