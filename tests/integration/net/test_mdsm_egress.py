"""An MDSM call with a CN outside survives a failing WAN link: its audio anchored in the transcoder.

The stage is `twowan.TwoWan`. In `home`: the DA, `sipmob-transcoder`, `sipmob-mdsm` with the
egress list of wan1 and wan2 (``[egress] file``, anchoring on, its default), a baresip speaker as
the living room's only member (on the home's loopback), and ``sipmob phone`` on wan1's address
as the mobile node that hands its call over. baresip is the CN in `internet`. After the handoff
the speaker talks to the transcoder (a plain relay: both speak PCMU) and the transcoder's CN side
is bound to wan1's address; `ip link set down` on wan1 must bring, at the CN, RTP from wan2's
address (the transcoder's side moved and the CN re-INVITEd from wan2), and at the speaker the
CN's audio again, while the speaker's own leg is never re-INVITEd. STATUS= (read from a
NOTIFY_SOCKET of ours) names the call's egress. A second test kills the MDSM with -9 before
pulling the link: the restarted daemon takes the call, its transcoder leg and its egress up
again from its store and still moves it; a third pulls the link while the MDSM is dead (the
restarted daemon moves the call at once); a fourth changes wan1's address (DHCP). Needs root
(namespaces) and baresip. The stage is in `mdsm_home.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.net.mdsm_home import Home, mdsm_stage
from tests.integration.net.twowan import HOME1, HOME2, until
from tests.peers.baresip import BARESIP
from tests.peers.netns import available

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    with mdsm_stage(tmp_path) as h:
        yield h


def anchored_on_wan1(home: Home) -> float:
    """The call runs: the CN hears the relay from wan1's address, the speaker hears the CN."""
    t = time.monotonic()
    assert until(lambda: len(home.capture.rtp_from(HOME1, t)) > 20, 10), home.mdsm.output()
    assert until(lambda: home.heard.rtp_after(t) > 20, 10), home.transcoder.output()
    assert until(lambda: "wan1 (1 call)" in home.status.last(), 10), home.status.lines
    return t


def moves_to_wan2(home: Home) -> None:
    invites_before = len(home.heard.invites)
    t0 = time.monotonic()
    home.net.link_down("h1")
    assert until(lambda: len(home.capture.rtp_from(HOME2, t0)) > 20, 15), \
        home.mdsm.output() + home.transcoder.output()
    first = home.capture.rtp_from(HOME2, t0)[0]
    # the CN's audio reaches the speaker again: the CN took the re-INVITE with the new port
    assert until(lambda: home.heard.rtp_after(first + 0.3) > 20, 10), \
        home.mdsm.output() + home.transcoder.output()
    assert until(lambda: "wan2 (1 call)" in home.status.last(), 10), home.status.lines
    assert f"moved to {HOME2}" in home.mdsm.output()
    assert len(home.heard.invites) == invites_before, "the speaker's leg was re-INVITEd"
    assert "side A moved from" in home.transcoder.output()
    print(f"link down -> CN hears {HOME2}: {(first - t0) * 1000:.1f} ms")


def test_link_down_moves_an_anchored_mdsm_call_and_the_speaker_keeps_hearing_the_cn(home: Home) -> None:
    home.hand_over()
    anchored_on_wan1(home)
    assert "relay PCMU" in home.mdsm.output()
    moves_to_wan2(home)


def test_a_restarted_mdsm_keeps_the_anchored_call_and_its_egress_and_still_moves_it(home: Home) -> None:
    home.hand_over()
    anchored_on_wan1(home)
    home.mdsm.kill9()
    home.mdsm.start()
    assert until(lambda: "on egress wan1 (10.200.1.2)" in home.mdsm.output(), 10), home.mdsm.output()
    t = time.monotonic()
    assert until(lambda: len(home.capture.rtp_from(HOME1, t)) > 20, 10)  # media never went through it
    moves_to_wan2(home)


def test_an_address_change_on_the_calls_egress_moves_it_to_the_new_address(home: Home) -> None:
    """DHCP gave wan1 another address (HMMP): the relay's CN side and the CN's re-INVITE follow."""
    home.hand_over()
    anchored_on_wan1(home)
    new = "10.200.1.3"
    t0 = time.monotonic()
    home.net.readdress("h1", HOME1, new)
    assert until(lambda: len(home.capture.rtp_from(new, t0)) > 20, 15), \
        home.mdsm.output() + home.transcoder.output()
    first = home.capture.rtp_from(new, t0)[0]
    assert until(lambda: home.heard.rtp_after(first + 0.3) > 20, 10), home.mdsm.output()
    assert f"moved to {new}" in home.mdsm.output()
    assert "wan1 (1 call)" in home.status.last(), home.status.lines


def test_a_link_that_failed_while_the_mdsm_was_down_is_left_as_soon_as_it_restarts(home: Home) -> None:
    home.hand_over()
    anchored_on_wan1(home)
    home.mdsm.kill9()
    t0 = time.monotonic()
    home.net.link_down("h1")
    home.mdsm.start()
    assert until(lambda: len(home.capture.rtp_from(HOME2, t0)) > 20, 15), \
        home.mdsm.output() + home.transcoder.output()
    first = home.capture.rtp_from(HOME2, t0)[0]
    assert until(lambda: home.heard.rtp_after(first + 0.3) > 20, 10), home.mdsm.output()
    assert "changed while the MDSM was down" in home.mdsm.output()
    assert until(lambda: "wan2 (1 call)" in home.status.last(), 10), home.status.lines
