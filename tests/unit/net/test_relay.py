"""Relays through our egress for another gateway (`sipmob.net.relay`): one attack per rule."""

from __future__ import annotations

import pytest

from sipmob.net.relay import (
    Allocation,
    RelayRefused,
    RelayTable,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)

HOME = ["192.168.50.0/24"]
A = "192.168.50.1"
CN_SIP = "203.0.113.7:5060"


def table(max_relays: int = 4) -> RelayTable:
    return RelayTable(HOME, max_relays=max_relays, max_expires=600)


def test_a_gateway_of_the_home_gets_its_relays_for_what_it_asked() -> None:
    grant = table().open("k", A, f"{CN_SIP}, 203.0.113.7:4000", 3600, now=10.0)
    assert grant.peers == (("203.0.113.7", 5060), ("203.0.113.7", 4000))
    assert grant.expires_at == 610.0  # at most max_expires


def test_a_stranger_gets_403() -> None:
    with pytest.raises(RelayRefused) as refused:
        table().open("k", "198.51.100.9", CN_SIP, 600, 0.0)
    assert refused.value.status == 403


@pytest.mark.parametrize("far_end", ["192.168.50.9:5060", "127.0.0.1:5060", "224.0.0.1:5004",
                                     "0.0.0.0:5060", "[fe80::1]:5060"])
def test_no_relay_into_the_home_or_to_loopback_multicast_or_link_local(far_end: str) -> None:
    with pytest.raises(RelayRefused) as refused:
        table().open("k", A, far_end, 600, 0.0)
    assert refused.value.status == 403


def test_more_relays_than_allowed_get_503_and_nothing_is_kept() -> None:
    t = table(max_relays=3)
    t.open("k1", A, f"{CN_SIP}, 203.0.113.7:4000", 600, 0.0)
    with pytest.raises(RelayRefused) as refused:
        t.open("k2", A, f"{CN_SIP}, 203.0.113.7:4002", 600, 0.0)
    assert refused.value.status == 503 and list(t.grants) == ["k1"]
    t.open("k1", A, f"{CN_SIP}, 203.0.113.7:4000", 600, 1.0)  # a refresh of one we hold is fine


@pytest.mark.parametrize("relay_to", ["", "nohost", "203.0.113.7:0", "203.0.113.7:99999", "name.example:5060",
                                      ", ".join(["203.0.113.7:5060"] * 5), "x" * 5000])
def test_a_malformed_relay_to_is_400(relay_to: str) -> None:
    with pytest.raises(RelayRefused) as refused:
        decode_request(relay_to)
    assert refused.value.status == 400


def test_datagrams_only_from_the_asker_inside_and_from_the_cns_sip_host_outside() -> None:
    grant = table().open("k", A, f"{CN_SIP}, 203.0.113.7:4000", 600, 0.0)
    assert RelayTable.from_lan_ok(grant, A) and not RelayTable.from_lan_ok(grant, "192.168.50.66")
    assert RelayTable.from_wan_ok(grant, 0, "203.0.113.7")
    assert not RelayTable.from_wan_ok(grant, 0, "198.51.100.9")  # nobody else reaches our SIP
    assert RelayTable.from_wan_ok(grant, 1, "198.51.100.10")  # media may come from another address
    assert not RelayTable.from_wan_ok(grant, 2, "203.0.113.7")


def test_relays_expire_and_close() -> None:
    t = table()
    t.open("k", A, CN_SIP, 60, 0.0)
    assert t.get_timer() == 60.0
    assert t.expired(59.0) == [] and [g.key for g in t.expired(60.0)] == ["k"]
    assert t.grants == {} and t.get_timer() is None


def test_bodies_round_trip_ipv6_included() -> None:
    peers = [("2001:db8::7", 5060), ("203.0.113.7", 4000)]
    assert decode_request(encode_request(peers)) == tuple(peers)
    allocations = (Allocation(("203.0.113.7", 5060), ("192.168.50.2", 4001), ("198.51.100.2", 40001)),)
    assert decode_answer(encode_answer(allocations)) == allocations
    with pytest.raises(ValueError):
        decode_answer(b'{"relays": [{"peer": []}]}')


def test_a_refresh_extends_a_relay_and_expires_zero_ends_it() -> None:
    t = table()
    t.open("k", A, CN_SIP, 60, 0.0)
    assert t.refresh("k", 3600, 50.0).expires_at == 650.0  # type: ignore[union-attr]
    assert t.expired(640.0) == []
    assert t.refresh("k", 0, 100.0) is not None and t.grants == {}
    assert t.refresh("gone", 60, 100.0) is None
