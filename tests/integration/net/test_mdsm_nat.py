"""An MDSM call whose CN is behind a NAT: the transcoder's relay latches to where its RTP comes from.

The stage of `mdsm_home.py` on `twowan.TwoWan`, with the CN (baresip in `internet`) put behind a
NAT once its call with the phone runs and before the phone hands it to the MDSM: its RTP and RTCP
leave SNATed to 10.200.100.2 on another port (iptables in `internet`), and nothing that is not the
answer to one of its own flows reaches its media ports, as behind a home router. Its description
still says 10.200.100.1 and the port it listens on, so a relay that sends there is never heard and
one that takes RTP only from there hears nothing. With symmetric RTP the relay's CN side latches to
the first packet (logged), the speaker hears the CN and the CN hears the relay through the NAT.
Attack: once latched, a stranger in `internet` sending to the relay's CN port does not take the
media (no second latch, the CN still hears the relay), nor does a stranger in the home on its
loopback. Then the link is pulled: the side moved to wan2 is armed anew and latches to the NAT's
mapping of the new flow (often the same port), and the CN keeps hearing the relay. `sipmob egress`
shows the MDSM's call on wan1, then on wan2. Needs root (namespaces, iptables) and baresip.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.net.mdsm_home import ENV, Home, mdsm_stage
from tests.integration.net.twowan import CN, HOME1, HOME2, until
from tests.peers.baresip import BARESIP
from tests.peers.netns import available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)"),
              pytest.mark.skipif(shutil.which("iptables") is None, reason="needs iptables")]

NATTED = "10.200.100.2"
STRANGER = "10.200.100.7"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    with mdsm_stage(tmp_path) as h:
        yield h


def behind_a_nat(home: Home) -> None:
    inet = home.net.internet
    inet.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", CN, "-p", "udp", "!", "--sport", "5060",
              "-j", "SNAT", "--to-source", f"{NATTED}:40000-40999"], check=True)
    inet.run(["iptables", "-A", "INPUT", "-d", CN, "-p", "udp", "!", "--dport", "5060", "-m", "conntrack",
              "--ctstate", "SNAT", "-j", "ACCEPT"], check=True)
    inet.run(["iptables", "-A", "INPUT", "-d", CN, "-p", "udp", "!", "--dport", "5060", "-j", "DROP"],
             check=True)
    inet.run(["ip", "addr", "add", f"{STRANGER}/32", "dev", "lo"], check=True)


def reached_cn(home: Home) -> int:
    """Packets to the CN's media ports let through the NAT (answers to its own flows)."""
    out = home.net.internet.run(["iptables", "-L", "INPUT", "-v", "-x", "-n"], check=True).stdout
    return int(next(line for line in out.splitlines() if "ACCEPT" in line and "SNAT" in line).split()[0])


def relay_port(home: Home, address: str) -> int:
    """The transcoder's RTP port on `address` (its CN side: the even port in its range there)."""
    out = home.net.home.run(["ss", "-Huan"], check=True).stdout
    ports = {int(p) for p in re.findall(rf"{re.escape(address)}:(\d+)", out)}
    [port] = [p for p in ports if 32000 <= p <= 32199 and p % 2 == 0]
    return port


def calls_per_egress(home: Home) -> dict[str, int]:
    """What `sipmob egress` says of the MDSM's calls (its egress socket), run in `home`."""
    out = home.net.home.run([sys.executable, "-m", "sipmob.mn.cli", "--control", str(home.dir / "none.sock"),
                             "egress", "--json", "--mdsm-control", str(home.control)], env=ENV, check=True)
    return {e["name"]: len(e["calls"]) for e in json.loads(out.stdout)["mdsm"]["egresses"]}


def rtp(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x7777) + b"\xd5" * 160


def test_a_cn_behind_a_nat_is_latched_and_strangers_do_not_take_its_media(home: Home) -> None:
    home.hand_over(lambda: behind_a_nat(home))
    assert until(lambda: f"latched to {NATTED}:" in home.transcoder.output(), 15), \
        home.transcoder.output() + home.mdsm.output()
    t = time.monotonic()
    assert until(lambda: home.heard.rtp_after(t) > 20, 10), home.transcoder.output()
    before = reached_cn(home)
    assert until(lambda: reached_cn(home) > before + 20, 10), home.transcoder.output()
    latches = len(re.findall("latched to", home.transcoder.output()))
    assert calls_per_egress(home) == {"wan1": 1, "wan2": 0}

    # strangers after the latch: one outside, one in the home on its loopback
    port = relay_port(home, HOME1)
    with home.net.internet.socket(socket.AF_INET, socket.SOCK_DGRAM) as outside, \
            home.net.home.socket(socket.AF_INET, socket.SOCK_DGRAM) as inside:
        outside.bind((STRANGER, 0))
        inside.bind(("127.0.0.1", 0))
        for seq in range(50):
            outside.sendto(rtp(seq), (HOME1, port))
            inside.sendto(rtp(seq), (HOME1, port))
            time.sleep(0.01)
    before = reached_cn(home)
    assert until(lambda: reached_cn(home) > before + 20, 10), home.transcoder.output()
    assert len(re.findall("latched to", home.transcoder.output())) == latches, home.transcoder.output()
    assert set(re.findall(r"latched to ([\d.]+):", home.transcoder.output())) == {NATTED}

    # the link goes: the side moved to wan2 latches to the NAT's new mapping, the CN still hears it
    home.net.link_down("h1")
    assert until(lambda: "side A moved from" in home.transcoder.output(), 15), \
        home.transcoder.output() + home.mdsm.output()
    assert relay_port(home, HOME2)
    before = reached_cn(home)
    assert until(lambda: reached_cn(home) > before + 20, 10), home.transcoder.output()
    t = time.monotonic()
    assert until(lambda: home.heard.rtp_after(t) > 20, 10), home.transcoder.output()
    assert until(lambda: calls_per_egress(home) == {"wan1": 0, "wan2": 1}, 10)
