"""Benchmark `sipmob-mdsm`: a handoff to a 3-member virtual device, many calls at once, and a restart
with all of them established.

Run: .venv/bin/python tests/bench/bench_mdsm.py [--rounds 5] [--calls 12] [--each] [--pcap FILE]
     [--max-seconds 240]

Part 1 (Fig. 6 and Fig. 5, latency and media lapse): the real `sipmob phone` as the mobile node,
PJSIP (pjsua2) as the CN, the real `sipmob-slpda`, and the virtual device ``living-room`` of three
basic devices (member.py: a speaker taking audio, a TV showing video, a camera sending video). Each
round hands call 1 to ``living-room`` (``transfer --mode handoff``) and takes it back (``retrieve``).
As in bench_sh.py, tshark captures every UDP packet on `lo` with kernel timestamps and each
command's t0 is taken with the same clock just before it is written to the phone's control socket;
each side's RTP ports are read from the SDP in the same capture. Per action: latency = t0 → the
first packet of the CN's media at the new place (a member, or the phone), lapse = the longest gap
between packets of the CN's media reaching any place of the user's, in packet intervals, and
sequence numbers missing. PJSIP here is built without video, so it answers the video line with
port 0: only the speaker gets the CN's media, and its figures are the ones printed. The lapse is
given twice: over the whole window (until the next command, 0.6 s), which also holds any stall of
the CN's own sender, and at the switch (from the last packet before the command to 3 intervals
after the first packet at the new place), which is what the command causes. With ``--each``,
every action's longest gap is placed against the SIP messages of the phone, the MDSM and the CN
(ms from the command): a gap with no SIP in it and the same place on both sides is the CN's.

Part 2 (load and restart): `--calls` N REFERs (bounded: at most 64, 4 per PJSIP instance)
from a small UA of our own acting as the mobile node, each handing a new call with a PJSIP
instance to ``living-room``; all sent at once. Printed: how many were established (final NOTIFY
200), the time from the first REFER to the last final NOTIFY, the MDSM's RSS and CPU per call set
up (from /proc). Then the MDSM is killed with SIGKILL and started again, each PJSIP instance
re-INVITEs every call (answered by the restarted daemon from its saved dialogs), and hangs up:
printed, how many re-INVITEs got 200 and how many member legs the restarted daemon ended with BYE.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn"), str(ROOT / "tests/integration/mdsm"),
                str(ROOT / "tests/bench")]

MAX_CALLS = 64
PER_CN = 4  # Debian's PJSIP is built with PJSUA_MAX_CALLS 4: more calls get 486

SYSTEM = ('[[system]]\nname = "living-room"\nmembers = ["speaker", "tv", "camera"]\n'
          'owners = ["sip:mn@127.0.0.1"]\n')


def child(options: dict[str, Any]) -> None:
    """The load driver: REFERs `n` calls to the virtual device at once; one JSON line of results."""
    from twisted.internet import defer, reactor

    from sipmob.service.sipua import UserAgent

    ua = UserAgent(reactor, listen=[("127.0.0.1", 0, "udp")], user="mn")
    results: list[dict[str, Any]] = []

    def one(target: str, cn: str) -> defer.Deferred[Any]:
        t0 = time.monotonic()
        d = ua.refer(target, cn, referred_by="<sip:mn@127.0.0.1>")
        d.addCallback(lambda progress: progress.final)
        d.addCallbacks(lambda status: results.append({"status": status, "seconds": time.monotonic() - t0}),
                       lambda f: results.append({"status": getattr(f.value, "status", 0),
                                                 "seconds": time.monotonic() - t0}))
        return d.addTimeout(options["timeout"], reactor)

    def go(_: Any) -> None:
        ds = [one(options["target"], cn) for cn in options["cns"]]
        defer.DeferredList(ds, consumeErrors=True).addBoth(finish)

    def finish(_: Any) -> None:
        print(json.dumps(results), flush=True)
        reactor.stop()  # type: ignore[attr-defined]

    ua.start().addCallback(go)
    reactor.run()  # type: ignore[attr-defined]


def longest_gap(times: Any) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def part1(d: Path, rounds: int, each: bool, pcap: Path | None, deadline: float) -> None:
    from bench_mn_lapse import command
    from bench_sh import Lapse, announced_ports, measure, read_rtp, report
    from mdsm_process import Mdsm, Member
    from phone_process import Phone, until
    from slpda_process import HOST, Slpda
    from tests.peers.pjsua import Pjsua
    from tests.peers.ports import free_udp_port
    from tests.peers.tshark import LiveCapture, tshark

    for sub in ("da", "mn", "mdsm", "cn"):
        (d / sub).mkdir()
    da = Slpda(d / "da").start()
    started: list[Any] = []
    capture = None
    actions: list[tuple[str, float]] = []
    try:
        address = f"{HOST}:{da.port}"
        cn = Pjsua(free_udp_port(), "cn", workdir=d / "cn", log_level=3)
        started.append(cn)
        members = [Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly"),
                   Member("camera", "video", "sendonly")]
        started += members
        mdsm = Mdsm(d / "mdsm", address, SYSTEM, extra="")
        mdsm.head = mdsm.head.replace('level = "debug"', 'level = "info"')
        mdsm.write(SYSTEM)
        for m, media, direction in zip(members, ("audio", "video", "video"),
                                       ("sendrecv", "recvonly", "sendonly"), strict=True):
            (mdsm.devices / f"{m.user}.toml").write_text(f'uri = "{m.uri}"\n{media} = "{direction}"\n')
        mdsm.start()
        started.append(mdsm)
        phone = Phone(d / "mn", address)
        started.append(phone)
        if not until(lambda: "living-room" in phone.sipmob("devices", "--json").stdout, timeout=10):
            raise RuntimeError("the virtual device is not in SLP")
        sip_ports = (phone.port, mdsm.port, cn.port)
        capture = LiveCapture(d / "mdsm.pcapng", f"udp and not port {da.port}")
        command(phone.control, "call", {"uri": cn.uri})
        time.sleep(2.0)
        for _ in range(rounds):
            if time.monotonic() > deadline:
                break
            actions.append(("transfer", command(phone.control, "transfer",
                                                {"call": "1", "to": ["living-room"], "mode": "handoff"})))
            time.sleep(0.6)
            actions.append(("retrieve", command(phone.control, "retrieve", {"call": "1"})))
            time.sleep(0.6)
        end = time.time()
        capture.stop()
        path, capture = capture.path, None
    finally:
        if capture is not None:
            capture.stop()
        for peer in reversed(started):
            peer.stop()
        da.stop()
    if pcap is not None:
        shutil.copyfile(path, pcap)
    announced = announced_ports(path, sip_ports)
    phone_ports, member_ports, cn_ports = (announced[p] for p in sip_ports)
    member_ports = {members[0].probe.port}  # the speaker's: PJSIP sends no video
    packets = read_rtp(path, phone_ports | member_ports | cn_ports)
    windows = [(kind, t0, actions[i + 1][1] if i + 1 < len(actions) else end)
               for i, (kind, t0) in enumerate(actions)]
    steady = [p.time for p in packets if p.src in cn_ports and p.time < windows[0][1]]
    interval = (steady[-1] - steady[0]) / (len(steady) - 1)
    lapses: dict[str, list[Lapse]] = defaultdict(list)
    switches: dict[str, list[float]] = defaultdict(list)
    sip = sip_events(path, sip_ports) if each else []
    names = {phone.port: "phone", mdsm.port: "mdsm", cn.port: "CN"}
    for kind, t0, stop in windows:
        lap = measure(packets, kind, t0, stop, cn_ports, phone_ports, member_ports, interval)
        lapses[kind].append(lap)
        switch = switch_gap(packets, kind, t0, stop, cn_ports, phone_ports, member_ports, interval)
        switches[kind].append(switch)
        if each:
            latency = f"{lap.latency * 1000:6.1f} ms" if lap.latency is not None else "   never "
            print(f"  {kind:8s} latency {latency}  gap {lap.gap:4.2f} intervals (at the switch {switch:4.2f})"
                  f"  lost {lap.lost}")
            where = gap_timeline(packets, sip, names, t0, stop, cn_ports, phone_ports, member_ports)
            print(f"           {where}")
    print(f"part 1: {len(windows) // 2} rounds of handoff to a 3-member virtual device + retrieval, PJSIP "
          f"as CN, packet interval {interval * 1000:.1f} ms, {len(packets)} RTP packets captured")
    calm = longest_gap(steady) / interval
    print(f"before the first command: longest gap CN -> phone {calm:4.2f} intervals")
    import bench_sh
    bench_sh.LATENCY_TARGET = 0.150  # the MDSM's target: three members' INVITEs before the CN's
    for kind in ("transfer", "retrieve"):
        report(kind, lapses[kind])
        at = sorted(switches[kind])
        print(f"{kind:8s} at the switch (the command to 3 intervals after the first packet at the new "
              f"place): longest gap p50 {at[len(at) // 2]:4.2f} max {at[-1]:4.2f} intervals "
              f"[{'PASS' if at[-1] <= 2 else 'MISS'} <= 2]")
    ours = [*sip_ports, *(m.port for m in members)]
    decode = [a for p in ours for a in ("-d", f"udp.port=={p},sip")]
    # only our processes' messages: other programs on this machine's loopback are captured too
    mine = "udp.port in {" + ", ".join(str(p) for p in ours) + "}"
    sip = [x for x in tshark("-r", str(path), *decode, "-Y", f"sip && {mine}", "-T", "fields",
                             "-e", "sip.Method", timeout=120).split("\n") if x.strip()]
    bad = tshark("-r", str(path), *decode, "-Y",
                 f"sip && {mine} && (_ws.malformed || _ws.expert.severity >= warning)", timeout=120).strip()
    print(f"tshark: {len(sip)} SIP requests ({', '.join(sorted(set(sip)))}), malformed or with a "
          f"warning: {len(bad.splitlines())} [{'ok' if not bad else 'MISS'} == 0]"
          + (f"\n{bad}" if bad else ""))


def switch_gap(packets: Any, kind: str, t0: float, stop: float, cn: set[int], phone: set[int],
               member: set[int], interval: float) -> float:
    """The longest gap in the CN's media reaching the user around the switch itself: from the last
    packet before the command to 3 intervals after the first packet at the new place, in
    intervals. The whole window's longest gap (`measure`) also holds the CN's own stalls later on,
    which no command causes (the figure before the first command shows their size)."""
    new = member if kind == "transfer" else phone
    to_user = [p.time for p in packets
               if t0 - 0.2 <= p.time < stop and p.src in cn and p.dst in phone | member]
    first = next((p.time for p in packets if t0 <= p.time < stop and p.src in cn and p.dst in new), None)
    if first is None:
        return float("inf")
    before = [t for t in to_user if t < t0]
    start = before[-1] if before else t0
    around = [t for t in to_user if start <= t <= first + 3 * interval]
    return longest_gap(around) / interval


def sip_events(capture: Path, sip_ports: tuple[int, ...]) -> list[tuple[float, int, int, str]]:
    """(time, source port, destination port, method or status) of every SIP message among our
    ports, on the capture's clock."""
    from tests.peers.tshark import tshark

    decode = [a for p in sip_ports for a in ("-d", f"udp.port=={p},sip")]
    mine = "udp.srcport in {" + ", ".join(map(str, sip_ports)) + "} && udp.dstport in {" \
        + ", ".join(map(str, sip_ports)) + "}"
    out = tshark("-r", str(capture), *decode, "-Y", f"sip && {mine}", "-T", "fields",
                 "-e", "frame.time_epoch", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "sip.Method",
                 "-e", "sip.Status-Code", "-e", "sip.CSeq.method", timeout=120)
    events = []
    for line in out.splitlines():
        row = line.split("\t")
        if len(row) >= 6 and row[0]:
            label = row[3] or f"{row[4]} ({row[5]})"
            events.append((float(row[0]), int(row[1]), int(row[2]), label))
    return sorted(events)


