"""A `UserAgent` that reaches names: RFC 3263 before each request outside a dialog, failover per
target (§4.3), and an outbound proxy.

Responsible for: turning the Request-URI (or the outbound proxy, when one is configured) into the
list of targets (`sipmob.service.resolver`), sending to the first, and when that try fails the way
§4.3 names (the transaction timed out, Timer B or F, which is also how a transport error ends it; or
a 503 came back) sending the request again as a new transaction to the next target. The target that
answered is kept for that name: refreshes of a registration and later requests go there, until a try
fails again. With an outbound proxy every request outside a dialog is sent to the proxy with its
Request-URI unchanged; requests inside a dialog follow the dialog's route set and remote target
(RFC 3261 §12.2.1.1), as before.

Not here: the RFC 3263 decisions (`sipmob.sip.locate`), DNS and its cache (`sipmob.service.resolver`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

from sipmob.service.resolver import Resolver
from sipmob.service.sipua import CallFailed, Registration, RegistrationFailed, SIPError, UserAgent
from sipmob.sip.dialog import uri_destination
from sipmob.sip.locate import LocateError, Target, needs_dns
from sipmob.sip.message import Response
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI

log = logging.getLogger("sipmob.service.nexthop")

# RFC 3263 §4.3: what makes the next target worth a try.
RETRY_STATUSES = frozenset({408, 503})
MAX_NAMES = 256  # names whose chosen target is remembered; older ones are located afresh
RELOCATE_DELAY = 60.0  # seconds before a registrar that could not be located is tried again


class NotLocated(SIPError):
    """The URI could not be turned into any target (status 503, the reason says why)."""


def _key(uri: URI) -> str:
    """What identifies a next hop: scheme, host, port, transport and maddr (not the user)."""
    params = tuple((n, v) for n, v in uri.params if n.lower() in ("transport", "maddr"))
    return str(URI(uri.scheme, host=uri.host.lower(), port=uri.port, params=params))


def _uri(value: str | URI) -> URI:
    return value if isinstance(value, URI) else URI.parse(value)


class LocatingUserAgent(UserAgent):
    """`UserAgent` plus RFC 3263. `resolver` None: names cannot be reached (IP literals only);
    `outbound_proxy` a SIP URI (by name or address) that every request outside a dialog goes to."""

    def __init__(self, reactor: Any = None, *, resolver: Resolver | None = None,
                 outbound_proxy: str | URI | None = None, **kw: Any) -> None:
        super().__init__(reactor, **kw)
        self.resolver = resolver
        self.outbound_proxy = _uri(outbound_proxy) if outbound_proxy else None
        self._hops: dict[str, Address] = {}  # the target being tried, or last tried, per name
        self._good: dict[str, Target] = {}  # the target that last answered, per name
        self._relocations: set[Any] = set()  # delayed calls registering again

    def start(self) -> defer.Deferred[list[Address]]:
        d = super().start()
        if self._core_obj is not None:
            self._core_obj.next_hop = self.next_hop
        return d

    # The hook the core asks ---------------------------------------------------------------------

    def hop_uri(self, uri: URI) -> URI:
        return self.outbound_proxy or uri

    def next_hop(self, uri: URI) -> Address:
        """The address a request for `uri` goes to now: the target chosen for its name, else (an IP
        literal) the URI's own."""
        hop = self.hop_uri(uri)
        chosen = self._hops.get(_key(hop))
        return chosen if chosen is not None else uri_destination(hop)

    def targets(self, uri: URI) -> defer.Deferred[list[Target]]:
        hop = self.hop_uri(uri)
        if not needs_dns(hop):
            a = uri_destination(hop)
            return defer.succeed([Target(a.transport, a.host, a.port)])
        if self.resolver is None:
            return defer.fail(LocateError(f"{hop.host} is a name and no DNS resolver is configured"))
        located: defer.Deferred[list[Target]] = self.resolver.locate(hop)
        return located

    # Requests outside a dialog, located first --------------------------------------------------

    def invite(self, target: str | URI, sdp: bytes | None, **kw: Any) -> defer.Deferred[Any]:
        uri = _uri(target)
        return self._attempt(uri, lambda more: super(LocatingUserAgent, self).invite(uri, sdp, **kw),
                             CallFailed)

    def request(self, method: str, target: str | URI, **kw: Any) -> defer.Deferred[Response]:
        uri = _uri(target)
        return self._attempt(uri, lambda more: super(LocatingUserAgent, self).request(method, uri, **kw),
                             SIPError)

    def subscribe(self, target: str | URI, event: str, **kw: Any) -> defer.Deferred[Any]:
        uri = _uri(target)
        return self._attempt(uri, lambda more: super(LocatingUserAgent, self).subscribe(uri, event, **kw),
                             SIPError)

    def register(self, registrar: str | URI, **kw: Any) -> defer.Deferred[Registration]:
        uri = _uri(registrar)

        def once(more: bool) -> defer.Deferred[Registration]:
            d = super(LocatingUserAgent, self).register(uri, **kw)

            def failed(failure: Any) -> Any:
                # The core would keep retrying this one at the same target: drop it (nothing is
                # bound) so the next try is a registration of its own at the next target.
                if failure.check(RegistrationFailed) and failure.value.status in RETRY_STATUSES and more:
                    failure.value.registration.unregister()
                return failure

            return d.addErrback(failed)

        d: defer.Deferred[Registration] = self._attempt(uri, once, NotLocated)

        def not_located(failure: Any) -> Any:
            # Nothing was sent, so the core has no registration to retry: locate again later (the
            # name may appear in DNS, or the DNS server come back), as the core retries a refusal.
            if failure.check(NotLocated) and self._core_obj is not None:
                log.warning("registrar %s: %s; locating it again in %g s", uri, failure.value.reason,
                            RELOCATE_DELAY)
                later = self.reactor.callLater(RELOCATE_DELAY, self._register_again, uri, kw)
                self._relocations.add(later)
            return failure

        return d.addErrback(not_located)

    def _register_again(self, uri: URI, kw: dict[str, Any]) -> None:
        self._relocations = {c for c in self._relocations if c.active()}
        self.register(uri, **kw).addErrback(lambda _: None)  # on_change in `kw` hears the outcome

    def stop(self) -> defer.Deferred[None]:
        for later in self._relocations:
            if later.active():
                later.cancel()
        self._relocations.clear()
        return super().stop()

    @defer.inlineCallbacks
    def _attempt(self, uri: URI, send: Callable[[bool], defer.Deferred[Any]],
                 error: Callable[[int, str], Exception]) -> Any:
        hop = self.hop_uri(uri)
        try:
            targets = yield self.targets(uri)
        except LocateError as exc:
            raise error(503, str(exc)) from None
        if not targets:
            raise error(503, f"no address for {hop.host} in DNS")
        key = _key(hop)
        for table in (self._hops, self._good):
            while len(table) >= MAX_NAMES and key not in table:
                del table[next(iter(table))]  # the name used longest ago
        good = self._good.get(key)
        if good in targets:
            # A target that answered before goes first, so one that is down costs a timeout once,
            # not on every request (the order among the others stays RFC 3263's).
            targets = [good, *(t for t in targets if t != good)]
        for i, target in enumerate(targets):
            last = i == len(targets) - 1
            self._hops[key] = Address(target.host, target.port, target.transport)
            try:
                result = yield send(not last)
            except SIPError as exc:
                if exc.status not in RETRY_STATUSES:
                    self._good[key] = target  # it answered, just not with what we wanted
                    raise
                if self._good.get(key) == target:
                    del self._good[key]
                if last:
                    raise
                log.info("%s: %s %s:%d gave %d; trying the next target", hop, target.transport,
                         target.host, target.port, exc.status)
                continue
            if isinstance(result, Response) and result.status == 503 and not last:
                log.info("%s: %s:%d answered 503; trying the next target", hop, target.host, target.port)
                continue
            self._good[key] = target
            return result
        raise AssertionError("unreachable: the last target returns or raises")  # pragma: no cover
