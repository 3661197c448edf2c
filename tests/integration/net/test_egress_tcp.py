"""A call over TCP on a multihomed gateway: its connection is opened from the chosen egress's
address, and when that egress fails a new connection is opened from the surviving one and the
re-INVITE goes over it.

``sipmob phone`` (``[listen] tcp = true``) in the `home` namespace of `twowan.TwoWan` calls baresip
in `internet` at ``;transport=tcp``. The capture at the CN sees the TCP connection openings (SYN)
and the first bytes of each segment, so it says which address each connection and each INVITE
came from; RTP (UDP) is checked as in the UDP failover tests. A capture in `home` sees which transport
the CN's requests of the dialog arrive over (our Contact says ``transport=tcp``), for a call we
place and one the CN places. Needs root and baresip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    CN,
    HOME1,
    HOME2,
    CaptureAtCN,
    Correspondent,
    HomePhone,
    PacketTap,
    SippInInternet,
    TwoWan,
    egress_toml,
    phone_stage,
    until,
)
from tests.peers.baresip import BARESIP
from tests.peers.netns import Namespace, available
from tests.peers.sipp import SIPP

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


class CaptureAtHome(PacketTap):
    """SIP requests reaching the home's wan1 side: (transport, the first bytes of the payload)."""

    def __init__(self, ns: Namespace) -> None:
        self.seen: list[tuple[str, bytes]] = []
        super().__init__(ns, "h1", size=4096)

    def packet(self, data: bytes, now: float) -> None:
        if len(data) < 28 or data[9] not in (6, 17):
            return
        ihl = (data[0] & 0x0F) * 4
        offset = ihl + ((data[ihl + 12] >> 4) * 4 if data[9] == 6 else 8)
        self.seen.append(("tcp" if data[9] == 6 else "udp", data[offset:offset + 16]))

    def transports(self, method: str) -> set[str]:
        """Over which transports requests of `method` arrived."""
        return {t for t, head in list(self.seen) if head.startswith(f"{method} ".encode())}


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with phone_stage(tmp_path, egress_toml(probe=False), tcp=True) as stage:
        yield stage


def test_a_tcp_call_opens_a_new_connection_from_the_surviving_egress(stage: dict[str, Any]) -> None:
    net, cn, phone, capture = stage["net"], stage["cn"], stage["phone"], stage["capture"]
    assert "established" in phone.command("call", uri=f"{cn.uri};transport=tcp"), phone.output()
    assert capture.tcp_from(HOME1, syn=True) and capture.tcp_from(HOME1, start="INVITE ")
    assert not capture.sip_from(HOME1, 0, "INVITE"), "the INVITE went over UDP"
    assert until(lambda: phone.received() > 10, 5), phone.output()
    assert until(lambda: capture.rtp_from(HOME1), 5)
    t0 = time.monotonic()
    net.link_down("h1")
    assert until(lambda: capture.tcp_from(HOME2, t0, start="INVITE "), 5), phone.output()[-4000:]
    assert capture.tcp_from(HOME2, t0, syn=True), "the re-INVITE did not open its own connection"
    assert not capture.tcp_from(HOME1, t0, start="INVITE ")
    assert until(lambda: capture.rtp_from(HOME2, t0), 5), phone.output()[-4000:]
    before = phone.received()
    assert until(lambda: phone.received() > before + 20, 5), f"the CN's RTP did not follow\n{phone.output()}"
    calls = phone.command("calls")
    assert len(calls) == 1 and calls[0]["state"] == "confirmed", calls
    assert "moved to 10.200.2.2" in phone.output()
    # the call ends over the new connection too (or the CN's own way to our Contact): nothing hangs
    assert phone.command("hangup", call="1") is not None
    assert until(lambda: not phone.command("calls"), 10), phone.command("calls")


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_a_registrar_over_tcp_gets_the_new_contact_over_a_connection_from_the_survivor(
        tmp_path: Path) -> None:
    net = TwoWan()
    phone = capture = None
    try:
        capture = CaptureAtCN(net)
        registrar = SippInInternet(net, SCENARIOS / "registrar_move.xml", tmp_path, 5070, transport="t1")
        phone = HomePhone(net, tmp_path, egress_toml(probe=False), registrar=f"sip:{CN}:5070;transport=tcp",
                          tcp=True)
        assert until(lambda: "registered sip:mn@" in phone.output(), 5), phone.output()
        assert capture.tcp_from(HOME1, syn=True) and capture.tcp_from(HOME1, start="REGISTER ")
        t0 = time.monotonic()
        net.link_down("h1")
        # the second REGISTER (new Contact, the old one removed: sipp's scenario checks) over a new
        # connection from wan2's address
        assert until(lambda: capture.tcp_from(HOME2, t0, start="REGISTER "), 5), phone.output()
        assert capture.tcp_from(HOME2, t0, syn=True)
        time.sleep(0.5)
        phone.stop()  # the un-REGISTER ends sipp's scenario
        phone = None
        assert registrar.wait() == 0, registrar.report()
    finally:
        if phone is not None:
            phone.stop()
        if capture is not None:
            capture.close()
        net.delete()


def test_the_cns_requests_of_a_tcp_call_come_back_over_tcp(stage: dict[str, Any]) -> None:
    """Our Contact says transport=tcp: the CN's BYE (baresip hangs up as it stops) comes over TCP."""
    net, cn, phone = stage["net"], stage["cn"], stage["phone"]
    home = CaptureAtHome(net.home)
    try:
        assert "established" in phone.command("call", uri=f"{cn.uri};transport=tcp"), phone.output()
        cn.stop()
        assert until(lambda: not phone.command("calls"), 10), phone.output()[-4000:]
        assert home.transports("BYE") == {"tcp"}, home.seen
    finally:
        home.close()


def test_a_call_the_cn_places_over_tcp_is_answered_over_tcp(tmp_path: Path) -> None:
    """The CN calls the phone's egress address at transport=tcp: our 200 names a TCP Contact, so
    the CN's ACK and BYE come over TCP too."""
    net = TwoWan()
    phone = cn = home = None
    try:
        phone = HomePhone(net, tmp_path, egress_toml(probe=False), tcp=True)
        home = CaptureAtHome(net.home)
        cn = Correspondent(net, tmp_path, dial=f"sip:mn@{HOME1}:5060;transport=tcp")
        assert until(lambda: [c for c in phone.command("calls") if c["state"] == "confirmed"], 10), \
            phone.output()[-4000:]
        assert until(lambda: phone.received() > 10, 5), phone.output()[-4000:]
        assert until(lambda: home.transports("ACK") == {"tcp"}, 5), home.seen
        assert home.transports("INVITE") == {"tcp"}
        cn.stop()
        cn = None
        assert until(lambda: not phone.command("calls"), 10), phone.output()[-4000:]
        assert home.transports("BYE") == {"tcp"}, home.seen
    finally:
        if phone is not None:
            phone.stop()
        if cn is not None:
            cn.stop()
        if home is not None:
            home.close()
        net.delete()
