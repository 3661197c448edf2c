"""The Egress List on the reactor: netlink news and upstream probes in, egress events out.

`NetlinkWatcher` opens an rtnetlink socket (pyroute2) subscribed to link, IPv4/IPv6 address and
route changes and registers its descriptor with the reactor: the kernel's messages are read when
they arrive, no thread and no polling. It subscribes *before* it dumps the current links, addresses
and routes (of every table), so a change that happens during the dump is seen (twice at worst: the
list takes repeats).

`Prober` sends SIP OPTIONS from an egress's source address to its probe target (our own SIP stack,
one small UA bound to that address, so the system's source-based routing sends it out of that
link); any answer counts, a timeout of one interval is a miss.

`EgressMonitor` feeds both into a `sipmob.net.egress.EgressList`, drives its timer with one
`TimerDriver`, logs one line per change, and hands every other event to its listeners (the daemon
that moves its sessions). `EgressPublisher` answers SUBSCRIBEs for the ``sip-egress`` event
(`sipmob.net.egress_event`) and NOTIFYs the list on every change, and hands SUBSCRIBEs for
``sip-egress-relay`` to its `relay` (`sipmob.service.egress_relay`) when we relay for others; a
gateway with a home-side address keeps these subscriptions there (`home`). Needs no privilege:
reading netlink and binding to our own addresses is allowed to any user.

Not here: the policy (`sipmob.net.egress`), moving a call (the daemon's own hook, e.g.
`sipmob.mn.egress`), routing tables (the system's).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from sipmob.net import egress_event
from sipmob.net import relay as relay_event
from sipmob.net.egress import (
    AddressChanged,
    EgressDown,
    EgressEvent,
    EgressList,
    EgressUp,
    MoveSession,
    ProbeDue,
    SessionStranded,
)
from sipmob.service.egress_config import EgressConfig
from sipmob.service.timers import TimerDriver

log = logging.getLogger("sipmob.egress")

IFF_UP = 0x1
IFF_RUNNING = 0x40  # the carrier is there (RFC 2863 operational state up)
RT_SCOPE_UNIVERSE = 0
RTN_UNICAST = 1


@implementer(IReadDescriptor)
class NetlinkWatcher:
    """Link, address and default route changes from the kernel, as ``on_link(ifname, up)``,
    ``on_address(ifname, address, present)`` and ``on_route(ifname, ip_version, table, present)``
    calls on the reactor thread; ``on_dumped()`` once the initial picture is in."""

    def __init__(self, reactor: Any, on_link: Callable[[str, bool], None],
                 on_address: Callable[[str, str, bool], None],
                 on_route: Callable[[str, int, int, bool], None] | None = None,
                 on_dumped: Callable[[], None] | None = None) -> None:
        self.reactor = reactor
        self.on_link = on_link
        self.on_address = on_address
        self.on_route = on_route
        self.on_dumped = on_dumped
        self._names: dict[int, str] = {}
        self._events: Any = None

    def start(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.rtnl import (  # type: ignore[import-untyped]
            RTMGRP_IPV4_IFADDR,
            RTMGRP_IPV4_ROUTE,
            RTMGRP_IPV6_IFADDR,
            RTMGRP_IPV6_ROUTE,
            RTMGRP_LINK,
        )

        self._events = IPRoute()
        self._events.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
                          | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE)
        # The dump on a second socket: its answers never mix with the news of the first.
        for message in self._dump():
            self._handle(message)
        if self.on_dumped is not None:
            self.on_dumped()
        self.reactor.addReader(self)

    @staticmethod
    def _dump() -> list[Any]:
        from pyroute2 import IPRoute

        with IPRoute() as dump:
            return [*dump.get_links(), *dump.get_addr(), *dump.get_routes(family=socket.AF_INET),
                    *dump.get_routes(family=socket.AF_INET6)]

    def stop(self) -> None:
        if self._events is not None:
            self.reactor.removeReader(self)
            self._events.close()
            self._events = None

    # IReadDescriptor
    def fileno(self) -> int:
        return int(self._events.fileno()) if self._events is not None else -1

    def logPrefix(self) -> str:
        return "netlink"

    def doRead(self) -> None:
        try:
            messages = self._events.get()
        except OSError as exc:  # ENOBUFS: the kernel dropped news; ask again for the whole picture
            log.warning("netlink: %s; reading the links, addresses and routes again", exc)
            messages = self._dump()
        for message in messages:
            try:
                self._handle(message)
            except Exception:
                log.exception("netlink message %s", message.get("event"))

    def connectionLost(self, reason: Any) -> None:
        self._events = None

    def _handle(self, message: Any) -> None:
        event = message.get("event")
        index = message.get("index")
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            name = message.get_attr("IFLA_IFNAME") or self._names.get(index, "")
            self._names[index] = name
            flags = message.get("flags", 0)
            up = event == "RTM_NEWLINK" and bool(flags & IFF_UP) and bool(flags & IFF_RUNNING)
            self.on_link(name, up)
        elif event in ("RTM_NEWADDR", "RTM_DELADDR"):
            if message.get("scope", 0) != RT_SCOPE_UNIVERSE:
                return  # a link-local or host address reaches no one beyond the link
            address = message.get_attr("IFA_LOCAL") or message.get_attr("IFA_ADDRESS")
            name = self._names.get(index) or message.get_attr("IFA_LABEL") or ""
            if address and name:
                self.on_address(name, address, event == "RTM_NEWADDR")
        elif event in ("RTM_NEWROUTE", "RTM_DELROUTE") and self.on_route is not None:
            if message.get("dst_len") != 0 or message.get("type", RTN_UNICAST) != RTN_UNICAST:
                return  # only default routes say whether a link leads anywhere
            oif = message.get_attr("RTA_OIF")
            name = self._names.get(oif) if oif is not None else None
            if name:
                version = 6 if message.get("family") == socket.AF_INET6 else 4
                table = message.get_attr("RTA_TABLE") or message.get("table", 0)
                self.on_route(name, version, int(table), event == "RTM_NEWROUTE")


class Prober:
    """SIP OPTIONS through one egress: from a UA bound to the egress's address."""

    def __init__(self, reactor: Any, address: str) -> None:
        from sipmob.service.sipua import UserAgent

        self.address = address
        self.reactor = reactor
        self.ua = UserAgent(reactor, listen=[(address, 0, "udp")], user="probe")
        failed: list[Any] = []
        self.ua.start().addErrback(failed.append)
        if failed:
            failed[0].raiseException()

    def probe(self, target: str, timeout: float) -> defer.Deferred[float | None]:
        """Fires with the round-trip time, or None when nothing answered in `timeout`."""
        sent = self.reactor.seconds()
        d: defer.Deferred[Any] = self.ua.options(target, timeout=timeout)
        d.addCallbacks(lambda _response: float(self.reactor.seconds() - sent), lambda _failure: None)
        return d

    def close(self) -> defer.Deferred[None]:
        return self.ua.stop()


