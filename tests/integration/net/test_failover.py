"""A call in progress survives a failing WAN link, a dead upstream and an address change.

``sipmob phone`` runs in the `home` namespace of `twowan.TwoWan` with two egresses; baresip is the
CN on the `internet` side. Each test fails one thing under a call and checks, at the CN, that RTP
now arrives from the surviving address, and at the phone, that the CN's RTP arrives again (the
CN accepted the re-INVITE). Needs root (namespaces) and baresip.
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
    egress_toml,
    phone_stage,
    until,
)
from tests.peers.baresip import BARESIP
from tests.peers.netns import available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


@pytest.fixture
def stage(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    toml = getattr(request, "param", None) or egress_toml()
    with phone_stage(tmp_path, toml, calls=1) as stage:
        phone, capture = stage["phone"], stage["capture"]
        assert until(lambda: phone.received() > 10, 5), phone.output()
        assert until(lambda: capture.rtp_from(HOME1), 5), "no RTP from wan1's address at the CN"
        yield stage


def survives(stage: dict[str, Any], new_address: str, since: float, timeout: float) -> None:
    phone, capture = stage["phone"], stage["capture"]
    arrived = until(lambda: capture.rtp_from(new_address, since), timeout)
    assert arrived, f"no RTP from {new_address} at the CN\n{phone.output()}"
    before = phone.received()
    assert until(lambda: phone.received() > before + 10, 3), f"the CN's RTP did not follow\n{phone.output()}"
    calls = phone.command("calls")
    assert len(calls) == 1 and calls[0]["state"] == "confirmed", calls


def test_link_down_moves_the_call_to_the_other_wan(stage: dict[str, Any]) -> None:
    t0 = time.monotonic()
    stage["net"].link_down("h1")
    survives(stage, HOME2, t0, 5)
    listing = stage["phone"].command("egress")
    rows = {e["name"]: e for e in listing["egresses"]}
    assert rows["wan1"]["status"] == "down" and rows["wan2"]["sessions"] == 1
    assert listing["current"] == "wan2"


@pytest.mark.parametrize("stage", [egress_toml(interval=0.5, down_after=3)], indirect=True)
def test_a_dead_upstream_is_found_by_probes_and_the_call_moves(stage: dict[str, Any]) -> None:
    net = stage["net"]
    t0 = time.monotonic()
    net.upstream_dead(net.wan1)  # the home's links stay up: netlink says nothing
    survives(stage, HOME2, t0, 0.5 * 3 + 3)
    assert "3 probes unanswered" in stage["phone"].output()


def test_an_address_change_re_invites_from_the_new_address(stage: dict[str, Any]) -> None:
    t0 = time.monotonic()
    stage["net"].readdress("h1", HOME1, "10.200.1.3")
    survives(stage, "10.200.1.3", t0, 5)
    assert stage["capture"].sip_from("10.200.1.3", t0, "INVITE"), "no re-INVITE from the new address"
    assert stage["phone"].command("egress")["current"] == "wan1"


def test_a_flapping_link_moves_the_call_once_and_never_back_before_hold_down(stage: dict[str, Any]) -> None:
    net, capture = stage["net"], stage["capture"]
    t0 = time.monotonic()
    downs = net.flap("h1", period=1.0, seconds=5.0)
    survives(stage, HOME2, t0, 5)
    invites = capture.sip_from(HOME1, t0, "INVITE") + capture.sip_from(HOME2, t0, "INVITE")
    assert downs >= 4 and len(invites) == 1, (downs, invites)
    rows = {e["name"]: e for e in stage["phone"].command("egress")["egresses"]}
    assert rows["wan1"]["status"] in ("recovering", "down") and rows["wan1"]["flaps"] >= downs - 2


def test_losing_the_default_route_moves_the_call(stage: dict[str, Any]) -> None:
    """The link and its address stay; the DHCP client dropped the route (a lost lease)."""
    home = stage["net"].home
    t0 = time.monotonic()
    home.run(["ip", "route", "del", "default", "table", "101"], check=True)
    home.run(["ip", "route", "del", "default", "via", "10.200.1.1"], check=True)
    survives(stage, HOME2, t0, 5)
    assert "egress wan1 down: no default route" in stage["phone"].output()


@pytest.mark.parametrize("stage", [egress_toml(probe=False, hold_down=1.0)], indirect=True)
def test_a_call_no_link_can_carry_is_reported_kept_and_moved_when_one_returns(stage: dict[str, Any]) -> None:
    net, phone = stage["net"], stage["phone"]
    net.link_down("h2")
    net.link_down("h1")
    assert until(lambda: "call 1 cannot be moved now" in phone.output(), 3), phone.output()
    assert len(phone.command("calls")) == 1  # not hung up
    t0 = time.monotonic()
    net.link_up("h2")
    survives(stage, HOME2, t0, 5)  # after wan2's hold-down of 1 s
