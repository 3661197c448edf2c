"""Benchmark what a user and the CN notice when the mobile node moves a call: latency and media lapse.

Run: .venv/bin/python tests/bench/bench_mn_lapse.py [--rounds 20] [--grace SECONDS] [--max-seconds 240]
     [--each] [--pcap FILE]   (--each: every action's figures and where its longest gaps are)

The real `sipmob phone`, the real `sipmob-slpda`, baresip as the CN and as the device ("desk-phone"),
all on loopback; the phone's grace period is its configuration default unless --grace is given.
Every round transfers call 1 to the device and retrieves it through the control socket. The evidence
is independent of the phone: tshark captures every UDP packet on `lo` with kernel timestamps
(frame.time_epoch, CLOCK_REALTIME), and each command's t0 is taken with the same clock just before
its request is written to the control socket. The RTP ports are read from the SDP in the same
capture, so RTP that other tests send on `lo` meanwhile is left out.

Per action (transfer: phone → device; retrieval: device → phone):
- latency: t0 → the first packet from the CN's RTP port arriving at the new place's port;
- heard by the user: the CN's stream (one SSRC) at the old place then at the new one: the longest
  gap between consecutive packets of the two merged, in packet intervals, and the sequence numbers
  missing from their union;
- heard by the CN: the packets arriving at its port, from the old place then the new one (the phone
  keeps sending during the grace period, draft §7.1): the longest gap, in packet intervals, and the
  sequence numbers missing within each SSRC.
Also printed: the user's gap at the switch itself (last packet at the old place → first at the new),
the longest gaps of both streams in the 2 s before any command (the senders' own jitter: baresip and
the phone time their packets in user space, so on a loaded machine a gap of two intervals can occur
with nothing moving) and Wireshark's own loss count (`-z rtp,streams`) for the streams to the CN.
Targets on loopback: latency p95 < 50 ms, nothing lost, longest gap at most two packet intervals.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn"), str(ROOT / "tests/bench")]

from lapse import (  # noqa: E402
    GAP_TARGET,
    LEAD,
    SETTLE,
    Packet,
    command,
    longest_gap,
    lost,
    percentile,
    read_rtp,
    verdict,
    where_longest,
)
from phone_process import Phone, run  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.peers.baresip import Baresip  # noqa: E402
from tests.peers.tshark import LiveCapture, tshark  # noqa: E402

from sipmob.mn.config import Calls  # noqa: E402
from sipmob.mn.control import request  # noqa: E402

# bench_mdsm.py and bench_remote_offer.py take these from here
__all__ = ["command", "longest_gap", "percentile", "verdict"]

LATENCY_TARGET = 0.050


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    kind: str  # "transfer" or "retrieve"
    t0: float
    end: float  # when the window closes (the next command's t0, or the end of the capture)


@dataclasses.dataclass(frozen=True, slots=True)
class Lapse:
    latency: float | None  # seconds; None when the CN's stream never reached the new place
    user_gap: float  # longest gap in packet intervals
    user_lost: int
    cn_gap: float
    cn_lost: int
    switch_gap: float  # intervals between the CN's last packet at the old place and its first at the new
    old: int  # the CN's packets that reached the old place in the window
    new: int  # ... and the new one


@dataclasses.dataclass(frozen=True, slots=True)
class Ports:
    cn: int
    phone: int
    devices: frozenset[int]

    def ours(self, packet: Packet) -> bool:
        mine = self.devices | {self.cn, self.phone}
        return packet.src in mine and packet.dst in mine


def rtp_ports(capture: Path, phone_sip: int, cn_sip: int, device_sip: int) -> Ports:
    """The RTP ports of this run, from the SDP the phone exchanged (other tests may send RTP on lo
    at the same time): the CN's and the device's from their own descriptions, the phone's as the
    one it offered the CN that is no device's."""
    out = tshark("-r", str(capture), "-Y", f"sdp && udp.port == {phone_sip}", "-T", "fields",
                 "-e", "udp.srcport", "-e", "udp.dstport", "-e", "sdp.media.port", timeout=120)
    by_sender: dict[int, set[int]] = defaultdict(set)
    to_cn: set[int] = set()
    for line in out.splitlines():
        src, dst, media = line.split("\t")
        # Port 9 (discard) is in the CN's answer to OPTIONS: capabilities, not a stream (RFC 3264 §9).
        ports = {int(p) for p in media.split(",") if p.isdigit() and int(p) not in (0, 9)}
        by_sender[int(src)] |= ports
        if int(src) == phone_sip and int(dst) == cn_sip:
            to_cn |= ports
    cn, devices = by_sender[cn_sip], frozenset(by_sender[device_sip])
    phone = to_cn - devices
    if len(cn) != 1 or len(phone) != 1 or not devices:
        raise RuntimeError(f"cannot tell the RTP ports from the SDP: CN {sorted(cn)}, phone "
                           f"{sorted(phone)}, device {sorted(devices)}")
    return Ports(next(iter(cn)), next(iter(phone)), devices)


