"""SIPTransport with one UDP socket per local address: a bound call's datagrams leave from the socket
on its address, everything else from the default one."""

from __future__ import annotations

from typing import Any

from tests.unit.service.test_sipnet import datagrams, options
from twisted.internet.task import Clock

from sipmob.service.sipnet import SIPTransport
from sipmob.sip.message import parse_message
from sipmob.sip.transaction import TimerConfig, TransactionLayer
from sipmob.sip.transport import Address

DEFAULT = Address("10.0.1.2", 5060, "udp")
EGRESS2 = Address("10.0.2.2", 5060, "udp")
PEER = Address("192.0.2.1", 5060, "udp")


def transport() -> tuple[SIPTransport, TransactionLayer, Any, Any]:
    layer = TransactionLayer([DEFAULT], TimerConfig())
    sip = SIPTransport(Clock(), layer, [(DEFAULT.host, DEFAULT.port, "udp")], lambda _e: None)
    (first, port1), (second, port2) = datagrams(), datagrams()
    sip._udp = {DEFAULT.host: first, EGRESS2.host: second}
    sip._start_timer()
    return sip, layer, port1, port2


def test_a_bound_calls_request_leaves_from_the_socket_on_its_address() -> None:
    sip, layer, port1, port2 = transport()
    layer.bind_call("c1", EGRESS2)
    sip.send_request(options(), PEER)
    [(data, addr)] = port2.socket.sent
    assert addr == (PEER.host, PEER.port) and not port1.socket.sent
    assert parse_message(data).top_via.host == EGRESS2.host


def test_an_unbound_request_leaves_from_the_default_socket() -> None:
    sip, layer, port1, port2 = transport()
    layer.bind_call("another", EGRESS2)
    sip.send_request(options(), PEER)
    assert len(port1.socket.sent) == 1 and not port2.socket.sent


def test_a_local_address_without_a_socket_falls_back_to_the_default_one() -> None:
    sip, layer, port1, port2 = transport()
    layer.bind_call("c1", Address("10.0.3.2", 5060, "udp"))
    sip.send_request(options(), PEER)
    assert len(port1.socket.sent) == 1 and not port2.socket.sent
