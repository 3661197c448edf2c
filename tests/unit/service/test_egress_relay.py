"""The relay edge without sockets: who gets relays by SUBSCRIBE sip-egress-relay, and what a relay
passes on (`sipmob.service.egress_relay`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.unit.service.test_egress import FakeIncoming, publisher
from twisted.internet.task import Clock

from sipmob.net.relay import RelayTable
from sipmob.service.egress_relay import RelayServer
from sipmob.service.sipua import SIPError


class FakePort:
    def __init__(self, proto: Any, port: int) -> None:
        self.proto, self.port, self.written, self.stopped = proto, port, [], False

    def getHost(self) -> Any:
        return type("H", (), {"port": self.port})()

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        self.written.append((data, addr))

    def stopListening(self) -> None:
        self.stopped = True


class Reactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.ports: list[FakePort] = []

    def listenUDP(self, port: int, proto: Any, interface: str = "", maxPacketSize: int = 0) -> FakePort:
        fake = FakePort(proto, 40000 + len(self.ports))
        self.ports.append(fake)
        return fake


def relay_subscribe(via: str, relay_to: str = "203.0.113.7:5060, 203.0.113.7:4000",
                    expires: str = "600") -> FakeIncoming:
    return FakeIncoming(f"SUBSCRIBE sip:mn@192.168.1.2 SIP/2.0\nVia: SIP/2.0/UDP {via};branch=z9hG4bK1\n"
                        "Max-Forwards: 70\nFrom: <sip:gw@h>;tag=1\nTo: <sip:mn@192.168.1.2>\nCall-ID: c\n"
                        f"CSeq: 1 SUBSCRIBE\nContact: <sip:gw@h>\nEvent: sip-egress-relay\n"
                        f"Relay-To: {relay_to}\nExpires: {expires}\nContent-Length: 0\n\n")


def server(wan: str | None = "198.51.100.2") -> tuple[Any, Reactor]:
    reactor = Reactor()
    pub = publisher()
    pub.relay = RelayServer(reactor, RelayTable(["192.168.1.0/24"], max_relays=4), "192.168.1.2", lambda: wan)
    return pub, reactor


def test_a_gateway_of_the_home_gets_two_relays_and_their_addresses_in_the_notify() -> None:
    pub, reactor = server()
    incoming = relay_subscribe("192.168.1.7:5060")
    pub._subscribe(incoming)
    assert incoming.responses[0][0] == 200
    state, body, content_type = incoming.subscription.notified[0]  # type: ignore[union-attr]
    relays = json.loads(body)["relays"]
    assert content_type == "application/sip-egress-relay+json" and len(relays) == 2
    assert relays[0]["lan"][0] == "192.168.1.2" and relays[0]["wan"][0] == "198.51.100.2"
    assert relays[1]["peer"] == ["203.0.113.7", 4000]


def test_a_relay_passes_datagrams_between_the_asker_and_its_far_end_only() -> None:
    pub, reactor = server()
    pub._subscribe(relay_subscribe("192.168.1.7:5060"))
    sip = pub.relay.relays["c/1"][0]
    lan, wan = sip.lan, sip.wan
    lan.proto.datagramReceived(b"stranger", ("192.168.1.66", 5060))
    wan.proto.datagramReceived(b"early", ("203.0.113.7", 5060))  # nobody to pass it to yet
    lan.proto.datagramReceived(b"INVITE", ("192.168.1.7", 5060))
    wan.proto.datagramReceived(b"spoof", ("198.51.100.99", 5060))
    wan.proto.datagramReceived(b"SIP/2.0 200", ("203.0.113.7", 5060))
    assert wan.written == [(b"INVITE", ("203.0.113.7", 5060))]
    assert lan.written == [(b"SIP/2.0 200", ("192.168.1.7", 5060))]
    assert sip.dropped == 3


def test_a_stranger_gets_403_and_no_socket() -> None:
    pub, reactor = server()
    with pytest.raises(SIPError) as refused:
        pub._subscribe(relay_subscribe("198.51.100.9:5060"))
    assert refused.value.status == 403 and reactor.ports == []


def test_a_relay_into_the_home_is_refused() -> None:
    pub, reactor = server()
    with pytest.raises(SIPError) as refused:
        pub._subscribe(relay_subscribe("192.168.1.7:5060", relay_to="192.168.1.9:5060"))
    assert refused.value.status == 403 and reactor.ports == []


def test_without_an_egress_up_we_relay_nothing() -> None:
    pub, reactor = server(wan=None)
    incoming = relay_subscribe("192.168.1.7:5060")
    pub._subscribe(incoming)
    assert incoming.responses[0][0] == 503 and reactor.ports == []


def test_beyond_the_cap_503_and_expiry_closes_the_sockets() -> None:
    pub, reactor = server()
    pub._subscribe(relay_subscribe("192.168.1.7:5060"))
    other = FakeIncoming(relay_subscribe("192.168.1.8:5060", "203.0.113.8:5060, 203.0.113.8:4000, "
                                         "203.0.113.8:4002").request.to_bytes().decode()
                         .replace("tag=1", "tag=2").replace("\r\n", "\n"))
    with pytest.raises(SIPError) as refused:
        pub._subscribe(other)
    assert refused.value.status == 503
    reactor.advance(601)
    assert pub.relay.relays == {} and all(p.stopped for p in reactor.ports)


def test_a_refreshing_subscribe_keeps_the_relay_past_its_first_lifetime() -> None:
    pub, reactor = server()
    incoming = relay_subscribe("192.168.1.7:5060")
    pub._subscribe(incoming)
    refresh = relay_subscribe("192.168.1.7:5060", expires="600").request
    reactor.advance(500)
    pub.relay._refresh("c/1", refresh)
    reactor.advance(200)
    assert "c/1" in pub.relay.relays
    reactor.advance(500)
    assert pub.relay.relays == {}


def test_an_empty_datagram_from_the_asker_says_where_it_receives_and_goes_no_further() -> None:
    pub, reactor = server()
    far_ends = "203.0.113.7:5060, 203.0.113.7:4000, 203.0.113.7:4002"  # SIP, audio, video
    pub._subscribe(relay_subscribe("192.168.1.7:5060", far_ends))
    video = pub.relay.relays["c/1"][2]
    video.lan.proto.datagramReceived(b"", ("192.168.1.66", 6000))  # not the asker: ignored
    video.lan.proto.datagramReceived(b"", ("192.168.1.7", 6002))
    video.wan.proto.datagramReceived(b"\x80" + bytes(15), ("203.0.113.7", 4002))
    assert video.wan.written == []  # the empty one was not sent to the CN
    assert video.lan.written == [(b"\x80" + bytes(15), ("192.168.1.7", 6002))]