def gap_timeline(packets: Any, sip: list[tuple[float, int, int, str]], names: dict[int, str], t0: float,
                 stop: float, cn: set[int], phone: set[int], member: set[int]) -> str:
    """Where an action's longest gap in the CN's media lies against the SIP messages around it
    (ms from the command): the last packet before it, where it went, the SIP messages within the
    gap, the first packet after it and where it went."""
    to_user = [p for p in packets if t0 - 0.5 <= p.time < stop and p.src in cn and p.dst in phone | member]
    if len(to_user) < 2:
        return "no media"
    a, b = max(itertools.pairwise(to_user), key=lambda ab: ab[1].time - ab[0].time)

    def place(port: int) -> str:
        return "phone" if port in phone else "member"

    def ms(t: float) -> str:
        return f"{(t - t0) * 1000:+.1f}"

    between = [f"{ms(t)} {names.get(src, src)}->{names.get(dst, dst)} {label}" for t, src, dst, label in sip
               if a.time - 0.005 <= t <= b.time]
    return (f"gap from {ms(a.time)} (to {place(a.dst)}) to {ms(b.time)} (to {place(b.dst)}): "
            + ("; ".join(between) or "no SIP in between"))


def part2(d: Path, n: int) -> None:
    from mdsm_process import ENV, Mdsm, Member
    from phone_process import until
    from slpda_process import HOST, Slpda
    from tests.peers.pjsua import Pjsua
    from tests.peers.ports import free_udp_port

    d = d / "load"
    for sub in ("da", "mdsm"):
        (d / sub).mkdir(parents=True)
    da = Slpda(d / "da").start()
    started: list[Any] = []
    try:
        cns = [Pjsua(free_udp_port(), f"cn{i}", workdir=d / f"cn{i}", log_level=2)
               for i in range(math.ceil(n / PER_CN))]
        started += cns
        members = [Member("speaker", "audio", "sendrecv"), Member("tv", "video", "recvonly"),
                   Member("camera", "video", "sendonly")]
        started += members
        mdsm = Mdsm(d / "mdsm", f"{HOST}:{da.port}", SYSTEM,
                    extra=f"[limits]\nmax_calls = {n + 4}\nsetup_timeout = 60\n")
        mdsm.head = mdsm.head.replace('level = "debug"', 'level = "info"')
        mdsm.write(SYSTEM)
        for m, media, direction in zip(members, ("audio", "video", "video"),
                                       ("sendrecv", "recvonly", "sendonly"), strict=True):
            (mdsm.devices / f"{m.user}.toml").write_text(f'uri = "{m.uri}"\n{media} = "{direction}"\n')
        mdsm.start()
        started.append(mdsm)
        assert mdsm.proc is not None
        pid = mdsm.proc.pid
        rss_idle, cpu0 = rss_kb(pid), cpu_seconds(pid)
        targets = [cns[i // PER_CN].uri for i in range(n)]
        options = {"target": mdsm.uri("living-room"), "cns": targets, "timeout": 90}
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(options)], env=ENV,
                             capture_output=True, text=True, timeout=150, check=False)
        wall = time.monotonic() - t0
        results = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else []
        ok = [r for r in results if r["status"] == 200]
        cpu = cpu_seconds(pid) - cpu0
        rss = rss_kb(pid)
        setups = sorted(r["seconds"] for r in ok)
        p95 = setups[min(len(setups) - 1, int(0.95 * len(setups)))] * 1000 if setups else float("nan")
        print(f"part 2: {n} calls handed to living-room at once: {len(ok)} established "
              f"[{'ok' if len(ok) == n else 'MISS'} == {n}], all in {wall:.2f} s, REFER -> final NOTIFY "
              f"p95 {p95:.0f} ms; MDSM RSS {rss_idle / 1024:.1f} MB idle -> {rss / 1024:.1f} MB "
              f"({(rss - rss_idle) / max(1, len(ok)):.0f} kB per call); "
              f"CPU {cpu * 1000 / max(1, len(ok)):.1f} ms "
              f"per call set up (3 members + CN each)"
              + ("" if len(ok) == n else
                 f"\n  statuses: {sorted(r['status'] for r in results)} {out.stderr[-2000:]}"))
        time.sleep(1.0)
        mdsm.kill9()
        t1 = time.monotonic()
        mdsm.start()
        print(f"restart after kill -9: answering again in {time.monotonic() - t1:.2f} s; "
              f"{mdsm.output().count('taken up again')} calls taken up again")
        answered = 0
        asked = 0
        for cn in cns:
            calls = [c for c in cn.calls() if c["state"] == "CONFIRMED"]
            for c in calls:
                start = len(cn.events)
                cn.reinvite(c["id"])
                asked += 1
                try:
                    cn.wait_event(lambda e, c=c: e["event"] == "media_state" and e["call"] == c["id"],
                                  10, start)
                except Exception:
                    continue
            for c in cn.calls():
                if c["state"] == "CONFIRMED" and c["last_status"] == 200:
                    answered += 1
        print(f"after the restart: {answered} of {asked} re-INVITEs from the CNs answered 200 "
              f"[{'ok' if answered == asked == len(ok) else 'MISS'}]")
        byes_before = sum(m.count("terminated bye") for m in members)
        for cn in cns:
            cn.hangup()
        expected = 3 * len(ok) - 0
        until(lambda: sum(m.count("terminated bye") for m in members) - byes_before >= expected, 20)
        byes = sum(m.count("terminated bye") for m in members) - byes_before
        print(f"the CNs hung up: the restarted MDSM ended {byes} member legs with BYE "
              f"[{'ok' if byes == expected else 'MISS'} == {expected}]")
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=12, help=f"simultaneous calls (at most {MAX_CALLS})")
    parser.add_argument("--each", action="store_true")
    parser.add_argument("--pcap", type=Path)
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument("--skip", choices=("1", "2"), help="skip a part")
    args = parser.parse_args()
    n = max(1, min(args.calls, MAX_CALLS))
    deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip != "1":
            part1(Path(tmp), args.rounds, args.each, args.pcap, deadline)
        if args.skip != "2":
            part2(Path(tmp), n)


if __name__ == "__main__":
    main()
