"""Benchmark the mobile node: how long a transfer and a retrieval take, and what the phone costs.

Run: .venv/bin/python tests/bench/bench_mn_transfer.py [--rounds 10] [--grace 0.0]

The real `sipmob phone` process, the real `sipmob-slpda`, baresip as the CN and as the device, all
on loopback. Each round transfers call 1 to the device and retrieves it, through the control socket
(no Python start-up in the figure). Printed: the time from request to reply for each (it includes
the OPTIONS capability check, the SLP lookup, INVITE, re-INVITE and the grace period given); then
the phone's VmRSS and the CPU time it used in 3 s with its call on the device and in 3 s with the
call back on the phone (sending its own 50 packets/s).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn")]

from phone_process import Phone, run  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.peers.baresip import Baresip  # noqa: E402

from sipmob.mn.control import request  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 1/100 s


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--grace", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "da").mkdir()
        da = Slpda(d / "da").start()
        cn = desk = None
        phone = None
        try:
            cn = Baresip(d, user="cn")
            desk = Baresip(d, user="desk")
            address = f"{HOST}:{da.port}"
            run("-m", "sipmob.service.slptool", "--da", address, "register", desk.uri, "service:sip-device",
                "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
            phone = Phone(d, address, grace=args.grace)
            request(phone.control, "call", {"uri": cn.uri}, timeout=10)
            transfer, retrieve = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                request(phone.control, "transfer", {"call": "1", "to": ["desk-phone"], "media": "all"})
                transfer.append(time.perf_counter() - t0)
                time.sleep(0.2)
                t0 = time.perf_counter()
                request(phone.control, "retrieve", {"call": "1", "media": "all"})
                retrieve.append(time.perf_counter() - t0)
                time.sleep(0.2)
            for name, values in (("transfer", transfer), ("retrieve", retrieve)):
                ms = sorted(v * 1000 for v in values)
                print(f"{name:8s} n={len(ms)} median {statistics.median(ms):7.1f} ms  "
                      f"min {ms[0]:7.1f} ms  max {ms[-1]:7.1f} ms  (grace {args.grace:g} s)")
            pid = phone.proc.pid
            request(phone.control, "transfer", {"call": "1", "to": ["desk-phone"], "media": "all"})
            c0 = cpu_seconds(pid)
            time.sleep(3)
            away = cpu_seconds(pid) - c0
            request(phone.control, "retrieve", {"call": "1", "media": "all"})
            c0 = cpu_seconds(pid)
            time.sleep(3)
            home = cpu_seconds(pid) - c0
            print(f"phone VmRSS {rss_mb(pid):.1f} MB; CPU in 3 s: {away:.2f} s with the call on the "
                  f"device, {home:.2f} s sending its own audio")
        finally:
            if phone is not None:
                phone.stop()
            for peer in (cn, desk):
                if peer is not None:
                    peer.stop()
            da.stop()


if __name__ == "__main__":
    main()
