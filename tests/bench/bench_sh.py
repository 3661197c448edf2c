"""Benchmark Session Handoff mode (draft Figs. 4 and 5): latency and media lapse of a transfer by REFER
and a retrieval by nested REFER.

Run: .venv/bin/python tests/bench/bench_sh.py [--rounds 10] [--cn pjsip|phone] [--each] [--pcap FILE]
     [--max-seconds 240]

The real `sipmob phone` as the mobile node, a second `sipmob phone` as the mobility-enhanced device
("TV", registered by itself in the real `sipmob-slpda`), PJSIP (pjsua2) as the CN, all on loopback;
``--cn phone`` makes a third `sipmob phone` the CN instead, to tell what is ours from what is PJSIP's.
Every round hands call 1 off to the TV (``transfer --mode handoff``) and retrieves it (``retrieve``).
As in bench_mn_lapse.py the evidence is independent of the phone: tshark captures every UDP packet
(and the ICMP port unreachable of any packet that reached a closed port) on `lo` with kernel
timestamps, and each command's t0 is taken with the same clock just before its request is written to
the control socket. Each side's RTP ports are read from the SDP each SIP port sent in the same capture
(every call of SH mode is a new dialog with new ports).

Per action (transfer: phone → TV; retrieval: TV → phone):
- latency: t0 → the first packet of the CN's media arriving at the new place;
- lapse: the longest gap between consecutive packets of the CN's media reaching *any* place of the
  user's (the phone or the TV), in packet intervals, and the sequence numbers missing within each
  of the CN's streams (SSRCs);
- where the lapse comes from: the gap at the switch (the CN's last packet to the old place → its first
  to the new one), both timed from the CN's 200 to the INVITE with Replaces, apart from the longest
  gap within one stream (the CN's own pacing, nothing moving); for every gap over 1.5 intervals, the
  SIP messages sent inside it, whether nothing at all crossed `lo` meanwhile (the whole machine
  stalled) and whether our own media to the CN kept flowing (then the CN's sender was late).
Printed as p50/p95/max over the rounds, with the target; also the longest gap before the first
command, the CN's packets that reached a closed port of ours (they reached no one, so they are left
out of the gaps), and whether tshark decodes every SIP message of the run without a malformed
packet or an expert error.
Targets on loopback: latency p95 < 100 ms, longest gap at most two packet intervals, nothing lost.
"""

from __future__ import annotations

import argparse
import collections
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

from lapse import (  # noqa: E402
    GAP_TARGET,
    LEAD,
    SETTLE,
    Packet,
    SipMessage,
    announced_ports,
    bounced,
    command,
    longest_gap,
    lost,
    percentile,
    read_rtp,
    silence,
    sip_messages,
    spread,
    steps_within,
    switch,
    udp_times,
    verdict,
    widest,
)
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.peers.pjsua import Pjsua  # noqa: E402
from tests.peers.ports import free_udp_port  # noqa: E402
from tests.peers.tshark import LiveCapture, tshark  # noqa: E402

from sipmob.mn.control import request  # noqa: E402

__all__ = ["Lapse", "announced_ports", "measure", "read_rtp", "report"]  # bench_mdsm.py uses them

LATENCY_TARGET = 0.100
CAPTURE_WAIT = 60.0  # seconds for the capture to show it started, and that it has everything


@dataclasses.dataclass(frozen=True, slots=True)
class Lapse:
    latency: float | None
    gap: float  # the longest gap at any place of the user's, in packet intervals
    lost: int
    switch_gap: float | None = None  # the CN's last packet at the old place → its first at the new
    pacing: float = 0.0  # the longest gap within one of the CN's streams (nothing moving there)
    widest: tuple[float, float] | None = None  # when the longest gap began and ended
    switched: tuple[float, float] | None = None  # the old place's last packet, the new place's first


