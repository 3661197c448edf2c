"""The `sipmob-slpda` application: the sans-I/O Directory Agent on Twisted transports.

Responsible for: the unicast UDP socket, the multicast socket joined to 239.255.255.253 (when
enabled and not on loopback), the TCP listener with `peek_length` framing and an idle timeout,
arming the DA's one timer, the state file (read at start, debounced writes, flushed on stop),
logging the DA's events, and the status line. What the DA answers is `sipmob.slp.da`'s business.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

from twisted.internet import defer, protocol
from twisted.protocols.policies import TimeoutMixin

from sipmob.service.daemon import Runtime
from sipmob.service.statefile import DebouncedWriter, read_json
from sipmob.service.timers import TimerDriver
from sipmob.slp import wire
from sipmob.slp.da import (
    Deregistered,
    DirectoryAgent,
    Event,
    Expired,
    RateLimited,
    Refused,
    Registered,
    Via,
)
from sipmob.slp.messages import SLP_MCAST_V4, SLPParseError
from sipmob.slpda.config import SlpdaConfig

log = logging.getLogger("sipmob.slpda")

MAX_TCP_MESSAGE = 1 << 16  # a SrvReg within the attribute limit fits easily
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)  # Linux, ip(7)
MULTICAST_TTL = 255  # RFC 2608 §13 net.slp.multicastTTL default; 239.255/16 stays in the site


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, app: SlpdaApp, via: Via) -> None:
        self.app = app
        self.via = via

    def startProtocol(self) -> None:
        # Straight to the socket: Port.write re-validates the address three times per datagram,
        # a tenth of the cost of answering a cached SrvRqst (measured with cProfile).
        self._sendto = self.transport.socket.sendto

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        for reply in self.app.received(data, addr, self.via):
            try:
                self._sendto(reply, addr)
            except OSError as exc:  # full buffer, unreachable client: the reply is lost, as UDP may
                log.debug("cannot answer %s:%d: %s", addr[0], addr[1], exc)


class _TcpConnection(protocol.Protocol, TimeoutMixin):
    def __init__(self, app: SlpdaApp) -> None:
        self.app = app
        self.buffer = b""

    def connectionMade(self) -> None:
        self.setTimeout(self.app.config.limits.tcp_idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self.buffer += data
        peer = self.transport.getPeer()
        while True:
            try:
                length = wire.peek_length(self.buffer)
            except SLPParseError:
                self.transport.loseConnection()  # a broken frame cannot be resynchronised
                return
            if length is None or len(self.buffer) < length:
                if length is not None and length > MAX_TCP_MESSAGE:
                    self.transport.loseConnection()
                return
            message, self.buffer = self.buffer[:length], self.buffer[length:]
            for reply in self.app.received(message, (peer.host, peer.port), "tcp"):
                self.transport.write(reply)

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        self.transport.loseConnection()


class _TcpFactory(protocol.ServerFactory):
    def __init__(self, app: SlpdaApp) -> None:
        self.app = app

    def buildProtocol(self, addr: Any) -> _TcpConnection:
        return _TcpConnection(self.app)


class SlpdaApp:
    def __init__(self, config: SlpdaConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.da = DirectoryAgent(config.da_config(), self.reactor.seconds())
        self.timer = TimerDriver(self.reactor, self.da.get_timer, self._timer_fired)
        self.writer = DebouncedWriter(self.reactor, config.state_file, self._state_bytes)
        self._ports: list[Any] = []
        self._mcast: Any = None
        self._generation = self.da.generation
        self._status = ""
        self._debug = log.isEnabledFor(logging.DEBUG)

    # App protocol ------------------------------------------------------------------------------

    def start(self) -> None:
        state = read_json(self.config.state_file)
        if isinstance(state, dict):
            kept = self.da.restore(state, self.reactor.seconds())
            log.info("restored %d registrations from %s", kept, self.config.state_file)
        listen = self.config.listen
        if self.config.multicast_enabled:
            self._ports.append(self._shared_unicast_port())
            self._mcast = self.reactor.listenMulticast(listen.port, _Datagrams(self, "mcast"),
                                                       interface=SLP_MCAST_V4, listenMultiple=True)
            self._ports.append(self._mcast)
            self._mcast.joinGroup(SLP_MCAST_V4, self.config.multicast.interface)
            self._mcast.setOutgoingInterface(self.config.multicast.interface)
            self._mcast.setTTL(MULTICAST_TTL)
            self._mcast.setLoopbackMode(False)
        else:
            self._ports.append(self.reactor.listenUDP(listen.port, _Datagrams(self, "udp"),
                                                      interface=listen.address))
        self._ports.append(self.reactor.listenTCP(listen.port, _TcpFactory(self), interface=listen.address))
        self._multicast(self.da.announce(self.reactor.seconds()))
        self._after_change()
        self.timer.update()
        log.info("listening on %s port %d (UDP, TCP%s) for scopes %s", listen.address, listen.port,
                 ", multicast" if self._mcast is not None else "", ",".join(self.da.scopes))

    def _shared_unicast_port(self) -> Any:
        """The unicast UDP port when the multicast socket shares its port number.

        Both sockets need SO_REUSEADDR to bind the same port, which `listenUDP` does not set.
        This one must also not receive the group's datagrams (Linux delivers every joined group
        to every socket on the port by default): they would be answered as unicast requests.
        """
        listen = self.config.listen
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.bind((listen.address, listen.port))
            sock.setblocking(False)
            return self.reactor.adoptDatagramPort(sock.fileno(), socket.AF_INET, _Datagrams(self, "udp"))
        finally:
            sock.close()  # the reactor holds its own duplicate of the descriptor

    def reload(self, config: SlpdaConfig) -> None:
        if (config.listen, config.multicast, config.state_file) != (
                self.config.listen, self.config.multicast, self.config.state_file):
            log.warning("listen, multicast and state settings apply at the next restart")
        self.config = config
        self.da.reconfigure(config.da_config(), self.reactor.seconds())
        logging.getLogger().setLevel(config.log.level.upper())
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.timer.update()
        self._report_status()

    def stop(self) -> defer.Deferred[Any]:
        self.timer.cancel()
        self._multicast(self.da.goodbye())
        self.writer.mark_dirty()
        self.writer.flush()
        ports, self._ports = self._ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def status(self) -> str:
        count = self.da.registration_count
        scopes = len(self.da.scopes)
        return (f"{count} service{'' if count == 1 else 's'} registered in "
                f"{scopes} scope{'' if scopes == 1 else 's'}")

    # Traffic ------------------------------------------------------------------------------------

    def received(self, data: bytes, addr: Any, via: Via) -> list[bytes]:
        now = self.reactor.seconds()
        replies = self.da.handle(data, (addr[0], addr[1]), via, now)
        if self._debug:
            log.debug("%s from %s:%d: %d bytes in, %d replies (%s bytes)", via, addr[0], addr[1],
                      len(data), len(replies), ",".join(str(len(r)) for r in replies))
        if self.da.generation != self._generation or self.da.has_events:
            self._after_change()
        return replies

    def _timer_fired(self, now: float) -> None:
        for advert in self.da.handle_timer(now):
            self._multicast(advert)
        self._after_change()

    def _multicast(self, data: bytes) -> None:
        if self._mcast is not None:
            try:
                self._mcast.write(data, (SLP_MCAST_V4, self.config.listen.port))
            except OSError as exc:
                log.warning("cannot send a DAAdvert to %s: %s", SLP_MCAST_V4, exc)

    def _after_change(self) -> None:
        for event in self.da.pop_events():
            _log_event(event)
        if self.da.generation != self._generation:
            self._generation = self.da.generation
            self.writer.mark_dirty()
            self.timer.update()
            self._report_status()

    def _report_status(self) -> None:
        status = self.status()
        if status != self._status:
            self._status = status
            self.runtime.status_changed(self)

    def _state_bytes(self) -> bytes:
        return json.dumps(self.da.snapshot(), indent=1).encode()


def _log_event(event: Event) -> None:
    if isinstance(event, Registered):
        log.info("%s %s (%s, %s) for %d s from %s", "registered" if event.fresh else "updated",
                 event.url, event.service_type, event.lang, event.lifetime, event.source,
                 extra={"SIPMOB_SERVICE_URL": event.url, "SIPMOB_SERVICE_TYPE": event.service_type})
    elif isinstance(event, Deregistered):
        what = f"attributes {event.tags} of" if event.tags else ""
        log.info("deregistered %s %s (%s, %s) by %s", what, event.url, event.service_type, event.lang,
                 event.source, extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, Expired):
        log.info("expired %s (%s, %s)", event.url, event.service_type, event.lang,
                 extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, Refused):
        log.info("refused %s from %s: %s", event.url, event.source, event.error.name,
                 extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, RateLimited):
        log.warning("rate limit: %d requests refused, the latest from %s", event.suppressed,
                    event.source)
