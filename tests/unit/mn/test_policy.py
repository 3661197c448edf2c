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
from sipmob.service.config import parse_config
from sipmob.sip.message import Headers, Request
from sipmob.sip.policy import Admission
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI

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
