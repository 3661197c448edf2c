"""The `sipmob-slpda` application: the sans-I/O Directory Agent on Twisted transports.

Responsible for: the unicast UDP socket, the multicast socket joined to 239.255.255.253 (when
enabled and not on loopback), the TCP listener with `peek_length` framing, an idle timeout, a
deadline for each whole request and limits on connections (in all and per source), arming the
DA's one timer, the state file and its journal (read and replayed at start, every change appended
within a quarter second, the file rewritten rarely and the journal then emptied, flushed on stop),
logging the DA's events (URLs with control characters escaped), and the status line. What the DA
answers is `sipmob.slp.da`'s business.
"""

from __future__ import annotations

import fcntl
import json
import logging
import socket
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.protocols.policies import TimeoutMixin

from sipmob.service.config import ConfigError, ConfigProblem
from sipmob.service.daemon import Runtime
from sipmob.service.statefile import DebouncedWriter, Journal, read_json
from sipmob.service.timers import TimerDriver
from sipmob.slp import wire
from sipmob.slp.da import (
    DAConfig,
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
UDP_RECEIVE_BUFFER = 1 << 20
MAX_DATAGRAM = 65535  # RFC 2608 §6.1 allows datagrams up to the path MTU; UDP's own limit is this
READ_BATCH = 256  # datagrams read from a socket before any is answered: a flood's triage unit
READ_BATCH_BYTES = 1 << 18  # and their bytes (Twisted's own bound for one read)
JOURNAL_INTERVAL = 0.25  # seconds between journal writes: a change is on disk well within a second
JOURNAL_COMPACT = 1 << 20  # bytes of journal after which the state file is rewritten
STATE_DELAY, STATE_MAX_DELAY = 30.0, 600.0  # the journal carries changes; rewrites can be rare
STRANGER_TCP_SHARE = 0.75  # of tcp_connections; the rest is kept for trusted and registered sources
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)  # Linux, ip(7)
MULTICAST_TTL = 255  # RFC 2608 §13 net.slp.multicastTTL default; 239.255/16 stays in the site
_NONE_QUEUED = bytes(4)


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self, app: SlpdaApp, via: Via) -> None:
        self.app = app
        self.via = via

    def startProtocol(self) -> None:
        # Straight to the socket: Port.write re-validates the address three times per datagram,
        # a tenth of the cost of answering a cached SrvRqst (measured with cProfile).
        sock = self.transport.socket
        self._sendto = sock.sendto
        self._recvfrom = sock.recvfrom
        self._fd = sock.fileno()
        self._queued = bytearray(4)  # FIONREAD's answer, reused
        # The port's own doRead hands datagrams over one at a time, up to 256 KB of them, and
        # ends every wake-up with a recvfrom that raises EAGAIN: read them here instead, called
        # straight from epoll under `DirectReactor` (the daemon's), else by Twisted's dispatch.
        self.transport.doRead = self.transport.read_direct = self._read

    def _more_queued(self) -> bool:
        """Whether another datagram waits (FIONREAD: the size of the next, 0 when none). An
        empty datagram also reads 0: it waits for the next wake-up, epoll being level-triggered."""
        fcntl.ioctl(self._fd, termios.FIONREAD, self._queued)
        return self._queued != _NONE_QUEUED

    def _read(self) -> None:
        try:
            data, addr = self._recvfrom(MAX_DATAGRAM)
        except OSError:  # an error queued by ICMP, or a wake-up with nothing left
            return
        if not self._more_queued():
            # One datagram per wake-up, as when a household asks: answered at once, alone.
            self._answer(self.app.received(data, addr, self.via), addr)
            return
        self._read_batch([(data, (addr[0], addr[1]))], len(data))

    def _read_batch(self, batch: list[tuple[bytes, tuple[str, int]]], size: int) -> None:
        # More are queued (a burst, or a flood): read a bounded batch, so that the DA decides
        # admission for all of it before parsing any, and answers the household's requests in it
        # first (`DirectoryAgent.handle_batch`).
        recvfrom = self._recvfrom
        while len(batch) < READ_BATCH and size < READ_BATCH_BYTES:
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except OSError:  # nothing left (EAGAIN): once per batch, not per datagram
                break
            batch.append((data, (addr[0], addr[1])))
            size += len(data)
        for addr, replies in self.app.received_batch(batch, self.via):
            self._answer(replies, addr)
        self.app.batch_done()

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self._answer(self.app.received(data, addr, self.via), addr)

    def _answer(self, replies: list[bytes], addr: Any) -> None:
        for reply in replies:
            try:
                self._sendto(reply, addr)
            except OSError as exc:  # full buffer, unreachable client: the reply is lost, as UDP may
                log.debug("cannot answer %s:%d: %s", addr[0], addr[1], exc)


