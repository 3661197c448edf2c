"""RFC 3263 §4 server location: which queries, in which order, and the targets that come out."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sipmob.sip.locate import (
    MAX_TARGETS,
    NAPTR,
    SRV,
    LocateError,
    Query,
    Resolution,
    RType,
    Target,
    needs_dns,
    order_srv,
)
from sipmob.sip.uri import URI

Zone = dict[tuple[str, RType], list[object]]


def run(uri: str, zone: Zone, **kw: object) -> tuple[list[Target], list[list[Query]]]:
    """Drive a Resolution against `zone`; returns the targets and the batches of queries asked."""
    res = Resolution(URI.parse(uri), **kw)  # type: ignore[arg-type]
    batches = []
    while not res.done:
        batch = res.pending()
        assert batch, "a resolution that is not done must ask something"
        batches.append(batch)
        for q in batch:
            res.feed(q, zone.get((q.name, q.rtype), []))  # type: ignore[arg-type]
    return res.targets(), batches


# RFC 3263 §4.1's example zone, with the SRV and A records it leads to.
RFC_ZONE: Zone = {
    ("example.com", RType.NAPTR): [
        NAPTR(50, 50, "s", "SIPS+D2T", "_sips._tcp.example.com."),
        NAPTR(90, 50, "s", "SIP+D2T", "_sip._tcp.example.com"),
        NAPTR(100, 50, "s", "SIP+D2U", "_sip._udp.example.com."),
    ],
    ("_sips._tcp.example.com", RType.SRV): [SRV(0, 0, 5061, "tls.example.com.")],
    ("_sip._tcp.example.com", RType.SRV): [SRV(0, 0, 5060, "tcp.example.com.")],
    ("_sip._udp.example.com", RType.SRV): [SRV(0, 1, 5060, "server1.example.com"),
                                           SRV(0, 2, 5060, "server2.example.com")],
    ("tls.example.com", RType.A): ["192.0.2.5"],
    ("tcp.example.com", RType.A): ["192.0.2.6"],
    ("server1.example.com", RType.A): ["192.0.2.1"],
    ("server2.example.com", RType.A): ["192.0.2.2"],
}


@pytest.mark.parametrize(("uri", "transports", "expected"), [
    ("sip:alice@192.0.2.1", ("udp",), Target("udp", "192.0.2.1", 5060)),
    ("sip:alice@192.0.2.1:5070", ("udp",), Target("udp", "192.0.2.1", 5070)),
    ("sips:alice@192.0.2.1", ("udp", "tls"), Target("tls", "192.0.2.1", 5061)),
    ("sip:alice@[2001:db8::1]:5070;transport=tcp", ("udp", "tcp"), Target("tcp", "2001:db8::1", 5070)),
    ("sip:alice@example.com;maddr=192.0.2.9", ("udp",), Target("udp", "192.0.2.9", 5060)),
])
def test_a_numeric_host_asks_dns_nothing(uri: str, transports: tuple[str, ...], expected: Target) -> None:
    assert not needs_dns(URI.parse(uri))
    assert run(uri, {}, transports=transports) == ([expected], [])


def test_an_explicit_port_means_address_records_only() -> None:
    targets, batches = run("sip:alice@Example.COM.:5080", {("example.com", RType.A): ["192.0.2.1"]},
                           families=(RType.A, RType.AAAA))
    assert batches == [[Query("example.com", RType.A), Query("example.com", RType.AAAA)]]
    assert targets == [Target("udp", "192.0.2.1", 5080)]


def test_a_transport_parameter_skips_naptr_and_asks_that_srv() -> None:
    zone: Zone = {("_sip._tcp.example.com", RType.SRV): [SRV(0, 0, 5090, "pbx.example.com")],
                  ("pbx.example.com", RType.A): ["192.0.2.3"]}
    targets, batches = run("sip:alice@example.com;transport=TCP", zone, transports=("udp", "tcp"),
                           families=(RType.A,))
    assert batches == [[Query("_sip._tcp.example.com", RType.SRV)], [Query("pbx.example.com", RType.A)]]
    assert targets == [Target("tcp", "192.0.2.3", 5090)]


def test_rfc3263_naptr_example_with_udp_and_tcp_takes_the_lowest_order_supported() -> None:
    # SIPS+D2T (order 50) needs TLS, which this client lacks: SIP+D2T (order 90) wins over UDP (100).
    targets, batches = run("sip:bob@example.com", RFC_ZONE, transports=("udp", "tcp"), families=(RType.A,))
    assert batches[0] == [Query("example.com", RType.NAPTR)]
    assert batches[1] == [Query("_sip._tcp.example.com", RType.SRV)]
    assert targets == [Target("tcp", "192.0.2.6", 5060)]


def test_rfc3263_naptr_example_udp_only_client() -> None:
    targets, _ = run("sip:bob@example.com", RFC_ZONE, transports=("udp",), families=(RType.A,),
                     rng=random.Random(1))
    assert sorted(targets) == [Target("udp", "192.0.2.1", 5060), Target("udp", "192.0.2.2", 5060)]


def test_a_sips_uri_uses_sips_services_only() -> None:
    targets, _ = run("sips:bob@example.com", RFC_ZONE, transports=("udp", "tcp", "tls"), families=(RType.A,))
    assert targets == [Target("tls", "192.0.2.5", 5061)]


def test_a_sips_uri_without_tls_cannot_be_located() -> None:
    with pytest.raises(LocateError, match="tls"):
        run("sips:bob@example.com", RFC_ZONE, transports=("udp",))


def test_an_unusable_transport_parameter_is_refused() -> None:
    with pytest.raises(LocateError, match="transport tcp"):
        Resolution(URI.parse("sip:bob@example.com;transport=tcp"), transports=("udp",))


def test_without_naptr_srv_is_asked_for_each_supported_transport_in_our_order() -> None:
    zone: Zone = {("_sip._udp.example.org", RType.SRV): [SRV(10, 0, 5060, "a.example.org")],
                  ("_sip._tcp.example.org", RType.SRV): [SRV(10, 0, 5060, "b.example.org")],
                  ("a.example.org", RType.A): ["192.0.2.10"], ("b.example.org", RType.A): ["192.0.2.11"]}
    targets, batches = run("sip:carol@example.org", zone, transports=("udp", "tcp"), families=(RType.A,))
    assert batches[1] == [Query("_sip._udp.example.org", RType.SRV),
                          Query("_sip._tcp.example.org", RType.SRV)]
    assert targets == [Target("udp", "192.0.2.10", 5060), Target("tcp", "192.0.2.11", 5060)]


def test_without_naptr_and_srv_the_host_itself_on_the_default_port() -> None:
    targets, batches = run("sip:carol@example.org", {("example.org", RType.A): ["192.0.2.20"]},
                           families=(RType.A,))
    assert [q.rtype for b in batches for q in b] == [RType.NAPTR, RType.SRV, RType.A]
    assert targets == [Target("udp", "192.0.2.20", 5060)]


def test_naptr_transport_is_kept_when_its_srv_is_empty() -> None:
    zone: Zone = {("example.net", RType.NAPTR): [NAPTR(10, 10, "S", "SIP+D2T", "_sip._tcp.example.net")],
                  ("example.net", RType.A): ["192.0.2.30"]}
    targets, _ = run("sip:dan@example.net", zone, transports=("udp", "tcp"), families=(RType.A,))
    assert targets == [Target("tcp", "192.0.2.30", 5060)]


def test_naptr_with_other_flags_or_services_is_ignored() -> None:
    zone: Zone = {("example.net", RType.NAPTR): [NAPTR(10, 10, "u", "SIP+D2U", "x.example.net"),
                                                 NAPTR(10, 20, "s", "E2U+sip", "_sip._udp.example.net")],
                  ("_sip._udp.example.net", RType.SRV): [SRV(0, 0, 5070, "sip.example.net")],
                  ("sip.example.net", RType.A): ["192.0.2.31"]}
    targets, batches = run("sip:dan@example.net", zone, families=(RType.A,))
    assert batches[1] == [Query("_sip._udp.example.net", RType.SRV)]  # the fallback, not the NAPTRs
    assert targets == [Target("udp", "192.0.2.31", 5070)]


def test_srv_priority_orders_targets_and_every_address_of_a_target_is_tried() -> None:
    zone: Zone = {("_sip._udp.example.test", RType.SRV): [SRV(20, 0, 5062, "backup.example.test"),
                                                         SRV(10, 0, 5061, "main.example.test")],
                  ("main.example.test", RType.A): ["10.0.0.1", "10.0.0.2"],
                  ("backup.example.test", RType.A): ["10.0.0.3"]}
    targets, _ = run("sip:alice@example.test", zone, families=(RType.A,))
    assert targets == [Target("udp", "10.0.0.1", 5061), Target("udp", "10.0.0.2", 5061),
                       Target("udp", "10.0.0.3", 5062)]


def test_an_srv_target_of_dot_means_no_service_and_no_fallback() -> None:
    zone: Zone = {("_sip._udp.example.test", RType.SRV): [SRV(0, 0, 0, ".")],
                  ("example.test", RType.A): ["10.0.0.1"]}
    targets, _ = run("sip:alice@example.test", zone, families=(RType.A,))
    assert targets == []


def test_nxdomain_gives_no_targets() -> None:
    assert run("sip:alice@nowhere.test", {})[0] == []


def test_records_of_the_wrong_family_or_type_are_ignored() -> None:
    zone: Zone = {("example.test", RType.A): ["2001:db8::1", "not an address", "10.0.0.1"],
                  ("example.test", RType.AAAA): ["2001:db8::2", "10.0.0.9"]}
    targets, _ = run("sip:alice@example.test:5060", zone)
    assert targets == [Target("udp", "10.0.0.1", 5060), Target("udp", "2001:db8::2", 5060)]


def test_a_huge_zone_is_bounded() -> None:
    zone: Zone = {("_sip._udp.big.test", RType.SRV): [SRV(0, 0, 5060, f"h{i}.big.test") for i in range(500)]}
    zone.update({(f"h{i}.big.test", RType.A): [f"10.1.{i // 256}.{i % 256}"] for i in range(500)})
    res = Resolution(URI.parse("sip:x@big.test"), families=(RType.A,))
    asked = 0
    while not res.done:
        for q in res.pending():
            asked += 1
            res.feed(q, zone.get((q.name, q.rtype), []))  # type: ignore[arg-type]
    assert asked <= 2 + MAX_TARGETS
    assert len(res.targets()) == MAX_TARGETS


def test_other_schemes_and_missing_hosts_are_errors() -> None:
    with pytest.raises(LocateError):
        Resolution(URI.parse("tel:+15551234"))


def test_targets_before_done_is_an_error() -> None:
    with pytest.raises(LocateError):
        Resolution(URI.parse("sip:a@example.test")).targets()


def test_rfc2782_weighted_order_follows_the_weights() -> None:
    # RFC 3263 §4.2's example: weight 2 comes first about twice as often as weight 1.
    records = [SRV(0, 1, 5060, "server1.example.com"), SRV(0, 2, 5060, "server2.example.com")]
    rng = random.Random(7)
    first = Counter(order_srv(records, rng)[0].target for _ in range(3000))
    assert 0.60 < first["server2.example.com"] / 3000 < 0.73


def test_rfc2782_zero_weight_comes_after_the_weighted_ones() -> None:
    records = [SRV(0, 0, 5060, "zero"), SRV(0, 50, 5060, "fifty"), SRV(0, 0, 5060, "nil")]
    rng = random.Random(3)
    orders = Counter(tuple(r.target for r in order_srv(records, rng)) for _ in range(500))
    assert set(orders) == {("fifty", "zero", "nil"), ("fifty", "nil", "zero")}


def test_all_zero_weights_still_order_everything() -> None:
    records = [SRV(1, 0, 1, "a"), SRV(1, 0, 2, "b"), SRV(0, 0, 3, "c")]
    ordered = order_srv(records, random.Random(0))
    assert ordered[0].target == "c"
    assert sorted(r.target for r in ordered) == ["a", "b", "c"]


class FixedRandom:
    def __init__(self, values: list[int]) -> None:
        self.values = values

    def randint(self, a: int, b: int) -> int:
        value = self.values.pop(0)
        assert a <= value <= b
        return value


def test_rfc2782_running_sum_selection_with_a_known_random_source() -> None:
    records = [SRV(0, 10, 1, "a"), SRV(0, 20, 2, "b"), SRV(0, 30, 3, "c")]
    # running sums 10, 30, 60: 25 picks b; then a, c remain (10, 40): 40 picks c; then a
    assert [r.target for r in order_srv(records, FixedRandom([25, 40, 1]))] == ["b", "c", "a"]
    # the smallest pick takes the first record, the largest the last
    assert [r.target for r in order_srv(records, FixedRandom([1, 50, 1]))] == ["a", "c", "b"]
