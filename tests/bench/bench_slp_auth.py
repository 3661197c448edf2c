"""What a per-registrant secret costs the DA, in process (no sockets): CPU per SrvReg/SrvDeReg.

Run: .venv/bin/python tests/bench/bench_slp_auth.py [--rounds 3] [--n 2000]

Printed per request, each the best of --rounds runs of --n requests through `DirectoryAgent.handle`
(fresh registrations of distinct URLs, then their deregistrations):

- unsigned: the source-address rule, as before;
- signed: HMAC-SHA-256 verified, replay state kept (the SA proxy's case);
- forged: a block with a wrong MAC, refused after one HMAC (what an attacker can make it spend);
- unknown SPI: refused without any HMAC;
- and the signer's cost of one block (`auth.sign`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemons"))

from sipmob.slp import auth, wire
from sipmob.slp.da import DAConfig, DirectoryAgent
from sipmob.slp.messages import Flags, FunctionId, Header, SrvDeReg, SrvReg, UrlEntry

KEY = os.urandom(32)
NOW = time.time()


def reg(i: int) -> SrvReg:
    return SrvReg(Header(FunctionId.SrvReg, i % 0xFFFF + 1, "en", Flags.FRESH),
                  UrlEntry(f"sip:d{i}@192.168.{i // 250 % 250}.{i % 250 + 1}", 300), "service:sip-device",
                  "DEFAULT", f"(name=Device {i}),(room=room{i % 7}),(media=audio-sendrecv)")


def dereg(i: int) -> SrvDeReg:
    return SrvDeReg(Header(FunctionId.SrvDeReg, i % 0xFFFF + 1, "en"), "DEFAULT", reg(i).url_entry)


def timed(da: DirectoryAgent, datagrams: list[bytes]) -> float:
    handle = da.handle
    start = time.process_time()
    for data in datagrams:
        handle(data, ("192.168.1.20", 40000), "udp", NOW)
    return (time.process_time() - start) / len(datagrams) * 1e6


def best(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    n = args.n
    config = DAConfig(url="service:directory-agent://192.168.1.1", keys=(("saproxy", KEY),),
                      max_registrations=2 * n)

    def plain(what: Callable[[int], SrvReg | SrvDeReg]) -> list[bytes]:
        return [wire.encode(what(i)) for i in range(n)]

    def signed(what: Callable[[int], SrvReg | SrvDeReg], key: bytes = KEY, spi: str = "saproxy",
               offset: int = 30) -> list[bytes]:
        return [wire.encode(auth.sign(what(i), spi, key, int(NOW) + offset)) for i in range(n)]

    def pair(regs: list[bytes], deregs: list[bytes]) -> tuple[float, float]:
        da = DirectoryAgent(config, NOW)
        return timed(da, regs), timed(da, deregs)

    rows = {
        "unsigned": (plain(reg), plain(dereg)),
        "signed": (signed(reg), signed(dereg, offset=31)),
    }
    print(f"in-process CPU per request, best of {args.rounds} x {n} (µs)")
    print(f"{'':14}{'SrvReg':>10}{'SrvDeReg':>10}")
    for name, (regs, deregs) in rows.items():
        results = [pair(regs, deregs) for _ in range(args.rounds)]
        print(f"{name:14}{min(r[0] for r in results):10.1f}{min(r[1] for r in results):10.1f}")
    forged = signed(reg, key=os.urandom(32))
    unknown = signed(reg, spi="nobody")
    print(f"{'forged':14}{best(args.rounds, lambda: timed(DirectoryAgent(config, NOW), forged)):10.1f}"
          f"{'':>10}  (refused: bad MAC)")
    print(f"{'unknown SPI':14}{best(args.rounds, lambda: timed(DirectoryAgent(config, NOW), unknown)):10.1f}"
          f"{'':>10}  (refused: no key)")
    msgs = [reg(i) for i in range(n)]
    start = time.process_time()
    for msg in msgs:
        auth.sign(msg, "saproxy", KEY, int(NOW) + 30)
    print(f"signing one SrvReg: {(time.process_time() - start) / n * 1e6:.1f} µs")


if __name__ == "__main__":
    main()
