"""The SLP User Agent and Service Agent on the Twisted reactor, for daemons and tools.

`SLPClient` answers questions about the home's devices with Deferreds (find services, attributes,
service types, DAs; one-shot register and deregister as slptool does). `SLPServiceAgent` keeps a set
of registrations alive in every DA, reporting what happens through a callback and the log, and
deregisters them on `stop()`.

Each owns one UDP socket on an ephemeral port (bind address configurable) and opens a short TCP
connection when a reply overflowed a datagram. Multicast is sent only when enabled; it is never needed
when a DA is configured. The protocol itself (retransmission, convergence, refresh) lives in
`sipmob.slp.agent`; this module only moves bytes and time.

Not here: listening on port 427 for unsolicited multicast DAAdverts (a UA here learns DAs from its
own requests and from the DAs configured).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer, protocol

from sipmob.service.config import split_host_port
from sipmob.service.timers import TimerDriver
from sipmob.slp import wire
from sipmob.slp.agent import (
    AgentConfig,
    DAFound,
    DAInfo,
    DALost,
    DARebooted,
    Deregistered,
    DeregistrationFailed,
    Event,
    Outgoing,
    Query,
    QueryDone,
    Registered,
    Registration,
    RegistrationFailed,
    ServiceAgent,
    UserAgent,
)
from sipmob.slp.attrs import Attribute, format_attr_list
from sipmob.slp.messages import SLP_PORT, UrlEntry

log = logging.getLogger("sipmob.slp")

Address = tuple[str, int]


def resolve(host: str, port: int = SLP_PORT) -> Address:
    """An (IP literal, port) for a DA given by name or address; names are resolved once, here."""
    try:
        ipaddress.ip_address(host)
        return (host, port)
    except ValueError:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        return (str(info[0][4][0]), port)


def parse_hostport(text: str, default_port: int = SLP_PORT) -> Address:
    """"HOST", "HOST:PORT" or "[V6]:PORT" to an address, HOST a name or an address; raises ValueError."""
    host, port = split_host_port(text, default_port, ip_literal=False)
    if port == 0:
        raise ValueError(f"not a HOST[:PORT]: {text!r} (port 0)")
    return resolve(host, port)


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, driver: _Driver) -> None:
        self.driver = driver

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.driver.received(datagram, (addr[0], addr[1]))


class _TcpRequest(protocol.Protocol):
    """One request over TCP (§12.3, after an OVERFLOW): send it, read one framed reply, hang up."""

    def __init__(self, driver: _Driver, data: bytes, dest: Address) -> None:
        self.driver, self.data, self.dest = driver, data, dest
        self.buffer = b""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        length = wire.peek_length(self.buffer)
        if length is not None and len(self.buffer) >= length:
            reply, self.buffer = self.buffer[:length], b""
            transport: Any = self.transport
            transport.loseConnection()
            self.driver.received(reply, self.dest)


class _TcpFactory(protocol.ClientFactory):
    def __init__(self, driver: _Driver, data: bytes, dest: Address) -> None:
        self.driver, self.data, self.dest = driver, data, dest

    def buildProtocol(self, addr: Any) -> _TcpRequest:
        return _TcpRequest(self.driver, self.data, self.dest)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        # the agent's own deadline reports it; a retry over TCP would not do better
        log.debug("SLP over TCP to %s:%s failed: %s", *self.dest, reason.getErrorMessage())


class _Driver:
    """Moves an agent's datagrams and timers through the reactor."""

    def __init__(self, reactor: Any, agent: UserAgent | ServiceAgent, bind: str,
                 on_event: Callable[[Event], None], multicast_ttl: int,
                 multicast_interface: str | None) -> None:
        self.reactor = reactor
        self.agent = agent
        self.bind = bind
        self.on_event = on_event
        self.multicast_ttl = multicast_ttl
        self.multicast_interface = multicast_interface
        self.port: Any = None
        self.timer = TimerDriver(reactor, agent.get_timer, self._timer_fired)

    def listen(self) -> None:
        if self.port is None:
            self.port = self.reactor.listenUDP(0, _Datagrams(self), interface=self.bind)
            if self.agent.config.multicast:
                self.port.setTTL(self.multicast_ttl)
                if self.multicast_interface:
                    self.port.setOutgoingInterface(self.multicast_interface)

    @property
    def address(self) -> Address:
        host = self.port.getHost()
        return (host.host, host.port)

    def now(self) -> float:
        return float(self.reactor.seconds())

    def run(self, out: list[Outgoing]) -> None:
        """Send what the agent produced, then hand out its events and re-arm its timer."""
        for o in out:
            if o.via == "tcp":
                self.reactor.connectTCP(o.dest[0], o.dest[1], _TcpFactory(self, o.data, o.dest),
                                        timeout=self.agent.config.retry_max)
            elif self.port is not None:
                try:
                    self.port.write(o.data, o.dest)
                except OSError as exc:  # unreachable network: the agent retries and times out
                    log.debug("SLP send to %s:%s failed: %s", *o.dest, exc)
        for event in self.agent.events():
            self.on_event(event)
        if self.port is not None:
            self.timer.update()

    def received(self, data: bytes, source: Address) -> None:
        self.run(self.agent.receive(data, source, self.now()))

    def _timer_fired(self, now: float) -> None:
        self.run(self.agent.handle_timer(now))

    def close(self) -> defer.Deferred[Any]:
        self.timer.cancel()
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


