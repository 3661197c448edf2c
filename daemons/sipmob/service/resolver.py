"""DNS for SIP at the edge: RFC 3263 location with `twisted.names`, answers cached by their TTL.

Responsible for asking the queries `sipmob.sip.locate.Resolution` needs (NAPTR, SRV, A, AAAA), all
of one step at once, through a `twisted.names.client.Resolver` configured from /etc/resolv.conf or
from given servers; keeping each answer until its TTL runs out (the smallest TTL of the records of
that type; a TTL of 0 is not kept); bounding the cache and each query's time.

Not here: the RFC 3263 rules (`sipmob.sip.locate`), which target a request goes to and failover
(`sipmob.service.nexthop`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.names import client, dns
from twisted.names.error import DNSNameError, DomainError

from sipmob.sip.locate import NAPTR, SRV, LocateError, Query, Record, Resolution, RType, Target
from sipmob.sip.uri import URI

log = logging.getLogger("sipmob.service.resolver")

RESOLV_CONF = "/etc/resolv.conf"
QUERY_TIMEOUT = (1, 3)  # seconds between retries; a query gives up after their sum
MAX_CACHE = 1024  # entries; a flood of distinct names evicts the oldest, it does not grow memory
MAX_TTL = 86400  # a record claiming a longer life is kept a day


class Resolver:
    """Locates SIP URIs. `servers` ``[(ip, port)]`` override `resolv_conf`; `transports` and
    `families` are what we can send over (see `Resolution`)."""

    def __init__(self, reactor: Any, *, servers: Sequence[tuple[str, int]] | None = None,
                 resolv_conf: str = RESOLV_CONF, transports: Sequence[str] = ("udp",),
                 families: Sequence[RType] = (RType.A,), timeout: Sequence[int] = QUERY_TIMEOUT,
                 rng: Any = None) -> None:
        self.reactor = reactor
        self.transports = tuple(transports)
        self.families = tuple(families)
        self.rng = rng
        self._client = client.Resolver(resolv=None if servers else resolv_conf,
                                       servers=list(servers) if servers else None,
                                       timeout=tuple(timeout), reactor=reactor)
        self._cache: dict[Query, tuple[float, list[Record]]] = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self._cache.clear()

    @defer.inlineCallbacks
    def locate(self, uri: URI) -> Any:
        """Deferred list of `Target`s to try in order (empty: DNS had nothing usable); errback
        `LocateError` for a URI that cannot be located at all."""
        resolution = Resolution(uri, transports=self.transports, families=self.families, rng=self.rng)
        while not resolution.done:
            batch = resolution.pending()
            answers = yield defer.gatherResults([self.lookup(q) for q in batch])
            for query, records in zip(batch, answers, strict=True):
                resolution.feed(query, records)
        targets: list[Target] = resolution.targets()
        return targets

    def lookup(self, query: Query) -> defer.Deferred[list[Record]]:
        """The records for `query`, from the cache while their TTL lasts."""
        now = float(self.reactor.seconds())
        cached = self._cache.get(query)
        if cached is not None:
            if cached[0] > now:
                self.hits += 1
                return defer.succeed(list(cached[1]))
            del self._cache[query]
        self.misses += 1
        d = self._ask(query)
        d.addCallback(self._store, query, now)
        d.addErrback(self._failed, query)
        return d

    def _ask(self, query: Query) -> defer.Deferred[Any]:
        name = query.name
        if query.rtype is RType.NAPTR:
            return self._client.lookupNamingAuthorityPointer(name)
        if query.rtype is RType.SRV:
            return self._client.lookupService(name)
        if query.rtype is RType.A:
            return self._client.lookupAddress(name)
        return self._client.lookupIPV6Address(name)

    def _store(self, result: tuple[list[Any], list[Any], list[Any]], query: Query, asked: float
               ) -> list[Record]:
        answers = result[0]
        wanted = {RType.NAPTR: dns.NAPTR, RType.SRV: dns.SRV, RType.A: dns.A,
                  RType.AAAA: dns.AAAA}[query.rtype]
        records: list[Record] = []
        ttls = []
        for rr in answers:
            if rr.type != wanted:
                continue  # CNAMEs on the way
            record = _convert(rr.payload, query.rtype)
            if record is not None:
                records.append(record)
                ttls.append(min(int(rr.ttl), MAX_TTL))
        if records and min(ttls) > 0:
            if len(self._cache) >= MAX_CACHE:
                self._evict(asked)
            self._cache[query] = (asked + min(ttls), records)
        return list(records)

    def _evict(self, now: float) -> None:
        for key in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[key]
        while len(self._cache) >= MAX_CACHE:
            del self._cache[next(iter(self._cache))]  # the oldest entry (dicts keep insertion order)

    @staticmethod
    def _failed(failure: Any, query: Query) -> list[Record]:
        if failure.check(DNSNameError):
            return []  # NXDOMAIN: nothing there, as RFC 3263 expects for most of its queries
        if failure.check(DomainError):
            return []
        log.warning("DNS %s %s failed: %s", query.rtype.value, query.name, failure.getErrorMessage())
        return []


def _convert(payload: Any, rtype: RType) -> Record | None:
    if rtype is RType.NAPTR:
        return NAPTR(int(payload.order), int(payload.preference), _text(payload.flags),
                     _text(payload.service), _text(payload.replacement.name))
    if rtype is RType.SRV:
        return SRV(int(payload.priority), int(payload.weight), int(payload.port), _text(payload.target.name))
    if rtype is RType.A:
        return str(payload.dottedQuad())
    try:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    except (ValueError, OSError):
        return None


def _text(value: Any) -> str:
    value = getattr(value, "string", value)  # dns.Charstr holds its bytes in .string
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


__all__ = ["LocateError", "Resolver"]
