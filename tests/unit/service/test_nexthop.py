"""LocatingUserAgent's choices (RFC 3263 §4.3): which target each try goes to, what makes the next
one tried, and the outbound proxy. The sending itself is replaced; against real peers see
tests/integration/mn/test_dns.py."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from sipmob.service.nexthop import RELOCATE_DELAY, LocatingUserAgent, NotLocated
from sipmob.service.sipua import CallFailed, UserAgent
from sipmob.sip.locate import Target
from sipmob.sip.message import Headers, Response
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI

A = Target("udp", "10.0.0.1", 5060)
B = Target("udp", "10.0.0.2", 5060)
C = Target("udp", "10.0.0.3", 5070)


class StubResolver:
    def __init__(self, targets: list[Target]) -> None:
        self.targets = targets
        self.located: list[str] = []

    def locate(self, uri: URI) -> defer.Deferred[list[Target]]:
        self.located.append(str(uri))
        return defer.succeed(list(self.targets))


def agent(targets: list[Target], outcomes: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
          proxy: str | None = None) -> tuple[LocatingUserAgent, list[Address], StubResolver]:
    """`outcomes` maps a host to the status a try there ends with (200: success)."""
    resolver = StubResolver(targets)
    ua = LocatingUserAgent(Clock(), resolver=resolver, outbound_proxy=proxy,  # type: ignore[arg-type]
                           listen=[("127.0.0.1", 0, "udp")])
    tried: list[Address] = []

    def invite(self: UserAgent, target: URI, sdp: bytes | None, **kw: Any) -> defer.Deferred[Any]:
        hop = ua.next_hop(target)
        tried.append(hop)
        status = outcomes[hop.host]
        return defer.succeed("call") if status == 200 else defer.fail(CallFailed(status, "x"))

    def request(self: UserAgent, method: str, target: URI, **kw: Any) -> defer.Deferred[Any]:
        hop = ua.next_hop(target)
        tried.append(hop)
        return defer.succeed(Response(outcomes[hop.host], "x", Headers()))

    monkeypatch.setattr(UserAgent, "invite", invite)
    monkeypatch.setattr(UserAgent, "request", request)
    return ua, tried, resolver


def result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out
    return out[0]


def test_timeout_and_503_move_on_other_failures_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, _ = agent([A, B, C], {"10.0.0.1": 408, "10.0.0.2": 503, "10.0.0.3": 200}, monkeypatch)
    assert result(ua.invite("sip:alice@example.test", b"")) == "call"
    assert [a.host for a in tried] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert tried[-1] == Address("10.0.0.3", 5070, "udp")

    ua, tried, _ = agent([A, B], {"10.0.0.1": 486, "10.0.0.2": 200}, monkeypatch)
    failure = result(ua.invite("sip:alice@example.test", b""))
    assert failure.value.status == 486 and len(tried) == 1  # busy is an answer, not a failed target


def test_the_last_failure_is_what_the_caller_sees(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, _ = agent([A, B], {"10.0.0.1": 503, "10.0.0.2": 408}, monkeypatch)
    failure = result(ua.invite("sip:alice@example.test", b""))
    assert isinstance(failure.value, CallFailed) and failure.value.status == 408 and len(tried) == 2


def test_a_503_response_to_options_moves_on(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, _ = agent([A, B], {"10.0.0.1": 503, "10.0.0.2": 200}, monkeypatch)
    assert result(ua.options("sip:alice@example.test")).status == 200
    assert len(tried) == 2


def test_the_target_that_answered_goes_first_next_time(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, _ = agent([A, B], {"10.0.0.1": 408, "10.0.0.2": 200}, monkeypatch)
    result(ua.invite("sip:alice@example.test", b""))
    tried.clear()
    result(ua.invite("sip:bob@example.test", b""))  # same domain, another user
    assert [a.host for a in tried] == ["10.0.0.2"]


def test_the_outbound_proxy_is_located_instead_of_the_callee(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, resolver = agent([C], {"10.0.0.3": 200}, monkeypatch, proxy="sip:proxy.example.net")
    assert result(ua.invite("sip:alice@example.test", b"")) == "call"
    assert resolver.located == ["sip:proxy.example.net"]
    assert tried == [Address("10.0.0.3", 5070, "udp")]


def test_ip_literals_are_not_located(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, resolver = agent([A], {"192.0.2.7": 200}, monkeypatch)
    assert result(ua.invite("sip:alice@192.0.2.7:5080", b"")) == "call"
    assert resolver.located == [] and tried == [Address("192.0.2.7", 5080, "udp")]


def test_no_targets_is_a_503_naming_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, _ = agent([], {}, monkeypatch)
    failure = result(ua.invite("sip:alice@nowhere.test", b""))
    assert failure.value.status == 503 and "nowhere.test" in failure.value.reason and tried == []


def test_without_a_resolver_a_name_is_a_clear_failure() -> None:
    ua = LocatingUserAgent(Clock(), listen=[("127.0.0.1", 0, "udp")])
    failure = result(ua.invite("sip:alice@example.test", b""))
    assert failure.value.status == 503 and "no DNS resolver" in failure.value.reason


def test_a_registrar_not_in_dns_is_located_again_later(monkeypatch: pytest.MonkeyPatch) -> None:
    ua, tried, resolver = agent([], {}, monkeypatch)
    clock = ua.reactor
    ua._core_obj = object()  # type: ignore[assignment]  # started, as far as this rule cares
    monkeypatch.setattr(UserAgent, "stop", lambda self: defer.succeed(None))
    failure = result(ua.register("sip:registrar.example.test"))
    assert isinstance(failure.value, NotLocated) and failure.value.status == 503
    assert resolver.located == ["sip:registrar.example.test"]
    clock.advance(RELOCATE_DELAY)
    assert len(resolver.located) == 2  # and it keeps trying while nothing is found
    result(ua.stop())
    clock.advance(10 * RELOCATE_DELAY)
    assert len(resolver.located) == 2 and not clock.getDelayedCalls()