def _default_bind(das: Sequence[Address]) -> str:
    if das and ipaddress.ip_address(das[0][0]).version == 6:
        return "::"
    return "0.0.0.0"


def _config(das: Sequence[Address], scopes: Sequence[str], multicast: bool,
            config: AgentConfig | None) -> AgentConfig:
    base = config if config is not None else AgentConfig()
    return AgentConfig(**{**{f: getattr(base, f) for f in AgentConfig.__dataclass_fields__},
                          "das": tuple(das), "scopes": tuple(scopes), "multicast": multicast})


def _das(da: Address | None, das: Sequence[Address]) -> list[Address]:
    result = [da] if da is not None else []
    return [resolve(h, p) for h, p in [*result, *das]]


class SLPClient:
    """Queries to the home's DA (or by multicast when enabled), as Deferreds.

    Failures errback with `sipmob.slp.agent.SLPError` (``.code`` is the DA's error code, None when
    nobody answered: then it is an `SLPTimeout`).
    """

    def __init__(self, reactor: Any = None, da: Address | None = None,
                 scopes: Sequence[str] = ("DEFAULT",), *, das: Sequence[Address] = (),
                 bind: str | None = None, multicast: bool = False, multicast_ttl: int = 255,
                 multicast_interface: str | None = None, config: AgentConfig | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        all_das = _das(da, das)
        self.reactor = reactor
        self.agent = UserAgent(_config(all_das, scopes, multicast, config), float(reactor.seconds()))
        self._driver = _Driver(reactor, self.agent, bind if bind is not None else _default_bind(all_das),
                               self._event, multicast_ttl, multicast_interface)
        self._waiting: dict[int, tuple[defer.Deferred[Any], Callable[[Any], Any]]] = {}

    @property
    def address(self) -> Address:
        """The local UDP address, once started."""
        return self._driver.address

    def start(self) -> None:
        """Bind the socket and ask the configured DAs for their adverts; called by every query."""
        if self._driver.port is None:
            self._driver.listen()
            self._driver.run(self.agent.start(self._driver.now()))

    def find_services(self, service_type: str, predicate: str = "",
                      scopes: Sequence[str] | None = None) -> defer.Deferred[list[UrlEntry]]:
        self.start()
        query, out = self.agent.find_services(service_type, self._driver.now(), predicate, scopes)
        return self._wait(query, out, list)

    def find_attributes(self, url_or_type: str, tags: str = "",
                        scopes: Sequence[str] | None = None) -> defer.Deferred[dict[str, Attribute]]:
        self.start()
        query, out = self.agent.find_attributes(url_or_type, self._driver.now(), tags, scopes)
        return self._wait(query, out, dict)

    def find_service_types(self, naming_authority: str | None = None,
                           scopes: Sequence[str] | None = None) -> defer.Deferred[list[str]]:
        self.start()
        query, out = self.agent.find_service_types(self._driver.now(), naming_authority, scopes)
        return self._wait(query, out, list)

    def find_das(self) -> defer.Deferred[list[DAInfo]]:
        self.start()
        query, out = self.agent.discover_das(self._driver.now())
        return self._wait(query, out, list)

    def register(self, url: str, service_type: str, attrs: Mapping[str, Attribute] | str = "",
                 lifetime: int = 10800, scopes: Sequence[str] | None = None) -> defer.Deferred[None]:
        """One SrvReg, not refreshed (use `SLPServiceAgent` to keep a registration alive)."""
        self.start()
        reg = Registration(url, service_type, tuple(scopes or self.agent.config.scopes),
                           _attr_list(attrs), lifetime)
        query, out = self.agent.register_once(reg, self._driver.now())
        return self._wait(query, out, lambda _: None)

    def deregister(self, url: str, scopes: Sequence[str] | None = None) -> defer.Deferred[None]:
        self.start()
        query, out = self.agent.deregister_once(url, self._driver.now(), scopes)
        return self._wait(query, out, lambda _: None)

    def close(self) -> defer.Deferred[Any]:
        """Stop listening; queries still waiting never fire."""
        return self._driver.close()

    def _wait(self, query: Query[Any], out: list[Outgoing],
              convert: Callable[[Any], Any]) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting[id(query)] = (d, convert)
        self._driver.run(out)
        return d

    def _event(self, event: Event) -> None:
        if isinstance(event, QueryDone):
            waiting = self._waiting.pop(id(event.query), None)
            if waiting is None:
                return  # the agent's own DA discovery
            d, convert = waiting
            if event.query.error is not None:
                d.errback(event.query.error)
            else:
                d.callback(convert(event.query.result))
        else:
            _log_event(event)


def _attr_list(attrs: Mapping[str, Attribute] | str) -> str:
    return attrs if isinstance(attrs, str) else format_attr_list(attrs)


class SLPServiceAgent:
    """Keeps registrations alive in every DA serving their scopes (see `ServiceAgent`).

    ``on_event`` receives the `sipmob.slp.agent` events about DAs and registrations (DAFound,
    DARebooted, DALost, Registered, RegistrationFailed, Deregistered, DeregistrationFailed); each is
    also logged, one line per event.
    """

    def __init__(self, reactor: Any = None, das: Sequence[Address] = (),
                 scopes: Sequence[str] = ("DEFAULT",), *, bind: str | None = None,
                 multicast: bool = False, multicast_ttl: int = 255,
                 multicast_interface: str | None = None, config: AgentConfig | None = None,
                 on_event: Callable[[Event], None] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        all_das = _das(None, das)
        self.reactor = reactor
        self.agent = ServiceAgent(_config(all_das, scopes, multicast, config), float(reactor.seconds()))
        self._on_event = on_event
        self._driver = _Driver(reactor, self.agent, bind if bind is not None else _default_bind(all_das),
                               self._event, multicast_ttl, multicast_interface)
        self._stopping = False
        self._stop_waiters: list[defer.Deferred[None]] = []

    @property
    def address(self) -> Address:
        return self._driver.address

    @property
    def registrations(self) -> Mapping[str, Registration]:
        return self.agent.registrations

    def start(self) -> None:
        if self._driver.port is None:
            self._driver.listen()
            self._driver.run(self.agent.start(self._driver.now()))

    def register(self, url: str, service_type: str, attrs: Mapping[str, Attribute] | str = "",
                 lifetime: int = 10800, scopes: Sequence[str] | None = None) -> None:
        """Add or update a registration (an update is a fresh re-registration)."""
        self.start()
        reg = Registration(url, service_type, tuple(scopes or self.agent.config.scopes),
                           _attr_list(attrs), lifetime)
        self._driver.run(self.agent.register(reg, self._driver.now()))

    def deregister(self, url: str) -> None:
        self._driver.run(self.agent.deregister(url, self._driver.now()))

    def stop(self) -> defer.Deferred[None]:
        """Deregister everything; fires once every DA answered or gave up, with the socket closed."""
        d: defer.Deferred[None] = defer.Deferred()
        self._stop_waiters.append(d)
        if not self._stopping:
            self._stopping = True
            self._driver.run(self.agent.stop(self._driver.now()))
        self._check_stopped()
        return d

    def _event(self, event: Event) -> None:
        _log_event(event)
        if self._on_event is not None and not isinstance(event, QueryDone):  # its own DA discovery
            self._on_event(event)
        self._check_stopped()

    def _check_stopped(self) -> None:
        if self._stopping and self.agent.stopped and self._stop_waiters:
            waiters, self._stop_waiters = self._stop_waiters, []

            def closed(_: Any) -> None:
                for d in waiters:
                    d.callback(None)

            self._driver.close().addBoth(closed)


def _log_event(event: Event) -> None:
    if isinstance(event, DAFound):
        log.info("directory agent %s at %s:%s, scopes %s", event.da.url, *event.da.address,
                 ",".join(event.da.scopes) or "unknown")
    elif isinstance(event, DARebooted):
        log.info("directory agent %s restarted: registering again", event.da.url)
    elif isinstance(event, DALost):
        log.warning("directory agent %s lost: %s", event.da.url, event.reason)
    elif isinstance(event, Registered):
        log.info("registered %s at %s:%s for %d s", event.url, *event.da, event.lifetime,
                 extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, RegistrationFailed):
        log.warning("registering %s at %s:%s failed: %s", event.url, *event.da, event.reason,
                    extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, Deregistered):
        log.info("deregistered %s at %s:%s", event.url, *event.da,
                 extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, DeregistrationFailed):
        log.warning("deregistering %s at %s:%s failed: %s", event.url, *event.da, event.reason,
                    extra={"SIPMOB_SERVICE_URL": event.url})
