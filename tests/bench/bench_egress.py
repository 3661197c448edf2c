"""Benchmark a call's survival of WAN failures: how long until the CN hears us from the new address.

Run (root, for the namespaces): .venv/bin/python tests/bench/bench_egress.py [--trials 20]
     [--silent-trials 5] [--readdress-trials 10] [--calls 20] [--spread-trials 5] [--gateway-trials 10]
     [--flap-seconds 20] [--max-seconds 400] [--mdsm-trials 10]

The stage is tests/integration/net/twowan.py: `sipmob phone` in `home` with two WAN links (source
routing, one table per WAN), baresip as the CN in `internet`, a fresh stage for every trial. The
CN's side is watched from inside `internet` with packet sockets (arrival times, source addresses),
independent of the phone. Per trial:

- link down: ``ip link set h1 down`` in `home`; latency = from the kernel's netlink news (as a
  thread of the benchmark, on its own rtnetlink socket in `home`, receives it) to the first RTP
  packet from wan2's address at the CN; also from the command's start. Target p95 < 300 ms.
- silent failure: wan1's router drops everything (tc netem loss 100 %, or iptables where the kernel
  has no netem); nothing changes on the home's links. Detection = from the drop to the phone's
  "egress wan1 down" journal line (interval 1 s, down_after 3: target <= 3.5 s); media restored =
  from detection to the first RTP from wan2's address at the CN (target <= 0.5 s).
- address change: a new address on h1, then the old one deleted (DHCP renew to a new address);
  delay = from the deletion's netlink news to the re-INVITE from the new address at the CN, and
  to the re-REGISTER at the registrar (sipp, CN:5070) (both < 300 ms).

- flapping link: h1 down and up every 2 s for 20 s under a call (hold_down 30 s): how many
  re-INVITEs reach the CN (one is right: the first failover; none may follow the link back).

- spread calls (--spread-trials, with --calls N): the ``least_load`` policy puts the N calls half on
  wan1, half on wan2, each call's SIP and RTP on its own egress; h1 goes down. Latency = netlink
  news -> RTP of every call that was on wan1 from wan2's address at the CN; the calls on wan2 must
  get no re-INVITE (re-INVITEs at the CN = calls moved).

- another gateway (--gateway-trials): tests/integration/net/twowan.py's `Gateways` (gateway A over
  wan1, gateway B over wan2, one home LAN); A's only link goes down; latency = `ip link set down`
  started -> the CN gets A's RTP from B's WAN address (the relays asked for and set up, the
  re-INVITE sent through them), and -> the re-INVITE arrives at the CN; the call is dropped if A
  does not hear the CN again within 5 s.

- an MDSM call (--mdsm-trials): tests/integration/net/mdsm_home.py's stage (the DA, the transcoder
  and `sipmob-mdsm` with the egress list in `home`, a baresip speaker as the virtual device's member,
  the phone handing its call over); the call's audio is anchored in the transcoder's relay on wan1;
  h1 goes down. Latency = netlink news -> the CN gets the relay's RTP from wan2's address (the
  transcoder's CN side moved, then the CN re-INVITEd), and from the command's start; dropped if the
  speaker does not hear the CN again within 5 s.

A call counts as dropped if it is no longer confirmed at the phone 1 s after the move, or if the
CN's RTP stops reaching the phone. With --calls N, N calls are up at once and the link-down latency
is the time until RTP of all N calls arrives from the new address.

Printed beside it, for comparison, mwan3's documented defaults (OpenWrt's multi-WAN manager):
probes every 5 s, a link down after 5 failures, and only new connections routed over the other link.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons")]
SCENARIOS = ROOT / "tests/integration/net/scenarios"

from tests.integration.net.mdsm_home import Home as MdsmHome  # noqa: E402
from tests.integration.net.twowan import (  # noqa: E402
    CN,
    HOME1,
    HOME2,
    CaptureAtCN,
    Correspondent,
    Gateways,
    HomePhone,
    NetlinkClock,
    SippInInternet,
    TwoWan,
    egress_toml,
    until,
)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(name: str, values: list[float], unit: str = "ms", scale: float = 1000.0) -> str:
    if not values:
        return f"{name}: no data"
    v = [x * scale for x in values]
    return (f"{name}: n={len(v)} p50={statistics.median(v):.1f} {unit} p95={pct(v, 95):.1f} {unit} "
            f"max={max(v):.1f} {unit}")


class Trial:
    def __init__(self, calls: int = 1, registrar: bool = False, **toml: Any) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-egress-"))
        self.net = TwoWan()
        self.capture = self.cn = self.phone = self.netlink = self.registrar = None
        try:
            self.capture = CaptureAtCN(self.net)
            self.netlink = NetlinkClock(self.net)
            self.cn = Correspondent(self.net, self.dir)
            if registrar:
                self.registrar = SippInInternet(self.net, SCENARIOS / "registrar_any.xml", self.dir, 5070)
            self.phone = HomePhone(self.net, self.dir, egress_toml(**toml),  # type: ignore[arg-type]
                                   registrar=f"sip:{CN}:5070" if registrar else "")
            for _ in range(calls):
                self.phone.command("call", uri=self.cn.uri)
            if not until(lambda: len(self.phone.command("calls")) == calls
                         and all(c["rtp_received"] > 10 for c in self.phone.command("calls")), 10):
                raise RuntimeError("calls did not start:\n" + self.phone.output())
        except BaseException:
            self.close()
            raise

    def survived(self) -> bool:
        phone = self.phone
        assert phone is not None
        before = sum(c["rtp_received"] for c in phone.command("calls"))
        time.sleep(1.0)
        calls = phone.command("calls")
        return bool(calls) and all(c["state"] == "confirmed" for c in calls) and \
            sum(c["rtp_received"] for c in calls) > before + 20 * len(calls)

    def log_time(self, needle: str) -> float | None:
        """The wall-clock time of the phone's first log line containing `needle`."""
        assert self.phone is not None
        for line in self.phone.output().splitlines():
            if needle in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return stamp.timestamp()
        return None

    def close(self) -> None:
        if self.phone is not None:
            self.phone.stop()
        if self.cn is not None:
            self.cn.stop()
        if self.capture is not None:
            self.capture.close()
        if self.netlink is not None:
            self.netlink.close()
        if self.registrar is not None:
            self.registrar.wait(5)
        self.net.delete()