def measure(packets: Sequence[Packet], action: Action, cn: int, phone: int, interval: float) -> Lapse:
    window = [p for p in packets if action.t0 - LEAD <= p.time < action.end]
    to_user = [p for p in window if p.src == cn and p.dst != cn + 1]
    to_cn = [p for p in window if p.dst == cn]
    if action.kind == "transfer":
        arrived = [p for p in to_user if p.dst != phone and p.time >= action.t0]
    else:
        arrived = [p for p in to_user if p.dst == phone and p.time >= action.t0]
    latency = arrived[0].time - action.t0 if arrived else None
    at_phone = sum(1 for p in to_user if p.dst == phone)
    at_device = len(to_user) - at_phone
    old, new = (at_phone, at_device) if action.kind == "transfer" else (at_device, at_phone)
    if arrived:
        before = [p.time for p in to_user if (p.dst == phone) == (action.kind == "transfer")
                  and p.time < arrived[0].time]
        switch_gap = max(0.0, arrived[0].time - before[-1]) / interval if before else 0.0
    else:
        switch_gap = float("inf")
    # The user's side: one SSRC from the CN, at whichever place it goes.
    return Lapse(latency, longest_gap([p.time for p in to_user]) / interval, lost(to_user),
                 longest_gap([p.time for p in to_cn]) / interval, lost(to_cn), switch_gap, old, new)


def wireshark_streams_to(capture: Path, port: int) -> list[int]:
    """Wireshark's own count of lost packets in each RTP stream sent to ``port`` (`-z rtp,streams`)."""
    out = tshark("-r", str(capture), "-o", "rtp.heuristic_rtp:TRUE", "-q", "-z", "rtp,streams", timeout=120)
    lost = []
    for line in out.splitlines():
        # start end src-ip src-port dst-ip dst-port ssrc payload packets lost (percent) ...
        row = line.split()
        if len(row) > 10 and row[5].isdigit() and int(row[5]) == port and row[9].lstrip("-").isdigit():
            lost.append(int(row[9]))
    return lost


def report(kind: str, lapses: Sequence[Lapse]) -> None:
    latencies = [lap.latency for lap in lapses if lap.latency is not None]
    never = len(lapses) - len(latencies)
    if latencies:
        ms = [v * 1000 for v in latencies]
        p95 = percentile(ms, 0.95)
        print(f"{kind:8s} latency n={len(ms)} p50 {percentile(ms, 0.5):6.1f} ms  p95 {p95:6.1f} ms  "
              f"max {max(ms):6.1f} ms  [{verdict(never == 0 and p95 < LATENCY_TARGET * 1000)} p95 < "
              f"{LATENCY_TARGET * 1000:g} ms]" + (f"  ({never} never arrived)" if never else ""))
    else:
        print(f"{kind:8s} latency: the CN's stream never reached the new place  [MISS]")
    switch = [lap.switch_gap for lap in lapses]
    print(f"{kind:8s} heard by user at the switch (last packet at the old place to first at the new): "
          f"p50 {statistics.median(switch):4.2f} max {max(switch):4.2f} intervals")
    for side, gaps, losses in (("user", [lap.user_gap for lap in lapses], [lap.user_lost for lap in lapses]),
                             ("CN", [lap.cn_gap for lap in lapses], [lap.cn_lost for lap in lapses])):
        print(f"{kind:8s} heard by {side:4s}: longest gap p50 {statistics.median(gaps):4.2f} "
              f"max {max(gaps):4.2f} intervals [{verdict(max(gaps) <= GAP_TARGET)} <= {GAP_TARGET:g}]; "
              f"lost {sum(losses)} packets in {sum(1 for n in losses if n)} of {len(losses)} "
              f"[{verdict(sum(losses) == 0)} == 0]")


