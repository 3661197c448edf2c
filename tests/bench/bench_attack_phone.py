"""Benchmark ``sipmob phone`` under attack: what reaches a victim, how a legitimate caller fares, and
how much mutated SIP the phone takes without a traceback.

Run: .venv/bin/python tests/bench/bench_attack_phone.py [--flood 300] [--media-timeout 30]
                                                           [--fuzz-count 1000000]

The real phone process in a network namespace of its own (tests/integration/mn/attackers.py): the
phone at 192.0.2.10, the CN at 192.168.1.20, a rogue LAN host at 127.0.0.66, a stranger at
203.0.113.5, a victim at 198.51.100.7 that counts what it gets and never answers. Printed:

1. the stranger's flood: `--flood` INVITEs (2 ms apart) with c= at the victim, each 2xx ACKed: the
   statuses, and the packets the victim got;
2. the same flood from the rogue LAN host, whose network ``answer_from`` admits: the statuses, the
   packets to the victim before and after ``media_timeout``, and the descriptors the phone holds;
3. a legitimate INVITE from the CN sent in the middle of each flood: the time to its 200;
4. the fuzz: `--fuzz-count` mutated SIP messages (50 per burst, 5 ms apart) from the three
   addresses: the rate, the tracebacks in the phone's log, its RSS before and after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/mn")]

from attackers import (  # noqa: E402
    CN,
    ROGUE,
    STRANGER,
    VICTIM,
    VICTIM_PORT,
    Counter,
    Home,
    fuzz,
    status,
)


def legitimate_answer_time(home: Home) -> tuple[int, float]:
    """A CN's INVITE: its final status (0: none in 10 s) and the time to it."""
    cn = home.party(CN, "cn")
    try:
        start = time.monotonic()
        call_id, _ = cn.invite(media=(CN, 4000))
        response = cn.wait_response(call_id, timeout=10)
        elapsed = time.monotonic() - start
        if response is not None and status(response) == 200:
            cn.ack(response)
        return (status(response) if response is not None else 0), elapsed
    finally:
        cn.close()


def said(answer: tuple[int, float] | None) -> str:
    if answer is None or answer[0] == 0:
        return "no answer"
    return f"{answer[0]} in {answer[1] * 1000:.1f} ms"


def flood_with_probe(home: Home, host: str, n: int) -> tuple[dict[int, int], tuple[int, float] | None]:
    party = home.party(host, "flood")
    probe: list[tuple[int, float]] = []
    ids = []
    try:
        for i in range(n):
            ids.append(party.invite(media=(VICTIM, VICTIM_PORT))[0])
            if i == n // 2:
                thread = threading.Thread(target=lambda: probe.append(legitimate_answer_time(home)))
                thread.start()
            time.sleep(0.002)
        counts: dict[int, int] = {}
        deadline = time.monotonic() + 5
        for call_id in ids:
            response = party.wait_response(call_id, timeout=max(0.0, deadline - time.monotonic()))
            code = status(response) if response is not None else 0
            counts[code] = counts.get(code, 0) + 1
            if response is not None and code == 200:
                party.ack(response)
        thread.join(15)
        return counts, (probe[0] if probe else None)
    finally:
        party.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=300, help="INVITEs per flood")
    parser.add_argument("--media-timeout", type=float, default=30.0, help="the phone's media_timeout")
    parser.add_argument("--fuzz-count", type=int, default=100_000, help="mutated SIP messages")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-attack-phone-") as tmp:
        home = Home(Path(tmp), media_timeout=args.media_timeout)
        victim = Counter(home.ns, VICTIM, VICTIM_PORT)
        try:
            fds = home.descriptors()
            counts, answer = flood_with_probe(home, STRANGER, args.flood)
            time.sleep(2)
            print(f"stranger flood ({STRANGER}): {args.flood} INVITEs -> {dict(sorted(counts.items()))}; "
                  f"packets to the victim: {len(victim.arrivals)}")
            print(f"  legitimate INVITE during it: {said(answer)}")

            start = time.monotonic()
            counts, answer = flood_with_probe(home, ROGUE, args.flood)
            peak_fds = home.descriptors()
            timeout_at = start + args.media_timeout
            time.sleep(max(0.0, timeout_at + 6 - time.monotonic()))
            end = time.monotonic()
            before = victim.between(start, timeout_at)
            after = victim.between(timeout_at + 2.5, end)  # the check runs every min(5, timeout/4) s
            print(f"LAN flood ({ROGUE}): {args.flood} INVITEs -> {dict(sorted(counts.items()))}; "
                  f"descriptors {fds} -> {peak_fds}")
            last = max(victim.arrivals) - start if victim.arrivals else 0.0
            print(f"  packets to the victim: {before} in the first {args.media_timeout:.0f} s "
                  f"(media_timeout), {after} from {args.media_timeout + 2.5:.1f} s to {end - start:.1f} s; "
                  f"the last one {last:.1f} s after the first INVITE")
            print(f"  legitimate INVITE during it: {said(answer)}")
            print(f"  legitimate INVITE after media_timeout: {said(legitimate_answer_time(home))}")

            rss = [home.rss_kb()]
            seconds = 0.0
            for quarter in range(4):  # RSS after each quarter: flat once lingering transactions turn over
                seconds += fuzz(home, args.fuzz_count // 4, seed=quarter + 1)
                rss.append(home.rss_kb())
            time.sleep(1)
            out = home.output()
            print(f"fuzz: {args.fuzz_count // 4 * 4} mutated SIP messages in {seconds:.1f} s "
                  f"({args.fuzz_count // 4 * 4 / seconds:.0f}/s); tracebacks: {out.count('Traceback')}; "
                  f"phone alive: {home.proc is not None and home.proc.poll() is None}; RSS MB before and "
                  f"after each quarter: {' '.join(f'{r / 1024:.1f}' for r in rss)}")
            if "Traceback" in out:
                kept = Path(tempfile.gettempdir()) / "bench_attack_phone.log"
                kept.write_text(out)
                print(f"the phone's log is kept in {kept}")
                i = out.index("Traceback")
                print("the first traceback:\n" + out[max(0, out.rfind("\n", 0, i - 1)):i + 2500])
        finally:
            victim.close()
            home.close()


if __name__ == "__main__":
    main()
