"""Relays for another gateway whose egresses are all down: the sockets (`sipmob.net.relay` decides).

`RelayServer` answers ``SUBSCRIBE`` for the ``sip-egress-relay`` event: the rules of its
`RelayTable` first (an allowed network, the relays left, the far ends outside the home), then one
relay per far end asked for: a UDP socket on our LAN address (`lan_host`, where the asking gateway
sends) and one on our best egress's address (what the far end sees). The first NOTIFY carries the
relays' addresses; the subscription's end (un-SUBSCRIBE, expiry, a failed NOTIFY) closes them.
Each datagram is checked against its relay (from the asking gateway on the LAN side, from the far
end on the WAN side) and forwarded unchanged: the asking gateway already names our egress address
in its Via, Contact and ``c=``.

Not here: the rules (`sipmob.net.relay`), the asking side (`sipmob.mn.egress`).
"""

from __future__ import annotations

import logging
from typing import Any

from twisted.internet import protocol

from sipmob.net import relay
from sipmob.net.relay import Allocation, Grant, RelayRefused, RelayTable
from sipmob.service.timers import TimerDriver

log = logging.getLogger("sipmob.egress")


class _Side(protocol.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data, (addr[0], addr[1]))


class _Relay:
    """One far end: a LAN socket and a WAN socket, datagrams passed between them."""

    def __init__(self, reactor: Any, grant: Grant, peer: int, lan_host: str, wan_host: str) -> None:
        self.grant = grant
        self.peer = peer
        self.asker: tuple[str, int] | None = None  # the asking gateway's socket, from its datagrams
        self.lan = reactor.listenUDP(0, _Side(self._from_lan), interface=lan_host, maxPacketSize=65535)
        try:
            self.wan = reactor.listenUDP(0, _Side(self._from_wan), interface=wan_host, maxPacketSize=65535)
        except Exception:
            self.lan.stopListening()
            raise
        self.allocation = Allocation(grant.peers[peer], (lan_host, self.lan.getHost().port),
                                     (wan_host, self.wan.getHost().port))
        self.dropped = 0

    def _from_lan(self, data: bytes, source: tuple[str, int]) -> None:
        if not RelayTable.from_lan_ok(self.grant, source[0]):
            self.dropped += 1
            return
        self.asker = source
        if not data:
            return  # only says where the asking gateway takes what comes back (its video, say)
        try:
            self.wan.write(data, self.grant.peers[self.peer])
        except OSError as exc:
            log.debug("relay to %s: %s", self.grant.peers[self.peer], exc)

    def _from_wan(self, data: bytes, source: tuple[str, int]) -> None:
        if not RelayTable.from_wan_ok(self.grant, self.peer, source[0]) or self.asker is None:
            self.dropped += 1
            return
        try:
            self.lan.write(data, self.asker)
        except OSError as exc:
            log.debug("relay back to %s: %s", self.asker, exc)

    def close(self) -> None:
        self.lan.stopListening()
        self.wan.stopListening()


class RelayServer:
    def __init__(self, reactor: Any, table: RelayTable, lan_host: str, wan_host: Any) -> None:
        """`wan_host()` gives our best egress's address now (None: no egress is up: 503)."""
        self.reactor = reactor
        self.table = table
        self.lan_host = lan_host
        self.wan_host = wan_host
        self.relays: dict[str, list[_Relay]] = {}
        self._timer = TimerDriver(reactor, table.get_timer, self._expire)

    def subscribe(self, incoming: Any, source: str) -> None:
        """A SUBSCRIBE for the relay event, from `source` (the address it really came from)."""
        from sipmob.service.sipua import SIPError

        request = incoming.request
        try:
            asked = int((request.headers.get("Expires") or str(self.table.max_expires)).strip())
        except ValueError:
            raise SIPError(400, "Bad Expires") from None
        wan = self.wan_host()
        if wan is None:
            incoming.respond(503, headers=[("Retry-After", "30")])
            return
        key = f"{request.call_id}/{request.from_.tag}"
        try:
            grant = self.table.open(key, source, request.headers.get(relay.HEADER) or "", asked,
                                    self.reactor.seconds())
        except RelayRefused as exc:
            log.info("relay for %s refused: %s", source, exc)
            raise SIPError(exc.status, exc.reason) from None
        if asked == 0:
            self._close(key)
            incoming.respond(200, headers=[("Expires", "0")])
            return
        relays = self.relays.get(key)
        if relays is None:
            try:
                relays = [_Relay(self.reactor, grant, i, self.lan_host, wan) for i in range(len(grant.peers))]
            except Exception as exc:
                self.table.close(key)
                log.warning("relay for %s: cannot bind (%s)", source, exc)
                raise SIPError(503, "Cannot bind a relay") from None
            self.relays[key] = relays
        subscription = incoming.accept_subscription(int(grant.expires_at - self.reactor.seconds()))
        subscription.terminated.addCallback(lambda _reason: self._close(key))
        subscription.on_refresh(lambda _subscription, request: self._refresh(key, request))
        body = relay.encode_answer([r.allocation for r in relays])
        subscription.notify("active", body, relay.CONTENT_TYPE).addErrback(lambda _f: self._close(key))
        log.info("relaying for %s: %s", source, ", ".join(
            f"{r.allocation.lan[1]} <-> {r.allocation.wan[0]}:{r.allocation.wan[1]} <-> "
            f"{r.allocation.peer[0]}:{r.allocation.peer[1]}" for r in relays))
        self._timer.update()

    def _refresh(self, key: str, request: Any) -> None:
        try:
            expires = int((request.headers.get("Expires") or "0").strip())
        except ValueError:
            expires = 0
        if self.table.refresh(key, expires, self.reactor.seconds()) is not None and expires > 0:
            self._timer.update()
        elif expires <= 0:
            self._close(key)

    def _close(self, key: str) -> None:
        grant = self.table.close(key)
        relays = self.relays.pop(key, [])
        for r in relays:
            r.close()
        if relays:
            log.info("relay for %s closed", (grant or relays[0].grant).requester)

    def _expire(self, now: float) -> None:
        for grant in self.table.expired(now):
            log.info("relay for %s expired", grant.requester)
            for r in self.relays.pop(grant.key, []):
                r.close()
