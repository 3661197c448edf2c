"""Cost of the SLPv2 wire codec per message, as a Directory Agent pays it.

    .venv/bin/python tests/bench/bench_slp_wire.py [count]

Prints microseconds per encode, per decode and per encode+decode of a unicast SrvRqst with a
predicate, a SrvRply with 10 URL entries, and the SrvRply truncated to 1400 bytes. The best of
five rounds is reported, since the machine is shared and noisy.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2] / "daemons")]

from sipmob.slp.messages import (  # noqa: E402
    ErrorCode,
    FunctionId,
    Header,
    SrvRply,
    SrvRqst,
    UrlEntry,
)
from sipmob.slp.wire import decode, encode, encode_within  # noqa: E402

ROUNDS = 5


def best_us(fn: Callable[[], object], count: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rqst = SrvRqst(Header(FunctionId.SrvRqst, 0x1234, "en"), "", "service:tv:sip",
                   "DEFAULT,living room", "(&(room=living)(media=video))", "")
    rply = SrvRply(Header(FunctionId.SrvRply, 0x1234, "en"), ErrorCode.OK,
                   tuple(UrlEntry(f"service:tv:sip://tv{i}@192.168.1.{i}:5060", 1800)
                         for i in range(10)))
    big = SrvRply(rply.header, ErrorCode.OK, rply.urls * 10)
    rqst_bytes, rply_bytes = encode(rqst), encode(rply)

    print(f"SLPv2 wire codec, best of {ROUNDS} rounds of {count} (Python {sys.version.split()[0]})")
    rows = [
        (f"SrvRqst ({len(rqst_bytes)} B)", lambda: encode(rqst), lambda: decode(rqst_bytes),
         lambda: decode(encode(rqst))),
        (f"SrvRply, 10 URLs ({len(rply_bytes)} B)", lambda: encode(rply),
         lambda: decode(rply_bytes), lambda: decode(encode(rply))),
    ]
    print(f"{'message':34} {'encode':>9} {'decode':>9} {'both':>9}  (us per message)")
    for name, enc, dec, both in rows:
        print(f"{name:34} {best_us(enc, count):9.2f} {best_us(dec, count):9.2f} "
              f"{best_us(both, count):9.2f}")
    us = best_us(lambda: encode_within(big, 1400), count // 10)
    print(f"{'SrvRply, 100 URLs cut to 1400 B':34} {us:9.2f}")


if __name__ == "__main__":
    main()
