"""SLPv2 User Agent and Service Agent logic (RFC 2608 §6, §9.3, §12), sans-I/O.

`UserAgent` issues SrvRqst, AttrRqst and SrvTypeRqst: unicast UDP to a Directory Agent serving the
request's scopes, retransmitted with the CONFIG_RETRY back-off until CONFIG_RETRY_MAX (§12.3), repeated
over TCP when the reply has OVERFLOW set, failing over to the next DA and then, when enabled, to
multicast convergence with a previous-responder list (§6.3). It discovers DAs actively (a SrvRqst for
service:directory-agent, unicast to configured DAs and multicast when enabled) and passively (any
DAAdvert it receives, §12.2), and keeps them by URL with their boot timestamps and scopes.

`ServiceAgent` adds a set of registrations it keeps registered in every known DA serving their
scopes: registering, refreshing before the lifetime ends, re-registering everything with a DA that
rebooted (a new boot timestamp), retrying while no DA answers, deregistering on removal and on stop.

Both take the current time as ``now`` and return what to send as `Outgoing` tuples ``(bytes, (host,
port), via)``; `get_timer()` gives the next deadline and `handle_timer(now)` runs it. What happened is
reported as events (`events()`). Addresses are IP literals: resolving names is the caller's business.

Not here: sockets, TCP connections and the clock (`sipmob.service.slp`), the encoding (`wire`),
attribute list syntax (`attrs`), what a DA does (`da`). With an SPI and key configured
(`AgentConfig.auth_spi`), every SrvReg and SrvDeReg carries an HMAC-SHA-256 authentication block
(`auth`), made once per request so that its retransmissions are the same request. Not implemented:
answering requests as an SA when no DA exists (§6.1 "SA without DA"), DSA authentication blocks
(§9.2.2), TCP to multicast responders whose reply overflowed (their truncated replies are used as
they are).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit

from sipmob.slp import auth, wire
from sipmob.slp.attrs import Attribute, AttrParseError, parse_attr_list
from sipmob.slp.messages import (
    SLP_MCAST_V4,
    SLP_PORT,
    AttrRply,
    AttrRqst,
    AuthBlock,
    DAAdvert,
    ErrorCode,
    Flags,
    FunctionId,
    Header,
    Message,
    SLPParseError,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)
from sipmob.slp.names import SLPValueError, fold, split_list

# §13: protocol timing defaults, in seconds.
CONFIG_RETRY = 2.0
CONFIG_RETRY_MAX = 15.0
CONFIG_MC_MAX = 15.0
CONFIG_START_WAIT = 3.0
CONFIG_DA_FIND = 900.0
CONFIG_REG_ACTIVE = (1.0, 3.0)
LIFETIME_DEFAULT = 10800
LIFETIME_MAXIMUM = 65535
DA_SERVICE_TYPE = "service:directory-agent"

Address = tuple[str, int]
Via = Literal["udp", "tcp", "multicast"]
R = TypeVar("R")


class Outgoing(NamedTuple):
    """A message to send: over UDP or TCP to ``dest``, or multicast to the SLP group."""

    data: bytes
    dest: Address
    via: Via


@dataclasses.dataclass(frozen=True, slots=True)
class AgentConfig:
    scopes: tuple[str, ...] = ("DEFAULT",)
    das: tuple[Address, ...] = ()  # statically configured DAs: always used, never dropped
    multicast: bool = False
    multicast_group: Address = (SLP_MCAST_V4, SLP_PORT)
    lang: str = "en"
    retry: float = CONFIG_RETRY
    retry_max: float = CONFIG_RETRY_MAX
    mc_max: float = CONFIG_MC_MAX
    start_wait: float = CONFIG_START_WAIT
    da_find: float = CONFIG_DA_FIND
    mtu: int = 1400  # a multicast request whose PR list would grow past this stops converging (§6.3)
    reg_retry: float = 30.0  # wait after a failed registration before the next attempt
    reg_wait: tuple[float, float] = CONFIG_REG_ACTIVE
    # The registrant's secret: with an SPI, SrvReg and SrvDeReg are signed (`auth`); ``now``
    # must then be wall-clock time, since the DA compares the block's timestamp with its own.
    auth_spi: str = ""
    auth_key: bytes = dataclasses.field(default=b"", repr=False)
    # Made from auth_spi and auth_key; agents built from one config (or its copies) share it, so
    # two of them signing for one URL never give the DA the same timestamp twice (a phone's
    # sip-device and sip-egress agents share it, though their URLs differ).
    signer: auth.Signer | None = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.scopes:
            raise ValueError("at least one scope is needed")
        if self.auth_spi and (auth.check_spi(self.auth_spi) or auth.check_key(self.auth_key)):
            raise ValueError(auth.check_spi(self.auth_spi) or auth.check_key(self.auth_key))
        if self.auth_spi and (self.signer is None or not self.signer.uses(self.auth_spi, self.auth_key)):
            object.__setattr__(self, "signer", auth.Signer(self.auth_spi, self.auth_key))
        elif not self.auth_spi and self.signer is not None:
            object.__setattr__(self, "signer", None)
        if self.retry <= 0 or self.retry_max < self.retry or self.mc_max < self.retry:
            raise ValueError("retry intervals must be positive and retry <= retry_max, mc_max")


@dataclasses.dataclass(frozen=True, slots=True)
class DAInfo:
    """A Directory Agent as its DAAdvert describes it; ``address`` is where requests go."""

    url: str
    address: Address
    boot_timestamp: int
    scopes: tuple[str, ...]
    attr_list: str = ""
    static: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    """A service an SA keeps registered (§9.3): ``attr_list`` in wire form (see `attrs`)."""

    url: str
    service_type: str
    scopes: tuple[str, ...]
    attr_list: str = ""
    lifetime: int = LIFETIME_DEFAULT

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("a registration needs a URL")
        if not self.scopes:
            raise ValueError("a registration needs at least one scope")
        if not 1 <= self.lifetime <= LIFETIME_MAXIMUM:
            raise ValueError(f"lifetime must be 1..{LIFETIME_MAXIMUM} seconds, not {self.lifetime}")


# Events ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class DAFound:
    da: DAInfo


@dataclasses.dataclass(frozen=True, slots=True)
class DARebooted:
    da: DAInfo
    previous_boot_timestamp: int


@dataclasses.dataclass(frozen=True, slots=True)
class DALost:
    da: DAInfo
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    url: str
    da: Address
    lifetime: int


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrationFailed:
    url: str
    da: Address
    reason: str
    error: ErrorCode | None = None  # None when the DA did not answer


@dataclasses.dataclass(frozen=True, slots=True)
class Deregistered:
    url: str
    da: Address


@dataclasses.dataclass(frozen=True, slots=True)
class DeregistrationFailed:
    url: str
    da: Address
    reason: str
    error: ErrorCode | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class QueryDone:
    query: Query[Any]


Event = (DAFound | DARebooted | DALost | Registered | RegistrationFailed | Deregistered
         | DeregistrationFailed | QueryDone)


class SLPError(Exception):
    """A request that did not succeed: the DA's error code, or None when nobody answered."""

    def __init__(self, reason: str, code: ErrorCode | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class SLPTimeout(SLPError):
    pass


class Query(Generic[R]):
    """A request in progress; once ``done``, exactly one of ``result`` and ``error`` is set."""

    __slots__ = ("_collect", "_fallbacks", "_multicast", "done", "error", "kind", "responders", "result")

    def __init__(self, kind: FunctionId, collect: _Collector[R], fallbacks: list[Address],
                 multicast: bool) -> None:
        self.kind = kind
        self.done = False
        self.result: R | None = None
        self.error: SLPError | None = None
        self.responders: list[Address] = []
        self._collect = collect
        self._fallbacks = fallbacks
        self._multicast = multicast


# Reply collectors: what a query's replies add up to. -------------------------------------------


class _Collector(Generic[R]):
    def add(self, msg: Message) -> ErrorCode:
        raise TypeError(f"unexpected reply {type(msg).__name__}")

    def result(self) -> R:
        raise TypeError("no result")


class _Urls(_Collector[tuple[UrlEntry, ...]]):
    def __init__(self) -> None:
        self._urls: dict[str, UrlEntry] = {}

    def add(self, msg: Message) -> ErrorCode:
        if not isinstance(msg, SrvRply):
            return ErrorCode.PARSE_ERROR
        for entry in msg.urls:
            known = self._urls.get(entry.url)
            if known is None or entry.lifetime > known.lifetime:
                self._urls[entry.url] = entry
        return msg.error

    def result(self) -> tuple[UrlEntry, ...]:
        return tuple(self._urls.values())


class _Attrs(_Collector[dict[str, Attribute]]):
    def __init__(self) -> None:
        self._attrs: dict[str, Attribute] = {}

    def add(self, msg: Message) -> ErrorCode:
        if not isinstance(msg, AttrRply):
            return ErrorCode.PARSE_ERROR
        if msg.error != ErrorCode.OK:
            return msg.error
        try:
            attrs = parse_attr_list(msg.attr_list)
        except AttrParseError:
            return ErrorCode.PARSE_ERROR
        for key, attr in attrs.items():
            known = self._attrs.get(key)
            if known is None:
                self._attrs[key] = attr
            else:  # several SAs answered a multicast AttrRqst: the union of their values (§10.4)
                extra = tuple(v for v in attr.values if v not in known.values)
                self._attrs[key] = dataclasses.replace(known, values=known.values + extra)
        return ErrorCode.OK

    def result(self) -> dict[str, Attribute]:
        return dict(self._attrs)


class _Types(_Collector[tuple[str, ...]]):
    def __init__(self) -> None:
        self._types: dict[str, str] = {}

    def add(self, msg: Message) -> ErrorCode:
        if not isinstance(msg, SrvTypeRply):
            return ErrorCode.PARSE_ERROR
        if msg.error != ErrorCode.OK:
            return msg.error
        try:
            types = split_list(msg.srvtype_list) if msg.srvtype_list else []
        except SLPValueError:
            return ErrorCode.PARSE_ERROR
        for t in types:
            self._types.setdefault(fold(t), t)
        return ErrorCode.OK

    def result(self) -> tuple[str, ...]:
        return tuple(self._types.values())


class _DAs(_Collector[tuple[DAInfo, ...]]):
    def __init__(self, agent: _Agent) -> None:
        self._agent = agent
        self._urls: list[str] = []

    def add(self, msg: Message) -> ErrorCode:
        if not isinstance(msg, DAAdvert):
            # a DA answering a unicast SrvRqst for directory agents with an error uses SrvRply
            return msg.error if isinstance(msg, SrvRply) else ErrorCode.PARSE_ERROR
        if msg.error == ErrorCode.OK and msg.url not in self._urls:
            self._urls.append(msg.url)
        return msg.error

    def result(self) -> tuple[DAInfo, ...]:
        return tuple(self._agent.das[u] for u in self._urls if u in self._agent.das)


class _Done(_Collector[None]):
    def add(self, msg: Message) -> ErrorCode:
        return msg.error if isinstance(msg, SrvAck) else ErrorCode.PARSE_ERROR

    def result(self) -> None:
        return None


# Transactions: one request, its retransmissions and its replies. -------------------------------

_Mode = Literal["unicast", "multicast", "tcp"]


@dataclasses.dataclass(slots=True, eq=False)
class _Transaction:
    xid: int
    kind: FunctionId  # of the request
    build: Callable[[str], Message]  # previous-responder list -> the request
    mode: _Mode
    dest: Address
    started: float
    deadline: float
    interval: float
    # (reply, source, now) -> True when the reply ends the transaction
    on_reply: Callable[[Message, Address, float], bool]
    on_end: Callable[[float, bool], None]  # (now, timed_out)
    next_send: float | None = None
    prlist: list[str] = dataclasses.field(default_factory=list)
    sends: int = 0
    news: bool = False  # a new responder answered since the last send


class _Agent:
    """What UA and SA share: transactions, XIDs, the DA table, DA discovery, events."""

    def __init__(self, config: AgentConfig, now: float, rng: random.Random | None = None) -> None:
        self.config = config
        self.das: dict[str, DAInfo] = {}
        self._rng = rng if rng is not None else random.Random()
        self._xid = self._rng.randrange(1, 0x10000)
        self._transactions: dict[int, _Transaction] = {}
        self._out: list[Outgoing] = []
        self._events: list[Event] = []
        self._discovery_at: float | None = None
        self._started = False
        self.dropped = 0  # datagrams that could not be decoded or matched nothing
        self._signer = config.signer

    # public interface ---------------------------------------------------------------------------

    def start(self, now: float) -> list[Outgoing]:
        """Begin DA discovery: ask each configured DA now, multicast after a random wait (§12.2.1).

        Discovery then repeats every CONFIG_DA_FIND. Asking the configured DAs again is how an agent
        without multicast notices that one rebooted (its heartbeat DAAdverts go to the group only).
        """
        if not self._started:
            self._started = True
            for address in self.config.das:
                self._discover(now, [address], multicast=False)
            if self.config.multicast:
                self._discovery_at = now + self._rng.uniform(0.0, self.config.start_wait)
            elif self.config.das:
                self._discovery_at = now + self.config.da_find
        return self._take()

    def receive(self, data: bytes, source: Address, now: float) -> list[Outgoing]:
        try:
            msg = wire.decode(data)
        except SLPParseError:
            self.dropped += 1
            return self._take()
        if isinstance(msg, DAAdvert):
            self._learn_da(msg, source, now)  # solicited or not: passive discovery (§12.2.2)
        t = self._transactions.get(msg.header.xid)
        if t is None or msg.header.function_id not in _REPLIES_TO[t.kind]:
            if not isinstance(msg, DAAdvert):
                self.dropped += 1
            return self._take()
        self._reply(t, msg, source, now)
        return self._take()

    def get_timer(self) -> float | None:
        times = [self._discovery_at]
        for t in self._transactions.values():
            times.append(t.deadline)
            times.append(t.next_send)
        times.extend(self._own_timers())
        return min((x for x in times if x is not None), default=None)

    def handle_timer(self, now: float) -> list[Outgoing]:
        if self._discovery_at is not None and now >= self._discovery_at:
            self._discovery_at = now + self.config.da_find
            for address in self.config.das:
                self._discover(now, [address], multicast=False)
            if self.config.multicast:
                self._discover(now, [], multicast=True)
        for t in list(self._transactions.values()):
            if self._transactions.get(t.xid) is not t:
                continue
            if now >= t.deadline:
                self._end(t, now, timed_out=t.mode != "multicast")
            elif t.next_send is not None and now >= t.next_send:
                if t.mode == "multicast" and t.sends >= 2 and not t.news:
                    self._end(t, now, timed_out=False)  # converged: a round without new responders
                else:
                    self._send(t, now)
        self._handle_own_timers(now)
        return self._take()

    def events(self) -> list[Event]:
        """The events since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    def discover_das(self, now: float) -> tuple[Query[tuple[DAInfo, ...]], list[Outgoing]]:
        """Ask for DAs: the configured ones by unicast, else by multicast; result: the DAs that answered."""
        query = self._discover(now, list(self.config.das), multicast=self.config.multicast)
        return query, self._take()

    # DA table -----------------------------------------------------------------------------------

    def das_for(self, scopes: Iterable[str]) -> list[Address]:
        """Where to send a request in ``scopes``: configured DAs first, then discovered ones."""
        wanted = {fold(s) for s in scopes}
        known = {da.address: da for da in self.das.values()}
        result = []
        for address in self.config.das:
            da = known.get(address)
            if da is None or not da.scopes or wanted & {fold(s) for s in da.scopes}:
                result.append(address)
        for da in self.das.values():
            if da.address not in result and wanted & {fold(s) for s in da.scopes}:
                result.append(da.address)
        return result

    def _da_scopes(self, address: Address) -> tuple[str, ...] | None:
        """The scopes a DA serves, or None when not known yet (a configured DA not yet heard from)."""
        for da in self.das.values():
            if da.address == address and da.scopes:
                return da.scopes
        return None

    def _learn_da(self, advert: DAAdvert, source: Address, now: float) -> None:
        if advert.error != ErrorCode.OK:
            return
        try:
            scopes = tuple(split_list(advert.scope_list)) if advert.scope_list else ()
        except SLPValueError:
            return
        port = _url_port(advert.url)
        address = (source[0], port if port is not None else source[1])
        info = DAInfo(url=advert.url, address=address, boot_timestamp=advert.boot_timestamp,
                      scopes=scopes, attr_list=advert.attr_list, static=address in self.config.das)
        previous = self.das.get(advert.url)
        if advert.boot_timestamp == 0:  # §12.2.2: the DA is going down
            if previous is not None:
                self._lose_da(previous, "going down", now)
            return
        for other in [d for d in self.das.values() if d.address == address and d.url != advert.url]:
            del self.das[other.url]  # the same DA under a new URL
        self.das[advert.url] = info
        if previous is None:
            self._events.append(DAFound(info))
            self._da_up(info, rebooted=False, now=now)
        elif previous.boot_timestamp != advert.boot_timestamp:
            self._events.append(DARebooted(info, previous.boot_timestamp))
            self._da_up(info, rebooted=True, now=now)

    def _lose_da(self, da: DAInfo, reason: str, now: float) -> None:
        if self.das.pop(da.url, None) is not None:
            self._events.append(DALost(da, reason))
            self._da_down(da, now)

    # hooks for the SA
    def _da_up(self, da: DAInfo, rebooted: bool, now: float) -> None:
        pass

    def _da_down(self, da: DAInfo, now: float) -> None:
        pass

    def _own_timers(self) -> list[float | None]:
        return []

    def _handle_own_timers(self, now: float) -> None:
        pass

    # requests -----------------------------------------------------------------------------------

    def _new_xid(self) -> int:
        while True:
            self._xid = self._xid % 0xFFFF + 1  # 1..65535: 0 is what unsolicited DAAdverts carry
            if self._xid not in self._transactions:
                return self._xid

    def _header(self, function_id: FunctionId, xid: int, multicast: bool = False,
                fresh: bool = False) -> Header:
        flags = Flags(0)
        if multicast:
            flags |= Flags.REQUEST_MCAST
        if fresh:
            flags |= Flags.FRESH
        return Header(function_id=function_id, xid=xid, lang=self.config.lang, flags=flags)

    def _signing(self, build: Callable[[int, bool, str], Message],
                 now: float) -> Callable[[int, bool, str], Message]:
        """`build` of a SrvReg or SrvDeReg, with our block when we have a key: signed once, at
        `now`, so that every retransmission carries the same block (the XID is not covered)."""
        signer = self._signer
        if signer is None:
            return build
        blocks: list[tuple[AuthBlock, ...]] = []

        def signed(xid: int, mcast: bool, prlist: str) -> Message:
            msg = build(xid, mcast, prlist)
            assert isinstance(msg, SrvReg | SrvDeReg)
            if not blocks:
                blocks.append(signer.sign(msg, now).url_entry.auths)
            return dataclasses.replace(msg, url_entry=dataclasses.replace(msg.url_entry,
                                                                          auths=blocks[0]))
        return signed

    def _transaction(self, build: Callable[[int, bool, str], Message], mode: _Mode, dest: Address,
                     now: float, on_reply: Callable[[Message, Address, float], bool],
                     on_end: Callable[[float, bool], None]) -> _Transaction:
        """Start a request; ``build(xid, multicast, prlist)`` makes it."""
        xid = self._new_xid()
        multicast = mode == "multicast"
        limit = self.config.mc_max if multicast else self.config.retry_max
        first = build(xid, multicast, "")
        t = _Transaction(xid=xid, kind=first.header.function_id,
                         build=lambda prlist: build(xid, multicast, prlist), mode=mode,
                         dest=dest, started=now, deadline=now + limit, interval=self.config.retry,
                         on_reply=on_reply, on_end=on_end)
        self._transactions[xid] = t
        self._send(t, now)
        return t

    def _send(self, t: _Transaction, now: float) -> None:
        data = wire.encode(t.build(",".join(t.prlist)))
        if t.mode == "multicast" and t.sends and len(data) > self.config.mtu:
            self._end(t, now, timed_out=False)  # §6.3: the PR list no longer fits
            return
        self._out.append(Outgoing(data, t.dest, "multicast" if t.mode == "multicast" else "udp"))
        t.sends += 1
        t.news = False
        # §12.3: wait CONFIG_RETRY, doubling each time, while within the limit
        t.next_send = now + t.interval
        t.interval *= 2
        if t.mode == "unicast" and t.next_send >= t.deadline:
            t.next_send = None

    def _reply(self, t: _Transaction, msg: Message, source: Address, now: float) -> None:
        if t.mode == "multicast":
            if source[0] in t.prlist:
                return  # an answer to a retransmission from a responder we already have
            t.prlist.append(source[0])
            t.news = True
        elif source != t.dest:
            self.dropped += 1
            return
        elif msg.header.overflow:
            if t.mode == "unicast":  # §12.3: the reply did not fit in a datagram, ask again over TCP
                t.mode = "tcp"
                t.next_send = None
                t.deadline = now + self.config.retry_max
                self._out.append(Outgoing(wire.encode(t.build("")), t.dest, "tcp"))
            return  # in TCP mode: a late UDP duplicate of the truncated reply
        if t.on_reply(msg, source, now):
            self._end(t, now, timed_out=False)

    def _end(self, t: _Transaction, now: float, timed_out: bool) -> None:
        if self._transactions.pop(t.xid, None) is t:
            t.on_end(now, timed_out)

    # queries ------------------------------------------------------------------------------------

    def _query(self, kind: FunctionId, build: Callable[[int, bool, str], Message],
               collect: _Collector[R], fallbacks: list[Address], multicast: bool,
               now: float) -> Query[R]:
        query = Query(kind, collect, fallbacks, multicast)
        self._attempt(query, build, now, SLPError("no directory agent known and multicast disabled"))
        return query

    def _attempt(self, query: Query[R], build: Callable[[int, bool, str], Message], now: float,
                 error: SLPError) -> None:
        if query._fallbacks:
            dest = query._fallbacks.pop(0)

            def on_reply(msg: Message, source: Address, now: float) -> bool:
                query.responders.append(source)
                code = query._collect.add(msg)
                if code != ErrorCode.OK:
                    self._finish(query, None, SLPError(f"{source[0]}:{source[1]} answered "
                                                       f"{code.name}", code))
                else:
                    self._finish(query, query._collect.result(), None)
                return True

            def on_end(now: float, timed_out: bool) -> None:
                if timed_out:
                    self._unanswered(dest, now)
                    self._attempt(query, build, now,
                                  SLPTimeout(f"no answer from {dest[0]}:{dest[1]}"))

            self._transaction(build, "unicast", dest, now, on_reply, on_end)
        elif query._multicast:
            query._multicast = False

            def on_mreply(msg: Message, source: Address, now: float) -> bool:
                # §6.3: errors are not sent to multicast requests; ignore any that come anyway
                if query._collect.add(msg) == ErrorCode.OK:
                    query.responders.append(source)
                return False

            def on_mend(now: float, timed_out: bool) -> None:
                self._finish(query, query._collect.result(), None)

            self._transaction(build, "multicast", self.config.multicast_group, now, on_mreply, on_mend)
        else:
            self._finish(query, None, error)

    def _finish(self, query: Query[R], result: R | None, error: SLPError | None) -> None:
        query.done = True
        query.result = result
        query.error = error
        self._events.append(QueryDone(query))

    def _unanswered(self, address: Address, now: float) -> None:
        """A DA did not answer: forget it unless it is configured (§12.3 failover)."""
        if address in self.config.das:
            return
        for da in [d for d in self.das.values() if d.address == address]:
            self._lose_da(da, "no answer", now)

    def _discover(self, now: float, unicast: list[Address],
                  multicast: bool) -> Query[tuple[DAInfo, ...]]:
        scopes = ",".join(self.config.scopes)

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return SrvRqst(self._header(FunctionId.SrvRqst, xid, mcast), prlist, DA_SERVICE_TYPE,
                           scopes, "")

        return self._query(FunctionId.SrvRqst, build, _DAs(self), unicast, multicast, now)

    def _take(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out


_REPLIES_TO: dict[FunctionId, tuple[FunctionId, ...]] = {
    FunctionId.SrvRqst: (FunctionId.SrvRply, FunctionId.DAAdvert),
    FunctionId.AttrRqst: (FunctionId.AttrRply,),
    FunctionId.SrvTypeRqst: (FunctionId.SrvTypeRply,),
    FunctionId.SrvReg: (FunctionId.SrvAck,),
    FunctionId.SrvDeReg: (FunctionId.SrvAck,),
}


def _url_port(url: str) -> int | None:
    """The port in a service: URL such as service:directory-agent://127.0.0.1:4427, if any."""
    rest = url.split("://", 1)
    if len(rest) != 2:
        return None
    try:
        return urlsplit("x://" + rest[1]).port
    except ValueError:
        return None


class UserAgent(_Agent):
    """The UA role (§6): queries to DAs, or by multicast convergence when none is known."""

    def find_services(self, service_type: str, now: float, predicate: str = "",
                      scopes: Sequence[str] | None = None
                      ) -> tuple[Query[tuple[UrlEntry, ...]], list[Outgoing]]:
        scope_list = self._scope_list(scopes)

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return SrvRqst(self._header(FunctionId.SrvRqst, xid, mcast), prlist, service_type,
                           scope_list, predicate)

        query = self._query(FunctionId.SrvRqst, build, _Urls(), self.das_for(split_list(scope_list)),
                            self.config.multicast, now)
        return query, self._take()

    def find_attributes(self, url_or_type: str, now: float, tags: str = "",
                        scopes: Sequence[str] | None = None
                        ) -> tuple[Query[dict[str, Attribute]], list[Outgoing]]:
        scope_list = self._scope_list(scopes)

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return AttrRqst(self._header(FunctionId.AttrRqst, xid, mcast), prlist, url_or_type,
                            scope_list, tags)

        query = self._query(FunctionId.AttrRqst, build, _Attrs(), self.das_for(split_list(scope_list)),
                            self.config.multicast, now)
        return query, self._take()

    def find_service_types(self, now: float, naming_authority: str | None = None,
                           scopes: Sequence[str] | None = None
                           ) -> tuple[Query[tuple[str, ...]], list[Outgoing]]:
        """``naming_authority`` None asks for every naming authority, "" for IANA types only (§10.1)."""
        scope_list = self._scope_list(scopes)

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return SrvTypeRqst(self._header(FunctionId.SrvTypeRqst, xid, mcast), prlist,
                               naming_authority, scope_list)

        query = self._query(FunctionId.SrvTypeRqst, build, _Types(),
                            self.das_for(split_list(scope_list)), self.config.multicast, now)
        return query, self._take()

    def register_once(self, registration: Registration, now: float
                      ) -> tuple[Query[None], list[Outgoing]]:
        """One SrvReg to a DA, without refreshing it later (what slptool's register does)."""
        reg = registration

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return _srvreg(self._header(FunctionId.SrvReg, xid, fresh=True), reg)

        query = self._query(FunctionId.SrvReg, self._signing(build, now), _Done(),
                            self.das_for(reg.scopes)[:1], False, now)
        return query, self._take()

    def deregister_once(self, url: str, now: float, scopes: Sequence[str] | None = None
                        ) -> tuple[Query[None], list[Outgoing]]:
        scope_list = self._scope_list(scopes)

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return SrvDeReg(self._header(FunctionId.SrvDeReg, xid), scope_list, UrlEntry(url, 0))

        query = self._query(FunctionId.SrvDeReg, self._signing(build, now), _Done(),
                            self.das_for(split_list(scope_list))[:1], False, now)
        return query, self._take()

    def _scope_list(self, scopes: Sequence[str] | None) -> str:
        return ",".join(scopes if scopes else self.config.scopes)


def _srvreg(header: Header, reg: Registration) -> SrvReg:
    return SrvReg(header, UrlEntry(reg.url, reg.lifetime), reg.service_type, ",".join(reg.scopes),
                  reg.attr_list)


@dataclasses.dataclass(slots=True, eq=False)
class _RegState:
    """One registration at one DA: what we want there, what the DA has, what is in flight."""

    desired: Registration | None
    at_da: Registration | None = None
    xid: int | None = None
    stale: bool = False  # re-register even if ``at_da`` looks right (the DA rebooted, a failure)
    refresh_at: float | None = None
    retry_at: float | None = None


def refresh_margin(lifetime: int) -> float:
    """How long before a registration expires the SA re-registers it (§9.3 leaves it to us)."""
    # a quarter of the lifetime, so that retransmissions fit even for short ones; at most 5 min
    return min(lifetime / 4, 300.0)


class ServiceAgent(_Agent):
    """The SA role (§9.3, §12.2): keeps a set of registrations registered in every DA serving them."""

    def __init__(self, config: AgentConfig, now: float, rng: random.Random | None = None) -> None:
        super().__init__(config, now, rng)
        self.registrations: dict[str, Registration] = {}
        self._states: dict[tuple[str, Address], _RegState] = {}
        self.stopping = False

    def register(self, registration: Registration, now: float) -> list[Outgoing]:
        """Add or replace a registration; a changed one is re-registered fresh everywhere."""
        if self.stopping:
            raise RuntimeError("the service agent is stopping")
        self.registrations[registration.url] = registration
        self._sync(registration.url, now, delay=0.0)
        return self._take()

    def deregister(self, url: str, now: float) -> list[Outgoing]:
        if self.registrations.pop(url, None) is not None:
            self._sync(url, now, delay=0.0)
        return self._take()

    def stop(self, now: float) -> list[Outgoing]:
        """Deregister everything; `stopped` becomes true once every DA answered or gave up."""
        self.stopping = True
        for url in list(self.registrations):
            del self.registrations[url]
            self._sync(url, now, delay=0.0)
        return self._take()

    @property
    def stopped(self) -> bool:
        return self.stopping and not self._states

    def registered_at(self, url: str) -> list[Address]:
        """The DAs that acknowledged the current version of ``url``'s registration."""
        return [addr for (u, addr), s in self._states.items()
                if u == url and s.at_da is not None and s.at_da == s.desired and not s.stale]

    # reconciling ---------------------------------------------------------------------------------

    def _target(self, reg: Registration, address: Address) -> Registration | None:
        """What to register at a DA: the registration in the scopes that DA serves, if any."""
        served = self._da_scopes(address)
        if served is None:
            return reg
        folded = {fold(s) for s in served}
        scopes = tuple(s for s in reg.scopes if fold(s) in folded)
        return dataclasses.replace(reg, scopes=scopes) if scopes else None

    def _sync(self, url: str, now: float, delay: float, only: Address | None = None,
              stale: bool = False) -> None:
        """Bring every DA's state for ``url`` in line with the registration set."""
        reg = self.registrations.get(url)
        addresses = set(self.das_for(reg.scopes) if reg is not None else [])
        addresses |= {addr for (u, addr) in self._states if u == url}
        for address in addresses:
            if only is not None and address != only:
                continue
            target = self._target(reg, address) if reg is not None else None
            state = self._states.get((url, address))
            if state is None:
                if target is None:
                    continue
                state = self._states[(url, address)] = _RegState(desired=target)
            state.desired = target
            state.stale = state.stale or stale
            state.retry_at = now + delay if delay else None
            self._reconcile(url, address, state, now)

    def _reconcile(self, url: str, address: Address, state: _RegState, now: float) -> None:
        if state.xid is not None or (state.retry_at is not None and now < state.retry_at):
            return
        state.retry_at = None
        target, have = state.desired, state.at_da
        if target is None and have is None:
            del self._states[(url, address)]
        elif have is not None and (target is None or fold(have.service_type) != fold(target.service_type)
                                   or {fold(s) for s in have.scopes} != {fold(s) for s in target.scopes}):
            # §9.3: an update must keep the type and scopes; a changed one is removed first
            self._send_dereg(url, address, state, have, now)
        elif target is not None and (have != target or state.stale or
                                     (state.refresh_at is not None and now >= state.refresh_at)):
            self._send_reg(url, address, state, target, now)

    def _send_reg(self, url: str, address: Address, state: _RegState, reg: Registration,
                  now: float) -> None:
        sent_at = now
        state.refresh_at = None
        state.stale = False

        def on_reply(msg: Message, source: Address, now: float) -> bool:
            assert isinstance(msg, SrvAck)
            state.xid = None
            if msg.error == ErrorCode.OK:
                state.at_da = reg
                state.refresh_at = sent_at + reg.lifetime - refresh_margin(reg.lifetime)
                self._events.append(Registered(url, address, reg.lifetime))
            else:
                state.stale = True
                state.retry_at = now + self.config.reg_retry
                self._events.append(RegistrationFailed(url, address, msg.error.name, msg.error))
            self._after(url, address, state, now)
            return True

        def on_end(now: float, timed_out: bool) -> None:
            if timed_out:
                state.xid = None
                state.stale = True
                state.retry_at = now + self.config.reg_retry
                self._events.append(RegistrationFailed(url, address, "no answer"))
                self._unanswered(address, now)
                self._after(url, address, state, now)

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return _srvreg(self._header(FunctionId.SrvReg, xid, fresh=True), reg)

        state.xid = self._transaction(self._signing(build, now), "unicast", address, now, on_reply,
                                      on_end).xid

    def _send_dereg(self, url: str, address: Address, state: _RegState, reg: Registration,
                    now: float) -> None:
        def done(now: float, error: ErrorCode | None, reason: str) -> None:
            state.xid = None
            state.at_da = None
            state.refresh_at = None
            if state.desired is None:
                # INVALID_REGISTRATION: the DA did not have it, which is what we wanted
                if error in (ErrorCode.OK, ErrorCode.INVALID_REGISTRATION):
                    self._events.append(Deregistered(url, address))
                else:
                    self._events.append(DeregistrationFailed(url, address, reason, error))
            self._after(url, address, state, now)

        def on_reply(msg: Message, source: Address, now: float) -> bool:
            assert isinstance(msg, SrvAck)
            done(now, msg.error, msg.error.name)
            return True

        def on_end(now: float, timed_out: bool) -> None:
            if timed_out:  # give up: the registration will expire at the DA on its own
                done(now, None, "no answer")

        def build(xid: int, mcast: bool, prlist: str) -> Message:
            return SrvDeReg(self._header(FunctionId.SrvDeReg, xid), ",".join(reg.scopes),
                            UrlEntry(reg.url, 0))

        state.xid = self._transaction(self._signing(build, now), "unicast", address, now, on_reply,
                                      on_end).xid

    def _after(self, url: str, address: Address, state: _RegState, now: float) -> None:
        if self._states.get((url, address)) is state:
            self._reconcile(url, address, state, now)

    # DA events and timers -----------------------------------------------------------------------

    def _da_up(self, da: DAInfo, rebooted: bool, now: float) -> None:
        # §12.2.2: wait a little before registering, so that SAs do not all answer a DA at once
        delay = self._rng.uniform(*self.config.reg_wait)
        urls = set(self.registrations) | {u for (u, addr) in self._states if addr == da.address}
        for url in urls:
            state = self._states.get((url, da.address))
            if state is not None and not rebooted and state.at_da is not None:
                self._sync(url, now, delay=0.0, only=da.address)  # the DA's scopes may now be known
            else:
                if rebooted and state is not None:
                    state.at_da = None  # a rebooted DA may have lost it: register again
                self._sync(url, now, delay=delay, only=da.address, stale=rebooted)

    def _da_down(self, da: DAInfo, now: float) -> None:
        for (url, address), state in list(self._states.items()):
            if address != da.address:
                continue
            if address in self.config.das:
                state.at_da = None  # a configured DA: keep trying until it is back
                state.stale = True
                if state.xid is None:
                    state.retry_at = now + self.config.reg_retry
            else:
                del self._states[(url, address)]
                if state.xid is not None:
                    self._transactions.pop(state.xid, None)

    def _own_timers(self) -> list[float | None]:
        times: list[float | None] = []
        for s in self._states.values():
            if s.xid is None:
                times.append(s.retry_at if s.retry_at is not None else s.refresh_at)
        return times

    def _handle_own_timers(self, now: float) -> None:
        for key, state in list(self._states.items()):
            if self._states.get(key) is not state or state.xid is not None:
                continue
            due = state.retry_at if state.retry_at is not None else state.refresh_at
            if due is not None and now >= due:
                self._reconcile(key[0], key[1], state, now)