class EgressMonitor:
    """The gateway's Egress List, kept true by netlink and probes."""

    def __init__(self, reactor: Any, config: EgressConfig, *, watch_netlink: bool = True) -> None:
        self.reactor = reactor
        self.config = config
        self.egresses = EgressList(config.specs(), policy=config.policy, sticky=config.sticky,
                                   hold_down=config.hold_down, probe_interval=config.probe.interval,
                                   down_after=config.probe.down_after)
        self._listeners: list[Callable[[EgressEvent], Any]] = []
        self._probers: dict[str, Prober] = {}
        self._probing: set[str] = set()
        self._timer = TimerDriver(reactor, self.egresses.get_timer, self.egresses.handle_timer,
                                  after=self._pump)
        self.watcher = NetlinkWatcher(reactor, self._link, self._address, self._route,
                                      self._routes_known) if watch_netlink else None

    def on_event(self, listener: Callable[[EgressEvent], Any]) -> None:
        self._listeners.append(listener)

    def start(self) -> None:
        if self.watcher is not None:
            self.watcher.start()
        self.egresses.start(self._now())
        self._pump()

    def stop(self) -> defer.Deferred[Any]:
        """Fires once the probes' sockets are closed."""
        self._timer.cancel()
        if self.watcher is not None:
            self.watcher.stop()
        closing = [prober.close() for prober in self._probers.values()]
        self._probers.clear()
        return defer.DeferredList(closing)

    def status(self) -> str:
        active = self.egresses.active()
        return f"egress {', '.join(active)}" if active else "no egress up"

    def rows(self) -> list[dict[str, object]]:
        return self.egresses.rows()

    # Inputs ---------------------------------------------------------------------------------------

    def _now(self) -> float:
        return float(self.reactor.seconds())

    def _link(self, ifname: str, up: bool) -> None:
        self.egresses.link(ifname, up, self._now())
        self._pump()

    def _address(self, ifname: str, address: str, present: bool) -> None:
        self.egresses.address(ifname, address, present, self._now())
        self._pump()

    def _route(self, ifname: str, version: int, table: int, present: bool) -> None:
        self.egresses.default_route(ifname, version, table, present, self._now())
        self._pump()

    def _routes_known(self) -> None:
        self.egresses.routes_known(self._now())
        self._pump()

    def _probe(self, due: ProbeDue) -> None:
        if due.egress in self._probing:
            return  # the last one has not timed out yet
        prober = self._probers.get(due.egress)
        if prober is not None and prober.address != due.address:
            prober.close().addErrback(lambda f: log.debug("closing a prober: %s", f.value))
            prober = None
        if prober is None:
            try:
                prober = self._probers[due.egress] = Prober(self.reactor, due.address)
            except Exception as exc:
                log.info("egress %s: cannot probe from %s: %s", due.egress, due.address, exc)
                self.egresses.probe_result(due.egress, False, None, self._now())
                return
        self._probing.add(due.egress)

        def done(rtt: float | None) -> None:
            self._probing.discard(due.egress)
            if due.egress in self.egresses.egresses:
                if rtt is None:
                    log.debug("egress %s: probe %s unanswered", due.egress, due.target)
                self.egresses.probe_result(due.egress, rtt is not None, rtt, self._now())
                self._pump()

        # a little under one interval, so a miss is counted before the next probe is due
        prober.probe(due.target, self.config.probe.interval * 0.9).addCallback(done)

    # Output ---------------------------------------------------------------------------------------

    def _pump(self) -> None:
        while (event := self.egresses.next_event()) is not None:
            if isinstance(event, ProbeDue):
                self._probe(event)
                continue
            self._log(event)
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:
                    log.exception("egress listener failed on %s", type(event).__name__)
        self._timer.update()

    @staticmethod
    def _log(event: EgressEvent) -> None:
        if isinstance(event, EgressUp):
            log.info("egress %s up, address %s", event.egress, event.address)
        elif isinstance(event, EgressDown):
            log.warning("egress %s down: %s", event.egress, event.reason)
        elif isinstance(event, AddressChanged):
            log.info("egress %s: address %s -> %s (%d sessions to move)", event.egress, event.old,
                     event.new, len(event.sessions))
        # what happens to a session is said by the daemon that holds it, in its own words
        elif isinstance(event, MoveSession):
            log.debug("session %s: %s -> %s (%s)", event.session, event.from_egress, event.to_egress,
                      event.reason)
        elif isinstance(event, SessionStranded):
            log.debug("session %s stranded: %s is down (%s) and no other egress is up",
                      event.session, event.egress, event.reason)


