"""HMMP's re-REGISTER and a move that meets glare and a slow CN, against sipp in the namespaces.

sipp plays the provider's registrar (CN:5070) and, in the second test, a CN that answers the
move's re-INVITE with 491 (it is re-INVITEing itself) and the retry only after 2 s, baresip
answers the probes. The phone runs in `home` of `twowan.TwoWan`; wan1 fails under it. Needs root and
sipp.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.integration.net.twowan import (
    CN,
    HOME2,
    CaptureAtCN,
    Correspondent,
    HomePhone,
    SippInInternet,
    TwoWan,
    egress_toml,
    until,
)
from tests.peers.netns import available
from tests.peers.sipp import SIPP

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


def test_a_move_re_registers_the_new_contact_and_removes_the_old_one(tmp_path: Path) -> None:
    net = TwoWan()
    phone = None
    try:
        registrar = SippInInternet(net, SCENARIOS / "registrar_move.xml", tmp_path, 5070)
        phone = HomePhone(net, tmp_path, egress_toml(probe=False), registrar=f"sip:{CN}:5070")
        assert until(lambda: "registered sip:mn@" in phone.output(), 5), phone.output()
        net.link_down("h1")
        assert until(lambda: phone.output().count("registered sip:mn@") >= 1
                     and "SIP on egress wan2" in phone.output(), 5), phone.output()
        time.sleep(0.5)
        phone.stop()  # the un-REGISTER ends sipp's scenario
        phone = None
        assert registrar.wait() == 0, registrar.report()
    finally:
        if phone is not None:
            phone.stop()
        net.delete()


def test_a_move_that_meets_491_is_retried_and_waits_for_a_slow_cn(tmp_path: Path) -> None:
    net = TwoWan()
    phone = capture = prober = None
    try:
        capture = CaptureAtCN(net)
        prober = Correspondent(net, tmp_path, port=5062)  # answers the probes' OPTIONS
        cn = SippInInternet(net, SCENARIOS / "uas_glare_slow.xml", tmp_path, 5060)
        phone = HomePhone(net, tmp_path, egress_toml(interval=0.5, down_after=2, probe_port=5062))
        assert "established" in phone.command("call", uri=f"sip:cn@{CN}:5060")
        t0 = time.monotonic()
        # sipp answers every request of a call at the address the call came from, so the home's
        # way in over wan1 stays open: only what the home sends is lost (a one-way failure).
        net.upstream_dead(net.wan1, outbound_only=True)
        # our RTP leaves from the new address at once, long before the CN has accepted the move
        assert until(lambda: capture.rtp_from(HOME2, t0), 4), phone.output()
        assert until(lambda: "moved to 10.200.2.2" in phone.output(), 10), phone.output()
        calls = phone.command("calls")
        assert len(calls) == 1 and calls[0]["state"] == "confirmed"
        assert capture.sip_from(HOME2, t0, "INVITE"), "no re-INVITE from the new address"
        phone.stop()  # BYE ends sipp's scenario
        phone = None
        assert cn.wait() == 0, cn.report()
    finally:
        if phone is not None:
            phone.stop()
        if capture is not None:
            capture.close()
        if prober is not None:
            prober.stop()
        net.delete()