class _TcpConnection(protocol.Protocol, TimeoutMixin):
    def __init__(self, app: SlpdaApp, factory: _TcpFactory, host: str) -> None:
        self.app = app
        self.owner = factory
        self.host = host
        self.buffer = b""
        self._deadline: Any = None

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
                break
            message, self.buffer = self.buffer[:length], self.buffer[length:]
            self._cancel_deadline()
            for reply in self.app.received(message, (peer.host, peer.port), "tcp"):
                self.transport.write(reply)
        # A request must arrive whole within its deadline, however its bytes trickle in: each byte
        # resets the idle timer, and one byte a second would otherwise hold the connection forever.
        if self.buffer and self._deadline is None:
            self._deadline = self.app.reactor.callLater(self.app.config.limits.tcp_request_timeout,
                                                        self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.app.tcp_too_slow += 1
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        self._cancel_deadline()
        self.owner.closed(self.host)

    def timeoutConnection(self) -> None:
        self.transport.loseConnection()


class _TcpFactory(protocol.ServerFactory):
    """Builds connections while they are within the limits: in all, per source, and for strangers
    (neither trusted nor registered) a share of the total, so a flood of them leaves room for the
    home's own clients."""

    def __init__(self, app: SlpdaApp) -> None:
        self.app = app
        self.per_source: dict[str, int] = {}
        self.total = 0
        self.strangers = 0
        self._stranger_hosts: dict[str, int] = {}

    def buildProtocol(self, addr: Any) -> _TcpConnection | None:
        limits = self.app.config.limits
        host = str(addr.host)
        protected = self.app.da.is_protected(host)
        if (self.total >= limits.tcp_connections or self.per_source.get(host, 0) >= limits.tcp_per_source
                or (not protected and self.strangers >= int(limits.tcp_connections * STRANGER_TCP_SHARE))):
            self.app.tcp_refused += 1
            return None  # Twisted closes the connection at once
        self.total += 1
        self.per_source[host] = self.per_source.get(host, 0) + 1
        if not protected:
            self.strangers += 1
            self._stranger_hosts[host] = self._stranger_hosts.get(host, 0) + 1
        return _TcpConnection(self.app, self, host)

    def closed(self, host: str) -> None:
        self.total -= 1
        n = self.per_source.get(host, 0) - 1
        if n > 0:
            self.per_source[host] = n
        else:
            self.per_source.pop(host, None)
        s = self._stranger_hosts.get(host, 0)
        if s:
            self.strangers -= 1
            if s > 1:
                self._stranger_hosts[host] = s - 1
            else:
                del self._stranger_hosts[host]


class SlpdaApp:
    def __init__(self, config: SlpdaConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.da = DirectoryAgent(config.da_config(), self.reactor.seconds())
        self.timer = TimerDriver(self.reactor, self.da.get_timer, self._timer_fired)
        self.journal = Journal(self.reactor, journal_path(config.state_file), JOURNAL_INTERVAL)
        self.writer = DebouncedWriter(self.reactor, config.state_file, self._state_bytes,
                                      delay=STATE_DELAY, max_delay=STATE_MAX_DELAY,
                                      on_written=self.journal.reset)
        self._ports: list[Any] = []
        self._mcast: Any = None
        self.multicast_joined = False
        self.tcp_refused = 0
        self.tcp_too_slow = 0
        self._generation = self.da.generation
        self._status = ""
        self._debug = log.isEnabledFor(logging.DEBUG)

    # App protocol ------------------------------------------------------------------------------

    def start(self) -> None:
        self._restore()
        listen = self.config.listen
        if self.config.multicast_enabled:
            unicast = self._shared_unicast_port()
            self._mcast = self.reactor.listenMulticast(listen.port, _Datagrams(self, "mcast"),
                                                       interface=SLP_MCAST_V4, listenMultiple=True)
            self._ports += [unicast, self._mcast]
            self._mcast.setOutgoingInterface(self.config.multicast.interface).addErrback(
                lambda failure: log.error("cannot send multicast from %s: %s",
                                          self.config.multicast.interface, failure.getErrorMessage()))
            self._mcast.setTTL(MULTICAST_TTL)
            self._mcast.setLoopbackMode(False)
            joined = self._mcast.joinGroup(SLP_MCAST_V4, self.config.multicast.interface)
            joined.addCallbacks(self._joined, self._join_failed)
        else:
            self._ports.append(self.reactor.listenUDP(listen.port, _Datagrams(self, "udp"),
                                                      interface=listen.address))
        for port in self._ports:
            port.maxPacketSize = MAX_DATAGRAM  # Twisted reads 8 KB by default and cuts the rest
            try:
                # Room for a few hundred milliseconds of a flood: while the box schedules something
                # else, the home's requests wait in the queue instead of being dropped with the
                # flood's (the kernel caps it at net.core.rmem_max).
                port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            except OSError as exc:
                log.debug("cannot enlarge the UDP receive buffer: %s", exc)
        self._tcp = _TcpFactory(self)
        self._ports.append(self.reactor.listenTCP(listen.port, self._tcp, interface=listen.address))
        self._multicast(self.da.announce(self.reactor.seconds()))
        self._after_change()
        self.timer.update()
        log.info("listening on %s port %d (UDP, TCP%s) for scopes %s", listen.address, listen.port,
                 ", multicast" if self.multicast_joined else "", ",".join(self.da.scopes))
        self._log_keys(None)

    def _log_keys(self, before: DAConfig | None) -> None:
        """Which registrants have a key and which of those we trust, at start and when it changes."""
        config = self.da.config
        spis = [spi for spi, _ in config.keys]
        if before is not None and ([spi for spi, _ in before.keys], before.trusted_spis) == (
                spis, config.trusted_spis):
            return
        trusted = [spi for spi in spis if spi in config.trusted_spis]
        if spis:
            log.info("registrants with a key: %s; trusted: %s", ", ".join(spis), ", ".join(trusted) or "none")
        elif before is not None:
            log.info("no registrant has a key")

    def _restore(self) -> None:
        """The state file, then the journal's changes after it; then one rewrite to compact them."""
        now = self.reactor.seconds()
        # Neither file can be much larger than the store they describe (a registration is
        # accounted at three times its text at least, and its JSON adds some 300 bytes), so a
        # bigger one is not ours, or not worth minutes of start-up.
        limits = self.config.limits
        bound = limits.max_store_bytes // 3 + 300 * limits.max_registrations
        state = read_json(self.config.state_file, bound)
        kept = self.da.restore(state, now) if isinstance(state, dict) else 0
        changes = Journal.read(self.journal.path, bound)
        if changes:
            self.da.replay(changes, now)
            self.writer.mark_dirty()
            self.writer.flush()  # the journal is folded into the state file, then emptied
        if isinstance(state, dict) or changes:
            log.info("restored %d registrations from %s (%d from its journal)",
                     self.da.registration_count, self.config.state_file,
                     max(0, self.da.registration_count - kept))
        self.da.pop_changes()
        self._generation = self.da.generation

    def _joined(self, _: Any) -> None:
        self.multicast_joined = True
        log.info("joined %s on %s", SLP_MCAST_V4, self.config.multicast.interface)

    def _join_failed(self, failure: Any) -> None:
        self.multicast_joined = False
        log.error("cannot join multicast group %s on %s: %s; answering unicast only", SLP_MCAST_V4,
                  self.config.multicast.interface, failure.getErrorMessage())

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
        try:
            da_config = config.da_config()  # reads the registrants' keys again
        except ValueError as exc:  # a key file changed since the file was checked
            raise ConfigError([ConfigProblem("keys", "registration", str(exc))]) from None
        self.config = config
        before = self.da.config
        self.da.reconfigure(da_config, self.reactor.seconds())
        self._log_keys(before)
        logging.getLogger().setLevel(config.log.level.upper())
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.timer.update()
        self._report_status()

    def stop(self) -> defer.Deferred[Any]:
        self.timer.cancel()
        self._multicast(self.da.goodbye())
        self.journal.append(self.da.pop_changes())
        self.writer.mark_dirty()
        if not self.writer.flush():
            self.journal.flush()  # the state file could not be written: keep the changes
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

    def received_batch(self, batch: list[tuple[bytes, tuple[str, int]]],
                       via: Via) -> Iterator[tuple[tuple[str, int], list[bytes]]]:
        """The DA's answers to `batch`, each as it is made; `batch_done` once all are sent."""
        answers = self.da.handle_batch(batch, via, self.reactor.seconds())
        return self._logged(answers, via) if self._debug else answers

    def _logged(self, answers: Iterator[tuple[tuple[str, int], list[bytes]]],
                via: Via) -> Iterator[tuple[tuple[str, int], list[bytes]]]:
        for addr, replies in answers:
            log.debug("%s from %s:%d: %d replies (%s bytes)", via, addr[0], addr[1],
                      len(replies), ",".join(str(len(r)) for r in replies))
            yield addr, replies

    def batch_done(self) -> None:
        if self.da.generation != self._generation or self.da.has_events:
            self._after_change()

    def _timer_fired(self, now: float) -> None:
        for advert in self.da.handle_timer(now):
            self._multicast(advert)
        self._after_change()

    def _multicast(self, data: bytes) -> None:
        if self._mcast is not None and self.multicast_joined:
            try:
                self._mcast.write(data, (SLP_MCAST_V4, self.config.listen.port))
            except OSError as exc:
                log.warning("cannot send a DAAdvert to %s: %s", SLP_MCAST_V4, exc)

    def _after_change(self) -> None:
        for event in self.da.pop_events():
            _log_event(event)
        changes = self.da.pop_changes()
        if changes:
            self.journal.append(changes)
        if self.da.generation != self._generation:
            self._generation = self.da.generation
            if self.journal.size > JOURNAL_COMPACT:
                self.writer.mark_dirty()
                self.writer.flush()
            else:
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


def journal_path(state_file: Path) -> Path:
    return state_file.with_name(state_file.name + ".journal")


def shown(text: str) -> str:
    """`text` for a log line: control and other unprintable characters as \\xNN escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _log_event(event: Event) -> None:
    if isinstance(event, Registered):
        log.info("%s %s (%s, %s) for %d s from %s%s", "registered" if event.fresh else "updated",
                 event.url, shown(event.service_type), shown(event.lang), event.lifetime, event.source,
                 f" as {event.spi}" if event.spi else "",
                 extra={"SIPMOB_SERVICE_URL": event.url, "SIPMOB_SERVICE_TYPE": event.service_type})
    elif isinstance(event, Deregistered):
        what = f"attributes {shown(event.tags)} of" if event.tags else ""
        log.info("deregistered %s %s (%s, %s) by %s%s", what, event.url, shown(event.service_type),
                 shown(event.lang), event.source, f" as {event.spi}" if event.spi else "",
                 extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, Expired):
        log.info("expired %s (%s, %s)", event.url, shown(event.service_type), shown(event.lang),
                 extra={"SIPMOB_SERVICE_URL": event.url})
    elif isinstance(event, Refused):
        log.info("refused %s from %s: %s%s", shown(event.url), event.source, event.error.name,
                 f" ({shown(event.detail)})" if event.detail else "",
                 extra={"SIPMOB_SERVICE_URL": shown(event.url)})
    elif isinstance(event, RateLimited):
        log.warning("rate limit: %d requests refused, the latest from %s", event.suppressed,
                    event.source)