def one_link_down(calls: int) -> tuple[float, float] | None:
    """(netlink news -> RTP of every call from wan2 at the CN, command start -> same); None: dropped."""
    t = Trial(calls)
    try:
        capture, netlink = t.capture, t.netlink
        assert capture is not None and netlink is not None
        ports = {p for _, s, p, _ in capture.packets if s == HOME1 and p != 5060}
        start = time.monotonic()
        t.net.link_down("h1")
        news = until(lambda: netlink.first(NetlinkClock.RTM_NEWLINK, start), 2, 0.005)

        def all_moved() -> float | None:
            firsts = []
            for port in ports:
                times = [ts for ts, s, p, _ in capture.packets if s == HOME2 and p == port and ts > start]
                if not times:
                    return None
                firsts.append(times[0])
            return max(firsts)

        moved = until(all_moved, 5, 0.005)
        if moved is None or news is None or not t.survived():
            return None
        return moved - news, moved - start
    finally:
        t.close()


def link_down(trials: int, calls: int, deadline: float) -> None:
    after_news, from_start, dropped = [], [], 0
    for _ in range(trials):
        if time.monotonic() > deadline:
            break
        result = one_link_down(calls)
        if result is None:
            dropped += calls
            continue
        after_news.append(result[0])
        from_start.append(result[1])
    label = f"{calls} call{'s' if calls > 1 else ''}"
    print(summary(f"link down ({label}): netlink news -> CN gets RTP of every call from the new address",
                  after_news))
    print(summary(f"link down ({label}): `ip link set down` started -> same", from_start))
    print(f"link down ({label}): calls dropped {dropped} of {len(after_news) * calls + dropped}")


def one_spread(calls: int) -> tuple[float, int, int, int] | None:
    """(netlink news -> RTP of every call from wan1 arrives from wan2, calls that were on wan1,
    calls that were on wan2, re-INVITEs at the CN); None: a call dropped or did not move."""
    t = Trial(calls, policy="least_load", probe=False)
    try:
        capture, netlink = t.capture, t.netlink
        assert capture is not None and netlink is not None
        if not until(lambda: len({p for _, s, p, _ in capture.packets if p != 5060}) >= calls, 5):
            return None
        on1 = {p for _, s, p, _ in capture.packets if s == HOME1 and p != 5060}
        on2 = {p for _, s, p, _ in capture.packets if s == HOME2 and p != 5060}
        start = time.monotonic()
        t.net.link_down("h1")
        news = until(lambda: netlink.first(NetlinkClock.RTM_NEWLINK, start), 2, 0.005)

        def all_moved() -> float | None:
            firsts = []
            for port in on1:
                times = [ts for ts, s, p, _ in capture.packets if s == HOME2 and p == port and ts > start]
                if not times:
                    return None
                firsts.append(times[0])
            return max(firsts)

        moved = until(all_moved, 10, 0.005)
        if moved is None or news is None or not t.survived():
            return None
        reinvites = sum(len(capture.sip_from(home, start, "INVITE")) for home in (HOME1, HOME2))
        return moved - news, len(on1), len(on2), reinvites
    finally:
        t.close()


