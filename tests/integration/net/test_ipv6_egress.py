"""The egress path over IPv6: calls over an IPv6 WAN, a link down, the call moves to the other
IPv6 link and survives.

`twowan.TwoWan(ipv6=True)`: each egress of ``sipmob phone`` is its link's IPv6 address (source
routing with ``ip -6 rule``), baresip (``-6``) is the CN at 2001:db8:100::1. The capture at the CN
says where the SIP and RTP come from. Needs root (namespaces) and baresip.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    HOME1_6,
    HOME2_6,
    egress_toml,
    every_call_hears_the_cn,
    phone_stage,
    place_calls,
    received_by_call,
    until,
)
from tests.peers.baresip import BARESIP
from tests.peers.netns import available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with phone_stage(tmp_path, egress_toml(policy="least_load", probe=False, ipv6=True), ipv6=True) as stage:
        yield stage


def test_two_ipv6_calls_one_link_down_only_its_call_moves(stage: dict[str, Any]) -> None:
    net, cn, phone, capture = stage["net"], stage["cn"], stage["phone"], stage["capture"]
    place_calls(phone, cn.uri, 2)
    listing = {e["name"]: e for e in phone.command("egress")["egresses"]}
    assert (listing["wan1"]["address"], listing["wan1"]["calls"]) == (HOME1_6, ["1"])
    assert (listing["wan2"]["address"], listing["wan2"]["calls"]) == (HOME2_6, ["2"])
    assert until(lambda: capture.rtp_from(HOME1_6) and capture.rtp_from(HOME2_6), 5), phone.output()
    assert capture.sip_from(HOME1_6, 0, "INVITE") and capture.sip_from(HOME2_6, 0, "INVITE")
    assert until(lambda: all(n > 10 for n in received_by_call(phone).values()), 5), phone.output()
    t0 = time.monotonic()
    net.link_down("h1")
    assert until(lambda: [m["call"] for m in phone.command("egress")["moves"]] == ["1"], 5), phone.output()
    later = time.monotonic()
    assert until(lambda: len(capture.rtp_from(HOME2_6, later)) > 50, 5), phone.output()
    assert not capture.rtp_from(HOME1_6, later)
    invites = capture.sip_from(HOME1_6, t0, "INVITE") + capture.sip_from(HOME2_6, t0, "INVITE")
    assert len(invites) == 1 and capture.sip_from(HOME2_6, t0, "INVITE"), phone.output()
    every_call_hears_the_cn(phone, 10)  # the CN's RTP followed
    calls = phone.command("calls")
    assert [c["state"] for c in calls] == ["confirmed", "confirmed"], calls
