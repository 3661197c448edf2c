"""A call taken back after the phone was killed stays on its egress, or moves at once when that
egress went while the phone was not running.

``sipmob phone`` in `home` (`twowan.TwoWan`, ``least_load``: call 1 over wan1, call 2 over wan2),
baresip the CN in `internet`. The phone is killed (SIGKILL: no BYE) and started again with the same
state file. Call 2's media was on wan2's address: the restarted phone must receive it there and send
from there (not from its own listening address on wan1). When wan2 went down, or its address
changed, while the phone was dead, call 2 is re-INVITEd at once from a surviving address. Needs root
and baresip.
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
    HomePhone,
    calls_on,
    egress_toml,
    every_call_hears_the_cn,
    phone_stage,
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
    with phone_stage(tmp_path, egress_toml(policy="least_load", probe=False), calls=2) as stage:
        phone, capture = stage["phone"], stage["capture"]
        assert calls_on(phone) == {"wan1": ["1"], "wan2": ["2"]}
        assert until(lambda: capture.rtp_from(HOME2), 5), phone.output()
        yield stage


def both_hear_the_cn(phone: HomePhone) -> None:
    assert set(received_by_call(phone)) == {"1", "2"}, phone.command("calls")
    every_call_hears_the_cn(phone, 20)


def test_a_restored_call_keeps_its_media_on_its_egress(stage: dict[str, Any]) -> None:
    phone, capture = stage["phone"], stage["capture"]
    phone.kill()
    t0 = time.monotonic()
    phone.restart()
    assert "resumed after a restart" in phone.output()
    assert calls_on(phone) == {"wan1": ["1"], "wan2": ["2"]}
    both_hear_the_cn(phone)  # the CN still sends call 2's audio to wan2's address: we are there
    assert until(lambda: len(capture.rtp_from(HOME2, t0)) > 20, 5)
    assert not capture.sip_from(HOME1, t0, "INVITE") and not capture.sip_from(HOME2, t0, "INVITE")


@pytest.mark.parametrize("change", ["link down", "new address"])
def test_a_restored_call_whose_egress_went_meanwhile_moves_at_once(stage: dict[str, Any],
                                                                   change: str) -> None:
    net, phone, capture = stage["net"], stage["phone"], stage["capture"]
    phone.kill()
    if change == "link down":
        net.link_down("h2")
        survivor, egress = HOME1, "wan1"
    else:
        net.readdress("h2", HOME2, "10.200.2.3")
        survivor, egress = "10.200.2.3", "wan2"
    t0 = time.monotonic()
    phone.restart()
    assert until(lambda: [m["call"] for m in phone.command("egress")["moves"]] == ["2"], 5), \
        phone.output()[-4000:]
    assert "while the phone was not running" in phone.output()
    assert "2" in calls_on(phone)[egress]
    both_hear_the_cn(phone)
    later = time.monotonic()
    assert capture.sip_from(survivor, t0, "INVITE"), "no re-INVITE from the surviving address"
    assert until(lambda: len(capture.rtp_from(survivor, later)) > 40, 5)  # both calls' or call 2's
    assert not capture.rtp_from(HOME2, later)
