"""Benchmark Session Handoff mode (draft Figs. 4 and 5): latency and media lapse of a transfer by REFER
and a retrieval by nested REFER.

Run: .venv/bin/python tests/bench/bench_sh.py [--rounds 10] [--each] [--pcap FILE] [--max-seconds 240]

The real `sipmob phone` as the mobile node, a second `sipmob phone` as the mobility-enhanced device
("TV", registered by itself in the real `sipmob-slpda`), PJSIP (pjsua2) as the CN, all on loopback.
Every round hands call 1 off to the TV (``transfer --mode handoff``) and retrieves it (``retrieve``).
As in bench_mn_lapse.py the evidence is independent of the phone: tshark captures every UDP packet
on `lo` with kernel timestamps, and each command's t0 is taken with the same clock just before its
request is written to the control socket. Each side's RTP ports are read from the SDP each SIP
port sent in the same capture (every call of SH mode is a new dialog with new ports).

Per action (transfer: phone → TV; retrieval: TV → phone):
- latency: t0 → the first packet of the CN's media arriving at the new place;
- lapse: the longest gap between consecutive packets of the CN's media reaching *any* place of the
  user's (the phone or the TV), in packet intervals, and the sequence numbers missing within each
  of the CN's streams (SSRCs).
Also printed: the longest gap before the first command (the senders' own jitter) and whether
tshark decodes every SIP message of the run without a malformed packet or an expert error.
Targets on loopback: latency p95 < 100 ms, longest gap at most two packet intervals, nothing lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn"), str(ROOT / "tests/bench")]

from bench_mn_lapse import (  # noqa: E402
    LEAD,
    SETTLE,
    Packet,
    command,
    longest_gap,
    missing,
    percentile,
    verdict,
)
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.peers.pjsua import Pjsua  # noqa: E402
from tests.peers.ports import free_udp_port  # noqa: E402
from tests.peers.tshark import LiveCapture, tshark  # noqa: E402

from sipmob.mn.control import request  # noqa: E402

LATENCY_TARGET = 0.100
GAP_TARGET = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class Lapse:
    latency: float | None
    gap: float
    lost: int


def announced_ports(capture: Path, sip_ports: Sequence[int]) -> dict[int, set[int]]:
    """The media ports each SIP port announced in its SDP (port 9 of an OPTIONS answer left out)."""
    decode = [a for p in sip_ports for a in ("-d", f"udp.port=={p},sip")]
    out = tshark("-r", str(capture), *decode, "-Y", "sdp", "-T", "fields", "-e", "udp.srcport",
                 "-e", "sdp.media.port", timeout=120)
    by_sender: dict[int, set[int]] = defaultdict(set)
    for line in out.splitlines():
        src, _, media = line.partition("\t")
        by_sender[int(src)] |= {int(p) for p in media.split(",") if p.isdigit() and int(p) not in (0, 9)}
    return by_sender


def read_rtp(capture: Path, ports: set[int]) -> list[Packet]:
    decode = [a for p in sorted(ports) for a in ("-d", f"udp.port=={p},rtp")]
    out = tshark("-r", str(capture), *decode, "-Y", "rtp", "-T", "fields", "-e", "frame.time_epoch",
                 "-e", "udp.srcport", "-e", "udp.dstport", "-e", "rtp.ssrc", "-e", "rtp.seq", timeout=120)
    packets = []
    for line in out.splitlines():
        row = line.split("\t")
        if len(row) == 5 and all(row):
            packets.append(Packet(float(row[0]), int(row[1]), int(row[2]), int(row[3], 0), int(row[4])))
    packets.sort(key=lambda p: p.time)
    return packets


def measure(packets: Sequence[Packet], kind: str, t0: float, end: float, cn: set[int], phone: set[int],
            device: set[int], interval: float) -> Lapse:
    to_user = [p for p in packets if t0 - LEAD <= p.time < end and p.src in cn and p.dst in phone | device]
    new = device if kind == "transfer" else phone
    arrived = [p for p in to_user if p.dst in new and p.time >= t0]
    latency = arrived[0].time - t0 if arrived else None
    lost = sum(missing(p.seq for p in to_user if p.ssrc == s) for s in {p.ssrc for p in to_user})
    return Lapse(latency, longest_gap([p.time for p in to_user]) / interval, lost)


def report(kind: str, lapses: Sequence[Lapse]) -> None:
    ms = [lap.latency * 1000 for lap in lapses if lap.latency is not None]
    never = len(lapses) - len(ms)
    if ms:
        p95 = percentile(ms, 0.95)
        print(f"{kind:8s} latency n={len(ms)} p50 {percentile(ms, 0.5):6.1f} ms  p95 {p95:6.1f} ms  "
              f"max {max(ms):6.1f} ms  [{verdict(never == 0 and p95 < LATENCY_TARGET * 1000)} p95 < "
              f"{LATENCY_TARGET * 1000:g} ms]" + (f"  ({never} never arrived)" if never else ""))
    else:
        print(f"{kind:8s} latency: the CN's media never reached the new place  [MISS]")
    gaps = [lap.gap for lap in lapses]
    lost = [lap.lost for lap in lapses]
    print(f"{kind:8s} CN's media at some place of the user's: longest gap p50 "
          f"{sorted(gaps)[len(gaps) // 2]:4.2f} max {max(gaps):4.2f} intervals "
          f"[{verdict(max(gaps) <= GAP_TARGET)} <= {GAP_TARGET:g}]; lost {sum(lost)} packets in "
          f"{sum(1 for n in lost if n)} of {len(lost)} [{verdict(sum(lost) == 0)} == 0]")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--each", action="store_true", help="also print every action's figures")
    parser.add_argument("--pcap", type=Path, help="keep the capture there")
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="stop starting rounds after this long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for sub in ("da", "mn", "tv", "cn"):
            (d / sub).mkdir()
        da = Slpda(d / "da").start()
        cn = tv = phone = capture = None
        actions: list[tuple[str, float]] = []
        try:
            address = f"{HOST}:{da.port}"
            cn = Pjsua(free_udp_port(), "cn", workdir=d / "cn", log_level=3)
            tv = Phone(d / "tv", address, user="tv", extra=(
                '[device]\nenabled = true\nname = "TV"\nowners = ["sip:mn@127.0.0.1"]\n'))
            phone = Phone(d / "mn", address)
            if not until(lambda: "enhanced" in phone.sipmob("devices", "--json").stdout, timeout=10):
                raise RuntimeError("the TV did not register itself in SLP")
            sip_ports = (phone.port, tv.port, cn.port)
            capture = LiveCapture(d / "sh.pcapng", f"udp and not port {da.port}")
            request(phone.control, "call", {"uri": cn.uri}, timeout=10)
            time.sleep(2.0)  # a steady stream to compare with
            deadline = time.monotonic() + args.max_seconds
            for _ in range(args.rounds):
                if time.monotonic() > deadline:
                    break
                actions.append(("transfer", command(phone.control, "transfer",
                                                    {"call": "1", "to": ["tv"], "mode": "handoff"})))
                time.sleep(SETTLE)
                actions.append(("retrieve", command(phone.control, "retrieve", {"call": "1"})))
                time.sleep(SETTLE)
            end = time.time()
            capture.stop()
            path, capture = capture.path, None
        finally:
            if capture is not None:
                capture.stop()
            for proc in (phone, tv, cn):
                if proc is not None:
                    proc.stop()
            da.stop()
        if args.pcap is not None:
            shutil.copyfile(path, args.pcap)
        announced = announced_ports(path, sip_ports)
        phone_ports, tv_ports, cn_ports = (announced[p] for p in sip_ports)
        packets = read_rtp(path, phone_ports | tv_ports | cn_ports)
        windows = [(kind, t0, actions[i + 1][1] if i + 1 < len(actions) else end)
                   for i, (kind, t0) in enumerate(actions)]
        steady = [p.time for p in packets if p.src in cn_ports and p.time < windows[0][1]]
        interval = (steady[-1] - steady[0]) / (len(steady) - 1)
        lapses: dict[str, list[Lapse]] = defaultdict(list)
        for kind, t0, stop in windows:
            lap = measure(packets, kind, t0, stop, cn_ports, phone_ports, tv_ports, interval)
            lapses[kind].append(lap)
            if args.each:
                latency = f"{lap.latency * 1000:6.1f} ms" if lap.latency is not None else "   never "
                print(f"  {kind:8s} latency {latency}  gap {lap.gap:4.2f} intervals  lost {lap.lost}")
        print(f"{len(windows) // 2} rounds of handoff + retrieval, PJSIP as CN, sipmob phone as the TV, "
              f"packet interval {interval * 1000:.1f} ms, {len(packets)} RTP packets captured")
        calm = [p.time for p in packets if p.src in cn_ports and p.time < windows[0][1]]
        print(f"before the first command ({calm[-1] - calm[0]:.1f} s): longest gap CN -> phone "
              f"{longest_gap(calm) / interval:4.2f} intervals")
        for kind in ("transfer", "retrieve"):
            report(kind, lapses[kind])
        decode = [a for p in sip_ports for a in ("-d", f"udp.port=={p},sip")]
        sip = tshark("-r", str(path), *decode, "-Y", "sip", "-T", "fields", "-e", "sip.Method",
                     "-e", "sip.Status-Code", timeout=120).split("\n")
        bad = tshark("-r", str(path), *decode, "-Y",
                     "sip && (_ws.malformed || _ws.expert.severity >= warning)", timeout=120).strip()
        methods = sorted({m for line in sip for m in line.split("\t")[:1] if m})
        print(f"tshark: {len([x for x in sip if x.strip()])} SIP messages ({', '.join(methods)}), "
              f"malformed or with a warning: {len(bad.splitlines())} [{verdict(not bad)} == 0]"
              + (f"\n{bad}" if bad else ""))


if __name__ == "__main__":
    main()
