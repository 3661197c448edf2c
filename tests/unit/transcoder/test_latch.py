"""Symmetric RTP in the media worker: which first packet may latch a side, and only once per arming.

Our own rules (`sipmob.transcoder.worker.Leg.latch`), on a real worker call whose sockets are never
read: the packets' sources are given as they would come out of ``recvfrom``. The namespaces test
(tests/integration/net/test_mdsm_egress.py) has the CN behind a real NAT.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from sipmob.media.audioformat import AudioFormat
from sipmob.transcoder.worker import Call, Leg

DESCRIBED = ("10.200.100.1", 40000)  # where the CN's description says it is
NAT = ("203.0.113.7", 61002)  # where its packets come from
HOME = ["127.0.0.0/8", "192.168.0.0/16"]


@pytest.fixture
def leg() -> Iterator[Leg]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    pcmu = AudioFormat("PCMU", 0, 8000, 8000)
    call = Call(1, socks, pcmu, pcmu, "test", 60.0)
    call.a.set_destination(DESCRIBED)
    yield call.a
    call.a.close()
    call.b.close()


def test_unarmed_a_side_takes_only_its_described_host(leg: Leg) -> None:
    assert leg.latch(DESCRIBED)
    assert not leg.latch(NAT)
    assert leg.destination == DESCRIBED and leg.strangers == 1


def test_armed_the_first_plausible_packet_latches_address_and_port_once(
        leg: Leg, caplog: pytest.LogCaptureFixture) -> None:
    leg.arm_latch(HOME)
    with caplog.at_level("INFO", "sipmob.transcoder"):
        assert leg.latch(NAT)
    assert leg.destination == NAT and leg.host == NAT[0]
    assert "latched to 203.0.113.7:61002" in caplog.text
    # once: a stranger afterwards (even plausible) is dropped, the party's packets still taken
    assert not leg.latch(("198.51.100.9", 5000))
    assert not leg.latch(DESCRIBED)
    assert leg.latch(NAT)
    assert leg.destination == NAT and leg.strangers == 2


@pytest.mark.parametrize("source", [("127.0.0.1", 5000), ("127.9.9.9", 5000), ("192.168.1.20", 5000),
                                    ("169.254.3.4", 5000), ("224.0.0.5", 5000), ("0.0.0.0", 5000)])
def test_never_to_the_home_loopback_link_local_or_multicast(leg: Leg, source: tuple[str, int]) -> None:
    leg.arm_latch(HOME)
    assert not leg.latch(source)
    assert leg.destination == DESCRIBED
    assert leg.latch(NAT)  # still armed for the party
    assert leg.destination == NAT


def test_the_described_host_first_closes_the_window_and_sets_its_port(leg: Leg) -> None:
    leg.arm_latch(HOME)
    assert leg.latch(("10.200.100.1", 40100))  # the CN's own address, another port (a port-only NAT)
    assert leg.destination == ("10.200.100.1", 40100)
    assert not leg.latch(NAT)
    assert leg.destination == ("10.200.100.1", 40100)


def test_after_the_window_nothing_latches(leg: Leg) -> None:
    leg.arm_latch(HOME)
    leg.latch_until = time.monotonic() - 0.001
    assert not leg.latch(NAT)
    assert leg.destination == DESCRIBED and leg.latch_until == 0.0


def test_a_new_arming_lets_the_party_latch_again(leg: Leg) -> None:
    leg.arm_latch(HOME)
    assert leg.latch(NAT)
    leg.set_destination(DESCRIBED)  # a re-INVITE gives the description again
    leg.arm_latch(HOME)
    moved = ("203.0.113.7", 61090)  # the NAT mapped the moved side's flow anew
    assert leg.latch(moved)
    assert leg.destination == moved


def test_a_latched_side_stays_latched_while_its_description_is_unchanged(leg: Leg) -> None:
    leg.describe(DESCRIBED)
    leg.arm_latch(HOME)
    assert leg.latch(NAT)
    leg.describe(DESCRIBED)  # a re-INVITE about something else
    assert leg.destination == NAT
    leg.describe(("10.200.100.1", 40200))  # the party moved its port: its word again
    assert leg.destination == ("10.200.100.1", 40200)


def test_rtcp_follows_the_latched_partys_first_rtcp_and_nothing_else(leg: Leg) -> None:
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    try:
        leg.arm_latch([])  # loopback stays refused; the party here is the described host itself
        leg.set_destination(("127.0.0.1", 9))  # described: RTP on 9, RTCP on 10
        leg.latch_until = time.monotonic() + 5
        assert leg.latch(("127.0.0.1", 40000))  # its RTP from its own host, another port
        assert leg.rtcp_armed and leg.rtcp_to is None
        peer.sendto(b"\x81\xc9\x00\x01" + b"\x00" * 4, leg.rtcp.getsockname())  # an RR
        deadline = time.monotonic() + 5
        while leg.rtcp_to is None and time.monotonic() < deadline:
            leg.rtcp_ready(time.monotonic())
        assert leg.rtcp_to == peer.getsockname() and not leg.rtcp_armed
        leg.rtcp_report()
        assert peer.recvfrom(2048)[1] == leg.rtcp.getsockname()  # our report went where its RTCP came from
        leg.describe(("10.200.100.1", 40300))  # the party's word anew: RTCP to its port + 1 again
        assert leg.rtcp_to is None and not leg.rtcp_armed
    finally:
        peer.close()