def spread(trials: int, calls: int, deadline: float) -> None:
    latencies, dropped, counts = [], 0, []
    for _ in range(trials):
        if time.monotonic() > deadline:
            break
        result = one_spread(calls)
        if result is None:
            dropped += 1
            continue
        latencies.append(result[0])
        counts.append(result[1:])
    print(summary(f"link down ({calls} calls spread over both links): netlink news -> CN gets RTP of "
                  "every call that was on wan1 from wan2", latencies))
    for on1, on2, reinvites in counts:
        print(f"  calls on wan1 {on1}, on wan2 {on2}: re-INVITEs {reinvites} (the calls on wan2 left alone: "
              f"{'yes' if reinvites == on1 else 'NO'})")
    print(f"spread: trials with a call dropped or not moved: {dropped} of {len(latencies) + dropped}")


def one_gateway() -> tuple[float, float] | None:
    """(link down -> RTP from B's WAN address at the CN, link down -> re-INVITE from it); None: dropped."""
    g = Gateways(Path(tempfile.mkdtemp(prefix="bench-egress-gw-")))
    try:
        a, cn, capture = g.a, g.cn, g.capture
        assert a is not None and cn is not None and capture is not None
        a.command("call", uri=cn.uri)
        if not until(lambda: capture.rtp_from(HOME1), 5):
            return None
        start = time.monotonic()
        g.net.gw_a.set_link("a1", False)
        rtp = until(lambda: capture.rtp_from(HOME2, start), 5, 0.002)
        invite = until(lambda: capture.sip_from(HOME2, start, "INVITE"), 5, 0.002)
        before = a.received()
        if not rtp or not invite or not until(lambda: a.received() > before + 25, 5):
            return None
        return rtp[0] - start, invite[0] - start
    finally:
        g.close()


def gateway(trials: int, deadline: float) -> None:
    media, invites, dropped = [], [], 0
    for _ in range(trials):
        if time.monotonic() > deadline:
            break
        result = one_gateway()
        if result is None:
            dropped += 1
            continue
        media.append(result[0])
        invites.append(result[1])
    label = "all links of gateway A down: `ip link set down` ->"
    print(summary(f"{label} CN gets A's RTP through B's egress", media))
    print(summary(f"{label} re-INVITE through B at the CN", invites))
    print(f"another gateway: calls dropped {dropped} of {len(media) + dropped}")


def one_silent() -> tuple[str, float, float] | None:
    """(how the upstream died, drop -> detection, detection -> RTP from wan2 at the CN)."""
    t = Trial(interval=1.0, down_after=3)
    try:
        capture = t.capture
        assert capture is not None
        time.sleep(1.5)  # a few answered probes first
        wall, start = time.time(), time.monotonic()
        how = t.net.upstream_dead(t.net.wan1)
        moved = until(lambda: capture.rtp_from(HOME2, start), 8, 0.005)
        down = t.log_time("egress wan1 down")
        if not moved or down is None or not t.survived():
            return None
        return how, down - wall, moved[0] - start - (down - wall)
    finally:
        t.close()


def silent(trials: int, deadline: float) -> None:
    detection, restored, dropped, how = [], [], 0, ""
    for _ in range(trials):
        if time.monotonic() > deadline:
            break
        result = one_silent()
        if result is None:
            dropped += 1
            continue
        how = result[0]
        detection.append(result[1])
        restored.append(result[2])
    print(summary(f"silent upstream failure ({how}): detection (interval 1 s x down_after 3)", detection,
                  "s", 1.0))
    print(summary("silent upstream failure: detection -> CN gets RTP from the new address "
                  "(log timestamps have 1 ms resolution)", restored))
    print(f"silent upstream failure: calls dropped {dropped} of {len(detection) + dropped}")


def one_readdress(new: str) -> tuple[float, float, float] | None:
    """From the deletion's netlink news to the re-INVITE, the RTP and the re-REGISTER from `new`."""
    t = Trial(registrar=True)
    try:
        capture, netlink = t.capture, t.netlink
        assert capture is not None and netlink is not None
        t.net.home.run(["ip", "addr", "add", f"{new}/24", "dev", "h1"], check=True)
        start = time.monotonic()
        t.net.home.run(["ip", "addr", "del", f"{HOME1}/24", "dev", "h1"], check=True)
        news = until(lambda: netlink.first(NetlinkClock.RTM_DELADDR, start), 2, 0.005)
        invite = until(lambda: capture.sip_from(new, start, "INVITE"), 5, 0.005)
        rtp = until(lambda: capture.rtp_from(new, start), 5, 0.005)
        register = until(lambda: capture.sip_from(new, start, "REGISTER", 5070), 5, 0.005)
        if not invite or not rtp or not register or news is None or not t.survived():
            return None
        return invite[0] - news, rtp[0] - news, register[0] - news
    finally:
        t.close()


