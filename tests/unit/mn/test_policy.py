"""The phone's policy (sipmob.mn.policy): each rule on its own, in the order the phone applies them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from twisted.internet import task

from sipmob.mn import policy as policy_module
from sipmob.mn.config import MnConfig
from sipmob.mn.phone import Phone
from sipmob.mn.policy import PhonePolicy
from sipmob.mn.store import CallStore, StoredCall
from sipmob.service.config import parse_config
from sipmob.sip.dialog import Dialog, DialogState
from sipmob.sip.message import Headers, Request, Response, parse_message
from sipmob.sip.policy import Admission
from sipmob.sip.transport import Address
from sipmob.sip.ua import RequestReceived, UACore
from sipmob.sip.uri import URI, NameAddr

LAN = Address("192.168.1.20", 5060, "udp")
STRANGER = Address("203.0.113.5", 5060, "udp")


def request(method: str = "INVITE", user: str | None = "mn") -> Request:
    target = f"sip:{user}@192.0.2.10" if user else "sip:192.0.2.10"
    h = Headers([("Via", "SIP/2.0/UDP 192.168.1.20;branch=z9hG4bKx"), ("From", "<sip:cn@192.168.1.20>;tag=1"),
                 ("To", f"<{target}>"), ("Call-ID", "c"), ("CSeq", f"1 {method}")])
    return Request(method, URI.parse(target), h)


def status(p: PhonePolicy, req: Request, source: Address = LAN, now: float = 0.0) -> int | None:
    refusal = p.admit(Admission(req, source, now))
    return None if refusal is None else refusal.status


def test_another_user_gets_404_and_options_to_the_host_is_answered() -> None:
    p = PhonePolicy(user="mn")
    assert status(p, request(user="admin")) == 404
    assert status(p, request("OPTIONS", user="admin")) == 404
    assert status(p, request("OPTIONS", user=None)) is None
    assert status(p, request("INVITE", user=None)) == 404
    assert status(p, request("OPTIONS")) is None


def test_setups_past_the_rate_get_503_with_retry_after_and_the_bucket_refills() -> None:
    p = PhonePolicy(user="mn", setups_per_minute=6)
    assert [status(p, request()) for _ in range(6)] == [None] * 5 + [503]
    refusal = p.admit(Admission(request(), LAN, 0.0))
    assert refusal is not None and refusal.headers == (("Retry-After", "10"),)
    assert status(p, request(), now=10.5) is None
    assert status(p, request(), source=Address("192.168.1.21", 5060, "udp")) is None  # another address


def test_the_rate_table_is_bounded_without_resetting_everyone(monkeypatch: object) -> None:
    monkeypatch.setattr(policy_module, "MAX_SOURCES", 3)  # type: ignore[attr-defined]
    p = PhonePolicy(user="mn", setups_per_minute=1)
    assert status(p, request()) is None and status(p, request()) == 503
    for i in range(2):
        assert status(p, request(), source=Address(f"10.0.0.{i}", 5060, "udp")) is None
    assert status(p, request()) == 503  # LAN is still tracked: the table did not reset
    for i in range(2, 5):
        status(p, request(), source=Address(f"10.0.0.{i}", 5060, "udp"))
    assert len(p._buckets) == 3


def test_max_calls_and_max_calls_per_source_give_486() -> None:
    live = {"n": 4, "from": 0}
    p = PhonePolicy(user="mn", max_calls=4, calls=lambda: live["n"], calls_from=lambda host: live["from"])
    assert status(p, request()) == 486
    live.update(n=2, **{"from": 2})
    assert status(p, request()) == 486
    live["from"] = 1
    assert status(p, request()) is None


def test_only_callers_from_answer_from_are_answered() -> None:
    p = PhonePolicy(user="mn")
    assert status(p, request(), source=STRANGER) == 403
    assert status(p, request(), source=Address("fe80::1%eth0", 5060, "udp")) is None
    narrow = PhonePolicy(user="mn", answer_from=["192.168.1.0/24"])
    assert status(narrow, request(), source=Address("10.0.0.5", 5060, "udp")) == 403
    assert status(narrow, request()) is None
    assert narrow.refused[403] == 1


def test_a_reload_gives_the_phone_a_policy_with_the_new_limits(tmp_path: Path) -> None:
    config = parse_config(MnConfig, {"control": {"path": str(tmp_path / "mn.sock")}})
    p = Phone(config, task.Clock())
    assert p.policy.max_calls == 4 and p.policy.owners == ()
    p.reload(parse_config(MnConfig, {"calls": {"max_calls": 1}, "identity": {"owners": ["sip:o@h"]}}))
    assert p.policy.max_calls == 1 and p.policy.owners == (URI.parse("sip:o@h"),)
    assert p.ua._options["policy"] is p.policy


def test_refusals_are_logged_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    p = PhonePolicy(user="mn")
    with caplog.at_level(logging.INFO, logger="sipmob.mn"):
        for i in range(100):
            status(p, request(user="x"), now=i * 0.01)
        status(p, request(), source=STRANGER, now=policy_module.LOG_INTERVAL + 1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused INVITE from 192.168.1.20:5060: 404 Not Found",
                     "refused INVITE from 203.0.113.5:5060: 403 Not Answered From This Network "
                     "(refused since the last such line: 1 x 403, 99 x 404)"]


def test_a_host_rotating_through_its_subnet_gets_a_few_addresses_share_not_one_per_address() -> None:
    p = PhonePolicy(user="mn", setups_per_minute=6)  # a burst of 5 per address, 20 per /24
    rotating = [status(p, request(), source=Address(f"192.168.7.{i}", 5060, "udp")) for i in range(1, 201)]
    assert rotating.count(None) == 4 * 5 and set(rotating[20:]) == {503}
    # IPv6: the /64 is the unit a host can rotate through
    v6 = [status(p, request(), source=Address(f"2001:db8:1:2::{i:x}", 5060, "udp")) for i in range(1, 60)]
    assert sum(s != 503 for s in v6) == 20  # past the rate check (then 403: not a home network)
    # other subnets are untouched, and the subnet refills at four addresses' rate
    assert status(p, request(), source=Address("192.168.1.20", 5060, "udp")) is None
    assert status(p, request(), source=Address("192.168.7.250", 5060, "udp"), now=2.5) is None
    assert len(p._subnets) == 3


# Rule 6: within a dialog, only the hosts it involves ---------------------------------------------

def _dialog(contact: str = "sip:cn@192.168.1.20:5062", routes: tuple[str, ...] = ()) -> Dialog:
    return Dialog(call_id="c1", local_tag="ours", remote_tag="theirs", local_uri=NameAddr.parse("<sip:mn@h>"),
                  remote_uri=NameAddr.parse("<sip:cn@cn.example>"), remote_target=URI.parse(contact),
                  route_set=[NameAddr.parse(r) for r in routes], local_seq=1, remote_seq=1, is_uac=False,
                  local_contact=NameAddr.parse("<sip:mn@192.168.1.10>"), state=DialogState.CONFIRMED)


def _in_dialog(p: PhonePolicy, dialog: Dialog, host: str, peer: str = "", method: str = "BYE") -> int | None:
    refusal = p.admit(Admission(request(method), Address(host, 5060, "udp"), 0.0, dialog=dialog, peer=peer))
    return None if refusal is None else refusal.status


def test_in_a_dialog_the_peers_contact_host_is_taken_and_a_stranger_gets_403() -> None:
    p = PhonePolicy(user="mn")
    d = _dialog()
    for method in ("BYE", "INVITE", "INFO", "REFER", "NOTIFY"):
        assert _in_dialog(p, d, "192.168.1.20", method=method) is None, method
        assert _in_dialog(p, d, "192.168.1.66", method=method) == 403, method
        assert _in_dialog(p, d, "203.0.113.5", peer="192.168.1.20", method=method) == 403, method
    assert p.refused[403] == 10
    # a source inside answer_from is no reason either: the rule is the dialog's, not the network's
    assert p.answers("192.168.1.66")


def test_a_request_from_one_of_the_phones_own_addresses_is_this_host_itself() -> None:
    # the MDSM beside the phone, bound to every address: its NOTIFY leaves from the phone's address
    ours = {"10.200.1.2"}
    p = PhonePolicy(user="mn", own=lambda host: host in ours)
    d = _dialog("sip:living-room@127.0.0.1:5064")
    assert _in_dialog(p, d, "10.200.1.2", method="NOTIFY") is None
    assert _in_dialog(p, d, "10.200.1.3", method="NOTIFY") == 403
    assert _in_dialog(PhonePolicy(user="mn"), d, "10.200.1.2", method="NOTIFY") == 403


def test_a_peer_behind_a_nat_is_known_by_where_its_dialog_forming_request_came_from() -> None:
    p = PhonePolicy(user="mn")
    d = _dialog("sip:cn@10.0.0.5:5060")  # its Contact: an address of its own LAN
    assert _in_dialog(p, d, "198.51.100.9", peer="198.51.100.9") is None
    assert _in_dialog(p, d, "198.51.100.10", peer="198.51.100.9") == 403


def test_a_name_based_contact_is_resolved_by_nothing_and_matches_no_address() -> None:
    p = PhonePolicy(user="mn")
    d = _dialog("sip:cn@cn.example")
    assert _in_dialog(p, d, "198.51.100.9") == 403
    assert _in_dialog(p, d, "198.51.100.9", peer="198.51.100.9") is None


def test_the_route_sets_first_hop_and_the_configured_proxies_relay_the_peers_requests() -> None:
    p = PhonePolicy(user="mn", proxies=("sip:proxy.example.net;transport=tcp", "sip:192.0.2.50:5070", ""))
    d = _dialog(routes=("<sip:192.0.2.60;lr>", "<sip:192.0.2.61;lr>"))
    assert _in_dialog(p, d, "192.0.2.60") is None
    assert _in_dialog(p, d, "192.0.2.61") == 403  # not our next hop: we never hear from it
    assert _in_dialog(p, d, "192.0.2.50") is None
    assert _in_dialog(p, d, "proxy.example.net") is None  # a host written as configured
    assert _in_dialog(p, _dialog(), "192.0.2.60") == 403  # another dialog, without that route


def test_the_relays_a_call_goes_through_now_are_its_hosts_and_ipv6_is_compared_as_addresses() -> None:
    relays = {"c1": ("192.168.50.1",)}
    p = PhonePolicy(user="mn", relays=lambda call_id: relays.get(call_id, ()))
    assert _in_dialog(p, _dialog(), "192.168.50.1") is None
    relays.clear()
    assert _in_dialog(p, _dialog(), "192.168.50.1") == 403
    d6 = _dialog("sip:cn@[2001:DB8:0::20]:5060")
    assert _in_dialog(p, d6, "2001:db8::20") is None
    assert _in_dialog(p, d6, "2001:db8::21") == 403


def test_a_restored_call_knows_its_peer_behind_a_nat_by_the_stored_forming_address(tmp_path: Path) -> None:
    """After a restart (kill -9, then the call store), the CN whose Contact is an address of its
    own LAN is still known by where its INVITE came from; a stranger is still refused."""
    forming, contact = "198.51.100.9", "sip:cn@10.0.0.5:5060"
    ours = _dialog(contact)
    store = CallStore(tmp_path / "calls.sqlite", "sip:mn@192.168.1.10")
    store.put(StoredCall("1", "sip:cn@cn.example", ours.to_record(), peer_host=forming))
    store.close()
    (stored,) = CallStore(tmp_path / "calls.sqlite", "sip:mn@192.168.1.10").calls()
    ua = UACore([Address("192.168.1.10", 5060, "udp")], user="mn", policy=PhonePolicy(user="mn"))
    handle = ua.adopt(Dialog.from_record(stored.cn, seq_margin=100), peer_host=stored.peer_host)
    assert ua.peer_host(handle) == forming
    # the CN's side of the dialog: what it sends within it
    theirs = Dialog(call_id="c1", local_tag="theirs", remote_tag="ours", local_uri=ours.remote_uri,
                    remote_uri=ours.local_uri, remote_target=URI.parse("sip:mn@192.168.1.10"), route_set=[],
                    local_seq=5, remote_seq=1, is_uac=True, local_contact=NameAddr.parse(f"<{contact}>"),
                    state=DialogState.CONFIRMED)

    def sent() -> list[int]:
        return [m.status for d, _ in ua.messages_to_send() if isinstance(m := parse_message(d), Response)]

    def answers(method: str, host: str) -> list[int]:
        request = theirs.create_request(method, body=b"x", content_type="text/plain")
        request.headers.add("Via", f"SIP/2.0/UDP {host}:5060;branch=z9hG4bK{method}{theirs.local_seq};rport")
        ua.receive(request.to_bytes(), Address(host, 5060, "udp"), 0.0)
        return sent()

    ua.app_methods.add("INFO")
    assert answers("INFO", "203.0.113.5") == [403]
    assert answers("BYE", "10.0.0.6") == [403]  # a neighbour of the Contact's address: no reason either
    assert answers("INFO", forming) == []  # admitted: it is the application's to answer
    events = []
    while (event := ua.next_event()) is not None:
        events.append(event)
    (info,) = [e for e in events if isinstance(e, RequestReceived)]
    ua.respond(info.rid, 200, 0.0)
    assert sent() == [200]
    assert answers("BYE", forming) == [200]
    assert ua.call_state(handle) == "terminated"


def test_requests_outside_a_dialog_are_not_rule_6s() -> None:
    p = PhonePolicy(user="mn")
    assert p.admit(Admission(request("OPTIONS"), Address("203.0.113.5", 5060, "udp"), 0.0)) is None
