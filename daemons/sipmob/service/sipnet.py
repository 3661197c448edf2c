"""SIP over UDP and TCP on the Twisted reactor: sockets in, `TransactionLayer` in the middle.

`SIPTransport` binds the listening sockets it is given, feeds every datagram and every message cut
from a TCP stream into one sans-I/O machine (a `sipmob.sip.transaction.TransactionLayer`, or a
`sipmob.sip.ua.UACore` with its layer inside), writes what the machine wants sent, and re-arms one
`TimerDriver` for the machine's next deadline: one pump and one timer per SIP element. Outgoing TCP reuses the
open connection to a (host, port), whichever side opened it, and opens one when there is none.
A datagram the machine says must leave from a local address (a call bound to an egress,
`TransactionLayer.bind_call`) goes out of the UDP socket bound to that address: one per local
address (`add_udp`), so the kernel's source routing sends it out of that egress's link, until
the owner closes it (`release_udp`) once its address has gone. Every message goes up with the local
address it arrived on (the socket that read it, the connection's local end): the layer answers a
request from there (RFC 3581 §4, RFC 3261 §18.2.2), whatever socket the call's requests use.
Events go to one callback, the layer above, which answers through the machine (or, over a bare
transaction layer, through `send_response` and friends).

Not here: any SIP rule (matching, retransmission, routing: `sipmob.sip`), DNS, TLS.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet import defer, error, protocol

from sipmob.service.timers import TimerDriver
from sipmob.sip.message import Request, Response, SIPParseError, StreamFramer
from sipmob.sip.transaction import TransactionKey, TransactionLayer
from sipmob.sip.transport import Address

log = logging.getLogger("sipmob.sip")


class Connections(Protocol):
    def opened(self, remote: Address) -> None: ...

    def closed(self, remote: Address) -> None: ...


class SIPMachine(Protocol):
    """What `SIPTransport` drives: the shape of `TransactionLayer` and of `UACore`."""

    @property
    def connections(self) -> Connections: ...

    def receive(self, data: bytes, source: Address, now: float, local: Address | None = None) -> None: ...

    def transport_error(self, destination: Address, now: float) -> None: ...

    def messages_to_send(self) -> list[tuple[bytes, Address]]: ...

    def messages_to_send_from(self) -> list[tuple[bytes, Address, Address | None]]: ...

    def next_event(self) -> Any: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> Any: ...


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, owner: SIPTransport) -> None:
        self.owner = owner
        # Hosts this port has written to once: Port.write checks that a host is an IP literal of
        # the port's family, three checks per datagram; once is enough for the same host.
        self.checked: set[str] = set()
        # our address as `SIPTransport._udp` knows it (its key, the bound port): where a request
        # read here is answered from
        self.local: Address | None = None

    @property
    def wire(self) -> Any:
        return self.transport

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        # interned: the layer keeps the source of every lingering transaction, mostly a few peers
        self.owner._received(data, Address(sys.intern(addr[0]), addr[1], "udp"), self.local)

    def send(self, data: bytes, host: str, port: int) -> None:
        """Write one datagram; raises OSError (or twisted's MessageLengthError, InvalidAddressError)."""
        if host not in self.checked:
            self.wire.write(data, (host, port))
            if len(self.checked) >= 4096:
                self.checked.clear()
            self.checked.add(host)
            return
        try:
            self.wire.socket.sendto(data, (host, port))
        except ConnectionRefusedError:
            pass  # an ICMP error for an earlier datagram: says nothing about this one (as Port.write)


class _Stream(protocol.Protocol):
    def __init__(self, owner: SIPTransport) -> None:
        self.owner = owner
        self.framer = StreamFramer()
        self.remote: Address | None = None
        self.local_host = ""
        self.local: Address | None = None

    @property
    def wire(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        peer = self.wire.getPeer()
        self.remote = Address(peer.host, peer.port, "tcp")
        here = self.wire.getHost()
        self.local_host = str(here.host)
        self.local = Address(self.local_host, here.port, "tcp")
        self.owner._connected(self.remote, self)

    def dataReceived(self, data: bytes) -> None:
        assert self.remote is not None
        try:
            messages = self.framer.feed(data)
        except SIPParseError as exc:
            # §18.3: without a trustworthy Content-Length the stream cannot be resynchronised.
            log.info("closing the TCP connection from %s:%d: %s", self.remote.host, self.remote.port, exc)
            self.wire.loseConnection()
            return
        for message in messages:
            self.owner._received(message, self.remote, self.local)

    def connectionLost(self, reason: Any = None) -> None:
        if self.remote is not None:
            self.owner._disconnected(self.remote, self)


class _StreamFactory(protocol.ClientFactory):
    def __init__(self, owner: SIPTransport, destination: Address | None = None,
                 source: str | None = None) -> None:
        self.owner = owner
        self.destination = destination
        self.source = source  # the local host an outgoing connection is bound to (None: any)

    def buildProtocol(self, addr: Any) -> _Stream:
        return _Stream(self.owner)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        assert self.destination is not None
        self.owner._connect_failed(self.destination, reason, self.source)


class SIPTransport:
    """The listening sockets and connections of one SIP element, driving a `TransactionLayer`.

    `listen` is a list of ``(host, port, transport)`` with transport "udp" or "tcp"; port 0 binds an
    ephemeral port (see `addresses` after `start`). The layer must have been made with the same
    addresses (it stamps them in Via); `start` returns the bound ones so a caller that asked for
    port 0 can build its layer afterwards with `make_layer`.
    """

    def __init__(self, reactor: Any, layer: SIPMachine | None,
                 listen: Sequence[tuple[str, int, str]],
                 on_event: Callable[[Any], None] | None = None) -> None:
        self.reactor = reactor
        self.layer = layer
        self.listen = [Address(host, port, transport.lower()) for host, port, transport in listen]
        self.on_event = on_event
        self.addresses: list[Address] = []
        self._ports: list[Any] = []
        self._udp: dict[str, _Datagrams] = {}  # by local host
        self._added: dict[str, Any] = {}  # host -> the port `add_udp` bound there
        # a local address that is another host's relay: (our socket's host, where the relay listens)
        self._relays: dict[Address, tuple[str, tuple[str, int]]] = {}
        self._streams: dict[Address, _Stream] = {}
        self._pending: dict[Address, list[bytes]] = {}  # TCP connections being opened
        # TCP by (local host, remote): a call bound to an egress sends over a connection from it
        self._streams_from: dict[tuple[str, Address], _Stream] = {}
        self._pending_from: dict[tuple[str, Address], list[bytes]] = {}
        self._tcp_from: str | None = None  # the host unbound TCP leaves from (None: any connection)
        self._added_tcp: dict[str, Any] = {}  # host -> the TCP port `add_tcp` listens on
        self._timer: TimerDriver | None = None
        self._flushing = False

    # Life cycle ---------------------------------------------------------------------------------

    def start(self) -> list[Address]:
        """Bind every listener (raises twisted's CannotListenError) and return the bound addresses."""
        for addr in self.listen:
            if addr.transport == "udp":
                proto = _Datagrams(self)
                # Twisted reads 8192 bytes per datagram by default; a SIP datagram may be 65535 (§18.1.1)
                port = self.reactor.listenUDP(addr.port, proto, interface=addr.host, maxPacketSize=65535)
                proto.local = Address(addr.host, port.getHost().port, "udp")
                self._udp[addr.host] = proto
            elif addr.transport == "tcp":
                port = self.reactor.listenTCP(addr.port, _StreamFactory(self), interface=addr.host)
            else:
                raise ValueError(f"unsupported transport {addr.transport!r}")
            self._ports.append(port)
            self.addresses.append(Address(addr.host, port.getHost().port, addr.transport))
        if self.layer is not None:
            self._start_timer()
        return list(self.addresses)

    def bind_udp(self, host: str, port: int = 0) -> Address:
        """Listen on `host` too (or reuse our socket there) and send UDP from it from now on: the
        host's address changed or another egress carries our traffic. The old sockets stay, so
        answers to what they sent still arrive."""
        bound = self.add_udp(host, port)
        # `_udp_for` takes the first socket of the destination's family: this one now
        proto = self._udp[host]
        self._udp = {host: proto, **{h: p for h, p in self._udp.items() if h != host}}
        return bound

    def add_udp(self, host: str, port: int = 0) -> Address:
        """A UDP socket on `host` (ours already, or bound now on `port`; 0: any) for the datagrams
        that must leave from `host`; the default socket stays as it is. Raises CannotListenError."""
        if host not in self._udp:
            proto = _Datagrams(self)
            listening = self.reactor.listenUDP(port, proto, interface=host, maxPacketSize=65535)
            proto.local = Address(host, listening.getHost().port, "udp")
            self._ports.append(listening)
            self.addresses.append(Address(host, listening.getHost().port, "udp"))
            self._udp[host] = proto
            self._added[host] = listening
        return next(a for a in reversed(self.addresses) if a.host == host and a.transport == "udp")

    def add_tcp(self, host: str, port: int = 0) -> Address:
        """A TCP listener on `host` (ours already, or bound now on `port`; 0: any), where peers may
        open connections to a call bound to `host`. Raises CannotListenError."""
        for a in self.addresses:
            if a.host == host and a.transport == "tcp":
                return a
        listening = self.reactor.listenTCP(port, _StreamFactory(self), interface=host)
        self._ports.append(listening)
        bound = Address(host, listening.getHost().port, "tcp")
        self.addresses.append(bound)
        self._added_tcp[host] = listening
        return bound

    def send_tcp_from(self, host: str | None) -> None:
        """TCP not bound to a call leaves over connections from `host` from now on (an egress
        failover moved our SIP there); None: over any connection to the destination."""
        self._tcp_from = host

    def release_tcp(self, host: str) -> None:
        """Stop the listener `add_tcp` opened on `host` and close our connections from it."""
        listening = self._added_tcp.pop(host, None)
        if listening is not None:
            self._ports = [p for p in self._ports if p is not listening]
            self.addresses = [a for a in self.addresses
                              if not (a.host == host and a.transport == "tcp")]
            listening.stopListening()
        for (local, _remote), stream in list(self._streams_from.items()):
            if local == host:
                stream.wire.loseConnection()

    def added_udp(self) -> list[str]:
        """The hosts of the UDP sockets `add_udp` and `bind_udp` opened (not the listeners)."""
        return list(self._added)

    def release_udp(self, host: str) -> Address | None:
        """Close the socket `add_udp` opened on `host` (its address has gone, nothing leaves from it
        any more); the listeners we started with stay. Returns the address it was bound to."""
        listening = self._added.pop(host, None)
        if listening is None:
            return None
        bound = Address(host, listening.getHost().port, "udp")
        self._udp.pop(host, None)
        self._ports = [p for p in self._ports if p is not listening]
        self.addresses = [a for a in self.addresses if a != bound]
        listening.stopListening()
        return bound

    def add_relay(self, advertised: Address, from_host: str, via: tuple[str, int]) -> None:
        """Datagrams that must leave from `advertised` (a relay's outside address, on another
        gateway) go from our socket on `from_host` to `via`, the relay's inside end, which passes
        them on to the one far end it serves. None of our sockets is bound to `advertised`."""
        self._relays[advertised] = (from_host, via)

    def remove_relay(self, advertised: Address) -> None:
        self._relays.pop(advertised, None)

    def use_layer(self, layer: SIPMachine) -> None:
        """Attach the machine once the bound addresses are known (for listeners on port 0)."""
        self.layer = layer
        self._start_timer()

    def stop(self) -> defer.Deferred[Any]:
        if self._timer is not None:
            self._timer.cancel()
        for stream in list(self._streams.values()):
            stream.wire.loseConnection()
        done = [defer.maybeDeferred(port.stopListening) for port in self._ports]
        self._ports = []
        return defer.DeferredList(done)

    # For the UA layer above ---------------------------------------------------------------------

    def send_request(self, request: Request, destination: Address) -> TransactionKey:
        key = self._bare_layer.send_request(request, destination, self.reactor.seconds())
        self.flush()
        return key

    def send_response(self, response: Response) -> None:
        self._bare_layer.send_response(response, self.reactor.seconds())
        self.flush()

    def send_ack(self, ack: Request, destination: Address) -> None:
        self._bare_layer.send_ack(ack, destination)
        self.flush()

    def cancel(self, key: TransactionKey) -> TransactionKey:
        cancel_key = self._bare_layer.cancel(key, self.reactor.seconds())
        self.flush()
        return cancel_key

    def flush(self) -> None:
        """Write what the layer wants sent, hand its events up, re-arm the timer. Re-entrant calls
        (an event handler that answers at once) are folded into the outer loop."""
        if self._flushing:
            return
        self._flushing = True
        try:
            layer = self._layer
            while True:
                for data, destination, local in layer.messages_to_send_from():
                    self._write(data, destination, local)
                event = layer.next_event()
                if event is None:
                    break
                if self.on_event is not None:
                    try:
                        self.on_event(event)
                    except Exception:
                        log.exception("the event handler failed on %s", type(event).__name__)
        finally:
            self._flushing = False
        if self._timer is not None:
            self._timer.update()

    # Internals ----------------------------------------------------------------------------------

    @property
    def _layer(self) -> SIPMachine:
        if self.layer is None:
            raise RuntimeError("no TransactionLayer attached")
        return self.layer

    @property
    def _bare_layer(self) -> TransactionLayer:
        layer = self._layer
        if not isinstance(layer, TransactionLayer):
            raise RuntimeError("send through the UA core that drives this transport")
        return layer

    def _start_timer(self) -> None:
        layer = self._layer
        self._timer = TimerDriver(self.reactor, layer.get_timer, layer.handle_timer, after=self.flush)

    def _received(self, data: bytes, source: Address, local: Address | None = None) -> None:
        if self.layer is None:
            return
        self.layer.receive(data, source, self.reactor.seconds(), local)
        self.flush()

    def _write(self, data: bytes, destination: Address, local: Address | None = None) -> None:
        if destination.transport == "udp":
            to = (destination.host, destination.port)
            relayed = self._relays.get(local) if local is not None and self._relays else None
            if relayed is not None:
                local, to = None, relayed[1]
                sock = self._udp.get(relayed[0])
            else:
                sock = self._udp.get(local.host) if local is not None else None
            if sock is None:
                if local is not None:
                    log.warning("no socket on %s: sending to %s:%d from the default one", local.host, *to)
                sock = self._udp_for(destination)
            try:
                sock.send(data, to[0], to[1])
            except (OSError, error.MessageLengthError, error.InvalidAddressError) as exc:
                log.info("cannot send to %s:%d: %s", to[0], to[1], exc)
                self._layer.transport_error(destination, self.reactor.seconds())
            return
        source = local.host if local is not None else self._tcp_from
        if source is not None:
            key = (source, destination)
            stream = self._streams_from.get(key)
            if stream is not None:
                stream.wire.write(data)
            elif key in self._pending_from:
                self._pending_from[key].append(data)
            else:
                # a connection of its own from `source`: the kernel's source routing takes the link
                self._pending_from[key] = [data]
                self.reactor.connectTCP(destination.host, destination.port,
                                        _StreamFactory(self, destination, source), bindAddress=(source, 0))
            return
        stream = self._streams.get(destination)
        if stream is not None:
            stream.wire.write(data)
            return
        if destination in self._pending:
            self._pending[destination].append(data)
            return
        self._pending[destination] = [data]
        self.reactor.connectTCP(destination.host, destination.port, _StreamFactory(self, destination))

    def _udp_for(self, destination: Address) -> _Datagrams:
        if not self._udp:
            raise RuntimeError("no UDP listener to send from")
        # the socket bound to the same loopback/any address family as the destination, else any
        for host, proto in self._udp.items():
            if (":" in host) == (":" in destination.host):
                return proto
        return next(iter(self._udp.values()))

    def _connected(self, remote: Address, stream: _Stream) -> None:
        self._streams[remote] = stream
        self._streams_from[(stream.local_host, remote)] = stream
        self._layer.connections.opened(remote)
        waiting = self._pending.pop(remote, []) + self._pending_from.pop((stream.local_host, remote), [])
        for data in waiting:
            stream.wire.write(data)

    def _disconnected(self, remote: Address, stream: _Stream) -> None:
        if self._streams_from.get((stream.local_host, remote)) is stream:
            del self._streams_from[(stream.local_host, remote)]
        if self._streams.get(remote) is stream:
            del self._streams[remote]
            other = next((s for (_h, r), s in self._streams_from.items() if r == remote), None)
            if other is not None:
                self._streams[remote] = other  # another connection to the same peer stays
            else:
                self._layer.connections.closed(remote)

    def _connect_failed(self, destination: Address, reason: Any, source: str | None = None) -> None:
        self._pending.pop(destination, None)
        if source is not None:
            self._pending_from.pop((source, destination), None)
        log.info("cannot connect to %s:%d: %s", destination.host, destination.port,
                 reason.getErrorMessage())
        self._layer.transport_error(destination, self.reactor.seconds())
        self.flush()
