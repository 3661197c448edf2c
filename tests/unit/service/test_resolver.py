"""The resolver's cache: answers kept for their TTL, TTL 0 not kept, failures not kept, bounded.
The DNS client is replaced by one that counts queries (the real one is exercised against a
twisted.names server in tests/integration/mn/test_dns.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.names.error import DNSNameError

from sipmob.service import resolver as resolver_module
from sipmob.service.resolver import Resolver
from sipmob.sip.locate import SRV, Query, RType, Target
from sipmob.sip.uri import URI


class FakeClient:
    def __init__(self, zone: dict[tuple[str, int], list[dns.RRHeader]]) -> None:
        self.zone = zone
        self.asked: list[tuple[str, int]] = []

    def _lookup(self, name: str, rtype: int) -> defer.Deferred[Any]:
        self.asked.append((name, rtype))
        if (name, rtype) not in self.zone:
            return defer.fail(DNSNameError(name))
        return defer.succeed((self.zone[(name, rtype)], [], []))

    def lookupNamingAuthorityPointer(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.NAPTR)

    def lookupService(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.SRV)

    def lookupAddress(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.A)

    def lookupIPV6Address(self, name: str) -> defer.Deferred[Any]:
        return self._lookup(name, dns.AAAA)


def rr(name: str, payload: Any, ttl: int) -> dns.RRHeader:
    return dns.RRHeader(name, payload.TYPE, dns.IN, ttl, payload)


def make(zone: dict[tuple[str, int], list[dns.RRHeader]]) -> tuple[Resolver, FakeClient, Clock]:
    clock = Clock()
    r = Resolver(clock, servers=[("127.0.0.1", 53)])
    client = FakeClient(zone)
    r._client = client  # type: ignore[assignment]
    return r, client, clock


ZONE = {
    ("example.test", dns.NAPTR): [rr("example.test", dns.Record_NAPTR(10, 10, b"s", b"SIP+D2U", b"",
                                                                      "_sip._udp.example.test"), 300)],
    ("_sip._udp.example.test", dns.SRV): [
        rr("_sip._udp.example.test", dns.Record_SRV(0, 0, 5070, "a.example.test"), 60)],
    ("a.example.test", dns.A): [rr("a.example.test", dns.Record_CNAME("b.example.test"), 60),
                                rr("a.example.test", dns.Record_A("10.0.0.1"), 10)],
}


def locate(r: Resolver, uri: str) -> list[Target]:
    result: list[list[Target]] = []
    r.locate(URI.parse(uri)).addCallback(result.append)
    assert result, "the fake client answers at once"
    return result[0]


def test_answers_are_kept_for_their_ttl() -> None:
    r, client, clock = make(ZONE)
    assert locate(r, "sip:alice@example.test") == [Target("udp", "10.0.0.1", 5070)]
    assert len(client.asked) == 3
    clock.advance(9)
    assert locate(r, "sip:bob@example.test") == [Target("udp", "10.0.0.1", 5070)]
    assert len(client.asked) == 3 and r.hits == 3
    clock.advance(2)  # the A record's 10 s are over, the SRV's 60 s are not
    locate(r, "sip:bob@example.test")
    assert client.asked[3:] == [("a.example.test", dns.A)]


def test_ttl_zero_and_nxdomain_are_not_kept() -> None:
    zone = {("x.test", dns.A): [rr("x.test", dns.Record_A("10.0.0.2"), 0)]}
    r, client, _ = make(zone)
    for _ in range(2):
        assert locate(r, "sip:x.test:5060") == [Target("udp", "10.0.0.2", 5060)]
        assert locate(r, "sip:y.test:5060") == []
    assert len(client.asked) == 4


def test_the_cache_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(resolver_module, "MAX_CACHE", 10)
    zone = {(f"h{i}.test", dns.A): [rr(f"h{i}.test", dns.Record_A("10.0.0.3"), 600)] for i in range(50)}
    r, _, _ = make(zone)
    for i in range(50):
        r.lookup(Query(f"h{i}.test", RType.A))
    assert len(r._cache) <= 10
    got: list[Any] = []
    r.lookup(Query("h49.test", RType.A)).addCallback(got.append)  # the newest is still there
    assert got == [["10.0.0.3"]] and r.hits == 1


def test_srv_records_convert() -> None:
    r, _, _ = make(ZONE)
    got: list[Any] = []
    r.lookup(Query("_sip._udp.example.test", RType.SRV)).addCallback(got.append)
    assert got == [[SRV(0, 0, 5070, "a.example.test")]]