def measure(packets: Sequence[Packet], kind: str, t0: float, end: float, cn: set[int], phone: set[int],
            device: set[int], interval: float) -> Lapse:
    to_user = [p for p in packets if t0 - LEAD <= p.time < end and p.src in cn and p.dst in phone | device]
    old, new = (phone, device) if kind == "transfer" else (device, phone)
    arrived = [p for p in to_user if p.dst in new and p.time >= t0]
    latency = arrived[0].time - t0 if arrived else None
    at_switch = switch(to_user, old, new)
    switch_gap = (at_switch[1].time - at_switch[0].time) / interval if at_switch else None
    pacing = max((longest_gap([p.time for p in to_user if (p.src, p.dst, p.ssrc) == stream])
                  for stream in {(p.src, p.dst, p.ssrc) for p in to_user}), default=0.0) / interval
    pair = widest(to_user)
    return Lapse(latency, longest_gap([p.time for p in to_user]) / interval, lost(to_user), switch_gap,
                 pacing, (pair[0].time, pair[1].time) if pair else None,
                 (at_switch[0].time, at_switch[1].time) if at_switch else None)


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
    losses = [lap.lost for lap in lapses]
    print(f"{kind:8s} CN's media at some place of the user's: longest gap {spread(gaps)} intervals "
          f"[{verdict(max(gaps) <= GAP_TARGET)} <= {GAP_TARGET:g}]; lost {sum(losses)} packets in "
          f"{sum(1 for n in losses if n)} of {len(losses)} [{verdict(sum(losses) == 0)} == 0]")
    switches = [lap.switch_gap for lap in lapses if lap.switch_gap is not None]
    ok = bool(switches) and max(switches) <= GAP_TARGET
    print(f"{kind:8s}   of which at the switch (old place's last packet -> new place's first): "
          f"{spread(switches)} [{verdict(ok)} <= {GAP_TARGET:g}]; "
          f"within one stream (the CN's own pacing): {spread([lap.pacing for lap in lapses])}")


def around_ok(lap: Lapse, messages: Sequence[SipMessage], cn: int, new: int) -> tuple[float, float] | None:
    """The old place's last packet and the new place's first, in ms after the CN's 200 to the new
    place's INVITE with Replaces (the moment the CN switches, Figs. 4 and 5)."""
    if lap.switched is None:
        return None
    last, first = lap.switched
    # PJSIP may write the new stream's first packet a few microseconds before the 200 itself
    ok = [m.time for m in messages if m.src == cn and m.dst == new and m.label == "200 INVITE"
          and first - 1.0 <= m.time <= first + 0.05]
    if not ok:
        return None
    at = min(ok, key=lambda t: abs(t - first))
    return ((last - at) * 1000, (first - at) * 1000)


