"""Benchmark `sipmob-saproxy`: how fast a device is found and forgotten, and what 50 devices cost.

Run: .venv/bin/python tests/bench/bench_saproxy.py [--samples 3] [--fast]

The real `sipmob-slpda` and `sipmob-saproxy` run as processes on loopback; devices are fake UDP
responders in this process (`tests/integration/saproxy/saproxy_process.py`). Printed:

- found: from the device's first answer to an OPTIONS to the first SrvRqst that returns it
  (polled every 5 ms, by count and time);
- gone: from the device going silent (its last answer) to the first SrvRqst that no longer returns
  it, with the bound the probe settings give: interval*1.1 + down_after*timeout + (down_after-1)*retry;
- with 50 devices up: the daemon's VmRSS, and the CPU time it used in 10 s of steady probing.

By default the shipped probe settings are used (interval 15 s: a "gone" sample takes up to ~26 s);
--fast uses the integration tests' (interval 0.5 s, timeout 0.5 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/saproxy")]

from saproxy_process import FAST_PROBE, FakeDevice, Saproxy, ok_with, silent  # noqa: E402
from slpda_process import Client, Slpda  # noqa: E402

from sipmob.saproxy.config import Probe  # noqa: E402
from sipmob.slp.messages import SrvRply  # noqa: E402

POLL = 0.005


def urls(client: Client, tcp: bool = False) -> set[str]:
    """The URLs a SrvRqst finds now; over TCP when the reply would overflow a datagram."""
    try:
        reply = client.tcp(client.srv_rqst()) if tcp else client.udp(client.srv_rqst())
    except (TimeoutError, OSError):
        return set()
    return {u.url for u in reply.urls} if isinstance(reply, SrvRply) else set()


def wait_for(client: Client, condition: object, limit: float, tcp: bool = False) -> float:
    """Poll SrvRqst until `condition(urls)` holds; the time it first held (time.monotonic)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition(urls(client, tcp)):  # type: ignore[operator]
            return time.monotonic()
        time.sleep(POLL)
    raise TimeoutError(f"not within {limit} s")


def proc_stat(pid: int) -> tuple[int, float]:
    """(VmRSS in kB, user+system CPU seconds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss, (int(fields[11]) + int(fields[12])) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--fast", action="store_true", help="the integration tests' probe settings")
    args = parser.parse_args()
    probe_text = FAST_PROBE if args.fast else ""
    p = Probe(interval=0.5, timeout=0.5, retry=0.2, down_after=2, backoff_max=1.0) if args.fast else Probe()
    bound = p.interval * 1.1 + p.down_after * p.timeout + (p.down_after - 1) * p.retry
    print(f"probe: interval {p.interval} s, timeout {p.timeout} s, retry {p.retry} s, "
          f"down_after {p.down_after}; gone bound {bound:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "da").mkdir()
        da = Slpda(base / "da").start()
        client = Client(da.port, timeout=0.5)
        try:
            found_s, gone_s = [], []
            for i in range(args.samples):
                run = base / f"run{i}"
                run.mkdir()
                device = FakeDevice(user=f"tv{i}")
                proxy = Saproxy(run, [da.port], probe=probe_text)
                proxy.add_device("tv", device.uri)
                try:
                    proxy.start()
                    seen = wait_for(client, lambda u, d=device: d.uri in u, 30)
                    found_s.append(seen - device.answered[0])
                    time.sleep(1.0)  # some answered probes, then silence
                    device.answer = silent
                    last = device.answered[-1]
                    gone = wait_for(client, lambda u, d=device: d.uri not in u, bound + 30)
                    gone_s.append(gone - last)
                    device.answer = ok_with()
                finally:
                    proxy.stop()
                    device.close()
            print(f"found after first answer: median {statistics.median(found_s) * 1000:.1f} ms, "
                  f"max {max(found_s) * 1000:.1f} ms ({len(found_s)} samples)")
            print(f"gone after last answer:   median {statistics.median(gone_s):.2f} s, "
                  f"max {max(gone_s):.2f} s (bound {bound:.1f} s)")

            run = base / "fifty"
            run.mkdir()
            devices = [FakeDevice(user=f"d{i}") for i in range(50)]
            proxy = Saproxy(run, [da.port], probe=probe_text)
            for i, d in enumerate(devices):
                proxy.add_device(f"d{i:02}", d.uri, f'room = "room-{i % 5}"\n')
            try:
                started = time.monotonic()
                proxy.start()
                wait_for(client, lambda u: len(u) == 50, 60, tcp=True)
                print(f"50 devices: all found {time.monotonic() - started:.2f} s after the daemon started")
                rss, cpu0 = proc_stat(proxy.pid)
                time.sleep(10)
                rss2, cpu1 = proc_stat(proxy.pid)
                print(f"50 devices: VmRSS {max(rss, rss2) / 1024:.1f} MB; CPU {cpu1 - cpu0:.2f} s "
                      f"in 10 s of probing")
            finally:
                proxy.stop()
                for d in devices:
                    d.stop_soon()
                for d in devices:
                    d.close()
        finally:
            client.close()
            da.stop()


if __name__ == "__main__":
    main()
