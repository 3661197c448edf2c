"""Two gateways, each with its own WAN: when all of gateway A's links are down, A's call continues
through gateway B's egress (SIP-NEMO §3.2, §4.2, §4.5).

    gwA (sipmob phone, the call) --a1-- wan1 --+
      | home LAN 192.168.50.0/24                internet (the CN, baresip, 10.200.100.1)
    gwB (sipmob phone, relays)   --b2-- wan2 --+

B advertises ``service:sip-egress`` in the DA (sipmob-slpda, on B's LAN address) and relays for the
home's network; A finds B there, SUBSCRIBEs to its Egress List, and when its only link goes down
asks B for relays and re-INVITEs the CN from B's WAN address. The capture at the CN says where the
re-INVITE and the RTP come from; tshark, capturing at the CN, decodes the RTCP that reaches it through
B. Needs root (namespaces), baresip and the slpda.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    HOME1,
    HOME1_6,
    HOME2,
    HOME2_6,
    HOME3,
    LAN_B,
    Correspondent,
    Gateways,
    until,
)
from tests.peers.baresip import BARESIP
from tests.peers.netns import available
from tests.peers.tshark import TSHARK, tshark

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    gateways = Gateways(tmp_path)
    try:
        yield {"net": gateways.net, "cn": gateways.cn, "a": gateways.a, "b": gateways.b,
               "capture": gateways.capture}
    finally:
        gateways.close()


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


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_through_b_the_cn_gets_our_rtcp_and_we_get_its(stage: dict[str, Any], tmp_path: Path) -> None:
    """A asks B for a relay of the audio's RTCP too (the last far end of its Relay-To) and offers it
    in ``a=rtcp`` (RFC 3605): our reports reach the CN from B's WAN address, the CN's reach A."""
    net, cn, a = stage["net"], stage["cn"], stage["a"]
    assert "established" in a.command("call", uri=cn.uri), a.output()
    pcap = tmp_path / "cn.pcap"
    stderr = tmp_path / "tshark.stderr"
    with stderr.open("wb") as err:
        dumper = net.internet.popen([TSHARK, "-i", "i2", "-f", f"udp and src host {HOME2}", "-w", str(pcap)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert until(lambda: "Capturing on" in stderr.read_text(errors="replace"), 15), stderr.read_text()
        net.gw_a.set_link("a1", False)
        assert until(lambda: stage["capture"].rtp_from(HOME2), 5), a.output()
        # RTCP's interval is 5 s on average (RFC 3550 §6.2, randomised): wait for a few
        assert until(lambda: _rtcp_received(a) >= 2, 30), f"{a.command('calls')}\n{a.output()}"
    finally:
        dumper.send_signal(signal.SIGINT)
        try:
            dumper.wait(10)
        except subprocess.TimeoutExpired:
            dumper.kill()
            dumper.wait(5)
    rows = _rtcp_rows(pcap)
    assert any(pt in ("200", "201") for _src, pt in rows), rows  # a Sender or Receiver Report
    assert {src for src, _pt in rows} == {HOME2}


def _rtcp_received(phone: Any) -> int:
    calls = phone.command("calls")
    return int(calls[0].get("rtcp_received", 0)) if calls else 0


def _rtcp_rows(pcap: Path) -> list[tuple[str, str]]:
    """(source, first packet type) of each RTCP packet, found by Wireshark's RTCP heuristic."""
    out = tshark("-r", str(pcap), "-o", "rtcp.heuristic_rtcp:TRUE", "-Y", "rtcp", "-T", "fields",
                 "-e", "ip.src", "-e", "rtcp.pt")
    return [(line.split("\t")[0], line.split("\t")[1].split(",")[0]) for line in out.splitlines() if line]


def test_when_a_link_of_a_returns_the_call_comes_back_and_the_relays_go(stage: dict[str, Any]) -> None:
    net, cn, a, b, capture = stage["net"], stage["cn"], stage["a"], stage["b"], stage["capture"]
    assert "established" in a.command("call", uri=cn.uri), a.output()
    t0 = time.monotonic()
    net.gw_a.set_link("a1", False)
    assert until(lambda: capture.rtp_from(HOME2, t0), 5), a.output()
    t1 = time.monotonic()
    net.gw_a.set_link("a1", True)
    net.gw_a.run(["ip", "route", "replace", "default", "via", "10.200.1.1"], check=True)
    assert until(lambda: capture.rtp_from(HOME1, t1), 10), a.output()  # after wan1's hold-down of 1 s
    assert until(lambda: capture.sip_from(HOME1, t1, "INVITE"), 5), "no re-INVITE from A's own address"
    before = a.received()
    assert until(lambda: a.received() > before + 25, 5), f"the CN's RTP does not follow\n{a.output()}"
    later = time.monotonic()
    assert until(lambda: len(capture.rtp_from(HOME1, later)) > 25, 5)
    assert not capture.rtp_from(HOME2, later + 0.5)
    # the relays are given back
    assert until(lambda: not a.command("egress")["relayed"], 10), a.command("egress")
    assert until(lambda: "relay for 192.168.50.1 closed" in b.output(), 10), b.output()