class EgressPublisher:
    """Answers ``SUBSCRIBE`` for the ``sip-egress`` event (SIP-NEMO §4.5) with the Egress List and
    NOTIFYs every subscriber on each change.

    Who may subscribe is decided first: the source address must be in one of `allow` (the home's
    networks; empty: nobody, 403), at most `max_subscribers` at once (503 with Retry-After), a
    subscription lasts what it asked for up to `max_expires`. A subscriber whose NOTIFY fails is
    forgotten."""

    def __init__(self, ua: Any, monitor: EgressMonitor, allow: Sequence[str], max_subscribers: int = 8,
                 max_expires: int = 3600) -> None:
        import ipaddress

        self.ua = ua
        self.monitor = monitor
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow]
        self.max_subscribers = max_subscribers
        self.max_expires = max_expires
        self.subscriptions: list[Any] = []
        self.relay: Any = None  # a RelayServer, when we relay for other gateways
        # our SIP address on the home network, when we have one apart from the egresses: the
        # subscriptions of the home's gateways are kept there (they cannot reach an egress address
        # once their own links are down)
        self.home: Any = None

    def start(self) -> None:
        self.ua.on_request("SUBSCRIBE", self._subscribe)
        self.monitor.on_event(self._changed)

    def body(self) -> bytes:
        return egress_event.encode(egress_event.from_rows(str(self.ua.contact), self.monitor.rows()))

    def _allowed(self, request: Any) -> bool:
        import ipaddress

        via = request.vias[0] if request.vias else None
        source = (via.received or via.host) if via is not None else ""
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return False
        return any(address in network for network in self.allow)

    def _subscribe(self, incoming: Any) -> Any:
        from sipmob.service.sipua import SIPError

        request = incoming.request
        event = (request.headers.get("Event") or "").split(";")[0].strip().lower()
        if event == relay_event.EVENT and self.relay is not None:
            via = request.vias[0] if request.vias else None
            if self.home is not None:
                self.ua.bind_call(request.call_id, self.home)
            self.relay.subscribe(incoming, (via.received or via.host) if via is not None else "")
            return None
        if event != egress_event.EVENT:
            events = egress_event.EVENT + (f", {relay_event.EVENT}" if self.relay is not None else "")
            incoming.respond(489, headers=[("Allow-Events", events)])  # RFC 6665 §8.3.2
            return None
        if not self._allowed(request):
            log.info("SUBSCRIBE sip-egress from %s refused: not an allowed network", request.vias[0].host
                     if request.vias else "?")
            raise SIPError(403)
        if len(self.subscriptions) >= self.max_subscribers:
            incoming.respond(503, headers=[("Retry-After", "60")])
            return None
        try:
            asked = int((request.headers.get("Expires") or str(self.max_expires)).strip())
        except ValueError:
            raise SIPError(400, "Bad Expires") from None
        if self.home is not None:
            self.ua.bind_call(request.call_id, self.home)
        subscription = incoming.accept_subscription(max(0, min(asked, self.max_expires)))
        if asked == 0:  # a fetch (RFC 6665 §4.4.3): one NOTIFY and done
            subscription.notify("terminated;reason=timeout", self.body(), egress_event.CONTENT_TYPE)
            return None
        self.subscriptions.append(subscription)
        subscription.terminated.addCallback(lambda _reason: self._forget(subscription))
        self._notify(subscription)
        return None

    def _forget(self, subscription: Any) -> None:
        if subscription in self.subscriptions:
            self.subscriptions.remove(subscription)

    def _notify(self, subscription: Any) -> None:
        d = subscription.notify(f"active;expires={self.max_expires}", self.body(), egress_event.CONTENT_TYPE)

        def answered(response: Any) -> None:
            if response.status >= 300:
                self._forget(subscription)

        d.addCallbacks(answered, lambda _failure: self._forget(subscription))

    def _changed(self, event: EgressEvent) -> None:
        for subscription in list(self.subscriptions):
            self._notify(subscription)