def main() -> None:
    default_grace = Calls().grace_period
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--grace", type=float, default=default_grace,
                        help=f"the phone's grace period (default: the configuration's, {default_grace:g} s)")
    parser.add_argument("--each", action="store_true", help="also print every action's figures")
    parser.add_argument("--pcap", type=Path, help="keep the capture there")
    parser.add_argument("--max-seconds", type=float, default=240.0,
                        help="stop starting rounds after this long")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "da").mkdir()
        da = Slpda(d / "da").start()
        cn = desk = phone = capture = None
        actions: list[tuple[str, float]] = []
        try:
            cn = Baresip(d, user="cn")
            desk = Baresip(d, user="desk")
            address = f"{HOST}:{da.port}"
            run("-m", "sipmob.service.slptool", "--da", address, "register", desk.uri, "service:sip-device",
                "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
            phone = Phone(d, address, grace=args.grace)
            # SIP and SLP travel on known ports; the rest of UDP on lo is the RTP we look at.
            sip_ports = (phone.port, cn.port, desk.port)
            capture = LiveCapture(d / "lapse.pcapng", f"udp and not port {da.port}")
            request(phone.control, "call", {"uri": cn.uri}, timeout=10)
            time.sleep(2.0)  # a steady stream to compare with
            deadline = time.monotonic() + args.max_seconds
            for _ in range(args.rounds):
                if time.monotonic() > deadline:
                    break
                actions.append(("transfer", command(phone.control, "transfer",
                                                    {"call": "1", "to": ["desk-phone"], "media": "all"})))
                time.sleep(SETTLE)
                actions.append(("retrieve", command(phone.control, "retrieve",
                                                    {"call": "1", "media": "all"})))
                time.sleep(SETTLE)
            end = time.time()
            capture.stop()
            path, capture = capture.path, None
        finally:
            if capture is not None:
                capture.stop()
            if phone is not None:
                phone.stop()
            for peer in (cn, desk):
                if peer is not None:
                    peer.stop()
            da.stop()
        if args.pcap is not None:
            shutil.copyfile(path, args.pcap)
        ports = rtp_ports(path, *sip_ports)
        packets = [p for p in read_rtp(path) if ports.ours(p)]
        cn_port, phone_port = ports.cn, ports.phone
        windows = [Action(kind, t0, actions[i + 1][1] if i + 1 < len(actions) else end)
                   for i, (kind, t0) in enumerate(actions)]
        # The packet interval: how often the CN sends while nothing moves (before the first command),
        # on average: baresip's own sending jitters by a few ms either way.
        steady = [p.time for p in packets if p.src == cn_port and p.time < windows[0].t0]
        interval = (steady[-1] - steady[0]) / (len(steady) - 1)
        lapses: dict[str, list[Lapse]] = defaultdict(list)
        for action in windows:
            lapses[action.kind].append(measure(packets, action, cn_port, phone_port, interval))
        print(f"{len(windows) // 2} rounds of transfer + retrieve, baresip as CN and device, grace "
              f"period {args.grace:g} s (default {default_grace:g} s), packet interval "
              f"{interval * 1000:.1f} ms, {len(packets)} RTP packets captured")
        if args.each:
            for action in windows:
                lap = measure(packets, action, cn_port, phone_port, interval)
                latency = f"{lap.latency * 1000:6.1f} ms" if lap.latency is not None else "   never "
                print(f"  {action.kind:8s} latency {latency}  CN's packets at the old place {lap.old:3d}, "
                      f"new {lap.new:3d}; user gap {lap.user_gap:4.2f} lost {lap.user_lost}; "
                      f"CN gap {lap.cn_gap:4.2f} lost {lap.cn_lost}; switch gap {lap.switch_gap:4.2f}")
                window = [p for p in packets if action.t0 - LEAD <= p.time < action.end]
                print("    longest gap: user",
                      where_longest([p for p in window if p.src == cn_port], action.t0), " CN",
                      where_longest([p for p in window if p.dst == cn_port], action.t0))
        # What the streams do with nothing moving: the senders' own jitter, for comparison.
        calm = [p for p in packets if p.time < windows[0].t0]
        from_cn = longest_gap([p.time for p in calm if p.src == cn_port]) / interval
        to_cn = longest_gap([p.time for p in calm if p.dst == cn_port]) / interval
        print(f"before the first command ({calm[-1].time - calm[0].time:.1f} s): longest gap "
              f"CN -> phone {from_cn:4.2f}, phone -> CN {to_cn:4.2f} intervals")
        for kind in ("transfer", "retrieve"):
            report(kind, lapses[kind])
        streams = wireshark_streams_to(path, cn_port)
        print(f"Wireshark's RTP analysis of the {len(streams)} streams to the CN (whole run): "
              f"{sum(streams)} lost [{verdict(sum(streams) == 0)} == 0]")


if __name__ == "__main__":
    main()
