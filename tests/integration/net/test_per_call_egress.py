"""Each call on an egress of its own: two calls spread over two WAN links, one link fails, only the
call on it moves.

``sipmob phone`` runs in the `home` namespace of `twowan.TwoWan` with the ``least_load`` policy, so
its first call goes over wan1 and its second over wan2; baresip is the CN on the `internet` side.
The capture at the CN says where each call's SIP and RTP come from. Needs root (namespaces) and
baresip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    HOME1,
    HOME2,
    CaptureAtCN,
    Correspondent,
    HomePhone,
    TwoWan,
    egress_toml,
    until,
)
from tests.peers.baresip import BARESIP
from tests.peers.netns import available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    net = TwoWan()
    capture = cn = phone = None
    try:
        capture = CaptureAtCN(net)
        cn = Correspondent(net, tmp_path)
        phone = HomePhone(net, tmp_path, egress_toml(policy="least_load", probe=False))
        for _ in range(2):
            assert "established" in phone.command("call", uri=cn.uri)
        yield {"net": net, "cn": cn, "phone": phone, "capture": capture}
    finally:
        if phone is not None:
            phone.stop()
        if cn is not None:
            cn.stop()
        if capture is not None:
            capture.close()
        net.delete()


def calls_on(phone: HomePhone) -> dict[str, list[str]]:
    return {e["name"]: e["calls"] for e in phone.command("egress")["egresses"]}


def received(phone: HomePhone) -> dict[str, int]:
    return {c["id"]: int(c["rtp_received"]) for c in phone.command("calls")}


def both_hear_the_cn(phone: HomePhone) -> None:
    before = received(phone)
    assert until(lambda: all(n > before[cid] + 10 for cid, n in received(phone).items()), 5), \
        f"{before} {received(phone)}\n{phone.output()}"


def test_two_calls_leave_over_two_links(stage: dict[str, Any]) -> None:
    phone, capture = stage["phone"], stage["capture"]
    assert calls_on(phone) == {"wan1": ["1"], "wan2": ["2"]}
    # each call's INVITE left from its own egress's address, and so does its RTP
    assert capture.sip_from(HOME1, 0, "INVITE") and capture.sip_from(HOME2, 0, "INVITE")
    assert until(lambda: capture.rtp_from(HOME1) and capture.rtp_from(HOME2), 5), phone.output()
    both_hear_the_cn(phone)
    assert phone.command("egress")["current"] == "wan1"  # the phone's own SIP stays on wan1


@pytest.mark.parametrize(("link", "failed", "survivor", "moved"),
                         [("h1", HOME1, HOME2, "1"), ("h2", HOME2, HOME1, "2")])
def test_a_link_down_moves_only_the_call_on_it(stage: dict[str, Any], link: str, failed: str,
                                               survivor: str, moved: str) -> None:
    net, phone, capture = stage["net"], stage["phone"], stage["capture"]
    assert until(lambda: capture.rtp_from(HOME1) and capture.rtp_from(HOME2), 5), phone.output()
    target = "wan2" if link == "h1" else "wan1"
    t0 = time.monotonic()
    net.link_down(link)
    assert until(lambda: [m["call"] for m in phone.command("egress")["moves"]] == [moved], 5), phone.output()
    assert calls_on(phone)[target] == ["1", "2"]
    both_hear_the_cn(phone)
    # one re-INVITE, from the surviving address: the other call was left alone
    invites = capture.sip_from(HOME1, t0, "INVITE") + capture.sip_from(HOME2, t0, "INVITE")
    assert len(invites) == 1 and capture.sip_from(survivor, t0, "INVITE"), phone.output()
    # both calls' RTP now comes from the survivor only
    later = time.monotonic()
    assert until(lambda: len(capture.rtp_from(survivor, later)) > 50, 5)
    assert not capture.rtp_from(failed, later)
    # the phone's own SIP left wan1 only if wan1 failed
    assert phone.command("egress")["current"] == ("wan2" if link == "h1" else "wan1")
