"""Two gateways, each with its own WAN: when all of gateway A's links are down, A's call continues
through gateway B's egress (SIP-NEMO §3.2, §4.2, §4.5).

    gwA (sipmob phone, the call) --a1-- wan1 --+
      | home LAN 192.168.50.0/24                internet (the CN, baresip, 10.200.100.1)
    gwB (sipmob phone, relays)   --b2-- wan2 --+

B advertises ``service:sip-egress`` in the DA (sipmob-slpda, on B's LAN address) and relays for the
home's network; A finds B there, SUBSCRIBEs to its Egress List, and when its only link goes down
asks B for relays and re-INVITEs the CN from B's WAN address. The capture at the CN says where the
re-INVITE and the RTP come from. Needs root (namespaces), baresip and the slpda.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    CN,
    ENV,
    HOME1,
    HOME2,
    CaptureAtCN,
    Correspondent,
    HomePhone,
    until,
)
from tests.peers.baresip import BARESIP
from tests.peers.netns import Namespace, available
from tests.peers.process import terminate

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]

LAN_A, LAN_B = "192.168.50.1", "192.168.50.2"


class TwoGateways:
    """The stage above; `internet` and `ipv6` as `TwoWan` has them, for the CN and the capture."""

    ipv6 = False

    def __init__(self) -> None:
        self.spaces: list[Namespace] = []
        try:
            self._build()
        except BaseException:
            self.delete()
            raise

    def _ns(self, name: str) -> Namespace:
        ns = Namespace(name)
        self.spaces.append(ns)
        return ns

    def _build(self) -> None:
        self.gw_a, self.gw_b, self.wan1, self.wan2, self.internet = (
            self._ns(name) for name in ("eg-gwa", "eg-gwb", "eg-wan1", "eg-wan2", "eg-inet"))
        self.gw_a.veth(self.gw_b, f"{LAN_A}/24", f"{LAN_B}/24", "lan0", "lan0")
        self.gw_a.veth(self.wan1, f"{HOME1}/24", "10.200.1.1/24", "a1", "w1h")
        self.gw_b.veth(self.wan2, f"{HOME2}/24", "10.200.2.1/24", "b2", "w2h")
        self.wan1.veth(self.internet, "10.200.11.1/24", "10.200.11.2/24", "w1i", "i1")
        self.wan2.veth(self.internet, "10.200.12.1/24", "10.200.12.2/24", "w2i", "i2")
        for wan, upstream in ((self.wan1, "10.200.11.2"), (self.wan2, "10.200.12.2")):
            wan.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            wan.run(["ip", "route", "add", "10.200.100.0/24", "via", upstream], check=True)
        inet = self.internet
        inet.run(["ip", "addr", "add", f"{CN}/32", "dev", "lo"], check=True)
        inet.run(["ip", "route", "add", "10.200.1.0/24", "via", "10.200.11.1"], check=True)
        inet.run(["ip", "route", "add", "10.200.2.0/24", "via", "10.200.12.1"], check=True)
        self.gw_a.run(["ip", "route", "add", "default", "via", "10.200.1.1"], check=True)
        self.gw_b.run(["ip", "route", "add", "default", "via", "10.200.2.1"], check=True)

    def delete(self) -> None:
        for ns in reversed(self.spaces):
            try:
                ns.delete()
            except Exception:
                pass
        self.spaces.clear()


def egress(name: str, interface: str, share: str) -> str:
    return f'hold_down = 30.0\n{share}[[egress]]\nname = "{name}"\ninterface = "{interface}"\n'


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    net = TwoGateways()
    capture = cn = a = b = da = log = None
    try:
        capture = CaptureAtCN(net)  # type: ignore[arg-type]
        cn = Correspondent(net, tmp_path)  # type: ignore[arg-type]
        (tmp_path / "slpda.toml").write_text(f'[state]\nfile = "{tmp_path / "slpda.json"}"\n')
        log = open(tmp_path / "slpda.log", "wb")  # closed below
        da = net.gw_b.popen([sys.executable, "-m", "sipmob.slpda", "--config", str(tmp_path / "slpda.toml"),
                             "--listen", f"{LAN_B}:4270"], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(0.5)
        b = HomePhone(net, tmp_path / "b", egress(  # type: ignore[arg-type]
            "wan2", "b2", '[share]\nallow = ["192.168.50.0/24"]\nrelays = 8\n'), da=f"{LAN_B}:4270",
            ns=net.gw_b, address=LAN_B)
        a = HomePhone(net, tmp_path / "a", egress("wan1", "a1", "[share]\npeers = true\n"),  # type: ignore[arg-type]
                      da=f"{LAN_B}:4270", ns=net.gw_a, address=LAN_A)
        yield {"net": net, "cn": cn, "a": a, "b": b, "capture": capture}
    finally:
        for phone in (a, b):
            if phone is not None:
                phone.stop()
        if da is not None:
            terminate(da, 5)
        if log is not None:
            log.close()
        if cn is not None:
            cn.stop()
        if capture is not None:
            capture.close()
        net.delete()


def test_all_links_of_a_down_the_call_continues_through_b(stage: dict[str, Any]) -> None:
    net, cn, a, capture = stage["net"], stage["cn"], stage["a"], stage["capture"]
    assert "established" in a.command("call", uri=cn.uri), a.output()
    assert until(lambda: capture.rtp_from(HOME1), 5), a.output()
    t0 = time.monotonic()
    net.gw_a.set_link("a1", False)
    assert until(lambda: capture.rtp_from(HOME2, t0), 5), f"{a.output()}\n{stage['b'].output()}"
    assert until(lambda: capture.sip_from(HOME2, t0, "INVITE"), 5), "no re-INVITE from B's WAN address"
    later = time.monotonic()
    before = a.received()
    assert until(lambda: a.received() > before + 25, 5), \
        f"the CN's RTP does not reach A\n{a.output()}\n{stage['b'].output()}\n{a.command('calls')}"
    assert not capture.rtp_from(HOME1, later)
    calls = a.command("calls")
    assert len(calls) == 1 and calls[0]["state"] == "confirmed", calls
    listing = a.command("egress")
    # A found B in SLP and follows its Egress List
    assert [(p["gateway"], p["egresses"][0]["on"]) for p in listing["peers"]] == [
        (f"sip:mn@{LAN_B}:5060", True)], listing
    assert "1" in listing["relayed"] and listing["relayed"]["1"].startswith(HOME2), listing
