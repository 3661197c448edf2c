"""The SLPv2 Directory Agent (RFC 2608 §8-§12) as a sans-I/O machine.

`DirectoryAgent` keeps the registrations of a DA and answers every request a DA receives: it takes
the bytes of one datagram or one TCP message with its source and the current time, and returns the
bytes to send back. It also says when its next deadline is (a registration expiring, the DAAdvert
heartbeat) and what to multicast when it passes. Beyond the RFC it indexes registrations (service
type, scope, attribute values) so that a SrvRqst with a predicate does not scan the store, caches
encoded replies, limits the request rate per source, bounds the store, restricts who may register,
and can snapshot itself with absolute expiry times for persistence across a power cut.

Not here: sockets, multicast membership, the clock, logging and the state file (the daemon,
`sipmob.slpda.app`); the wire format (`wire`); attribute and predicate semantics (`attrs`,
`predicate`); service-type and scope rules (`names`).
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import math
import re
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Literal

from sipmob.slp import wire
from sipmob.slp.attrs import Attribute, AttrParseError, format_attr_list, index_keys, parse_attr_list
from sipmob.slp.attrs import remove_tags as attrs_remove_tags
from sipmob.slp.attrs import select as attrs_select
from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    DAAdvert,
    ErrorCode,
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
from sipmob.slp.names import (
    ServiceType,
    SLPValueError,
    fold,
    lang_matches,
    service_type_of_url,
    split_list,
    unescape,
)
from sipmob.slp.predicate import Predicate, PredicateError

Via = Literal["udp", "mcast", "tcp"]

DA_SERVICE_TYPE = "service:directory-agent"
MAX_LIFETIME = 0xFFFF
SNAPSHOT_VERSION = 1

_XID = slice(10, 12)  # §8: the XID sits at a fixed offset in every SLPv2 header
_CACHEABLE = frozenset((FunctionId.SrvRqst, FunctionId.AttrRqst, FunctionId.SrvTypeRqst))
_DEFAULT_SCOPES = frozenset(("default",))
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class DAConfig:
    """What the DA needs to know about itself; plain values, checked by the daemon's config."""

    url: str  # service:directory-agent://<address>
    scopes: tuple[str, ...] = ("DEFAULT",)
    addresses: frozenset[str] = frozenset()  # ours: a request whose PR list names one is ignored
    attr_list: str = ""  # the DA's own attributes, sent in its DAAdverts
    heartbeat: float = 10800.0  # CONFIG_DA_BEAT (§13); 0 turns unsolicited adverts off
    udp_reply_limit: int = 1400
    max_registrations: int = 5000
    max_attr_list: int = 4096
    rate: float = 0.0  # requests per second per source address; 0 means unlimited
    burst: int = 0  # bucket size; 0 means `rate` (one second's worth)
    over_rate: Literal["busy", "drop"] = "busy"
    allowed_networks: tuple[str, ...] = ()  # who may SrvReg/SrvDeReg; empty means anyone
    reply_cache_size: int = 1024
    predicate_cache_size: int = 256


# Events for the daemon to log. -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    url: str
    service_type: str
    lang: str
    lifetime: int
    fresh: bool
    source: str


@dataclasses.dataclass(frozen=True, slots=True)
class Deregistered:
    url: str
    service_type: str
    lang: str
    source: str
    tags: str = ""  # non-empty when only these attributes were removed


@dataclasses.dataclass(frozen=True, slots=True)
class Expired:
    url: str
    service_type: str
    lang: str


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """A registration or deregistration answered with an error."""

    url: str
    error: ErrorCode
    source: str


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimited:
    """Requests from `source` went over the rate; at most one per `RATE_LOG_INTERVAL` for all sources."""

    source: str
    suppressed: int  # requests refused since the previous RateLimited event


Event = Registered | Deregistered | Expired | Refused | RateLimited

RATE_LOG_INTERVAL = 10.0


@dataclasses.dataclass
class Counters:
    received: int = 0
    replies: int = 0
    garbage: int = 0
    errors: int = 0  # error replies sent
    rate_limited: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    registrations: int = 0
    deregistrations: int = 0
    expired: int = 0


@dataclasses.dataclass(slots=True)
class _Registration:
    url: str
    lang: str  # folded
    service_type: str  # as registered
    stype: ServiceType
    type_key: str
    scope_list: str
    scopes: frozenset[str]  # folded
    attrs: dict[str, Attribute]
    attr_list: str
    lifetime: int
    expires: float
    source: str
    index: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(slots=True)
