"""Relays through another gateway's egress (SIP-NEMO §3.2, §4.2), sans-I/O: who may have one, how
many, for how long, and which datagrams each relay carries.

When every egress of a gateway is down, its sessions may continue over another gateway's egress
(one it found with SLP, ``service:sip-egress``, and whose Egress List it subscribed to). The
mechanism chosen here is a re-INVITE through the other gateway acting as a relay for signalling
and media: the stranded gateway asks for one UDP relay per far end of the session (the CN's SIP
address, the CN's RTP address, its video's, and last its audio's RTCP address, which our offer names
in ``a=rtcp``, RFC 3605) by a SUBSCRIBE for the ``sip-egress-relay`` event naming them in
``Relay-To: HOST:PORT, [V6]:PORT`` (the subscription *is* the relay: it lives as long as the
subscription, refreshed by re-SUBSCRIBE, closed by an un-SUBSCRIBE or its expiry); the first
NOTIFY (``application/sip-egress-relay+json``) says, per far end, the LAN address to send to and
the WAN address the far end sees. Each relay has a LAN side (where the stranded gateway
sends) and a WAN side on the relaying gateway's egress address (what the CN sees: our Via, Contact
and ``c=`` name it), and carries datagrams only between the gateway that asked and the one far end
it named. REFER (the draft's Fig. 4, the other gateway re-inviting the CN itself) would make the
other gateway a back-to-back UA of the session; a relay keeps the dialog and its media where they
are, the CN sees one re-INVITE, as for a local failover.

Not here: sockets (`sipmob.service.egress_relay`), the session's move (`sipmob.mn.egress`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Sequence

EVENT = "sip-egress-relay"
HEADER = "Relay-To"
CONTENT_TYPE = "application/sip-egress-relay+json"
MAX_BODY = 4096
MAX_PEERS = 4  # far ends per relay subscription: SIP, RTP, RTCP, video


class RelayRefused(Exception):
    """A request for relays that the rules refuse: `status` is the SIP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Grant:
    """What one relay subscription may carry: from `requester` (host) to each of `peers`."""

    key: str
    requester: str
    peers: tuple[tuple[str, int], ...]
    expires_at: float


class RelayTable:
    """The relays this gateway carries for others: admission, lifetime, and per-datagram rules."""

    def __init__(self, allow: Sequence[str], max_relays: int = 16, max_expires: int = 600) -> None:
        self.allow = [ipaddress.ip_network(n, strict=False) for n in allow]
        self.max_relays = max_relays
        self.max_expires = max_expires
        self.grants: dict[str, Grant] = {}

    def open(self, key: str, requester: str, relay_to: str, expires: int, now: float) -> Grant:
        """Admit the relay subscription `key` from `requester` (the source address the request came
        from) asking for the far ends in `relay_to` (a Relay-To value); raises `RelayRefused`."""
        if not self._allowed(requester):
            raise RelayRefused(403, "Not a gateway of this home")
        if key not in self.grants and sum(len(g.peers) for g in self.grants.values()) >= self.max_relays:
            raise RelayRefused(503, "Relays exhausted")
        peers = decode_request(relay_to)
        if key not in self.grants and sum(len(g.peers) for g in self.grants.values()) + len(peers) \
                > self.max_relays:
            raise RelayRefused(503, "Relays exhausted")
        for host, _port in peers:
            if self._allowed(host) or _not_global(host):
                raise RelayRefused(403, f"Will not relay to {host}")  # no relaying into the home
        grant = Grant(key, requester, peers, now + max(1, min(expires, self.max_expires)))
        self.grants[key] = grant
        return grant

    def refresh(self, key: str, expires: int, now: float) -> Grant | None:
        """The subscription was refreshed: the relay lives `expires` more seconds (at most
        max_expires); 0 ends it (returned, removed)."""
        grant = self.grants.get(key)
        if grant is None or expires <= 0:
            return self.grants.pop(key, None)
        grant = dataclasses.replace(grant, expires_at=now + min(expires, self.max_expires))
        self.grants[key] = grant
        return grant

    def close(self, key: str) -> Grant | None:
        return self.grants.pop(key, None)

    def get_timer(self) -> float | None:
        return min((g.expires_at for g in self.grants.values()), default=None)

    def expired(self, now: float) -> list[Grant]:
        """The grants whose time is up, removed."""
        gone = [g for g in self.grants.values() if g.expires_at <= now]
        for g in gone:
            del self.grants[g.key]
        return gone

    @staticmethod
    def from_lan_ok(grant: Grant, source_host: str) -> bool:
        """A datagram on a relay's LAN side: only from the gateway that asked for it."""
        return source_host == grant.requester

    @staticmethod
    def from_wan_ok(grant: Grant, peer: int, source_host: str) -> bool:
        """A datagram on a relay's WAN side. The first far end is the CN's SIP: only from its host.
        The others are media: from anywhere, as our own RTP ports take it (a CN's RTP may leave
        from another of its addresses than its ``c=``, and a NAT in front of it changes it)."""
        if not 0 <= peer < len(grant.peers):
            return False
        return peer > 0 or source_host == grant.peers[0][0]

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.allow)


def _not_global(host: str) -> bool:
    """Loopback, multicast, unspecified and link-local far ends are refused: a relay reaches out."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True
    return address.is_loopback or address.is_multicast or address.is_unspecified or address.is_link_local


# Bodies -------------------------------------------------------------------------------------------


def encode_request(peers: Sequence[tuple[str, int]]) -> str:
    """The Relay-To value naming `peers`."""
    return ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in peers)


def decode_request(relay_to: str) -> tuple[tuple[str, int], ...]:
    """The far ends asked for; raises `RelayRefused` (400) on anything else."""
    if len(relay_to) > MAX_BODY:
        raise RelayRefused(400, "Relay-To too long")
    try:
        peers = tuple(_host_port(item.strip()) for item in relay_to.split(",") if item.strip())
    except ValueError as exc:
        raise RelayRefused(400, f"Bad Relay-To: {exc}") from None
    if not 1 <= len(peers) <= MAX_PEERS:
        raise RelayRefused(400, f"Ask for 1 to {MAX_PEERS} far ends")
    for host, port in peers:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise RelayRefused(400, f"Not an IP address: {host!r}") from None
        if not 1 <= port <= 65535:
            raise RelayRefused(400, f"Bad port {port}")
    return peers


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{item!r} is not HOST:PORT")
    return host, int(port)


@dataclasses.dataclass(frozen=True, slots=True)
class Allocation:
    """One relay as the asking gateway sees it: send to `lan`, the far end `peer` sees `wan`."""

    peer: tuple[str, int]
    lan: tuple[str, int]
    wan: tuple[str, int]


def encode_answer(allocations: Sequence[Allocation]) -> bytes:
    return json.dumps({"relays": [{"peer": list(a.peer), "lan": list(a.lan), "wan": list(a.wan)}
                                  for a in allocations]}, separators=(",", ":")).encode()


def decode_answer(body: bytes) -> tuple[Allocation, ...]:
    """The relays granted (raises ValueError on anything else)."""
    if len(body) > MAX_BODY:
        raise ValueError("body too large")
    try:
        document = json.loads(body.decode("utf-8"))
        return tuple(Allocation((str(r["peer"][0]), int(r["peer"][1])), (str(r["lan"][0]), int(r["lan"][1])),
                                (str(r["wan"][0]), int(r["wan"][1]))) for r in document["relays"])
    except (UnicodeDecodeError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f"bad relay answer: {type(exc).__name__}") from None
