"""SIPTransport answers a request from where it arrived: the UDP socket that read it, or the TCP
connection it came on, whatever address its call is bound to (RFC 3581 §4, RFC 3261 §18.2.2)."""

from __future__ import annotations

from typing import Any

from tests.unit.service.test_sipnet_local import (
    DEFAULT,
    EGRESS2,
    PEER,
    FakeStreamTransport,
    TcpReactor,
    transport,
)

from sipmob.service.sipnet import SIPTransport, _StreamFactory
from sipmob.sip.message import make_response
from sipmob.sip.transaction import RequestReceived, TimerConfig, TransactionLayer
from sipmob.sip.transport import Address


def request(call_id: str, transport_name: str = "UDP") -> bytes:
    return (f"OPTIONS sip:b@{EGRESS2.host} SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport_name} {PEER.host}:{PEER.port};branch=z9hG4bK{call_id};rport\r\n"
            f"From: <sip:a@{PEER.host}>;tag=1\r\nTo: <sip:b@{EGRESS2.host}>\r\nCall-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def answering(sip: SIPTransport) -> None:
    def on_event(event: Any) -> None:
        if isinstance(event, RequestReceived):
            sip.send_response(make_response(event.request, 200))
    sip.on_event = on_event


def test_a_datagram_read_on_the_second_socket_is_answered_from_it_though_bound_to_the_first() -> None:
    sip, layer, port1, port2 = transport()
    first, second = sip._udp[DEFAULT.host], sip._udp[EGRESS2.host]
    first.owner = second.owner = sip
    first.local, second.local = DEFAULT, EGRESS2
    answering(sip)
    layer.bind_call("c1", DEFAULT)
    second.datagramReceived(request("c1"), (PEER.host, PEER.port))
    [(data, to)] = port2.socket.sent
    assert data.startswith(b"SIP/2.0 200") and to == (PEER.host, PEER.port) and not port1.socket.sent
    # and the other way round: a request on the default socket of a call bound to the second
    layer.bind_call("c2", EGRESS2)
    first.datagramReceived(request("c2"), (PEER.host, PEER.port))
    assert len(port1.socket.sent) == 1 and len(port2.socket.sent) == 1


def test_a_request_over_tcp_is_answered_on_its_connection_though_its_call_is_bound_elsewhere() -> None:
    peer = Address(PEER.host, 40001, "tcp")
    layer = TransactionLayer([DEFAULT, Address(DEFAULT.host, 5060, "tcp")], TimerConfig())
    reactor = TcpReactor()
    sip = SIPTransport(reactor, layer, [(DEFAULT.host, DEFAULT.port, "udp")], lambda _e: None)
    sip._start_timer()
    answering(sip)
    layer.bind_call("c1", DEFAULT)
    layer.add_local(Address(DEFAULT.host, 5060, "tcp"))
    stream = _StreamFactory(sip).buildProtocol(None)
    wire = FakeStreamTransport(EGRESS2.host, peer)  # the peer connected to our address on EGRESS2
    stream.makeConnection(wire)
    stream.dataReceived(request("c1", "TCP"))
    [data] = wire.written
    assert data.startswith(b"SIP/2.0 200") and not reactor.connects
