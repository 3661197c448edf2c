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


class TcpReactor(Clock):
    """A clock that records the TCP connections asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.connects: list[tuple[str, int, Any, Any]] = []

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> None:
        self.connects.append((host, port, factory, bindAddress))


class FakeStreamTransport:
    def __init__(self, local: str, remote: Address) -> None:
        self.local, self.remote = local, remote
        self.written: list[bytes] = []

    def getPeer(self) -> Any:
        return type("Peer", (), {"host": self.remote.host, "port": self.remote.port})()

    def getHost(self) -> Any:
        return type("Host", (), {"host": self.local, "port": 40000})()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def loseConnection(self) -> None:
        pass


def test_a_bound_call_over_tcp_opens_its_own_connection_from_its_address() -> None:
    peer = Address("192.0.2.1", 5060, "tcp")
    layer = TransactionLayer([DEFAULT, Address(DEFAULT.host, 5060, "tcp")], TimerConfig())
    reactor = TcpReactor()
    sip = SIPTransport(reactor, layer, [(DEFAULT.host, DEFAULT.port, "udp")], lambda _e: None)
    sip._start_timer()
    layer.bind_call("c1", EGRESS2)
    layer.add_local(Address(EGRESS2.host, 5062, "tcp"))
    sip.send_request(options(), peer)
    [(host, port, factory, bind)] = reactor.connects
    assert (host, port, bind) == (peer.host, peer.port, (EGRESS2.host, 0))
    stream = factory.buildProtocol(None)
    wire = FakeStreamTransport(EGRESS2.host, peer)
    stream.makeConnection(wire)
    [data] = wire.written
    assert parse_message(data).top_via.host == EGRESS2.host and parse_message(data).top_via.port == 5062
    # the call moves: the next request opens a connection from its new address
    layer.bind_call("c1", DEFAULT)
    layer.add_local(Address(DEFAULT.host, 5060, "tcp"))
    sip.send_request(options(), peer)
    assert len(reactor.connects) == 2 and reactor.connects[1][3] == (DEFAULT.host, 0)
    # once our SIP moved to EGRESS2, unbound TCP leaves over the connection from there
    sip.send_tcp_from(EGRESS2.host)
    other = options()
    other.headers.remove("Call-ID")
    other.headers.add("Call-ID", "c3")
    sip.send_request(other, peer)
    assert len(reactor.connects) == 2 and len(wire.written) == 2
