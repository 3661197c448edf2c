"""SIPTransport's UDP writes: the address check Port.write makes is made once per host, and what
cannot be sent is a transport error for the transaction layer, never an exception in the reactor."""

from __future__ import annotations

import errno
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.abstract import isIPAddress
from twisted.internet.task import Clock

from sipmob.service.sipnet import SIPTransport, _Datagrams
from sipmob.sip.message import Headers, Request
from sipmob.sip.transaction import TimerConfig, TransactionLayer, TransportError
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI

US = Address("127.0.0.1", 5060, "udp")


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.fail: OSError | None = None

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((data, addr))


class FakePort:
    """What Port.write does before sending: refuse anything but an IPv4 literal."""

    def __init__(self) -> None:
        self.socket = FakeSocket()
        self.written: list[tuple[bytes, tuple[str, int]]] = []

    def write(self, data: bytes, addr: tuple[str, int]) -> None:
        if not isIPAddress(addr[0]):
            raise error.InvalidAddressError(addr[0], "not an IP address")
        self.written.append((data, addr))
        self.socket.sendto(data, addr)


def datagrams() -> tuple[_Datagrams, FakePort]:
    proto = _Datagrams(None)  # type: ignore[arg-type]
    port = FakePort()
    proto.makeConnection(port)
    return proto, port


def test_first_datagram_to_a_host_goes_through_the_checked_write() -> None:
    proto, port = datagrams()
    proto.send(b"one", "127.0.0.2", 5070)
    assert port.written == [(b"one", ("127.0.0.2", 5070))]


def test_later_datagrams_to_a_checked_host_skip_the_check_and_still_arrive() -> None:
    proto, port = datagrams()
    proto.send(b"one", "127.0.0.2", 5070)
    proto.send(b"two", "127.0.0.2", 5071)
    assert port.written == [(b"one", ("127.0.0.2", 5070))]
    assert port.socket.sent == [(b"one", ("127.0.0.2", 5070)), (b"two", ("127.0.0.2", 5071))]


def test_a_host_that_fails_the_check_is_checked_again_every_time() -> None:
    proto, port = datagrams()
    for _ in range(2):
        with pytest.raises(error.InvalidAddressError):
            proto.send(b"x", "phone.example", 5070)
    assert port.socket.sent == []


def test_connection_refused_for_an_earlier_datagram_is_ignored() -> None:
    proto, port = datagrams()
    proto.send(b"one", "127.0.0.2", 5070)
    port.socket.fail = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    proto.send(b"two", "127.0.0.2", 5070)  # no exception: as Port.write does


def options() -> Request:
    headers = Headers([("Max-Forwards", "70"), ("From", "<sip:a@127.0.0.1>;tag=1"),
                       ("To", "<sip:b@phone.example>"), ("Call-ID", "c1"), ("CSeq", "1 OPTIONS")])
    return Request("OPTIONS", URI.parse("sip:b@phone.example"), headers)


@pytest.mark.parametrize("failure", [None, OSError(errno.ENETUNREACH, "unreachable")])
def test_unsendable_request_is_a_transport_error_for_its_transaction(failure: OSError | None) -> None:
    seen: list[Any] = []
    layer = TransactionLayer([US], TimerConfig())
    transport = SIPTransport(Clock(), layer, [("127.0.0.1", 5060, "udp")], seen.append)
    proto, port = datagrams()
    transport._udp["127.0.0.1"] = proto
    transport._start_timer()
    if failure is None:  # a host name where an IP literal is needed
        destination = Address("phone.example", 5060, "udp")
    else:
        destination = Address("127.0.0.2", 5060, "udp")
        proto.send(b"warm-up", destination.host, destination.port)
        port.socket.fail = failure
    key = transport.send_request(options(), destination)
    assert [(type(e), e.transaction_key) for e in seen[:1]] == [(TransportError, key)]
    assert len(layer) == 0