def readdress(trials: int, deadline: float) -> None:
    delays, media, registers, dropped = [], [], [], 0
    for i in range(trials):
        if time.monotonic() > deadline:
            break
        result = one_readdress(f"10.200.1.{10 + i}")
        if result is None:
            dropped += 1
            continue
        delays.append(result[0])
        media.append(result[1])
        registers.append(result[2])
    print(summary("address change: old address deleted (netlink news) -> re-INVITE from the new one "
                  "at the CN", delays))
    print(summary("address change: old address deleted (netlink news) -> RTP from the new one at the CN",
                  media))
    print(summary("address change: old address deleted (netlink news) -> re-REGISTER from the new one "
                  "at the registrar (sipp)", registers))
    print(f"address change: calls dropped {dropped} of {len(delays) + dropped}")


def flapping(seconds: float, deadline: float) -> None:
    if seconds <= 0:
        return
    if time.monotonic() + seconds + 10 > deadline:
        print("flapping link: skipped (--max-seconds)")
        return
    t = Trial(hold_down=30.0)
    try:
        capture = t.capture
        assert capture is not None
        start = time.monotonic()
        downs = t.net.flap("h1", period=2.0, seconds=seconds)
        invites = len(capture.sip_from(HOME1, start, "INVITE") + capture.sip_from(HOME2, start, "INVITE"))
        ok = t.survived()
    finally:
        t.close()
    print(f"flapping link (down/up every 2 s for {seconds:.0f} s, {downs} downs, hold_down 30 s): "
          f"re-INVITEs {invites}, call {'survived' if ok else 'DROPPED'}")


def one_mdsm() -> tuple[float, float] | None:
    """(netlink news -> the CN gets the relay's RTP from wan2, command start -> same); None: dropped."""
    net = TwoWan()
    home = netlink = None
    try:
        home = MdsmHome(net, Path(tempfile.mkdtemp(prefix="bench-egress-mdsm-")))
        netlink = NetlinkClock(net)
        home.hand_over()
        t = time.monotonic()
        if not until(lambda: len(home.capture.rtp_from(HOME1, t)) > 20, 10):
            raise RuntimeError("the CN hears no relay from wan1")
        start = time.monotonic()
        net.link_down("h1")
        news = until(lambda: netlink.first(NetlinkClock.RTM_NEWLINK, start), 2, 0.005)
        moved = until(lambda: next(iter(home.capture.rtp_from(HOME2, start)), None), 5, 0.005)
        if moved is None or news is None or not until(lambda: home.heard.rtp_after(moved + 0.3) > 20, 5):
            return None
        return moved - news, moved - start
    except (AssertionError, RuntimeError) as exc:
        print(f"MDSM trial failed to set up: {str(exc)[-300:]}")
        return None
    finally:
        if netlink is not None:
            netlink.close()
        if home is not None:
            home.stop()
        net.delete()


def mdsm(trials: int, deadline: float) -> None:
    after_news, from_start, dropped = [], [], 0
    for _ in range(trials):
        if time.monotonic() > deadline:
            break
        result = one_mdsm()
        if result is None:
            dropped += 1
            continue
        after_news.append(result[0])
        from_start.append(result[1])
    print(summary("MDSM call (audio anchored in the transcoder): netlink news -> CN gets the relay's RTP "
                  "from the new address", after_news))
    print(summary("MDSM call: `ip link set down` started -> same", from_start))
    print(f"MDSM call: dropped {dropped} of {len(after_news) + dropped}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--silent-trials", type=int, default=5)
    parser.add_argument("--readdress-trials", type=int, default=10)
    parser.add_argument("--spread-trials", type=int, default=0)
    parser.add_argument("--gateway-trials", type=int, default=0)
    parser.add_argument("--flap-seconds", type=float, default=20.0)
    parser.add_argument("--max-seconds", type=float, default=400.0)
    parser.add_argument("--mdsm-trials", type=int, default=0)
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds
    if args.mdsm_trials:
        mdsm(args.mdsm_trials, deadline)
    link_down(args.trials, 1, deadline)
    if args.calls > 1:
        link_down(max(1, args.trials // 4), args.calls, deadline)
    if args.spread_trials:
        spread(args.spread_trials, max(2, args.calls), deadline)
    if args.gateway_trials:
        gateway(args.gateway_trials, deadline)
    silent(args.silent_trials, deadline)
    readdress(args.readdress_trials, deadline)
    flapping(args.flap_seconds, deadline)
    print("mwan3 (documented defaults: probe every 5 s, down after 5 failures): a dead link is noticed "
          "after about 25 s (5 x 5 s, plus the last probe's timeout); only new flows take the other link, "
          "a call in progress keeps sending from the dead link's address and does not survive.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
