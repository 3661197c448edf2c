"""Who may do what to ``sipmob phone``: the phone's one policy object, asked by the UA core before it
acts on any request from outside a dialog (`sipmob.sip.policy.RequestPolicy`).

Responsible for, in this order (the cheapest refusal first):

1. 404 for a Request-URI user that is not the phone's (an OPTIONS to the bare host is answered, §11);
2. 503 with Retry-After for a source address past ``[calls] setups_per_minute`` new INVITEs (a token
   bucket per address), or whose /24 (IPv4) or /64 (IPv6) is past `SUBNET_SHARE` times that (a
   bucket per subnet: a host rotating through its network's addresses gets a few addresses'
   share, not one per address); at most `MAX_SOURCES` addresses (and as many subnets) are tracked,
   the least recently seen forgotten first, so a flooder rotating addresses cannot make the table
   grow or reset everyone's;
3. 486 once ``[calls] max_calls`` calls are up or being answered (each costs two sockets and a
   sender; the phone must never run out of descriptors), or ``max_calls_per_source`` from the
   INVITE's source address (so one host cannot take every line);
4. RFC 3891 §6 for INVITE with Replaces: 403 unless the replaced call's peer or one of ``[identity]
   owners`` refers it, or the peer itself asks (`sipmob.sip.policy.replaces_permitted`);
5. 403 for a new call from a source outside ``[calls] answer_from`` (networks): only those callers are
   answered by ``auto_answer``. The default is loopback and the private and link-local ranges, the
   networks a home is made of; a caller behind a provider's proxy needs the proxy's address added.

6. 403 for a request inside a dialog (BYE, re-INVITE, INFO, REFER, NOTIFY...) from a host the
   dialog does not involve (`in_dialog_hosts`): knowing a call's Call-ID and tags (anyone on the
   path saw them) must not let a stranger end the call or move its media. The core asks before
   the request changes anything of the dialog, its CSeq included, so the peer's next request is
   still in order. Only addresses the core saw or the configuration names count; nothing is
   resolved (a name-based Contact matches only a source written the same way). A source that is
   one of the phone's own SIP addresses is this host itself: a daemon here bound to every address
   (the MDSM) sends its in-dialog requests from whichever address the kernel picks.

A handoff's own dialogs (the REFER to a device, its NOTIFYs, the calls to devices) are dialogs
like any other whose peer is the device or MDSM, so rule 6 covers them unchanged.

Not here: the SIP rules themselves (`sipmob.sip`), media timeouts (`sipmob.mn.phone`).
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Iterable

from sipmob.mn.config import HOME_NETWORKS
from sipmob.sip.dialog import Dialog, uri_destination
from sipmob.sip.message import reason_phrase
from sipmob.sip.policy import Admission, Refusal, replaces_permitted, user_is_ours
from sipmob.sip.uri import URI

log = logging.getLogger("sipmob.mn")

MAX_SOURCES = 4096  # source addresses whose setup rate is tracked
SUBNET_SHARE = 4.0  # a /24 or /64 may set up calls as fast as this many addresses together
LOG_INTERVAL = 10.0  # seconds between two lines about refused requests: a flood must not flood the log


@dataclasses.dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class PhonePolicy:
    """The phone's rules, from its configuration; `calls()` says how many calls are up or being
    answered right now, `calls_from(host)` how many of them came from `host`."""

    def __init__(self, *, user: str, owners: Iterable[str] = (), answer_from: Iterable[str] = HOME_NETWORKS,
                 max_calls: int = 4, max_calls_per_source: int = 2, setups_per_minute: float = 10.0,
                 calls: Callable[[], int] = lambda: 0,
                 calls_from: Callable[[str], int] = lambda host: 0,
                 proxies: Iterable[str] = (),
                 relays: Callable[[str], Iterable[str]] = lambda call_id: (),
                 own: Callable[[str], bool] = lambda host: False) -> None:
        """`proxies`: the SIP URIs (or hosts) of the configured outbound proxy and registrar, whose
        hosts relay the peer's requests inside a dialog; `relays(call_id)` the inside ends of the
        other gateways' relays the call's SIP goes through now (a call moved over another gateway);
        `own(host)` whether `host` is an address the phone itself sends SIP from: a daemon on this
        very host (the MDSM bound to every address) may answer from any of them, and only a process
        here can use those addresses."""
        self.user = user
        self.proxies = frozenset(_norm(_host_of(p)) for p in proxies if p)
        self.relays = relays
        self.own = own
        self.owners = tuple(URI.parse(o) for o in owners)
        self.answer_from = tuple(ipaddress.ip_network(n, strict=False) for n in answer_from)
        self.max_calls = max_calls
        self.max_calls_per_source = max_calls_per_source
        self.calls_from = calls_from
        self.rate = setups_per_minute / 60.0
        self.burst = max(1.0, min(setups_per_minute, 5.0))
        self.calls = calls
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._subnets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self.refused: collections.Counter[int] = collections.Counter()
        self._unlogged: collections.Counter[int] = collections.Counter()
        self._logged_at: float | None = None

    def admit(self, admission: Admission) -> Refusal | None:
        refusal = self._decide(admission)
        if refusal is not None:
            self.refused[refusal.status] += 1
            self._log(admission, refusal)
        return refusal

    def _log(self, admission: Admission, refusal: Refusal) -> None:
        """One line for a refusal, then at most one per `LOG_INTERVAL` counting the others."""
        self._unlogged[refusal.status] += 1
        if self._logged_at is not None and admission.now - self._logged_at < LOG_INTERVAL:
            return
        others = sum(self._unlogged.values()) - 1
        more = ""
        if others:
            counts = ", ".join(f"{n} x {status}" for status, n in sorted(self._unlogged.items()))
            more = f" (refused since the last such line: {counts})"
        source = admission.source
        log.info("refused %s from %s:%d: %d %s%s", admission.request.method, source.host, source.port,
                 refusal.status, refusal.reason or reason_phrase(refusal.status), more)
        self._unlogged.clear()
        self._logged_at = admission.now

    def _decide(self, admission: Admission) -> Refusal | None:
        request = admission.request
        if admission.dialog is not None:
            # within a call: its Request-URI is our Contact, and no setup is counted
            source = _norm(admission.source.host)
            if source in self.in_dialog_hosts(admission.dialog, admission.peer) or self.own(source):
                return None
            return Refusal(403, "Not From This Dialog's Peer")
        if not user_is_ours(request, (self.user,), hostless_ok=request.method == "OPTIONS"):
            return Refusal(404)
        if request.method != "INVITE":
            return None
        if not self._take(admission.source.host, admission.now):
            retry = (("Retry-After", str(self.retry_after())),)
            return Refusal(503, "Too Many Calls From This Address", retry)
        if self.calls() >= self.max_calls:
            return Refusal(486)
        if self.calls_from(admission.source.host) >= self.max_calls_per_source:
            return Refusal(486, "Busy With Calls From This Address")
        if admission.replaced is not None:
            if replaces_permitted(admission.replaced, request, self.owners):
                return None
            return Refusal(403, "Replaces Not Authorised")
        if not self.answers(admission.source.host):
            return Refusal(403, "Not Answered From This Network")
        return None

    def in_dialog_hosts(self, dialog: Dialog, peer: str = "") -> frozenset[str]:
        """The hosts that may send requests inside `dialog`: its remote target's (the peer's
        Contact), `peer` (where the core saw its forming request come from or sent it: the right
        one for a peer behind a NAT), its route set's first hop, the configured proxies, and the
        relays the call goes through now."""
        hosts = {_norm(uri_destination(dialog.remote_target).host), *self.proxies}
        if peer:
            hosts.add(_norm(peer))
        if dialog.route_set:
            hosts.add(_norm(uri_destination(dialog.route_set[0].uri).host))
        hosts.update(_norm(h) for h in self.relays(dialog.call_id))
        return frozenset(hosts)

    def answers(self, host: str) -> bool:
        """Whether a caller at `host` is one ``auto_answer`` answers."""
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self.answer_from if network.version == address.version)

    def retry_after(self) -> int:
        """Seconds until one more setup is allowed from a source that used up its share."""
        return max(1, round(1.0 / self.rate)) if self.rate > 0 else 3600

    def _take(self, host: str, now: float) -> bool:
        """One token from the address's bucket and one from its subnet's; both must have one."""
        own = _refill(self._buckets, host, self.burst, self.rate, now)
        subnet = _refill(self._subnets, subnet_of(host), SUBNET_SHARE * self.burst,
                         SUBNET_SHARE * self.rate, now)
        if own.tokens < 1.0 or subnet.tokens < 1.0:
            return False
        own.tokens -= 1.0
        subnet.tokens -= 1.0
        return True


def _refill(buckets: collections.OrderedDict[str, _Bucket], key: str, burst: float, rate: float,
            now: float) -> _Bucket:
    """The bucket of `key`, filled for the time since it was last seen; a new one full. The least
    recently seen key is forgotten once `MAX_SOURCES` are tracked."""
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = _Bucket(burst, now)
        if len(buckets) > MAX_SOURCES:
            buckets.popitem(last=False)
        return bucket
    buckets.move_to_end(key)
    bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * rate)
    bucket.at = now
    return bucket


def _host_of(uri_or_host: str) -> str:
    try:
        return URI.parse(uri_or_host).host
    except ValueError:
        return uri_or_host


def _norm(host: str) -> str:
    """One spelling per address (IPv6 brackets, case, zeros); a name only lower-cased."""
    host = host.strip("[]").lower()
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return host


def subnet_of(host: str) -> str:
    """The /24 of an IPv4 address, the /64 of an IPv6 one (a host name or garbage: itself)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