def explain(kind: str, lapses: Sequence[Lapse], messages: Sequence[SipMessage],
            pulse: Sequence[float], ours: Sequence[float], interval: float) -> None:
    """Which SIP steps lie inside each action's longest gap, when it is longer than 1.5 intervals;
    in how many of them nothing at all crossed `lo` (no process of the machine sent any UDP) for
    more than half the gap; and whether our own media to the CN (`ours`) kept flowing meanwhile."""
    long = [lap.widest for lap in lapses if lap.widest is not None and lap.gap > 1.5]
    shapes = collections.Counter(
        " ".join(m.label for m in messages if start <= m.time <= end) or "no SIP" for start, end in long)
    if shapes:
        stalled = sum(1 for start, end in long if silence(pulse, start, end) > (end - start) / 2)
        print(f"{kind:8s}   SIP inside the {len(long)} gaps > 1.5 intervals: "
              + "; ".join(f"[{shape}] x{n}" for shape, n in shapes.most_common()))
        quiet = max(silence(ours, start, end) for start, end in long) / interval
        print(f"{kind:8s}   in {stalled} of them nothing at all crossed lo for more than half the gap "
              f"(the whole machine stalled); our media to the CN inside them: longest silence "
              f"{quiet:4.2f} intervals")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cn", choices=("pjsip", "phone"), default="pjsip",
                        help="the CN: PJSIP (pjsua2) or another sipmob phone")
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
        cn: Pjsua | Phone | None = None
        tv = phone = capture = None
        actions: list[tuple[str, float]] = []
        try:
            address = f"{HOST}:{da.port}"
            if args.cn == "pjsip":
                cn = Pjsua(free_udp_port(), "cn", workdir=d / "cn", log_level=3)
            else:
                # every handoff and retrieval is a new INVITE from the loopback address, which
                # the default rate limit admits ten times a minute
                cn = Phone(d / "cn", address, user="cn", auto_answer=True,
                           calls="setups_per_minute = 6000.0\n")
            tv = Phone(d / "tv", address, user="tv", extra=(
                '[device]\nenabled = true\nname = "TV"\nowners = ["sip:mn@127.0.0.1"]\n'))
            phone = Phone(d / "mn", address)
            if not until(lambda: "enhanced" in phone.sipmob("devices", "--json").stdout, timeout=10):
                raise RuntimeError("the TV did not register itself in SLP")
            sip_ports = (phone.port, tv.port, cn.port)
            # everything on lo, others' traffic too (the machine's pulse): on a busy machine the
            # file is large, and reading it back to find the capture's markers takes a while
            capture = LiveCapture(d / "sh.pcapng", f"(udp and not port {da.port}) or icmp",
                                  startup_timeout=CAPTURE_WAIT)
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
            capture.stop(CAPTURE_WAIT)
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
        ours = phone_ports | tv_ports | cn_ports
        # both ends ours: a port one of our calls used may be another program's later on
        captured = [p for p in read_rtp(path, ours) if p.src in ours and p.dst in ours]
        # a packet that met a closed port reached no one: it does not fill a gap
        closed = bounced(path, [p for p in captured if p.src in cn_ports])
        packets = [p for p in captured if p not in closed]
        messages = sip_messages(path, sip_ports)
        pulse = udp_times(path)
        to_cn = [p.time for p in packets if p.dst in cn_ports and p.src in phone_ports | tv_ports]
        windows = [(kind, t0, actions[i + 1][1] if i + 1 < len(actions) else end)
                   for i, (kind, t0) in enumerate(actions)]
        steady = [p.time for p in packets if p.src in cn_ports and p.time < windows[0][1]]
        interval = (steady[-1] - steady[0]) / (len(steady) - 1)
        lapses: dict[str, list[Lapse]] = defaultdict(list)
        at_ok: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for kind, t0, stop in windows:
            lap = measure(packets, kind, t0, stop, cn_ports, phone_ports, tv_ports, interval)
            lapses[kind].append(lap)
            timing = around_ok(lap, messages, cn.port, tv.port if kind == "transfer" else phone.port)
            if timing is not None:
                at_ok[kind].append(timing)
            if args.each:
                latency = f"{lap.latency * 1000:6.1f} ms" if lap.latency is not None else "   never "
                at = (f"  longest from {(lap.widest[0] - t0) * 1000:+.1f} ms (lo silent "
                      f"{silence(pulse, *lap.widest) * 1000:.0f} ms of it): "
                      f"{steps_within(messages, *lap.widest)}" if lap.widest else "")
                switch_gap = f"{lap.switch_gap:4.2f}" if lap.switch_gap is not None else "  - "
                ok = (f"; after the CN's 200: old's last {timing[0]:+.1f} ms, new's first {timing[1]:+.1f} ms"
                      if timing is not None else "")
                print(f"  {kind:8s} latency {latency}  gap {lap.gap:4.2f} intervals (switch {switch_gap}, "
                      f"pacing {lap.pacing:4.2f})  lost {lap.lost}{ok}{at}")
        cn_name = "PJSIP" if args.cn == "pjsip" else "a sipmob phone"
        print(f"{len(windows) // 2} rounds of handoff + retrieval, {cn_name} as CN, sipmob phone as the TV, "
              f"packet interval {interval * 1000:.1f} ms, {len(captured)} RTP packets captured")
        calm = [p.time for p in packets if p.src in cn_ports and p.time < windows[0][1]]
        print(f"before the first command ({calm[-1] - calm[0]:.1f} s): longest gap CN -> phone "
              f"{longest_gap(calm) / interval:4.2f} intervals")
        for kind in ("transfer", "retrieve"):
            report(kind, lapses[kind])
            if at_ok[kind]:
                print(f"{kind:8s}   after the CN's 200 to the new place's INVITE with Replaces: its last "
                      f"packet to the old place {spread([a for a, _ in at_ok[kind]], 1)} ms, its first "
                      f"to the new place {spread([b for _, b in at_ok[kind]], 1)} ms")
            explain(kind, lapses[kind], messages, pulse, to_cn, interval)
        print(f"the CN's RTP that reached a closed port of ours (ICMP port unreachable): {len(closed)} "
              f"[{verdict(not closed)} == 0]")
        decode = [a for p in sip_ports for a in ("-d", f"udp.port=={p},sip")]
        # only our processes' messages (other programs use the loopback too), and not the SIP
        # quoted in an ICMP error
        mine = "!icmp && udp.port in {" + ", ".join(str(p) for p in sip_ports) + "}"
        sip = tshark("-r", str(path), *decode, "-Y", f"sip && {mine}", "-T", "fields", "-e", "sip.Method",
                     "-e", "sip.Status-Code", timeout=120).split("\n")
        bad = tshark("-r", str(path), *decode, "-Y",
                     f"sip && {mine} && (_ws.malformed || _ws.expert.severity >= warning)",
                     timeout=120).strip()
        methods = sorted({m for line in sip for m in line.split("\t")[:1] if m})
        print(f"tshark: {len([x for x in sip if x.strip()])} SIP messages ({', '.join(methods)}), "
              f"malformed or with a warning: {len(bad.splitlines())} [{verdict(not bad)} == 0]"
              + (f"\n{bad}" if bad else ""))


if __name__ == "__main__":
    main()