class _TypeBucket:
    stype: ServiceType
    keys: set[tuple[str, str]]


class DirectoryAgent:
    """One DA's registrations and its answers to requests. See the module docstring."""

    def __init__(self, config: DAConfig, now: float) -> None:
        self.counters = Counters()
        self._regs: dict[tuple[str, str], _Registration] = {}
        self._by_type: dict[str, _TypeBucket] = {}
        self._by_scope: dict[str, set[tuple[str, str]]] = {}
        self._by_attr: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._expiries: list[tuple[float, str, str]] = []
        self._reply_cache: dict[tuple[str, bytes], tuple[float, list[bytes]]] = {}
        self._predicates: OrderedDict[str, Predicate] = OrderedDict()
        self._buckets: dict[str, list[float]] = {}
        self._events: list[Event] = []
        self._rate_suppressed = 0
        self._rate_logged_at = -math.inf
        self._busy_sent: dict[str, float] = {}
        # §8.5, §12.2.2: seconds since 1970 UTC at which this DA (re)started; SAs that see it
        # change re-register everything. It must never be 0 (that means "going down").
        self.boot_timestamp = max(int(now), 1)
        self.generation = 0  # bumped on every change of the store, for persistence
        self._next_beat: float | None = None
        self._apply_config(config)
        if self.config.heartbeat > 0:
            self._next_beat = now + self.config.heartbeat

    # Configuration ------------------------------------------------------------------------------

    def _apply_config(self, config: DAConfig) -> None:
        self.config = config
        self._scopes = frozenset(_scope_key(s) for s in config.scopes)
        self._scope_list = ",".join(config.scopes)
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in config.allowed_networks)
        self._burst = float(config.burst or max(config.rate, 1.0))
        self._reply_cache.clear()

    def reconfigure(self, config: DAConfig, now: float) -> None:
        """Apply new scopes and limits; registrations are kept (even in scopes no longer served)."""
        beat_changed = config.heartbeat != self.config.heartbeat
        self._apply_config(config)
        if beat_changed:
            self._next_beat = now + config.heartbeat if config.heartbeat > 0 else None

    @property
    def registration_count(self) -> int:
        return len(self._regs)

    @property
    def scopes(self) -> tuple[str, ...]:
        return self.config.scopes

    @property
    def has_events(self) -> bool:
        return bool(self._events)

    def pop_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # Input --------------------------------------------------------------------------------------

    def handle(self, data: bytes, source: tuple[str, int], via: Via, now: float) -> list[bytes]:
        """Process one message from `source`; return the replies to send back to it."""
        self.counters.received += 1
        if self.config.rate > 0 and not self._admit(source[0], now):
            return self._over_rate(data, source[0], via, now)
        if len(data) >= 14 and data[1] in _CACHEABLE:
            key = (via, data[:10] + data[12:])
            hit = self._reply_cache.get(key)
            if hit is not None and now < hit[0]:
                self.counters.cache_hits += 1
                self.counters.replies += len(hit[1])
                xid = data[_XID]
                return [reply[:10] + xid + reply[12:] for reply in hit[1]]
            self.counters.cache_misses += 1
            replies = self._handle(data, source, via, now)
            cache = self._reply_cache
            if len(cache) >= self.config.reply_cache_size:
                del cache[next(iter(cache))]
            # Lifetimes in replies are remaining seconds: a cached reply may be a second old at most.
            cache[key] = (now + 1.0, replies)
            self.counters.replies += len(replies)
            return replies
        replies = self._handle(data, source, via, now)
        self.counters.replies += len(replies)
        return replies

    def _handle(self, data: bytes, source: tuple[str, int], via: Via, now: float) -> list[bytes]:
        try:
            msg = wire.decode(data)
        except SLPParseError as exc:
            header = exc.header
            if header is None and exc.error == ErrorCode.VER_NOT_SUPPORTED:
                # Another version that kept SLPv2's header layout can still be told so (§7).
                header = _peek_header(data, any_version=True)
            if header is None:
                self.counters.garbage += 1
                return []
            return self._error(header, exc.error, via)
        if isinstance(msg, SrvRqst):
            return self._srv_rqst(msg, via, now)
        if isinstance(msg, AttrRqst):
            return self._attr_rqst(msg, via, now)
        if isinstance(msg, SrvTypeRqst):
            return self._srv_type_rqst(msg, via)
        if isinstance(msg, SrvReg | SrvDeReg):
            if via == "mcast":  # §8.3: registrations are unicast; a multicast one is dropped
                return []
            error = (self._srv_reg(msg, source[0], now) if isinstance(msg, SrvReg)
                     else self._srv_dereg(msg, source[0], now))
            if error != ErrorCode.OK:
                self.counters.errors += 1
                self._events.append(Refused(msg.url_entry.url, error, source[0]))
            return [wire.encode(SrvAck(self._reply_header(msg.header, FunctionId.SrvAck), error))]
        # Replies and adverts from other agents need no answer from a DA.
        return []

    # Rate limiting ------------------------------------------------------------------------------

    def _admit(self, address: str, now: float) -> bool:
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) >= 4096:
                self._forget_full_buckets(now)
            bucket = self._buckets[address] = [self._burst, now]
        tokens = min(self._burst, bucket[0] + (now - bucket[1]) * self.config.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        return False

    def _forget_full_buckets(self, now: float) -> None:
        rate, burst = self.config.rate, self._burst
        for address, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * rate >= burst:
                del self._buckets[address]
        if len(self._buckets) >= 4096:  # a flood from many sources: start afresh rather than grow
            self._buckets.clear()
        self._busy_sent.clear()

    def _over_rate(self, data: bytes, address: str, via: Via, now: float) -> list[bytes]:
        self.counters.rate_limited += 1
        self._rate_suppressed += 1
        if now - self._rate_logged_at >= RATE_LOG_INTERVAL:
            self._events.append(RateLimited(address, self._rate_suppressed))
            self._rate_suppressed = 0
            self._rate_logged_at = now
        if self.config.over_rate == "drop" or via == "mcast":
            return []
        # One DA_BUSY_NOW per source per second at most: the answer must not amplify a flood.
        if now - self._busy_sent.get(address, -math.inf) < 1.0:
            return []
        header = _peek_header(data)
        if header is None:
            return []
        self._busy_sent[address] = now
        reply = wire.error_reply(header, ErrorCode.DA_BUSY_NOW)
        return [reply] if reply is not None else []

    # Replies ------------------------------------------------------------------------------------

    def _reply_header(self, request: Header, function_id: FunctionId) -> Header:
        return Header(function_id, xid=request.xid, lang=request.lang)

    def _error(self, header: Header, error: ErrorCode, via: Via) -> list[bytes]:
        if via == "mcast":  # §6.1: never answer a multicast request with an error
            return []
        reply = wire.error_reply(header, error)
        if reply is None:
            return []
        self.counters.errors += 1
        return [reply]

    def _send(self, reply: Message, via: Via) -> list[bytes]:
        if via == "tcp" or not isinstance(reply, SrvRply | AttrRply | SrvTypeRply):
            return [wire.encode(reply)]
        return [wire.encode_within(reply, self.config.udp_reply_limit)]

    def _request_scopes(self, scope_list: str) -> frozenset[str] | None:
        """The folded scopes of a list (§6.4.1: empty means DEFAULT), or None if it is malformed."""
        try:
            scopes = frozenset(_scope_key(s) for s in split_list(scope_list))
        except SLPValueError:
            return None
        return scopes or _DEFAULT_SCOPES

    def _not_for_us(self, prlist: str, via: Via) -> bool:
        # §6.3: a multicast requester lists who already answered; those stay quiet.
        if via != "mcast" or not prlist:
            return False
        try:
            return bool(self.config.addresses.intersection(split_list(prlist)))
        except SLPValueError:
            return False

    # SrvRqst (§8.1) -----------------------------------------------------------------------------

    def _srv_rqst(self, msg: SrvRqst, via: Via, now: float) -> list[bytes]:
        if self._not_for_us(msg.prlist, via):
            return []
        if fold(msg.service_type) == DA_SERVICE_TYPE:
            return self._da_discovery(msg, via)
        try:
            stype = ServiceType.parse(msg.service_type)
        except SLPValueError:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        scopes = self._request_scopes(msg.scope_list)
        if scopes is None:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        if not scopes & self._scopes:
            return self._error(msg.header, ErrorCode.SCOPE_NOT_SUPPORTED, via)
        predicate: Predicate | None = None
        if msg.predicate.strip():
            predicate = self._predicate(msg.predicate)
            if predicate is None:
                return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        urls = [UrlEntry(reg.url, _remaining(reg.expires, now))
                for reg in self._find(stype, scopes, msg.header.lang, predicate)]
        if not urls and via == "mcast":  # §6.1: a multicast request with no result gets silence
            return []
        reply = SrvRply(self._reply_header(msg.header, FunctionId.SrvRply), ErrorCode.OK, tuple(urls))
        return self._send(reply, via)

    def _predicate(self, text: str) -> Predicate | None:
        cache = self._predicates
        predicate = cache.get(text)
        if predicate is not None:
            cache.move_to_end(text)
            return predicate
        try:
            predicate = Predicate.parse(text)
        except PredicateError:
            return None
        cache[text] = predicate
        if len(cache) > self.config.predicate_cache_size:
            cache.popitem(last=False)
        return predicate

    def _find(self, stype: ServiceType, scopes: frozenset[str], lang: str,
              predicate: Predicate | None) -> list[_Registration]:
        """Registrations of a matching type, in one of `scopes`, in `lang`, satisfying `predicate`."""
        candidates: set[tuple[str, str]] = set()
        for bucket in self._by_type.values():
            if stype.matches(bucket.stype):
                candidates |= bucket.keys
        if not candidates:
            return []
        in_scope: set[tuple[str, str]] = set()
        for scope in scopes:
            in_scope |= self._by_scope.get(scope, set())
        candidates &= in_scope
        if predicate is not None and candidates:
            # Every match must carry each index term, so the smallest posting list bounds the work.
            for term in sorted(predicate.index_terms(), key=lambda t: len(self._by_attr.get(t, ()))):
                candidates &= self._by_attr.get(term, set())
                if not candidates:
                    return []
        found = []
        for key in sorted(candidates):
            reg = self._regs[key]
            if not lang_matches(lang, reg.lang):
                continue
            if predicate is not None and not predicate.matches(reg.attrs):
                continue
            found.append(reg)
        return found

    def _da_discovery(self, msg: SrvRqst, via: Via) -> list[bytes]:
        # §8.5, §12.2: any DA answers a DA discovery with no scopes; otherwise the scopes must meet.
        requested = self._request_scopes(msg.scope_list)
        if requested is None:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        if msg.scope_list.strip() and not requested & self._scopes:
            return self._error(msg.header, ErrorCode.SCOPE_NOT_SUPPORTED, via)
        if msg.predicate.strip():
            predicate = self._predicate(msg.predicate)
            if predicate is None:
                return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
            if not predicate.matches(self._own_attrs()):
                return [] if via == "mcast" else self._send(
                    SrvRply(self._reply_header(msg.header, FunctionId.SrvRply), ErrorCode.OK), via)
        return self._send(self._advert(self._reply_header(msg.header, FunctionId.DAAdvert),
                                       self.boot_timestamp), via)

    def _own_attrs(self) -> dict[str, Attribute]:
        try:
            return parse_attr_list(self.config.attr_list)
        except AttrParseError:
            return {}

    # AttrRqst (§10.3) ---------------------------------------------------------------------------

    def _attr_rqst(self, msg: AttrRqst, via: Via, now: float) -> list[bytes]:
        if self._not_for_us(msg.prlist, via):
            return []
        scopes = self._request_scopes(msg.scope_list)
        if scopes is None:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        if not scopes & self._scopes:
            return self._error(msg.header, ErrorCode.SCOPE_NOT_SUPPORTED, via)
        if _is_service_type(msg.url):
            try:
                stype = ServiceType.parse(msg.url)
            except SLPValueError:
                return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
            regs = self._find(stype, scopes, msg.header.lang, None)
        else:
            regs = [reg for (url, _), reg in sorted(self._regs.items())
                    if url == msg.url and reg.scopes & scopes and lang_matches(msg.header.lang, reg.lang)]
        if not regs and via == "mcast":
            return []
        merged: dict[str, Attribute] = {}
        for reg in regs:
            _merge_into(merged, reg.attrs)
        try:
            selected = attrs_select(merged, msg.tag_list)
        except AttrParseError:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        reply = AttrRply(self._reply_header(msg.header, FunctionId.AttrRply), ErrorCode.OK,
                         format_attr_list(selected))
        return self._send(reply, via)

    # SrvTypeRqst (§10.1) ------------------------------------------------------------------------

    def _srv_type_rqst(self, msg: SrvTypeRqst, via: Via) -> list[bytes]:
        if self._not_for_us(msg.prlist, via):
            return []
        scopes = self._request_scopes(msg.scope_list)
        if scopes is None:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        if not scopes & self._scopes:
            return self._error(msg.header, ErrorCode.SCOPE_NOT_SUPPORTED, via)
        wanted = None if msg.naming_authority is None else fold(msg.naming_authority)
        types: dict[str, str] = {}
        for reg in self._regs.values():
            if not reg.scopes & scopes:
                continue
            if wanted is not None and fold(reg.stype.naming_authority or "") != wanted:
                continue
            types.setdefault(fold(reg.service_type), reg.service_type)
        if not types and via == "mcast":
            return []
        reply = SrvTypeRply(self._reply_header(msg.header, FunctionId.SrvTypeRply), ErrorCode.OK,
                            ",".join(types[k] for k in sorted(types)))
        return self._send(reply, via)

    # SrvReg (§8.3, §9.3) ------------------------------------------------------------------------

    def _may_register(self, address: str) -> bool:
        if not self._allowed:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._allowed)

    def _srv_reg(self, msg: SrvReg, source: str, now: float) -> ErrorCode:
        if not self._may_register(source):
            # §7: the DA treats its scopes as protected against this source, and it sent no
            # authenticator we could accept, so the registration lacks authentication.
            return ErrorCode.AUTHENTICATION_ABSENT
        entry = msg.url_entry
        if entry.lifetime == 0 or not _URL_SCHEME.match(entry.url):
            return ErrorCode.INVALID_REGISTRATION
        try:
            stype = ServiceType.parse(msg.service_type)
            url_type = service_type_of_url(entry.url)
        except SLPValueError:
            return ErrorCode.INVALID_REGISTRATION
        # §8.3: a service: URL carries its own type, which must be the registered one.
        if url_type is not None and fold(url_type) != fold(str(stype)):
            return ErrorCode.INVALID_REGISTRATION
        scopes = self._request_scopes(msg.scope_list)
        if scopes is None:
            return ErrorCode.PARSE_ERROR
        if not scopes <= self._scopes:
            return ErrorCode.SCOPE_NOT_SUPPORTED
        if len(msg.attr_list.encode()) > self.config.max_attr_list:
            return ErrorCode.INVALID_REGISTRATION
        try:
            attrs = parse_attr_list(msg.attr_list)
        except AttrParseError:
            return ErrorCode.PARSE_ERROR
        key = (entry.url, fold(msg.header.lang))
        old = self._regs.get(key)
        if not msg.header.fresh:
            # §9.3: an incremental registration updates an existing one of the same type and scopes.
            if old is None or old.type_key != stype.key or old.scopes != scopes:
                return ErrorCode.INVALID_UPDATE
            merged = dict(old.attrs)
            merged.update(attrs)
            attrs = merged
        elif old is None and len(self._regs) >= self.config.max_registrations:
            # A full store frees itself as registrations expire: the SA should retry later.
            return ErrorCode.DA_BUSY_NOW
        self._store(_Registration(
            url=entry.url, lang=fold(msg.header.lang), service_type=msg.service_type, stype=stype,
            type_key=stype.key, scope_list=msg.scope_list, scopes=scopes, attrs=attrs,
            attr_list=format_attr_list(attrs), lifetime=entry.lifetime,
            expires=now + entry.lifetime, source=source))
        self.counters.registrations += 1
        self._events.append(Registered(entry.url, msg.service_type, msg.header.lang, entry.lifetime,
                                       msg.header.fresh, source))
        return ErrorCode.OK

    def _srv_dereg(self, msg: SrvDeReg, source: str, now: float) -> ErrorCode:
        if not self._may_register(source):
            return ErrorCode.AUTHENTICATION_ABSENT
        url = msg.url_entry.url
        scopes = self._request_scopes(msg.scope_list)
        if scopes is None:
            return ErrorCode.PARSE_ERROR
        if not scopes <= self._scopes:
            return ErrorCode.SCOPE_NOT_SUPPORTED
        if not msg.tag_list.strip():
            # §10.6: without a tag list the URL goes, in every language it was registered in.
            regs = [r for (u, _), r in self._regs.items() if u == url]
            if any(not r.scopes & scopes for r in regs):
                return ErrorCode.SCOPE_NOT_SUPPORTED
            for r in regs:
                self._remove(r)
                self.counters.deregistrations += 1
                self._events.append(Deregistered(url, r.service_type, r.lang, source))
            return ErrorCode.OK
        reg = self._regs.get((url, fold(msg.header.lang)))
        if reg is None:
            return ErrorCode.INVALID_REGISTRATION
        if not reg.scopes & scopes:
            return ErrorCode.SCOPE_NOT_SUPPORTED
        try:
            attrs = attrs_remove_tags(reg.attrs, msg.tag_list)
        except AttrParseError:
            return ErrorCode.PARSE_ERROR
        self._store(dataclasses.replace(reg, attrs=attrs, attr_list=format_attr_list(attrs)))
        self.counters.deregistrations += 1
        self._events.append(Deregistered(url, reg.service_type, reg.lang, source, msg.tag_list))
        return ErrorCode.OK

    # The store and its indexes ------------------------------------------------------------------

    def _store(self, reg: _Registration) -> None:
        key = (reg.url, reg.lang)
        old = self._regs.get(key)
        if old is not None:
            self._unindex(key, old)
        index: list[tuple[str, str]] = []
        for attr in reg.attrs.values():
            index.extend(index_keys(attr))
        reg.index = tuple(dict.fromkeys(index))
        self._regs[key] = reg
        bucket = self._by_type.get(reg.type_key)
        if bucket is None:
            bucket = self._by_type[reg.type_key] = _TypeBucket(reg.stype, set())
        bucket.keys.add(key)
        for scope in reg.scopes:
            self._by_scope.setdefault(scope, set()).add(key)
        for term in reg.index:
            self._by_attr.setdefault(term, set()).add(key)
        if old is None or old.expires != reg.expires:
            heapq.heappush(self._expiries, (reg.expires, reg.url, reg.lang))
            if len(self._expiries) > 2 * len(self._regs) + 64:
                self._expiries = [(r.expires, r.url, r.lang) for r in self._regs.values()]
                heapq.heapify(self._expiries)
        self._changed()

    def _unindex(self, key: tuple[str, str], reg: _Registration) -> None:
        bucket = self._by_type.get(reg.type_key)
        if bucket is not None:
            bucket.keys.discard(key)
            if not bucket.keys:
                del self._by_type[reg.type_key]
        for scope in reg.scopes:
            _discard(self._by_scope, scope, key)
        for term in reg.index:
            _discard(self._by_attr, term, key)

    def _remove(self, reg: _Registration) -> None:
        key = (reg.url, reg.lang)
        del self._regs[key]
        self._unindex(key, reg)
        self._changed()

    def _changed(self) -> None:
        self.generation += 1
        self._reply_cache.clear()

    # Timers -------------------------------------------------------------------------------------

    def _next_expiry(self) -> float | None:
        heap = self._expiries
        while heap:
            expires, url, lang = heap[0]
            reg = self._regs.get((url, lang))
            if reg is not None and reg.expires == expires:
                return expires
            heapq.heappop(heap)  # superseded by a refresh, or already gone
        return None

    def get_timer(self) -> float | None:
        """The earliest deadline (absolute, in the caller's clock), or None."""
        deadlines = [t for t in (self._next_expiry(), self._next_beat) if t is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[bytes]:
        """Expire registrations whose lifetime ran out; return a DAAdvert to multicast if one is due."""
        while (expires := self._next_expiry()) is not None and expires <= now:
            _, url, lang = heapq.heappop(self._expiries)
            reg = self._regs[(url, lang)]
            self._remove(reg)
            self.counters.expired += 1
            self._events.append(Expired(reg.url, reg.service_type, reg.lang))
        if self._next_beat is not None and self._next_beat <= now:
            return [self.announce(now)]
        return []

    def announce(self, now: float) -> bytes:
        """An unsolicited DAAdvert (§12.2): sent at start and at every heartbeat, to multicast."""
        if self.config.heartbeat > 0:
            self._next_beat = now + self.config.heartbeat
        return wire.encode(self._advert(Header(FunctionId.DAAdvert), self.boot_timestamp))

    def goodbye(self) -> bytes:
        """The DAAdvert of a clean shutdown: boot timestamp 0 tells SAs and UAs to stop using us."""
        self._next_beat = None
        return wire.encode(self._advert(Header(FunctionId.DAAdvert), 0))

    def _advert(self, header: Header, boot_timestamp: int) -> DAAdvert:
        return DAAdvert(header, ErrorCode.OK, boot_timestamp, self.config.url, self._scope_list,
                        self.config.attr_list)

    # Persistence --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The registrations as JSON-ready data, with absolute expiry times."""
        return {
            "version": SNAPSHOT_VERSION,
            "boot_timestamp": self.boot_timestamp,
            "registrations": [
                {"url": r.url, "lang": r.lang, "service_type": r.service_type,
                 "scope_list": r.scope_list, "attr_list": r.attr_list, "lifetime": r.lifetime,
                 "expires": r.expires, "source": r.source}
                for _, r in sorted(self._regs.items())],
        }

    def restore(self, data: dict[str, Any], now: float) -> int:
        """Load a snapshot, keeping only what has not expired by `now`; return how many were kept.

        Entries that no longer parse, or whose scopes this DA no longer serves, are skipped.
        """
        previous = data.get("boot_timestamp")
        if isinstance(previous, int) and previous >= self.boot_timestamp:
            # Two starts within one second must still look like two boots to the SAs.
            self.boot_timestamp = previous + 1
        kept = 0
        for item in _records(data.get("registrations")):
            try:
                expires = float(item["expires"])
                if expires <= now:
                    continue
                stype = ServiceType.parse(str(item["service_type"]))
                attrs = parse_attr_list(str(item["attr_list"]))
                scope_list = str(item["scope_list"])
                scopes = self._request_scopes(scope_list)
                if scopes is None:
                    continue
                reg = _Registration(
                    url=str(item["url"]), lang=fold(str(item["lang"])),
                    service_type=str(item["service_type"]), stype=stype, type_key=stype.key,
                    scope_list=scope_list, scopes=scopes, attrs=attrs,
                    attr_list=format_attr_list(attrs),
                    lifetime=min(int(item["lifetime"]), MAX_LIFETIME), expires=expires,
                    source=str(item.get("source", "")))
            except (KeyError, TypeError, ValueError, SLPValueError, AttrParseError):
                continue
            if not scopes <= self._scopes or len(self._regs) >= self.config.max_registrations:
                continue
            self._store(reg)
            kept += 1
        return kept


# Helpers ----------------------------------------------------------------------------------------


def _remaining(expires: float, now: float) -> int:
    return max(1, min(MAX_LIFETIME, math.ceil(expires - now)))


def _scope_key(scope: str) -> str:
    try:
        return fold(unescape(scope))
    except SLPValueError:
        return fold(scope)


def _is_service_type(url: str) -> bool:
    # §10.3: an AttrRqst names a URL or a service type; a service: URL has "://" after its type.
    return fold(url).startswith("service:") and "://" not in url


def _discard(index: dict[Any, set[tuple[str, str]]], term: Any, key: tuple[str, str]) -> None:
    keys = index.get(term)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[term]


def _merge_into(merged: dict[str, Attribute], attrs: dict[str, Attribute]) -> None:
    """§10.3: an AttrRqst by service type gets the union of the values of every registration."""
    for tag, attr in attrs.items():
        have = merged.get(tag)
        if have is None:
            merged[tag] = attr
        elif attr.values and have.values:
            try:
                merged[tag] = Attribute(have.tag, tuple(dict.fromkeys((*have.values, *attr.values))))
            except AttrParseError:
                pass  # values of another type under the same tag: §5 allows one type, keep the first


def _records(value: object) -> Iterable[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def _peek_header(data: bytes, any_version: bool = False) -> Header | None:
    """The header of a request, read without decoding the body, to refuse it cheaply."""
    if len(data) < 14 or (data[0] != 2 and not any_version):
        return None
    if int.from_bytes(data[2:5], "big") != len(data):
        return None
    try:
        function_id = FunctionId(data[1])
    except ValueError:
        return None
    lang_len = int.from_bytes(data[12:14], "big")
    try:
        lang = data[14:14 + lang_len].decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(lang) != lang_len:
        return None
    return Header(function_id, xid=int.from_bytes(data[_XID], "big"), lang=lang)
