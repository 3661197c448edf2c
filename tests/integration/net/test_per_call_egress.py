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
    calls_on,
    egress_toml,
    every_call_hears_the_cn,
    phone_stage,
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
        yield stage


def test_two_calls_leave_over_two_links(stage: dict[str, Any]) -> None:
    phone, capture = stage["phone"], stage["capture"]
    assert calls_on(phone) == {"wan1": ["1"], "wan2": ["2"]}
    # each call's INVITE left from its own egress's address, and so does its RTP
    assert capture.sip_from(HOME1, 0, "INVITE") and capture.sip_from(HOME2, 0, "INVITE")
    assert until(lambda: capture.rtp_from(HOME1) and capture.rtp_from(HOME2), 5), phone.output()
    every_call_hears_the_cn(phone, 10)
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
    every_call_hears_the_cn(phone, 10)
    # one re-INVITE, from the surviving address: the other call was left alone
    invites = capture.sip_from(HOME1, t0, "INVITE") + capture.sip_from(HOME2, t0, "INVITE")
    assert len(invites) == 1 and capture.sip_from(survivor, t0, "INVITE"), phone.output()
    # both calls' RTP now comes from the survivor only
    later = time.monotonic()
    assert until(lambda: len(capture.rtp_from(survivor, later)) > 50, 5)
    assert not capture.rtp_from(failed, later)
    # the phone's own SIP left wan1 only if wan1 failed
    assert phone.command("egress")["current"] == ("wan2" if link == "h1" else "wan1")
