"""Locating SIP servers (RFC 3263 §4), sans-I/O: from a URI to the ordered addresses to try.

Responsible for the decisions of RFC 3263 §4.1 and §4.2, as a small machine the caller drives with
the DNS answers it fetched (`Resolution`):

- the target host: ``maddr`` when present, else the host part (§4, RFC 3261 §8.1.2);
- the transport: a ``transport`` parameter wins; a numeric host or an explicit port without it means
  UDP (TLS for ``sips:``); otherwise NAPTR records choose, filtered to the services we support and
  to ``SIPS+`` ones for a ``sips:`` URI, ordered by order then preference; without usable NAPTR
  records, SRV queries for each transport we support; without SRV records either, UDP (TLS);
- the address and port: a numeric host is used as it is; an explicit port means A/AAAA of the host
  with that port; otherwise SRV records of the chosen service, ordered by priority and, within one
  priority, by the weighted random selection of RFC 2782 (the random source is the caller's); an SRV
  target of "." says the service is not offered there; no SRV records means A/AAAA of the host and
  the transport's default port;
- the result: `Target`s in the order §4.3 says to try them (each SRV target's addresses in turn).

Not here: sending queries, timeouts, caching by TTL (`sipmob.service.resolver`), or what makes a
target fail and the next one tried (the caller: §4.3 is a transaction timeout, a transport error or a
503 from that target).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import random
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from sipmob.sip.transport import default_port
from sipmob.sip.uri import URI

__all__ = [
    "NAPTR",
    "SRV",
    "LocateError",
    "Query",
    "RType",
    "Resolution",
    "Target",
    "needs_dns",
    "order_srv",
    "target_host",
]

# RFC 3263 §4.1: NAPTR services and the transport each one names; SRV prefixes by transport.
NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIP+D2S": "sctp", "SIPS+D2T": "tls"}
SRV_PREFIXES = {"udp": "_sip._udp.", "tcp": "_sip._tcp.", "sctp": "_sip._sctp.", "tls": "_sips._tcp."}
# Transports for which a sips: URI is acceptable (RFC 3261 §26.2.2: TLS all the way).
SECURE_TRANSPORTS = frozenset({"tls"})
# Our preference when nothing else decides (§4.1 leaves it to the client).
PREFERENCE = ("udp", "tcp", "tls", "sctp")
MAX_TARGETS = 32  # bounds the work one name can cause (a zone with hundreds of SRV/A records)


class RType(enum.Enum):
    NAPTR = "NAPTR"
    SRV = "SRV"
    A = "A"
    AAAA = "AAAA"


class Query(NamedTuple):
    name: str
    rtype: RType


class Target(NamedTuple):
    """One address to try: a transport ("udp", "tcp", "tls", "sctp"), an IP literal and a port."""

    transport: str
    host: str
    port: int


@dataclasses.dataclass(frozen=True, slots=True)
class NAPTR:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclasses.dataclass(frozen=True, slots=True)
class SRV:
    priority: int
    weight: int
    port: int
    target: str


Record = NAPTR | SRV | str  # str: an address from an A or AAAA record


class LocateError(Exception):
    """The URI cannot be located: bad input, or nothing usable in DNS (the message says which)."""


class Random(Protocol):
    def randint(self, a: int, b: int) -> int: ...


def _numeric(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def target_host(uri: URI) -> str:
    """§4: the host to locate, ``maddr`` first; brackets of an IPv6 literal removed."""
    host = uri.param("maddr") or uri.host
    return host.strip("[]") if _numeric(host) else host.rstrip(".").lower()


def needs_dns(uri: URI) -> bool:
    """Whether locating `uri` asks DNS anything (False for an IP literal host or ``maddr``)."""
    return not _numeric(uri.param("maddr") or uri.host)


def order_srv(records: Iterable[SRV], rng: Random) -> list[SRV]:
    """RFC 2782's order: by priority, then within one priority a weighted random pick, repeated.

    The pick is a number in 1..sum of weights, and the first record whose running sum reaches it.
    RFC 2782 draws from 0..sum inclusive, which gives the first record in the list one extra chance
    (weights 1 and 2 would each come first half of the time); drawing from 1 gives each weight
    exactly its share. Zero-weight records therefore come after the weighted ones, in random order,
    which is what RFC 2782 asks of them ("a very small chance of being selected")."""
    by_priority: dict[int, list[SRV]] = {}
    for r in records:
        by_priority.setdefault(r.priority, []).append(r)
    ordered: list[SRV] = []
    for priority in sorted(by_priority):
        left = list(by_priority[priority])
        while left:
            total = sum(r.weight for r in left)
            if total == 0:
                ordered.append(left.pop(rng.randint(0, len(left) - 1)))
                continue
            pick = rng.randint(1, total)
            running = 0
            for i, r in enumerate(left):
                running += r.weight
                if running >= pick:
                    ordered.append(left.pop(i))
                    break
    return ordered


class _Stage(enum.Enum):
    NAPTR = enum.auto()
    SRV = enum.auto()
    ADDRESS = enum.auto()
    DONE = enum.auto()


class Resolution:
    """Locating one URI. Drive it: ``while not r.done: feed(q, records) for q in r.pending()``;
    then `targets` lists where to send, in order. A failed query is fed as no records.

    `transports` are those we can send over, in our order of preference; `families` the address
    records worth asking for (("A",) when we have IPv4 sockets only); `rng` the random source for
    RFC 2782 (tests pass a seeded one).
    """

    def __init__(self, uri: URI, *, transports: Sequence[str] = ("udp",),
                 families: Sequence[RType] = (RType.A, RType.AAAA),
                 rng: Random | None = None) -> None:
        if uri.scheme not in ("sip", "sips"):
            raise LocateError(f"cannot locate a {uri.scheme}: URI")
        if not uri.host:
            raise LocateError("the URI has no host")
        self.uri = uri
        self.secure = uri.is_secure
        self.families = tuple(families)
        self._rng: Random = rng if rng is not None else random.SystemRandom()
        usable = [t.lower() for t in transports]
        if self.secure:
            usable = [t for t in usable if t in SECURE_TRANSPORTS]
        self.transports = usable
        self.host = target_host(uri)
        self.port = uri.port
        self._answers: dict[Query, list[Record]] = {}
        self._asked: list[Query] = []
        # (transport, SRV name) in the order they were chosen, and their records once answered
        self._services: list[tuple[str, str]] = []
        # (transport, host name or literal, port) waiting for addresses, in order
        self._hosts: list[tuple[str, str, int]] = []
        self._targets: list[Target] = []
        self._naptr_chose = False
        explicit = uri.transport
        if explicit is not None:
            if explicit == "tcp" and self.secure:
                explicit = "tls"  # sips:...;transport=tcp is TLS over TCP (RFC 3261 §26.2.2)
            if explicit not in self.transports:
                raise LocateError(f"transport {explicit} is not one we can use for {uri}")
        self._explicit = explicit
        if _numeric(self.host):
            transport = explicit or self._default_transport()
            self._targets = [Target(transport, self.host, self.port or default_port(transport))]
            self._stage = _Stage.DONE
        elif self.port is not None:
            self._hosts = [(explicit or self._default_transport(), self.host, self.port)]
            self._stage = _Stage.ADDRESS
        elif explicit is not None:
            self._services = [(explicit, SRV_PREFIXES[explicit] + self.host)]
            self._stage = _Stage.SRV
        else:
            self._stage = _Stage.NAPTR

    def _default_transport(self) -> str:
        transport = "tls" if self.secure else "udp"
        if transport not in self.transports:
            raise LocateError(f"{self.uri} needs {transport}, which we cannot use")
        return transport

    @property
    def done(self) -> bool:
        return self._stage is _Stage.DONE

    def pending(self) -> list[Query]:
        """The queries the current step needs that have no answer yet (all may be asked at once)."""
        if self._stage is _Stage.NAPTR:
            wanted = [Query(self.host, RType.NAPTR)]
        elif self._stage is _Stage.SRV:
            wanted = [Query(name, RType.SRV) for _, name in self._services]
        elif self._stage is _Stage.ADDRESS:
            wanted = [Query(host, family) for _, host, _ in self._hosts if not _numeric(host)
                      for family in self.families]
        else:
            wanted = []
        return [q for q in dict.fromkeys(wanted) if q not in self._answers]

    def feed(self, query: Query, records: Sequence[Record]) -> None:
        """The answer to `query` (records of other types are ignored; none for NXDOMAIN or a failure)."""
        expected = {RType.NAPTR: NAPTR, RType.SRV: SRV, RType.A: str, RType.AAAA: str}[query.rtype]
        kept = [r for r in records if isinstance(r, expected)]
        if query.rtype in (RType.A, RType.AAAA):
            kept = [r for r in kept if isinstance(r, str) and _family_ok(r, query.rtype)]
        self._answers[query] = kept
        if not self.pending():
            self._advance()

    def _advance(self) -> None:
        if self._stage is _Stage.NAPTR:
            self._services = self._from_naptr(self._answers[Query(self.host, RType.NAPTR)])
            if not self._services:
                # §4.1: no usable NAPTR records, so SRV for each transport we support
                self._services = [(t, SRV_PREFIXES[t] + self.host) for t in self.transports
                                  if t in SRV_PREFIXES]
            self._stage = _Stage.SRV
            if not self.pending():
                self._advance()
        elif self._stage is _Stage.SRV:
            for transport, name in self._services:
                for r in order_srv((r for r in self._answers[Query(name, RType.SRV)]
                                    if isinstance(r, SRV)), self._rng):
                    if r.target not in ("", ".") and len(self._hosts) < MAX_TARGETS:
                        self._hosts.append((transport, r.target.rstrip(".").lower(), r.port))
            if not self._hosts and not any(self._answers[Query(n, RType.SRV)] for _, n in self._services):
                # §4.2: no SRV records at all: the host itself, on the default port of the transport
                transport = self._fallback_transport()
                self._hosts = [(transport, self.host, default_port(transport))]
            self._stage = _Stage.ADDRESS
            if not self.pending():
                self._advance()
        elif self._stage is _Stage.ADDRESS:
            for transport, host, port in self._hosts:
                if _numeric(host):
                    addresses = [host.strip("[]")]
                else:
                    addresses = [a for family in self.families
                                 for a in self._answers.get(Query(host, family), []) if isinstance(a, str)]
                for address in addresses:
                    target = Target(transport, address, port)
                    if target not in self._targets and len(self._targets) < MAX_TARGETS:
                        self._targets.append(target)
            self._stage = _Stage.DONE

    def _fallback_transport(self) -> str:
        if self._explicit is not None:
            return self._explicit
        if self._naptr_chose:
            return self._services[0][0]  # the transport NAPTR chose stays chosen (§4.2)
        return self._default_transport()  # §4.1: UDP for sip:, TLS for sips:

    def _from_naptr(self, records: Sequence[Record]) -> list[tuple[str, str]]:
        usable = []
        for r in records:
            if not isinstance(r, NAPTR) or r.flags.lower() != "s":
                continue
            transport = NAPTR_SERVICES.get(r.service.upper())
            if transport is None or transport not in self.transports:
                continue
            if self.secure and not r.service.upper().startswith("SIPS+"):
                continue
            usable.append((r.order, r.preference, transport, r.replacement.rstrip(".").lower()))
        usable.sort(key=lambda u: (u[0], u[1]))
        if usable:
            # RFC 3403: only the lowest order present is used
            lowest = usable[0][0]
            usable = [u for u in usable if u[0] == lowest]
            self._naptr_chose = True
        return [(transport, name) for _, _, transport, name in dict.fromkeys(usable)]

    def targets(self) -> list[Target]:
        """Where to send, in order; empty when DNS had nothing usable. Only once `done`."""
        if not self.done:
            raise LocateError("resolution not finished")
        return list(self._targets)


def _family_ok(address: str, rtype: RType) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.version == (4 if rtype is RType.A else 6)
