"""The SLPv2 Directory Agent (RFC 2608 §8-§12) as a sans-I/O machine.

`DirectoryAgent` keeps the registrations of a DA and answers every request a DA receives: it takes
the bytes of one datagram or one TCP message with its source and the current time, and returns the
bytes to send back. It also says when its next deadline is (a registration expiring, the DAAdvert
heartbeat) and what to multicast when it passes. Beyond the RFC it indexes registrations (service
type + scope + language, attribute values) so that a SrvRqst with a predicate does not scan the
store, keeps each URL entry encoded, reads a plain SrvRqst straight from its bytes and binds its
predicate to a shape seen before (`predicate.prepare`), caches the replies of requests that
repeat, limits the request rate per source (deciding admission for a whole batch of datagrams
before parsing any, `handle_batch`), bounds the store, restricts who may register and who owns a
URL (its source address, or its registrant's secret: `auth`), and can snapshot itself with
absolute expiry times for persistence across a power cut.

Not here: sockets, multicast membership, the clock, logging and the state file (the daemon,
`sipmob.slpda.app`); the wire format (`wire`); attribute and predicate semantics (`attrs`,
`predicate`); service-type and scope rules (`names`).
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import itertools
import math
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from sipmob.slp import auth, wire
from sipmob.slp.attrs import (
    Attribute,
    AttrParseError,
    format_attr_list,
    index_keys,
    parse_attr_list,
    tag_patterns,
)
from sipmob.slp.attrs import remove_tags as attrs_remove_tags
from sipmob.slp.messages import (
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
)
from sipmob.slp.names import (
    WHITESPACE,
    ServiceType,
    SLPValueError,
    fold,
    lang_matches,
    service_type_of_url,
    split_list,
    unescape,
    wildcard_match,
)
from sipmob.slp.predicate import Bound, Predicate, PredicateError, prepare

Via = Literal["udp", "mcast", "tcp"]

DA_SERVICE_TYPE = "service:directory-agent"
MAX_LIFETIME = 0xFFFF
SNAPSHOT_VERSION = 1

_XID = slice(10, 12)  # §8: the XID sits at a fixed offset in every SLPv2 header
_CACHEABLE = frozenset((FunctionId.SrvRqst, FunctionId.AttrRqst, FunctionId.SrvTypeRqst))
_DEFAULT_SCOPES = frozenset(("default",))
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+\Z")
# C0 and C1 controls and DEL: never in a URL (RFC 3986 §2), and a terminal would act on them
# when a log line or `sipmob devices` shows one.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
MAX_REPLY = 0xFFFF  # the largest reply over TCP; a larger one is cut and flagged OVERFLOW
TRUSTED_TAG = "trusted"  # set by the DA on registrations from trusted registrants, never by them
NAME_TAG = "name"
WORK_PER_TOKEN = 1000  # work units (`_spend`) that cost a source one request of its rate
_CHUNK = 64  # candidates evaluated together: a reply cut short wastes at most this many
_SRVRQST_ID = bytes((FunctionId.SrvRqst,))


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
    # Registrants whose registrations carry the `trusted` attribute and whose names nobody else
    # may claim; also exempt from the rate limits (loopback: the SA proxy and the box's own tools).
    trusted_networks: tuple[str, ...] = ()
    max_lifetime: int = MAX_LIFETIME  # longer lifetimes are shortened to this
    max_store_bytes: int = 0  # accounted size of the store (`_cost`); 0 means no byte limit
    max_predicate: int = 4096  # bytes of one predicate
    max_predicate_items: int = 64  # comparisons in one predicate
    request_work: int = 0  # work units one request may spend (`_Work`); 0 means no limit
    subnet_rate: float = 0.0  # requests per second per /24 (IPv4) or /64 (IPv6); 0: no limit
    subnet_burst: int = 0
    stranger_rate: float = 0.0  # all sources neither trusted nor registered together; 0: no limit
    stranger_burst: int = 0
    rate_sources: int = 4096  # addresses (and as many subnets) whose buckets are remembered
    reply_cache_size: int = 1024
    reply_cache_bytes: int = 1 << 21
    predicate_cache_size: int = 256
    predicate_cache_bytes: int = 1 << 20
    # Per-registrant secrets (`auth`): SPI -> key. A URL registered with a valid block belongs to
    # its SPI, whatever the source address; registrants named in `trusted_spis` are trusted.
    keys: tuple[tuple[str, bytes], ...] = dataclasses.field(default=(), repr=False)
    trusted_spis: tuple[str, ...] = ()
    auth_window: float = 300.0  # seconds a block's timestamp may differ from our clock


# Events for the daemon to log. -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Registered:
    url: str
    service_type: str
    lang: str
    lifetime: int
    fresh: bool
    source: str
    spi: str = ""  # the registrant's SPI when the request carried a valid block


@dataclasses.dataclass(frozen=True, slots=True)
class Deregistered:
    url: str
    service_type: str
    lang: str
    source: str
    tags: str = ""  # non-empty when only these attributes were removed
    spi: str = ""


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
    detail: str = ""  # why, when the error code alone does not say (a bad authenticator...)


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
    cut_by_work: int = 0  # replies flagged OVERFLOW because the request's work budget ran out
    auth_failed: int = 0  # SrvReg/SrvDeReg blocks refused: bad MAC, unknown SPI, expired, replayed


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
    trusted: bool = False
    spi: str = ""  # the owner when registered with a valid block: only it may change the URL
    auth_ts: int = 0  # the timestamp of that block
    index: tuple[tuple[str, str], ...] = ()
    cost: int = 0
    entry: bytes = b""  # the URL entry's bytes after its lifetime, encoded once (`_store`)
    sent: bytes = b""  # the whole entry as last sent, valid while sent_from <= now < sent_to
    sent_from: float = math.inf
    sent_to: float = -math.inf

    @property
    def type_name(self) -> str:
        return _type_name(self.stype)

    @property
    def lang_key(self) -> str:
        return _lang_key(self.lang)


@dataclasses.dataclass(slots=True)
class _TypeBucket:
    stype: ServiceType
    keys: set[tuple[str, str]]


class DirectoryAgent:
    """One DA's registrations and its answers to requests. See the module docstring."""

    def __init__(self, config: DAConfig, now: float) -> None:
        self.counters = Counters()
        self._regs: dict[tuple[str, str], _Registration] = {}
        # Keyed by the full type name (`_type_name`); `_names_by_key` lists the names under each
        # `ServiceType.key`, for a request by abstract type alone.
        self._by_type: dict[str, _TypeBucket] = {}
        self._names_by_key: dict[str, set[str]] = {}
        # What a SrvRqst asks first: registrations of one type, in one scope, in one language.
        self._by_tsl: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
        self._service_types: dict[str, ServiceType | None] = {}  # parsed request types, bounded
        self._scope_lists: dict[str, frozenset[str] | None] = {}  # parsed request scope lists
        self._seen: set[int] = set()  # hashes of requests answered once: cached when seen again
        self._seen_predicates: set[int] = set()  # likewise for parsed predicates
        self._by_scope: dict[str, set[tuple[str, str]]] = {}
        self._by_attr: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self._by_url: dict[str, set[tuple[str, str]]] = {}
        self._trusted_names: dict[str, int] = {}
        self._sources: dict[str, int] = {}  # registrations per source address: the known-good clients
        self._store_bytes = 0
        self._expiries: list[tuple[float, str, str]] = []
        self._reply_cache: dict[tuple[str, bytes], tuple[float, list[bytes]]] = {}
        self._reply_cache_bytes = 0
        self._predicates: OrderedDict[str, Predicate] = OrderedDict()
        self._predicate_bytes = 0
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._subnet_buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._stranger_bucket: list[float] = []
        self._known_bucket: list[float] = []  # the sources of live registrations, together
        self._changes: list[dict[str, Any]] = []
        self._work = 0
        self._work_limit = math.inf
        self._cut = False
        self._events: list[Event] = []
        self._rate_suppressed = 0
        self._rate_logged_at = -math.inf
        self._busy_sent: dict[str, float] = {}
        # §8.5, §12.2.2: seconds since 1970 UTC at which this DA (re)started; SAs that see it
        # change re-register everything. It must never be 0 (that means "going down").
        self.boot_timestamp = max(int(now), 1)
        self.generation = 0  # bumped on every change of the store, for persistence
        self._next_beat: float | None = None
        self._auth_detail = ""
        self._replay = auth.ReplayGuard(config.auth_window, 2 * config.max_registrations + 64)
        self._apply_config(config)
        if self.config.heartbeat > 0:
            self._next_beat = now + self.config.heartbeat

    # Configuration ------------------------------------------------------------------------------

    def _apply_config(self, config: DAConfig) -> None:
        self.config = config
        self._scopes = frozenset(_scope_key(s) for s in config.scopes)
        self._scope_list = ",".join(config.scopes)
        self._allowed = tuple(ipaddress.ip_network(n, strict=False) for n in config.allowed_networks)
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in config.trusted_networks)
        self._trust_cache: dict[str, bool] = {}
        self._burst = float(config.burst or max(config.rate, 1.0))
        self._subnet_burst = float(config.subnet_burst or max(config.subnet_rate, 1.0))
        self._stranger_burst = float(config.stranger_burst or max(config.stranger_rate, 1.0))
        self._work_limit = config.request_work or math.inf
        self._keys = dict(config.keys)
        self._trusted_spis = frozenset(config.trusted_spis)
        self._replay.window = config.auth_window
        self._replay.capacity = 2 * config.max_registrations + 64
        self._reply_cache.clear()
        self._reply_cache_bytes = 0

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

    @property
    def store_bytes(self) -> int:
        """The accounted size of the registrations (what `max_store_bytes` bounds)."""
        return self._store_bytes

    def pop_changes(self) -> list[dict[str, Any]]:
        """Registrations stored and removed by requests since the last call, for a journal.

        Each is a snapshot record with ``"op": "put"``, or ``{"op": "del", "url", "lang"}``;
        `replay` applies them in order. Expiry is not a change: replay drops what has expired.
        """
        changes, self._changes = self._changes, []
        return changes

    def is_trusted(self, address: str) -> bool:
        """Whether `address` is one of the configured trusted registrants."""
        known = self._trust_cache.get(address)
        if known is None:
            known = _in_networks(address, self._trusted)
            if len(self._trust_cache) >= 4 * self.config.rate_sources:
                self._trust_cache.clear()
            self._trust_cache[address] = known
        return known

    def is_protected(self, address: str) -> bool:
        # The protected share: trusted registrants and the sources of live registrations are not
        # charged to their subnet or to the strangers' pool, so a flood from elsewhere leaves
        # them their own rate.
        return address in self._sources or self.is_trusted(address)

    # Input --------------------------------------------------------------------------------------

    def handle(self, data: bytes, source: tuple[str, int], via: Via, now: float) -> list[bytes]:
        """Process one message from `source`; return the replies to send back to it.

        `handle_batch` of this one message (nothing else to triage), without its generator."""
        self.counters.received += 1
        address = source[0]
        limited = self._limited(address)
        if limited and (refusal := self._refused(data, address, via, now)) is not None:
            return refusal
        return self._serve(data, source, via, now, limited)

    def handle_batch(self, batch: list[tuple[bytes, tuple[str, int]]], via: Via,
                     now: float) -> Iterator[tuple[tuple[str, int], list[bytes]]]:
        """`handle` for datagrams read together: ``(source, replies)`` for each, as it is answered.

        Admission is decided for every datagram before any is parsed, so a flood's datagrams
        cost their admission only, and the requests of the protected sources (trusted, or with a
        live registration) are answered before the strangers' that were read with them: under a
        flood a household's datagram waits for the rest of its batch to be triaged, not served.
        Each source's own requests keep their order.
        """
        later = []
        for data, source in batch:
            self.counters.received += 1
            address = source[0]
            limited = self._limited(address)
            if limited:
                refusal = self._refused(data, address, via, now)
                if refusal is not None:
                    if refusal:
                        yield source, refusal
                    continue
                if not self.is_protected(address):
                    later.append((data, source))
                    continue
            yield source, self._serve(data, source, via, now, limited)
        for data, source in later:
            yield source, self._serve(data, source, via, now, True)

    def _refused(self, data: bytes, address: str, via: Via, now: float) -> list[bytes] | None:
        """None when a limited source is admitted (its tokens taken), else what to answer it."""
        refused_by = self._admit(address, now)
        if refused_by is None:
            return None
        return self._over_rate(data, address, via, now, refused_by)

    def _serve(self, data: bytes, source: tuple[str, int], via: Via, now: float,
               limited: bool) -> list[bytes]:
        address = source[0]
        self._work = 0
        self._cut = False
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
            # Most requests are never repeated (a predicate naming a new value): caching their
            # replies would only push out the ones that are. A request is cached when seen again.
            seen = hash(key)
            if seen in self._seen:
                self._cache_reply(key, replies, now)
            else:
                if len(self._seen) >= 4 * self.config.reply_cache_size:
                    self._seen.clear()
                self._seen.add(seen)
        else:
            replies = self._handle(data, source, via, now)
        if limited and self._work >= WORK_PER_TOKEN:
            self._charge(address, self._work / WORK_PER_TOKEN)
        self.counters.replies += len(replies)
        return replies

    def _cache_reply(self, key: tuple[str, bytes], replies: list[bytes], now: float) -> None:
        cache = self._reply_cache
        size = len(key[1]) + sum(len(r) for r in replies) + 200
        if size > self.config.reply_cache_bytes // 4:
            return  # a few huge replies must not push every small one out
        while cache and (len(cache) >= self.config.reply_cache_size
                         or self._reply_cache_bytes + size > self.config.reply_cache_bytes):
            old_key = next(iter(cache))
            old = cache.pop(old_key)
            self._reply_cache_bytes -= len(old_key[1]) + sum(len(r) for r in old[1]) + 200
        # Lifetimes in replies are remaining seconds: a cached reply may be a second old at most.
        cache[key] = (now + 1.0, replies)
        self._reply_cache_bytes += size

    def _spend(self, units: int) -> bool:
        """Count work for the current request; False once its budget is spent (the reply is cut)."""
        self._work += units
        if self._work > self._work_limit:
            if not self._cut:
                self._cut = True
                self.counters.cut_by_work += 1
            return False
        return True

    def _handle(self, data: bytes, source: tuple[str, int], via: Via, now: float) -> list[bytes]:
        if data[1:2] == _SRVRQST_ID:
            # Most requests: read straight from the bytes, without building the message.
            fields = wire.srv_rqst_fields(data)
            if fields is not None:
                replies = self._srv_rqst_fields(fields, via, now)
                if replies is not None:
                    return replies
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
            self._auth_detail = ""
            error = (self._srv_reg(msg, source[0], now) if isinstance(msg, SrvReg)
                     else self._srv_dereg(msg, source[0], now))
            if error != ErrorCode.OK:
                self.counters.errors += 1
                self._events.append(Refused(msg.url_entry.url, error, source[0], self._auth_detail))
            return [wire.encode(SrvAck(self._reply_header(msg.header, FunctionId.SrvAck), error))]
        # Replies and adverts from other agents need no answer from a DA.
        return []

    # Rate limiting ------------------------------------------------------------------------------

    def _limited(self, address: str) -> bool:
        config = self.config
        if not (config.rate > 0 or config.subnet_rate > 0 or config.stranger_rate > 0):
            return False
        return not self.is_trusted(address)

    def _admit(self, address: str, now: float) -> Literal["source", "pool"] | None:
        """Take one token from the source's bucket, and from its subnet's and the strangers' pool
        unless it is a known-good client; every bucket must have one. Returns None when admitted,
        else which bucket was empty: the source's own, or a pool shared with others."""
        config = self.config
        buckets: list[tuple[list[float], float, float]] = []
        if config.rate > 0:
            buckets.append((_bucket(self._buckets, address, self._burst, now, config.rate_sources),
                            config.rate, self._burst))
        pool = self._pool(address, now)
        if pool is not self._known_bucket and config.subnet_rate > 0:
            buckets.append((_bucket(self._subnet_buckets, _subnet(address), self._subnet_burst, now,
                                    config.rate_sources), config.subnet_rate, self._subnet_burst))
        if pool:
            buckets.append((pool, config.stranger_rate, self._stranger_burst))
        refused_by: Literal["source", "pool"] | None = None
        for i, (bucket, rate, burst) in enumerate(buckets):
            bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if bucket[0] < 1.0 and refused_by is None:
                refused_by = "source" if i == 0 and config.rate > 0 else "pool"
        if refused_by is None:
            for bucket, _, _ in buckets:
                bucket[0] -= 1.0
        return refused_by

    def _pool(self, address: str, now: float) -> list[float]:
        """The shared bucket of `address`: the strangers', or the registered sources' own, so that
        neither a flood of strangers nor one from many registered addresses starves the other."""
        if self.config.stranger_rate <= 0:
            return []
        pool = self._known_bucket if self.is_protected(address) else self._stranger_bucket
        if not pool:
            pool += [self._stranger_burst, now]
        return pool

    def _charge(self, address: str, tokens: float) -> None:
        """Take what an expensive request cost beyond its first token; a bucket may go into debt."""
        bucket = self._buckets.get(address)
        if bucket is not None:
            bucket[0] -= tokens
        if not self.is_protected(address):
            sub = self._subnet_buckets.get(_subnet(address))
            if sub is not None:
                sub[0] -= tokens
        pool = self._known_bucket if self.is_protected(address) else self._stranger_bucket
        if pool:
            pool[0] -= tokens

    def _over_rate(self, data: bytes, address: str, via: Via, now: float,
                   refused_by: Literal["source", "pool"] = "source") -> list[bytes]:
        self.counters.rate_limited += 1
        self._rate_suppressed += 1
        if now - self._rate_logged_at >= RATE_LOG_INTERVAL:
            self._events.append(RateLimited(address, self._rate_suppressed))
            self._rate_suppressed = 0
            self._rate_logged_at = now
        # A pool runs dry under a flood from many sources: answering each of them would be the
        # flood's work all over again, so they get silence.
        if self.config.over_rate == "drop" or via == "mcast" or refused_by == "pool":
            return []
        # One DA_BUSY_NOW per source per second at most: the answer must not amplify a flood.
        if now - self._busy_sent.get(address, -math.inf) < 1.0:
            return []
        header = _peek_header(data)
        if header is None:
            return []
        if len(self._busy_sent) >= self.config.rate_sources:
            self._busy_sent.pop(next(iter(self._busy_sent)))
        self._busy_sent.pop(address, None)
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

    def _reply_limit(self, via: Via) -> int:
        return MAX_REPLY if via == "tcp" else self.config.udp_reply_limit

    def _send(self, reply: Message, via: Via) -> list[bytes]:
        if not isinstance(reply, SrvRply | AttrRply | SrvTypeRply):
            return [wire.encode(reply)]
        if self._cut:
            # The work budget ran out before the answer was complete: say so as a cut reply does.
            reply = dataclasses.replace(reply, header=dataclasses.replace(
                reply.header, flags=reply.header.flags | Flags.OVERFLOW))
        return [wire.encode_within(reply, self._reply_limit(via))]

    def _request_scopes(self, scope_list: str) -> frozenset[str] | None:
        """The folded scopes of a list (§6.4.1: empty means DEFAULT), or None if it is malformed."""
        scopes = self._scope_lists.get(scope_list, _UNKNOWN)
        if scopes is _UNKNOWN:
            try:
                scopes = frozenset(_scope_key(s) for s in split_list(scope_list)) or _DEFAULT_SCOPES
            except SLPValueError:
                scopes = None
            _remember(self._scope_lists, scope_list, scopes)
        return scopes  # type: ignore[no-any-return]

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
        stype = self._service_types.get(msg.service_type, _UNKNOWN)
        if stype is _UNKNOWN:
            if fold(msg.service_type) == DA_SERVICE_TYPE:
                return self._da_discovery(msg, via)
            try:
                stype = ServiceType.parse(msg.service_type)
            except SLPValueError:
                stype = None
            _remember(self._service_types, msg.service_type, stype)
        if stype is None:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        assert isinstance(stype, ServiceType)
        scopes = self._request_scopes(msg.scope_list)
        if scopes is None:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        if self._scopes.isdisjoint(scopes):
            return self._error(msg.header, ErrorCode.SCOPE_NOT_SUPPORTED, via)
        predicate: Predicate | Bound | None = None
        if msg.predicate.strip():
            predicate = self._predicate(msg.predicate)
            if predicate is None:
                return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        return self._srv_rply(msg.header.xid, msg.header.lang, stype, scopes, predicate, via, now)

    def _srv_rqst_fields(self, fields: tuple[int, str, str, str, str, str], via: Via,
                         now: float) -> list[bytes] | None:
        """`_srv_rqst` from `wire.srv_rqst_fields`, for a request of a known type and scopes with
        a well-formed predicate; None for anything else, which `_srv_rqst` answers instead."""
        xid, lang, prlist, service_type, scope_list, text = fields
        if prlist and via == "mcast":
            return None
        stype = self._service_types.get(service_type)
        if stype is None:
            return None
        scopes = self._scope_lists.get(scope_list)
        if scopes is None or self._scopes.isdisjoint(scopes):
            return None
        predicate: Predicate | Bound | None = None
        if text.strip():
            predicate = self._predicate(text)
            if predicate is None:
                return None
        return self._srv_rply(xid, lang, stype, scopes, predicate, via, now)

    def _srv_rply(self, xid: int, lang_tag: str, stype: ServiceType, scopes: frozenset[str],
                  predicate: Predicate | Bound | None, via: Via, now: float) -> list[bytes]:
        # The reply is framed here from each registration's entry, encoded when it was stored:
        # only the lifetime changes from one reply to the next.
        lang = lang_tag.encode("utf-8")
        budget = ((MAX_REPLY if via == "tcp" else self.config.udp_reply_limit)
                  - wire.HEADER_FIXED_LEN - len(lang) - 4)
        ordered = self._candidates(stype, scopes, lang_tag, predicate)
        each = 1 + (predicate.items if predicate is not None else 0)
        if len(ordered) <= _CHUNK and self._work + each * len(ordered) <= self._work_limit:
            # The usual request: one chunk, evaluated and framed here, without `_chunks`.
            self._work += each * len(ordered)
            regs = self._regs
            # Every candidate carries the predicate's index terms: only the rest is tested.
            # Each entry as last sent while its lifetime still reads the same (`_entry`).
            match = predicate.residual if predicate is not None else None
            if match is None:
                entries = [r.sent if r.sent_from <= now < r.sent_to else _entry(r, now)
                           for r in map(regs.__getitem__, ordered)]
            else:
                entries = [r.sent if r.sent_from <= now < r.sent_to else _entry(r, now)
                           for k in ordered if match((r := regs[k]).attrs)]
            if sum(map(len, entries)) <= budget:
                if not entries and via == "mcast":  # §6.1: no result, no answer to a multicast
                    return []
                return [wire.srv_rply_frame(xid, lang, entries, self._cut)]
            parts: Iterable[list[bytes]] = (entries,)
        else:
            parts = ([r.sent if r.sent_from <= now < r.sent_to else _entry(r, now) for r in regs]
                     for regs in self._chunks(ordered, predicate))
        entries = []
        overflow = budget < 0
        for more in parts:
            size = sum(map(len, more))
            if size <= budget and len(entries) + len(more) <= 0xFFFF:
                budget -= size
                entries += more
                continue
            for entry in more:
                budget -= len(entry)
                if budget < 0 or len(entries) == 0xFFFF:
                    break
                entries.append(entry)
            overflow = True  # §8.2: whole entries only; the client may ask again over TCP
            break
        if not entries and via == "mcast":  # §6.1: a multicast request with no result gets silence
            return []
        return [wire.srv_rply_frame(xid, lang, entries, overflow or self._cut)]

    def _predicate(self, text: str) -> Predicate | Bound | None:
        cache = self._predicates
        predicate = cache.get(text)
        if predicate is not None:
            cache.move_to_end(text)
            return predicate
        if len(text) > self.config.max_predicate:
            return None
        # A shape asked before, with new values: bound without reading the text again.
        bound = prepare(text, self.config.max_predicate_items)
        if bound is not None:
            self._spend(len(text) // 16)
            return bound
        try:
            predicate = Predicate.parse(text, self.config.max_predicate_items)
        except PredicateError:
            return None
        self._spend(len(text) // 16)
        seen = hash(text)
        if seen not in self._seen_predicates:
            # Kept only once asked for again: most predicates name a value never asked again.
            if len(self._seen_predicates) >= 4 * self.config.predicate_cache_size:
                self._seen_predicates.clear()
            self._seen_predicates.add(seen)
            return predicate
        cache[text] = predicate
        self._predicate_bytes += _predicate_cost(predicate)
        while cache and (len(cache) > self.config.predicate_cache_size
                         or self._predicate_bytes > self.config.predicate_cache_bytes):
            _, old = cache.popitem(last=False)
            self._predicate_bytes -= _predicate_cost(old)
        return predicate

    def _matching(self, stype: ServiceType, scopes: frozenset[str], lang: str,
                  predicate: Predicate | Bound | None) -> Iterator[list[_Registration]]:
        """Registrations of a type `stype` matches, in one of `scopes`, in `lang`, satisfying
        `predicate`, in URL order, a list at a time (of `_CHUNK` candidates), for a caller that
        may stop early.

        Set operations count a work unit per 16 keys they touch, each registration looked at one
        plus one per predicate item; iteration ends when the budget is spent.
        """
        return self._chunks(self._candidates(stype, scopes, lang, predicate), predicate)

    def _candidates(self, stype: ServiceType, scopes: frozenset[str], lang: str,
                    predicate: Predicate | Bound | None) -> list[tuple[str, str]]:
        """The keys of the registrations `_matching` looks at, in URL order (the work of the
        set operations counted)."""
        names = self._names_by_key.get(stype.key)
        if not names:
            return []
        if stype.abstract is not None or not stype.is_service_url:
            # A full abstract:concrete type matches only itself (`ServiceType.matches`).
            names = {_type_name(stype)} & names
        lang_key = lang.strip(WHITESPACE).lower()  # `_lang_key`
        tsl = self._by_tsl
        if len(names) == 1 and len(scopes) == 1:
            (name,) = names
            (scope,) = scopes
            pool = tsl.get((name, scope, lang_key))
            if pool is None:
                return []
        else:
            pools = [keys for name in names for scope in scopes
                     if (keys := tsl.get((name, scope, lang_key))) is not None]
            if not pools:
                return []
            pool = pools[0] if len(pools) == 1 else set().union(*pools)
        terms = predicate.terms if predicate is not None else _NOTHING
        if not terms:
            self._spend(len(pool) // 16)
            return sorted(pool)
        # Every match carries each index term: start from the smallest posting list and test
        # membership in the others, so the work follows the answer, not the store.
        by_attr = self._by_attr
        if len(terms) == 1:
            (term,) = terms
            posting = by_attr.get(term, _NOTHING)
            self._spend(min(len(posting), len(pool)) * 2 // 16)
            return sorted(pool.intersection(posting))  # iterates the smaller
        postings = sorted([pool, *(by_attr.get(t, _NOTHING) for t in terms)], key=len)
        smallest, others = postings[0], postings[1:]
        self._spend(len(smallest) * len(postings) // 16)
        return sorted(smallest.intersection(*others))  # each step iterates the smaller

    def _chunks(self, ordered: list[tuple[str, str]],
                predicate: Predicate | Bound | None) -> Iterator[list[_Registration]]:
        """`_matching`'s lists: the registrations of `ordered` satisfying `predicate`."""
        each = 1 + (predicate.items if predicate is not None else 0)
        match = predicate.residual if predicate is not None else None  # the terms are met
        regs = self._regs
        # Work is counted for a chunk of candidates at once, as many as the budget still allows;
        # a chunk is evaluated in one comprehension, and the caller may stop after any chunk.
        for at in range(0, len(ordered), _CHUNK):
            chunk = ordered[at:at + _CHUNK]
            room = (self._work_limit - self._work) // each
            cut = room < len(chunk)
            if cut:
                chunk = chunk[:max(0, int(room))]
            self._work += each * len(chunk)
            if match is None:
                yield [regs[k] for k in chunk]
            else:
                yield [r for k in chunk if match((r := regs[k]).attrs)]
            if cut:
                self._work += each
                self._spend(0)  # marks the reply cut
                return

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
            if predicate.match is not None and not predicate.match(self._own_attrs()):
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
        try:
            patterns = tag_patterns(msg.tag_list)
        except AttrParseError:
            return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
        if _is_service_type(msg.url):
            try:
                stype = ServiceType.parse(msg.url)
            except SLPValueError:
                return self._error(msg.header, ErrorCode.PARSE_ERROR, via)
            regs: Iterable[_Registration] = itertools.chain.from_iterable(
                self._matching(stype, scopes, msg.header.lang, None))
        else:
            regs = [self._regs[key] for key in sorted(self._by_url.get(msg.url, ()))]
            regs = [reg for reg in regs if reg.scopes & scopes and lang_matches(msg.header.lang, reg.lang)]
        selected, found = self._merge(regs, patterns, self._reply_limit(via))
        if not found and via == "mcast":
            return []
        reply = AttrRply(self._reply_header(msg.header, FunctionId.AttrRply), ErrorCode.OK,
                         format_attr_list(selected))
        return self._send(reply, via)

    def _merge(self, regs: Iterable[_Registration], patterns: list[tuple[str, ...]],
               limit: int) -> tuple[list[Attribute], bool]:
        """§10.3: the union of the values of the tags asked for, over `regs`, in linear time.

        The tag list is applied to each registration before merging, and values are collected
        in ordered sets; merging stops once the reply would exceed `limit` bytes (it is cut and
        flagged OVERFLOW there) or the work budget is spent. Also says whether any registration
        matched. A tag seen as a keyword and with
        values, or with values of two types, keeps what it had first (§5 allows one type).
        """
        wanted: dict[str, bool] = {}
        merged: dict[str, tuple[str, type | None, dict[Any, None]]] = {}
        size = 0
        found = False
        for reg in regs:
            found = True
            if not self._spend(1 + len(reg.attrs) + len(reg.index)):
                break
            for key, attr in reg.attrs.items():
                ok = wanted.get(key)
                if ok is None:
                    ok = wanted[key] = not patterns or any(wildcard_match(p, key) for p in patterns)
                if not ok:
                    continue
                values = attr.values
                have = merged.get(key)
                if have is None:
                    merged[key] = (attr.tag, type(values[0]) if values else None, dict.fromkeys(values))
                    size += len(attr.tag) + 3 + sum(len(str(v)) + 1 for v in values)
                    continue
                if not values or have[1] is not type(values[0]):
                    continue
                known = have[2]
                for v in values:
                    if v not in known:
                        known[v] = None
                        size += len(str(v)) + 1
            if size > limit:
                break  # escaping only lengthens values: the reply is over the limit for sure
        return [Attribute(tag, tuple(values)) for tag, _, values in merged.values()], found

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
        in_scope: set[tuple[str, str]] = set()
        for scope in scopes:
            in_scope |= self._by_scope.get(scope, set())
        self._spend(len(in_scope) // 16)
        types: dict[str, str] = {}
        size = 0
        limit = self._reply_limit(via)
        for bucket in self._by_type.values():
            if not self._spend(1) or size > limit:
                break
            if wanted is not None and fold(bucket.stype.naming_authority or "") != wanted:
                continue
            for key in bucket.keys:
                if key in in_scope:
                    name = self._regs[key].service_type
                    if fold(name) not in types:
                        types[fold(name)] = name
                        size += len(name) + 1
                    break
        if not types and via == "mcast":
            return []
        reply = SrvTypeRply(self._reply_header(msg.header, FunctionId.SrvTypeRply), ErrorCode.OK,
                            ",".join(types[k] for k in sorted(types)))
        return self._send(reply, via)

    # SrvReg (§8.3, §9.3) ------------------------------------------------------------------------

    def _may_register(self, address: str) -> bool:
        return not self._allowed or _in_networks(address, self._allowed)

    def _owned_by_other(self, url: str, source: str, spi: str = "") -> ErrorCode | None:
        """The error to answer when a registration of `url` (in any language) is another's.

        A URL registered with a valid block belongs to its SPI: only a valid block of the same
        SPI changes or removes it, from any address, and a request without one is
        AUTHENTICATION_ABSENT (RFC 2608 §8.3). Otherwise ownership is by source address: only
        the registrant changes or removes its URL, except that a trusted registrant (by address,
        or by SPI with a valid block) may take over one from an untrusted source. See docs/slpda.md.
        """
        keys = self._by_url.get(url)
        if not keys:
            return None
        regs = [self._regs[key] for key in keys]
        if any(reg.spi for reg in regs):
            if not spi:
                return ErrorCode.AUTHENTICATION_ABSENT
            if any(reg.spi and reg.spi != spi for reg in regs):
                return ErrorCode.AUTHENTICATION_FAILED
        by_source = [reg for reg in regs if not reg.spi]
        if all(reg.source == source for reg in by_source):
            return None
        trusted = self.is_trusted(source) or spi in self._trusted_spis
        if not trusted or any(reg.trusted and reg.source != source for reg in by_source):
            return ErrorCode.AUTHENTICATION_FAILED
        return None

    def _authenticate(self, msg: SrvReg | SrvDeReg,
                      now: float) -> tuple[AuthBlock | None, ErrorCode | None]:
        """The request's verified block (None without one), or the error to answer instead.

        Called after the cheap checks; the MAC is computed only for a block of ours naming a
        configured SPI with a MAC of the right size. A retransmission of the block last
        accepted gets the answer it got, as an error code with no block: nothing is applied.
        """
        entry = msg.url_entry
        if not entry.auths:
            return None, None
        block = auth.block_of(entry)
        key = self._keys.get(block.spi) if block is not None else None
        if block is None or key is None:
            # §7: an SPI (or a kind of block) we do not support
            return None, self._auth_failed(
                f"no key for SPI {block.spi!r}" if block is not None else "no HMAC-SHA-256 block",
                ErrorCode.AUTHENTICATION_UNKNOWN)
        if isinstance(msg, SrvReg) and not msg.header.fresh:
            return None, ErrorCode.AUTHENTICATION_FAILED  # §8.3: no incremental signed updates
        if not auth.verify(msg, block, key):
            return None, self._auth_failed(f"bad MAC for SPI {block.spi}")
        freshness, previous = self._replay.check(entry.url, block, now)
        if freshness is auth.Freshness.NEW:
            return block, None
        if freshness is auth.Freshness.DUPLICATE:
            return None, ErrorCode(previous)
        if freshness is auth.Freshness.FULL:
            return None, ErrorCode.DA_BUSY_NOW
        return None, self._auth_failed(f"{freshness.value} timestamp {block.timestamp} "
                                       f"for SPI {block.spi}")

    def _auth_failed(self, why: str, error: ErrorCode = ErrorCode.AUTHENTICATION_FAILED) -> ErrorCode:
        self.counters.auth_failed += 1
        self._auth_detail = f"{why} ({self.counters.auth_failed} refused since start)"
        return error

    def _signed(self, msg: SrvReg | SrvDeReg, now: float,
                apply: Callable[[AuthBlock | None], ErrorCode]) -> ErrorCode:
        """`apply(block)` for a request whose block (if any) is valid and new; the answer is
        remembered with the block, for its retransmissions."""
        block, error = self._authenticate(msg, now)
        if error is not None:
            return error
        result = apply(block)
        if block is not None:
            self._replay.accept(msg.url_entry.url, block, result)
        return result

    def _shadows(self, attrs: dict[str, Attribute]) -> bool:
        """Whether untrusted attributes claim a name that a trusted registration holds."""
        attr = attrs.get(NAME_TAG)
        return attr is not None and any(_name_key(str(v)) in self._trusted_names for v in attr.values)

    def _srv_reg(self, msg: SrvReg, source: str, now: float) -> ErrorCode:
        if not self._may_register(source):
            # §7: the DA treats its scopes as protected against this source, and it sent no
            # authenticator we could accept, so the registration lacks authentication.
            return ErrorCode.AUTHENTICATION_ABSENT
        entry = msg.url_entry
        if entry.lifetime == 0 or not _URL_SCHEME.match(entry.url) or _CONTROL.search(entry.url):
            return ErrorCode.INVALID_REGISTRATION
        return self._signed(msg, now, lambda block: self._register(msg, source, now, block))

    def _register(self, msg: SrvReg, source: str, now: float, block: AuthBlock | None) -> ErrorCode:
        entry = msg.url_entry
        spi = block.spi if block is not None else ""
        owned = self._owned_by_other(entry.url, source, spi)
        if owned is not None:
            return owned
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
        # Parsing and indexing a long list costs about 1 ms per KB: charge it to the source.
        self._spend(len(msg.attr_list) // 2)
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
        trusted = self.is_trusted(source) or spi in self._trusted_spis
        attrs = _with_trust(attrs, trusted)
        if not trusted and self._shadows(attrs):
            return ErrorCode.AUTHENTICATION_FAILED
        lifetime = min(entry.lifetime, self.config.max_lifetime)
        reg = _Registration(
            url=entry.url, lang=fold(msg.header.lang), service_type=msg.service_type, stype=stype,
            type_key=stype.key, scope_list=msg.scope_list, scopes=scopes, attrs=attrs,
            attr_list=format_attr_list(attrs), lifetime=lifetime,
            expires=now + lifetime, source=source, trusted=trusted, spi=spi,
            auth_ts=block.timestamp if block is not None else 0)
        if not self._fits(reg, old):
            return ErrorCode.DA_BUSY_NOW
        self._store(reg)
        self._changes.append(_record(reg))
        self.counters.registrations += 1
        self._events.append(Registered(entry.url, msg.service_type, msg.header.lang, lifetime,
                                       msg.header.fresh, source, spi))
        return ErrorCode.OK

    def _fits(self, reg: _Registration, old: _Registration | None) -> bool:
        limit = self.config.max_store_bytes
        if not limit:
            return True
        reg.index = _index(reg)
        reg.cost = _cost(reg)
        return self._store_bytes - (old.cost if old is not None else 0) + reg.cost <= limit

    def _srv_dereg(self, msg: SrvDeReg, source: str, now: float) -> ErrorCode:
        if not self._may_register(source):
            return ErrorCode.AUTHENTICATION_ABSENT
        return self._signed(msg, now, lambda block: self._deregister(msg, source, block))

    def _deregister(self, msg: SrvDeReg, source: str, block: AuthBlock | None) -> ErrorCode:
        url = msg.url_entry.url
        spi = block.spi if block is not None else ""
        owned = self._owned_by_other(url, source, spi)
        if owned is not None:
            return owned
        scopes = self._request_scopes(msg.scope_list)
        if scopes is None:
            return ErrorCode.PARSE_ERROR
        if not scopes <= self._scopes:
            return ErrorCode.SCOPE_NOT_SUPPORTED
        if not msg.tag_list.strip():
            # §10.6: without a tag list the URL goes, in every language it was registered in.
            regs = [self._regs[key] for key in sorted(self._by_url.get(url, ()))]
            if any(not r.scopes & scopes for r in regs):
                return ErrorCode.SCOPE_NOT_SUPPORTED
            for r in regs:
                self._remove(r)
                change: dict[str, Any] = {"op": "del", "url": r.url, "lang": r.lang}
                if block is not None:  # a replayed older block must stay refused after a restart
                    change.update(spi=block.spi, auth_ts=block.timestamp)
                self._changes.append(change)
                self.counters.deregistrations += 1
                self._events.append(Deregistered(url, r.service_type, r.lang, source, spi=spi))
            return ErrorCode.OK
        reg = self._regs.get((url, fold(msg.header.lang)))
        if reg is None:
            return ErrorCode.INVALID_REGISTRATION
        if not reg.scopes & scopes:
            return ErrorCode.SCOPE_NOT_SUPPORTED
        try:
            attrs = _with_trust(attrs_remove_tags(reg.attrs, msg.tag_list), reg.trusted)
        except AttrParseError:
            return ErrorCode.PARSE_ERROR
        updated = dataclasses.replace(reg, attrs=attrs, attr_list=format_attr_list(attrs))
        if block is not None:
            updated.auth_ts = block.timestamp
        self._store(updated)
        self._changes.append(_record(updated))
        self.counters.deregistrations += 1
        self._events.append(Deregistered(url, reg.service_type, reg.lang, source, msg.tag_list, spi))
        return ErrorCode.OK

    # The store and its indexes ------------------------------------------------------------------

    def _store(self, reg: _Registration) -> None:
        key = (reg.url, reg.lang)
        old = self._regs.get(key)
        if old is not None:
            self._unindex(key, old)
        reg.index = _index(reg)
        reg.cost = _cost(reg)
        self._regs[key] = reg
        self._store_bytes += reg.cost
        self._by_url.setdefault(reg.url, set()).add(key)
        self._sources[reg.source] = self._sources.get(reg.source, 0) + 1
        if reg.trusted:
            for name in _names(reg):
                self._trusted_names[name] = self._trusted_names.get(name, 0) + 1
        name = reg.type_name
        bucket = self._by_type.get(name)
        if bucket is None:
            bucket = self._by_type[name] = _TypeBucket(reg.stype, set())
            self._names_by_key.setdefault(reg.type_key, set()).add(name)
        bucket.keys.add(key)
        lang_key = reg.lang_key
        for scope in reg.scopes:
            self._by_scope.setdefault(scope, set()).add(key)
            self._by_tsl.setdefault((name, scope, lang_key), set()).add(key)
        reg.entry = wire.url_entry_tail(reg.url)
        for term in reg.index:
            self._by_attr.setdefault(term, set()).add(key)
        if old is None or old.expires != reg.expires:
            heapq.heappush(self._expiries, (reg.expires, reg.url, reg.lang))
            if len(self._expiries) > 2 * len(self._regs) + 64:
                self._expiries = [(r.expires, r.url, r.lang) for r in self._regs.values()]
                heapq.heapify(self._expiries)
        self._changed()

    def _unindex(self, key: tuple[str, str], reg: _Registration) -> None:
        self._store_bytes -= reg.cost
        _discard(self._by_url, reg.url, key)
        _decrement(self._sources, reg.source)
        if reg.trusted:
            for name in _names(reg):
                _decrement(self._trusted_names, name)
        name = reg.type_name
        bucket = self._by_type.get(name)
        if bucket is not None:
            bucket.keys.discard(key)
            if not bucket.keys:
                del self._by_type[name]
                names = self._names_by_key.get(reg.type_key)
                if names is not None:
                    names.discard(name)
                    if not names:
                        del self._names_by_key[reg.type_key]
        lang_key = reg.lang_key
        for scope in reg.scopes:
            _discard(self._by_scope, scope, key)
            _discard(self._by_tsl, (name, scope, lang_key), key)
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
            "registrations": [_record(r) for _, r in sorted(self._regs.items())],
        }

    def restore(self, data: dict[str, Any], now: float) -> int:
        """Load a snapshot, keeping only what has not expired by `now`; return how many were kept.

        Entries that no longer parse, or whose scopes this DA no longer serves, are skipped.
        """
        previous = data.get("boot_timestamp")
        if isinstance(previous, int) and previous >= self.boot_timestamp:
            # Two starts within one second must still look like two boots to the SAs.
            self.boot_timestamp = previous + 1
        return self.replay(_records(data.get("registrations")), now)

    def replay(self, records: Iterable[dict[str, Any]], now: float) -> int:
        """Apply snapshot or journal records in order (see `pop_changes`); return how many were stored.

        Records that no longer parse, have expired, or whose scopes this DA no longer serves are
        skipped; the limits of the configuration apply (lifetime, count, bytes, trust by source).
        """
        kept = 0
        for item in records:
            if item.get("op") == "del":
                self._seed(item)
                for key in list(self._by_url.get(str(item.get("url")), ())):
                    if key[1] == str(item.get("lang")):
                        self._remove(self._regs[key])
                continue
            reg = self._parse_record(item, now)
            if reg is None:
                continue
            self._seed(item)
            old = self._regs.get((reg.url, reg.lang))
            if old is None and len(self._regs) >= self.config.max_registrations:
                continue
            if not self._fits(reg, old):
                continue
            self._store(reg)
            kept += 1
        return kept

    def _parse_record(self, item: dict[str, Any], now: float) -> _Registration | None:
        try:
            expires = float(item["expires"])
            url = str(item["url"])
            if expires <= now or not _URL_SCHEME.match(url) or _CONTROL.search(url):
                return None
            stype = ServiceType.parse(str(item["service_type"]))
            attr_list = str(item["attr_list"])
            if len(attr_list.encode()) > self.config.max_attr_list:
                return None
            limit = self.config.max_store_bytes
            if limit and self._store_bytes + _MIN_COST + 3 * len(attr_list) > limit:
                return None  # it cannot fit: not worth parsing (a huge state file stays cheap)
            source = str(item.get("source", ""))
            spi = str(item.get("spi", ""))
            trusted = self.is_trusted(source) or (bool(spi) and spi in self._trusted_spis)
            attrs = _with_trust(parse_attr_list(attr_list), trusted)
            scope_list = str(item["scope_list"])
            scopes = self._request_scopes(scope_list)
            if scopes is None or not scopes <= self._scopes:
                return None
            lifetime = min(int(item["lifetime"]), self.config.max_lifetime)
            return _Registration(
                url=url, lang=fold(str(item["lang"])),
                service_type=str(item["service_type"]), stype=stype, type_key=stype.key,
                scope_list=scope_list, scopes=scopes, attrs=attrs,
                attr_list=format_attr_list(attrs), lifetime=lifetime,
                expires=min(expires, now + lifetime), source=source, trusted=trusted, spi=spi,
                auth_ts=int(item.get("auth_ts", 0)))
        except (KeyError, TypeError, ValueError, SLPValueError, AttrParseError):
            return None

    def _seed(self, item: dict[str, Any]) -> None:
        """The replay guard learns a record's last accepted timestamp, so a block captured before
        a restart is still refused after it."""
        spi, stamp = item.get("spi"), item.get("auth_ts")
        if isinstance(spi, str) and spi and isinstance(stamp, int):
            self._replay.seed(spi, str(item.get("url")), stamp)


# Helpers ----------------------------------------------------------------------------------------


_UNKNOWN: Any = object()
_LIFETIME = struct.Struct("!BH")  # a URL entry's reserved byte and lifetime (§4.3)
_PARSED_CACHE = 1024  # request strings (types, scope lists) whose parse is remembered


def _entry(reg: _Registration, now: float) -> bytes:
    """`reg`'s URL entry with its remaining lifetime, kept for the second in which it is the same."""
    left = reg.expires - now
    if left <= 1:
        life, reg.sent_from, reg.sent_to = 1, reg.expires - 1, math.inf
    elif left >= MAX_LIFETIME:
        life, reg.sent_from, reg.sent_to = MAX_LIFETIME, math.inf, -math.inf  # rare: not kept
    else:
        life = math.ceil(left)
        # ceil(expires - now) == life exactly while life - 1 < expires - now <= life.
        reg.sent_from, reg.sent_to = reg.expires - life, reg.expires - life + 1
        if not reg.sent_from <= now < reg.sent_to:
            reg.sent_from, reg.sent_to = math.inf, -math.inf  # rounding at the edge: not kept
    reg.sent = _LIFETIME.pack(0, life) + reg.entry
    return reg.sent


def _remember(cache: dict[str, Any], text: str, value: Any) -> None:
    if len(cache) >= _PARSED_CACHE:
        cache.clear()  # cheap, and bounded: a flood of distinct strings only costs their parse
    if len(text) <= 256:
        cache[text] = value


def _type_name(stype: ServiceType) -> str:
    """The full type in comparison form: registrations answer the same requests iff equal."""
    return str(stype).lower()


def _lang_key(lang: str) -> str:
    # As `names.lang_matches` compares them: exact, case-insensitive, ends trimmed.
    return lang.strip(WHITESPACE).lower()


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


def _in_networks(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _subnet(address: str) -> str:
    """The /24 of an IPv4 address, the /64 of an IPv6 one: what one home host can rotate through."""
    if ":" in address:
        try:
            return str(ipaddress.ip_network(f"{address}/64", strict=False))
        except ValueError:
            return address
    return address.rsplit(".", 1)[0]


def _bucket(buckets: OrderedDict[str, list[float]], key: str, burst: float, now: float,
            limit: int) -> list[float]:
    """The token bucket of `key`, the least recently used one forgotten when `limit` are kept."""
    bucket = buckets.get(key)
    if bucket is None:
        if len(buckets) >= limit:
            buckets.popitem(last=False)
        bucket = buckets[key] = [burst, now]
    else:
        buckets.move_to_end(key)
    return bucket


def _decrement(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)


def _name_key(name: str) -> str:
    # As `sipmob devices` makes short names: names that give the same short name are the same.
    return re.sub(r"[^a-z0-9]+", "-", fold(name)).strip("-")


def _names(reg: _Registration) -> set[str]:
    attr = reg.attrs.get(NAME_TAG)
    if attr is None:
        return set()
    return {k for k in (_name_key(str(v)) for v in attr.values) if k}


def _with_trust(attrs: dict[str, Attribute], trusted: bool) -> dict[str, Attribute]:
    """`attrs` with the `trusted` keyword as the DA decides it, whatever the registrant sent."""
    attrs = {k: a for k, a in attrs.items() if k != TRUSTED_TAG}
    if trusted:
        attrs[TRUSTED_TAG] = Attribute(TRUSTED_TAG)
    return attrs


def _index(reg: _Registration) -> tuple[tuple[str, str], ...]:
    index: list[tuple[str, str]] = []
    for attr in reg.attrs.values():
        index.extend(index_keys(attr))
    return tuple(dict.fromkeys(index))


_MIN_COST = 600
_NOTHING: frozenset[tuple[str, str]] = frozenset()


def _cost(reg: _Registration) -> int:
    """What a registration holds in memory, roughly, in bytes: its strings, its parsed attributes
    and, per index term, the value, its folded key and its posting-list entry."""
    text = len(reg.url) + len(reg.attr_list) + len(reg.service_type) + len(reg.scope_list)
    return _MIN_COST + 3 * text + 500 * len(reg.index)


def _predicate_cost(predicate: Predicate) -> int:
    # The parsed tree holds a few objects per item and copies of its text; measured at well under
    # this with tracemalloc.
    return 256 + 4 * len(predicate.text) + 400 * predicate.items


def _record(r: _Registration) -> dict[str, Any]:
    # The trusted keyword is the DA's own: it is recomputed from the source when loaded.
    attr_list = r.attr_list
    if r.trusted:
        attr_list = format_attr_list({k: a for k, a in r.attrs.items() if k != TRUSTED_TAG})
    record = {"op": "put", "url": r.url, "lang": r.lang, "service_type": r.service_type,
              "scope_list": r.scope_list, "attr_list": attr_list, "lifetime": r.lifetime,
              "expires": r.expires, "source": r.source}
    if r.spi:
        record.update(spi=r.spi, auth_ts=r.auth_ts)
    return record


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
