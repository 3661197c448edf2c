"""`PhoneEgress` per call, without sockets: new calls spread by the policy and bound to their
egress's address, and a failed egress moves only its own calls (and the phone's SIP only if it was
there)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from sipmob.mn.egress import PhoneEgress
from sipmob.sdp import parse
from sipmob.service.config import parse_config
from sipmob.service.egress_config import EgressConfig
from sipmob.sip.transport import Address

WAN1, WAN2 = "10.1.0.2", "10.2.0.2"


class FakeUA:
    def __init__(self) -> None:
        self.contact = type("C", (), {"host": WAN1})()
        self.bound: dict[str, Address | None] = {}
        self.moved_to: list[str] = []
        self.sockets: set[str] = set()  # hosts of the SIP sockets opened after start
        self.busy: set[str] = set()  # hosts a transaction still sends from

    def local_address(self, host: str) -> Address:
        self.sockets.add(host)
        return Address(host, 5060, "udp")

    def bind_call(self, call_id: str, local: Address | None) -> None:
        self.bound[call_id] = local

    def move_to(self, host: str) -> Address:
        self.moved_to.append(host)
        self.contact.host = host
        self.sockets.add(host)
        return Address(host, 5060, "udp")

    def added_addresses(self) -> list[str]:
        return sorted(self.sockets)

    def release_address(self, host: str) -> bool:
        if host in self.busy or host == self.contact.host \
                or any(a is not None and a.host == host for a in self.bound.values()):
            return False
        self.sockets.discard(host)
        return True


class FakeCall:
    def __init__(self, cid: str) -> None:
        self.call_id = f"sip-{cid}"


class FakeOA:
    def __init__(self, address: str) -> None:
        self.local = parse(f"v=0\r\no=sipmob 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\n"
                           "t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")


class FakePC:
    def __init__(self, cid: str, address: str) -> None:
        self.id = cid
        self.peer = "sip:cn@192.0.2.1"
        self.call = FakeCall(cid)
        self.oa = FakeOA(address)


class FakePhone:
    def __init__(self) -> None:
        self.reactor = Clock()
        self.ua = FakeUA()
        self.address = WAN1
        self.calls: dict[str, Any] = {}
        self.config = type("Config", (), {"listen": type("Listen", (), {"address": "192.168.1.2"})()})()


@pytest.fixture
def egress(monkeypatch: pytest.MonkeyPatch) -> tuple[PhoneEgress, FakePhone, list[tuple[str, str]]]:
    config = parse_config(EgressConfig, {"policy": "least_load",
                                         "egress": [{"name": "wan1", "interface": "eth1", "priority": 1},
                                                    {"name": "wan2", "interface": "eth2", "priority": 2}]})
    phone = FakePhone()
    pe = PhoneEgress(phone, config)  # type: ignore[arg-type]
    pe.monitor.watcher = None  # the kernel's news come from the test
    reinvited: list[tuple[str, str]] = []
    monkeypatch.setattr(pe, "_reinvite", lambda pc, address, *_a: reinvited.append((pc.id, address)))
    for name, address in (("eth1", WAN1), ("eth2", WAN2)):
        pe.monitor._link(name, True)
        pe.monitor._address(name, address, True)
    pe.start()
    return pe, phone, reinvited


def place(pe: PhoneEgress, phone: FakePhone, cid: str) -> FakePC:
    route = pe.route()
    pc = FakePC(cid, route.address)
    pe.route_done(route)
    phone.calls[cid] = pc
    pe.call_added(pc)  # type: ignore[arg-type]
    return pc


def test_new_calls_spread_over_the_egresses_and_are_bound_there(egress: Any) -> None:
    pe, phone, _ = egress
    first, second = pe.route(), pe.route()  # both INVITEs out at once: counted while they are
    assert (first.egress, first.local, second.egress, second.local) == (
        "wan1", Address(WAN1, 5060, "udp"), "wan2", Address(WAN2, 5060, "udp"))
    pe.route_done(first)
    pe.route_done(second)
    place(pe, phone, "1")
    place(pe, phone, "2")
    assert phone.ua.bound == {"sip-1": Address(WAN1, 5060, "udp"), "sip-2": Address(WAN2, 5060, "udp")}
    assert {r["name"]: r["calls"] for r in pe.rows()["egresses"]} == {"wan1": ["1"], "wan2": ["2"]}
    assert pe.egress == "wan1"


def test_a_failed_egress_moves_only_its_calls_and_the_phones_sip_stays(egress: Any) -> None:
    pe, phone, reinvited = egress
    place(pe, phone, "1")
    place(pe, phone, "2")
    pe.monitor._link("eth2", False)
    assert reinvited == [("2", WAN1)]
    assert phone.ua.bound["sip-2"] == Address(WAN1, 5060, "udp")
    assert phone.ua.bound["sip-1"] == Address(WAN1, 5060, "udp") and phone.ua.moved_to == []
    assert {r["name"]: r["calls"] for r in pe.rows()["egresses"]} == {"wan1": ["1", "2"], "wan2": []}


def test_when_the_sip_egress_fails_sip_moves_with_its_calls(egress: Any) -> None:
    pe, phone, reinvited = egress
    place(pe, phone, "1")
    place(pe, phone, "2")
    pe.monitor._link("eth1", False)
    assert reinvited == [("1", WAN2)] and phone.ua.moved_to == [WAN2] and pe.egress == "wan2"


def test_an_address_change_moves_the_calls_on_that_egress(egress: Any) -> None:
    pe, phone, reinvited = egress
    place(pe, phone, "1")
    place(pe, phone, "2")
    pe.monitor._address("eth2", "10.2.0.3", True)
    pe.monitor._address("eth2", WAN2, False)
    assert reinvited == [("2", "10.2.0.3")] and phone.ua.moved_to == []
    assert phone.ua.bound["sip-2"] == Address("10.2.0.3", 5060, "udp")


def test_an_ended_call_is_unbound_and_uncounted(egress: Any) -> None:
    pe, phone, _ = egress
    pc = place(pe, phone, "1")
    del phone.calls["1"]
    pe.call_ended(pc)
    assert phone.ua.bound["sip-1"] is None
    assert [r["sessions"] for r in pe.monitor.rows()] == [0, 0]


def test_sockets_on_a_gone_address_close_once_nothing_sends_from_them(egress: Any) -> None:
    pe, phone, _ = egress
    place(pe, phone, "1")
    place(pe, phone, "2")
    assert phone.ua.sockets == {WAN1, WAN2}
    phone.ua.busy.add(WAN2)  # the call's last request from there is not answered yet
    pe.monitor._address("eth2", "10.2.0.3", True)
    pe.monitor._address("eth2", WAN2, False)
    phone.reactor.advance(0)
    assert phone.ua.sockets == {WAN1, WAN2, "10.2.0.3"}
    phone.ua.busy.clear()
    phone.reactor.advance(2.0)
    assert phone.ua.sockets == {WAN1, "10.2.0.3"}
    # a link down: its address stays on the interface, but nothing is on it any more
    pe.monitor._link("eth2", False)
    phone.reactor.advance(0)
    assert phone.ua.sockets == {WAN1}
    assert not phone.reactor.getDelayedCalls()  # nothing left to look at again


def test_the_address_of_a_call_that_cannot_move_keeps_its_socket(egress: Any) -> None:
    pe, phone, _ = egress
    place(pe, phone, "1")
    pe.monitor._link("eth2", False)
    pe.monitor._link("eth1", False)  # stranded: no egress up
    phone.reactor.advance(0)
    assert WAN1 in phone.ua.sockets


def test_a_restored_call_on_a_down_egress_or_a_gone_address_moves_at_once(egress: Any) -> None:
    pe, phone, reinvited = egress
    pe.monitor._link("eth2", False)
    for cid, address in (("1", WAN1), ("2", WAN2), ("3", "10.9.0.2")):
        pc = FakePC(cid, address)
        phone.calls[cid] = pc
        pe.call_added(pc, restored=True)  # type: ignore[arg-type]
    assert reinvited == []  # not before the phone has taken the call back entirely
    phone.reactor.advance(0)
    assert sorted(reinvited) == [("2", WAN1), ("3", WAN1)]
    assert {r["name"]: r["calls"] for r in pe.rows()["egresses"]} == {"wan1": ["1", "2", "3"], "wan2": []}


class FakeInvite:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def ringing_call(pe: PhoneEgress, phone: FakePhone, answered_early: bool) -> Any:
    from twisted.internet import defer

    from sipmob.mn.egress import Ringing
    from sipmob.sdp import OfferAnswerState

    route = pe.route()
    assert route.egress == "wan1"
    oa = OfferAnswerState(FakeOA(WAN1).local.origin)
    oa.create_offer(FakeOA(WAN1).local)
    oa.receive_answer(FakeOA("192.0.2.1").local)  # the callee's answer in its reliable 18x
    ringing = Ringing(route, WAN1, oa, object(), FakeInvite(), 7, answered_early)
    phone.ua.ringing = lambda handle: handle == 7  # type: ignore[attr-defined]
    phone.ua.bind_ringing = lambda handle, local: phone.ua.bound.update(ringing=local)  # type: ignore[attr-defined]
    phone.ua.updates = []  # type: ignore[attr-defined]
    phone.ua.update_early = lambda handle, sdp: (phone.ua.updates.append(sdp), defer.Deferred())[1]  # type: ignore[attr-defined]
    phone._new_rtp = lambda **_kw: type("Rtp", (), {"port": 4010, "close": lambda self: None})()  # type: ignore[attr-defined]
    pe.ringing_started(ringing)
    return ringing


def test_a_ringing_call_whose_link_is_down_is_cancelled_to_be_invited_again(egress: Any) -> None:
    pe, phone, _ = egress
    ringing = ringing_call(pe, phone, answered_early=True)
    pe.monitor._link("eth1", False)  # the way in is gone with the link: no UPDATE can help
    assert ringing.invite.cancelled and ringing.again == (WAN2, Address(WAN2, 5060, "udp"))
    assert phone.ua.bound["ringing"] == Address(WAN2, 5060, "udp")  # the CANCEL leaves from wan2


def test_a_ringing_call_with_an_early_answer_and_a_way_in_moves_by_update(egress: Any) -> None:
    pe, phone, _ = egress
    ringing = ringing_call(pe, phone, answered_early=True)
    for _ in range(3):  # probes unanswered: the upstream is dead, the link and address are there
        pe.monitor.egresses.probe_result("wan1", False, None, 0.0)
    pe.monitor._pump()
    assert not ringing.invite.cancelled and ringing.updating is not None
    [offer] = phone.ua.updates
    assert b"c=IN IP4 10.2.0.2" in offer and b"m=audio 4010 " in offer


def test_a_ringing_call_without_an_early_answer_is_cancelled(egress: Any) -> None:
    pe, phone, _ = egress
    ringing = ringing_call(pe, phone, answered_early=False)
    for _ in range(3):
        pe.monitor.egresses.probe_result("wan1", False, None, 0.0)
    pe.monitor._pump()
    assert ringing.invite.cancelled and not phone.ua.updates