def test_over_ipv6_wans_the_call_continues_through_b(tmp_path: Path) -> None:
    """The WANs and the CN over IPv6 (the home LAN in IPv4): the relays' outside ends are IPv6."""
    gateways = Gateways(tmp_path, ipv6=True)
    try:
        net, cn, a, capture = gateways.net, gateways.cn, gateways.a, gateways.capture
        assert a is not None and cn is not None and capture is not None
        assert "established" in a.command("call", uri=cn.uri), a.output()
        assert until(lambda: capture.rtp_from(HOME1_6), 5), a.output()
        t0 = time.monotonic()
        net.gw_a.set_link("a1", False)
        assert until(lambda: capture.rtp_from(HOME2_6, t0), 5), a.output()
        assert until(lambda: capture.sip_from(HOME2_6, t0, "INVITE"), 5), a.output()
        before = a.received()
        assert until(lambda: a.received() > before + 25, 5), f"the CN's RTP does not reach A\n{a.output()}"
        assert a.command("egress")["relayed"]["1"].startswith(HOME2_6)
    finally:
        gateways.close()


def test_when_bs_link_under_the_relay_fails_the_call_moves_to_bs_other_link(tmp_path: Path) -> None:
    """B has two links (b2 first, b1); A relays through b2, then b2 goes down: B's NOTIFY says
    so, A asks B for relays again (now on b1) and re-INVITEs the CN once more."""
    gateways = Gateways(tmp_path, b_second_link=True)
    try:
        net, cn, a, b, capture = gateways.net, gateways.cn, gateways.a, gateways.b, gateways.capture
        assert cn is not None and a is not None and b is not None and capture is not None
        assert "established" in a.command("call", uri=cn.uri), a.output()
        assert until(lambda: capture.rtp_from(HOME1), 5), a.output()
        net.gw_a.set_link("a1", False)
        assert until(lambda: a.command("egress")["relayed"].get("1", "").startswith(HOME2), 5), \
            f"{a.output()}\n{b.output()}"
        t0 = time.monotonic()
        net.gw_b.set_link("b2", False)
        assert until(lambda: capture.sip_from(HOME3, t0, "INVITE"), 10), f"{a.output()}\n{b.output()}"
        assert until(lambda: capture.rtp_from(HOME3, t0), 5), f"{a.output()}\n{b.output()}"
        before = a.received()
        assert until(lambda: a.received() > before + 25, 5), \
            f"the CN's RTP does not reach A\n{a.output()}\n{b.output()}"
        listing = a.command("egress")
        assert listing["relayed"]["1"].startswith(HOME3), listing
        calls = a.command("calls")
        assert len(calls) == 1 and calls[0]["state"] == "confirmed", calls
        assert "asking for new relays" in a.output()
    finally:
        gateways.close()


FAKEVIDEO = Path("/usr/lib/baresip/modules/fakevideo.so")


@pytest.mark.skipif(not FAKEVIDEO.exists(), reason="baresip with fakevideo and vp8 is not installed")
def test_the_video_a_receives_is_relayed_through_b_too(tmp_path: Path) -> None:
    """A CN with a camera (baresip, fakevideo, VP8) calls A; all of A's links go down: B relays the
    call's SIP, audio and video, and A goes on receiving both."""
    gateways = Gateways(tmp_path)
    cn = None
    try:
        net, a, b = gateways.net, gateways.a, gateways.b
        assert a is not None and b is not None
        cn = Correspondent(net, tmp_path, port=5062, video=True,  # type: ignore[arg-type]
                           dial=f"sip:mn@{HOME1}:5060")
        assert until(lambda: a.command("calls") and a.command("calls")[0]["video_received"] > 10, 15), \
            f"no video from the CN\n{a.output()}\n{a.command('calls')}"
        net.gw_a.set_link("a1", False)
        assert until(lambda: a.command("egress")["relayed"].get("1", "").startswith(HOME2), 5), \
            f"{a.output()}\n{b.output()}"
        time.sleep(0.5)  # what was on its way to A's old address is lost
        call = a.command("calls")[0]
        assert until(lambda: a.command("calls")[0]["video_received"] > call["video_received"] + 10, 5), \
            f"no video through B\n{a.output()}\n{b.output()}"
        assert until(lambda: a.command("calls")[0]["rtp_received"] > call["rtp_received"] + 25, 5)
        assert "relaying for 192.168.50.1" in b.output() and b.output().count("<->") >= 3 * 2
    finally:
        if cn is not None:
            cn.stop()
        gateways.close()
