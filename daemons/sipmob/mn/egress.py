"""The phone on a multihomed gateway: each call on an egress of its own (SIP-NEMO §4, HMMP §4).

Every new call gets the egress the policy picks (`route`: priority order or least load, counted
while its INVITE is out): its SIP leaves from that egress's source address (the UA core's
`bind_call`: Via, Contact, every request and response of the dialog) and its RTP is bound there;
the admin's source routing sends each out of its own link. An incoming call stays on the egress
it came in over (the one the provider reaches us at). When an egress fails, only the calls on it
are re-INVITEd, each from the surviving egress the Egress List gives it (`MoveSession`); when its
address changes, its calls are re-INVITEd from the new one. RTP leaves from a socket on the new
address at once, before the CN answers, so the CN hears us again after one network delay; the
CN's answer then brings its media to the new address. A 491 (glare) is retried by the UA core
after the §14.1 back-off; a re-INVITE of ours still pending is retried here; a call that cannot be
moved is logged (it is not hung up: the CN may still reach the old address later).

The phone's own SIP (its registration, where new calls from the provider arrive) sits on one
egress too, `egress`: it moves (re-REGISTER with the old Contact removed) when that egress fails or
changes address, and calls bound to other egresses stay where they are.

Not here: the policy (`sipmob.net.egress`), netlink and probes (`sipmob.service.egress`), the
phone itself (`sipmob.mn.phone`, which calls `route`, `route_done`, `call_added`, `call_ended`,
`rows`). With ``[share] allow`` set, other gateways of those networks may SUBSCRIBE to the list
(`sipmob.service.egress.EgressPublisher`), and with ``[share] relays`` they may have relays
through our egress (`sipmob.service.egress_relay`).

Other gateways (SIP-NEMO §3.2, §4.2, §4.5; ``[share] peers``): the phone finds them in SLP
(``service:sip-egress``, their ``home`` attribute: the SIP URI they take requests from the home
network at), SUBSCRIBEs to their Egress Lists, and when a call is stranded (every egress of ours
is down) moves it over a gateway whose list has an egress ON: it asks that gateway for relays
(``sip-egress-relay``: one to the CN's SIP address, one to its audio, one to its video, one to
its audio's RTCP, offered in ``a=rtcp``), binds
the call's SIP to the SIP relay's outside address (Via and Contact name it; the datagrams go to the
relay's inside end from our home-side socket), receives RTP on our home-side address and
re-INVITEs the CN with the relays' outside addresses in ``c=`` (the video the phone receives too:
an empty datagram from our video socket tells its relay where to deliver, since the phone sends no
video). When one of our egresses comes back the call moves there (an ordinary move) and the relays
are given back. When the other gateway's list says the egress under our relays is no longer ON,
the relays are given back and asked for again (that gateway allocates them on its best egress
now) and the CN gets one more re-INVITE.

A SIP socket opened on an address that has since gone (or whose egress is down) is closed once
no call is on it and no transaction sent from it may retransmit (`_sweep`): a link readdressed
again and again keeps one socket, not one per address it ever had.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError

from sipmob.net import egress_event, relay
from sipmob.net.egress import (
    AddressChanged,
    EgressDown,
    EgressEvent,
    EgressUp,
    MoveSession,
    SessionStranded,
)
from sipmob.sdp import Attribute, OfferAnswerError, SDPParseError, SessionDescription, parse
from sipmob.service.config import load_config
from sipmob.service.egress import EgressMonitor, EgressPublisher
from sipmob.service.egress_config import EgressConfig
from sipmob.service.sipua import SIPError
from sipmob.sip.transport import Address

if TYPE_CHECKING:
    from sipmob.mn.phone import Phone, PhoneCall

log = logging.getLogger("sipmob.mn.egress")

RETRIES = 5  # re-INVITEs of a call while one of ours is still pending
RETRY_DELAY = 0.3
PEER_SCAN = 30.0  # seconds between two looks for other gateways in SLP
MAX_PEERS = 8
RELAY_EXPIRES = 600  # seconds a relay subscription is asked for, refreshed at 80 %
SWEEP_AGAIN = 2.0  # seconds before another look at a SIP socket that was still in use


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a call being placed goes: its egress (None: no egress is up), source address and
    SIP socket; `token` holds its place in the Egress List while the INVITE is out."""

    token: str
    egress: str | None
    address: str
    local: Address | None


@dataclasses.dataclass
class Ringing:
    """An outgoing call not answered yet (`Phone.place_call`): what moving it while it rings needs.
    `oa` and `rtp` are the call's, replaced here when an UPDATE moves it; `again` is set when it
    is CANCELled to be placed again from another egress (its source address and SIP socket)."""

    route: Route
    address: str
    oa: Any
    rtp: Any
    invite: Any = None  # the Deferred of the INVITE
    handle: int | None = None  # the UA's handle of the INVITE (of its last attempt)
    answered_early: bool = False  # a reliable 18x answered our offer: an UPDATE may carry another
    updating: Any = None  # a Deferred while our UPDATE is out
    again: tuple[str, Address] | None = None


class PhoneEgress:
    def __init__(self, phone: Phone, config: EgressConfig) -> None:
        self.phone = phone
        self.config = config
        self.monitor = EgressMonitor(phone.reactor, config)
        self.monitor.on_event(self._event)
        self.egress: str | None = None  # where the phone's own SIP (its registration) is
        self.advert: Any = None  # SLPServiceAgent registering service:sip-egress, when shared
        self._advertised: str | None = None
        self._call_address: dict[str, str] = {}  # call id -> the address its last move went to
        self._placing = 0
        self.moves: list[dict[str, Any]] = []  # the last ten moves, for `sipmob egress`
        self.publisher: EgressPublisher | None = None
        self.peers: dict[str, egress_event.EgressListBody] = {}  # other gateways' lists, by SIP URI
        self._peer_subscriptions: dict[str, Any] = {}  # SIP URI -> Subscription (None: being made)
        self._peer_scan: Any = None
        self._relayed: dict[str, tuple[Any, Any, Address]] = {}  # call -> (relay subscription,
        # the CN's own description, the relay's outside SIP address)
        self._sweep_later: Any = None  # a delayed `_sweep`, while a socket to close is still busy
        self._relay_gateway: dict[str, str] = {}  # relayed call -> the gateway relaying it
        # relayed call -> the inside ends of its SIP relays: the CN's requests arrive from there
        self._relay_inside: dict[str, set[str]] = {}
        self._ringing: dict[str, Ringing] = {}  # outgoing calls not answered yet, by route token

    @classmethod
    def from_file(cls, phone: Phone, path: str) -> PhoneEgress:
        return cls(phone, load_config(EgressConfig, path))

    # The phone's hook -------------------------------------------------------------------------------

    def start(self) -> None:
        """After the UA has started: watch, and put SIP on the best egress if one is up."""
        self.monitor.start()
        if self.config.share.allow:
            self.publisher = EgressPublisher(self.phone.ua, self.monitor, self.config.share.allow,
                                             self.config.share.max_subscribers, self.config.share.max_expires)
            self.publisher.start()
        if self.publisher is not None and self._home_apart():
            self.publisher.home = self._home_local()
        if self.config.share.allow and self.config.share.relays and self.publisher is not None:
            from sipmob.service.egress_relay import RelayServer

            def wan_host() -> str | None:
                best = self.monitor.egresses.best()
                return best.address if best is not None else None

            self.publisher.relay = RelayServer(
                self.phone.reactor, relay.RelayTable(self.config.share.allow, self.config.share.relays),
                self.phone.config.listen.address, wan_host)
        if self.config.share.allow:
            from sipmob.service.slp import SLPServiceAgent

            da = self.phone.config.da_address
            self.advert = SLPServiceAgent(self.phone.reactor, das=[da] if da else [],
                                          scopes=self.phone.config.slp.scopes, multicast=da is None,
                                          config=self.phone.slp_signing)
            self.monitor.on_event(lambda _event: self._advertise())
        best = self._best()
        if best is not None:
            self._move_sip(best[0], best[1])
        else:
            log.warning("no egress is up; SIP stays on %s until one is", self.phone.address)
        self._advertise()
        if self.config.share.peers:
            from twisted.internet.task import LoopingCall

            self._peer_scan = LoopingCall(self._find_peers)
            self._peer_scan.clock = self.phone.reactor
            self._peer_scan.start(PEER_SCAN, now=True).addErrback(
                lambda f: log.warning("looking for gateways: %s", f.getErrorMessage()))

    @defer.inlineCallbacks
    def stop(self) -> Any:
        if self._sweep_later is not None and self._sweep_later.active():
            self._sweep_later.cancel()
        if self._peer_scan is not None and self._peer_scan.running:
            self._peer_scan.stop()
        if self.advert is not None:
            yield self.advert.stop()  # deregisters service:sip-egress
        yield self.monitor.stop()

    def _advertise(self) -> None:
        """``service:sip-egress`` in SLP (docs/slp-schema.md): our SIP URI, where gateways SUBSCRIBE."""
        if self.advert is None or self.phone.ua.contact is None:
            return
        # A URL of its own: the [device] registration holds the bare contact (RFC 2608 §9.3).
        url = egress_event.advert_url(str(self.phone.ua.contact))
        if self._advertised is not None and self._advertised != url:
            self.advert.deregister(self._advertised)
        rows = self.monitor.rows()
        names = ",".join(str(r["name"]) for r in rows)
        active = ",".join(str(r["name"]) for r in rows if r["status"] == "up")
        listen = self.phone.config.listen
        home = f"sip:mn@{f'[{listen.address}]' if ':' in listen.address else listen.address}:{listen.port}"
        attrs = f"(egresses={names}),(event=sip-egress),(home={home})" + (
            f",(active={active})" if active else "")
        self.advert.register(url, egress_event.SERVICE_TYPE, attrs, lifetime=300)
        self._advertised = url

    def route(self) -> Route:
        """The egress of a call about to be placed, counted in its load until `route_done`."""
        self._placing += 1
        token = f"placing-{self._placing}"
        e = self.monitor.egresses.assign(token)
        if e is None or e.address is None:
            return Route(token, None, self.phone.address, None)
        try:
            local = self.phone.ua.local_address(e.address)
        except CannotListenError as exc:
            log.warning("egress %s: no SIP socket on %s (%s); the call leaves from %s", e.name, e.address,
                        exc, self.phone.address)
            return Route(token, None, self.phone.address, None)
        return Route(token, e.name, e.address, local)

    def route_done(self, route: Route) -> None:
        self.monitor.egresses.release(route.token)

    def ringing_started(self, ringing: Ringing) -> None:
        self._ringing[ringing.route.token] = ringing

    def ringing_ended(self, ringing: Ringing) -> None:
        if self._ringing.get(ringing.route.token) is ringing:
            del self._ringing[ringing.route.token]

    def call_added(self, pc: PhoneCall, restored: bool = False) -> None:
        """A call is established: counted on the egress its media is on, its SIP bound there (an
        incoming call stays where it came in even when the phone's own SIP moves later). A call
        `restored` after a restart whose address has gone, or whose egress is down, is moved to
        the best egress at once (a re-INVITE, as on a failure seen while running)."""
        address = _our_address(pc.oa.local) if pc.oa.local is not None else None
        address = address or self.phone.address
        self._call_address[pc.id] = address
        egress = next((e for e in self.monitor.egresses.egresses.values()
                       if e.address == address or address in e.addresses), None)
        if egress is None:
            if restored and not self.has_address(address):
                self._move_restored(pc, f"its address {address} went while the phone was not running")
                return
            log.info("call %s on %s, which is no egress's address", pc.id, address)
            return
        self.monitor.egresses.moved(pc.id, egress.name)
        self._bind(pc, address)
        log.info("call %s with %s on egress %s (%s)", pc.id, pc.peer, egress.name, address)
        if egress.name not in self.monitor.egresses.active():
            self._move_restored(pc, f"its egress {egress.name} went down while the phone was not running"
                                if restored else f"its egress {egress.name} went down while it was set up")

    def has_address(self, address: str) -> bool:
        """Whether `address` is one of ours now (an egress's, or the one we listen on)."""
        if address in (self.phone.config.listen.address, self.phone.address):
            return True
        return any(address in e.addresses for e in self.monitor.egresses.egresses.values())

    def fallback_address(self) -> str:
        """Where a restored call's media waits for its move: the best egress, else our own address."""
        best = self._best()
        return best[1] if best is not None else self.phone.address

    def _move_restored(self, pc: PhoneCall, reason: str) -> None:
        best = self.monitor.egresses.best()
        if best is None or best.address is None:
            log.warning("call %s cannot be moved now: %s and no egress is up", pc.id, reason)
            return
        self.monitor.egresses.moved(pc.id, best.name)
        started = time.monotonic()
        # once the phone has taken the call back entirely (its media started, its end watched)
        self.phone.reactor.callLater(0, self._move_call, pc, best.address, reason, started)

    def call_ended(self, pc: PhoneCall) -> None:
        self.monitor.egresses.release(pc.id)
        self._call_address.pop(pc.id, None)
        self._unrelay(pc.id)
        try:
            self.phone.ua.bind_call(pc.call.call_id, None)
        except Exception:  # the dialog is gone already: nothing is bound any more
            pass
        self._sweep()

    def _sweep(self) -> None:
        """Close our SIP sockets on addresses nothing needs any more: an address that has gone (a
        DHCP renewal gave another; the link went) or whose egress is down, once no call is on it
        and no transaction sent from it may still retransmit (else again in `SWEEP_AGAIN`).
        The calls' RTP sockets go with their moves (`_reinvite`)."""
        self._sweep_later = None
        egresses = self.monitor.egresses
        active = set(egresses.active())
        keep = {self.phone.config.listen.address, self.phone.address, *self._call_address.values()}
        for e in egresses.egresses.values():
            if e.name in active:
                keep.update(e.addresses)
        busy = []
        for host in self.phone.ua.added_addresses():
            if host in keep:
                continue
            if self.phone.ua.release_address(host):
                log.info("SIP socket on %s closed: no egress or call uses that address", host)
            else:
                busy.append(host)
        if busy:
            log.debug("SIP sockets on %s still in use; closed later", ", ".join(busy))
            self._sweep_later = self.phone.reactor.callLater(SWEEP_AGAIN, self._sweep)

    def _sweep_soon(self) -> None:
        if self._sweep_later is None:
            self._sweep_later = self.phone.reactor.callLater(0, self._sweep)

    def rows(self) -> dict[str, Any]:
        egresses = self.monitor.rows()
        for row in egresses:
            e = self.monitor.egresses.egresses[str(row["name"])]
            row["calls"] = sorted((s for s in e.sessions if s in self.phone.calls), key=_numeric)
        peers = [{"gateway": url, "egresses": [{"name": e.eface, "address": e.contact, "on": e.status,
                                                 "load": e.load} for e in body.entries]}
                 for url, body in sorted(self.peers.items())]
        return {"egresses": egresses, "current": self.egress, "address": self.phone.address,
                "moves": list(self.moves), "peers": peers,
                "relayed": {cid: str(r[2].host) + f":{r[2].port}" for cid, r in self._relayed.items()}}

    # Events -----------------------------------------------------------------------------------------

    def _best(self) -> tuple[str, str] | None:
        e = self.monitor.egresses.best()
        return (e.name, e.address) if e is not None and e.address is not None else None

    def _event(self, event: EgressEvent) -> None:
        started = time.monotonic()
        if isinstance(event, MoveSession):
            pc = self.phone.calls.get(event.session)
            if pc is not None:
                self._move_call(pc, event.address, event.reason, started)
            elif event.session in self._ringing:
                self._move_ringing(self._ringing[event.session], event.address, event.from_egress,
                                   event.reason, started)
        elif isinstance(event, AddressChanged):
            if event.egress == self.egress:
                self._move_sip(event.egress, event.new)
            reason = f"{event.egress}: address {event.old} -> {event.new}"
            for session in event.sessions:
                pc = self.phone.calls.get(session)
                if pc is not None:
                    self._move_call(pc, event.new, reason, started)
                elif session in self._ringing:
                    self._move_ringing(self._ringing[session], event.new, event.egress, reason, started)
        elif isinstance(event, SessionStranded):
            log.warning("call %s cannot be moved now: %s is down (%s) and no egress is up; it moves "
                        "as soon as one is", event.session, event.egress, event.reason)
            self._relay_stranded()
        if (isinstance(event, EgressUp) and self.egress not in self.monitor.egresses.active()) or (
                isinstance(event, EgressDown) and event.egress == self.egress):
            # the phone's own SIP (the registration, new calls) leaves a dead egress, and joins the
            # first one that is up after none was
            best = self._best()
            if best is not None:
                self._move_sip(best[0], best[1])
        if isinstance(event, EgressDown | AddressChanged):
            self._sweep_soon()

    def _move_sip(self, egress: str, address: str) -> None:
        self.egress = egress
        if address == self.phone.address and self.phone.ua.contact is not None \
                and self.phone.ua.contact.host == address:
            return
        self.phone.ua.move_to(address)
        self.phone.address = address
        if self.phone.device is not None:
            self.phone.device.follow()  # its SLP registration too, unless it is on the home network
        log.info("SIP on egress %s, contact %s", egress, self.phone.ua.contact)

    def _bind(self, pc: PhoneCall, address: str) -> bool:
        try:
            local = self.phone.ua.local_address(address)
        except CannotListenError as exc:
            log.warning("call %s: no SIP socket on %s (%s)", pc.id, address, exc)
            return False
        self.phone.ua.bind_call(pc.call.call_id, local)
        return True

    def _move_call(self, pc: PhoneCall, address: str, reason: str, started: float) -> None:
        if self._call_address.get(pc.id) == address and pc.id not in self._relayed:
            return
        self._call_address[pc.id] = address
        relayed = self._relayed.get(pc.id)
        if relayed is not None:
            pc.cn_sdp = relayed[1]  # back to the CN itself; the relays go once the move is done
            self.phone.reactor.callLater(5.0, self._unrelay, pc.id)
        self._bind(pc, address)
        self._reinvite(pc, address, reason, started, RETRIES)
        self._sweep_soon()

    @defer.inlineCallbacks
    def _reinvite(self, pc: PhoneCall, address: str, reason: str, started: float, retries: int) -> Any:
        phone = self.phone
        if phone.calls.get(pc.id) is not pc or self._call_address.get(pc.id) != address:
            return  # ended, or moved again meanwhile
        base = pc.oa.local
        if base is None:
            log.warning("call %s cannot be moved: no description of ours yet", pc.id)
            return
        old_address = _our_address(base)
        # New sockets on the new address; our audio leaves from there at once (the CN's address
        # has not changed), so the CN hears us before it has even answered the re-INVITE.
        old_rtp, old_video = pc.rtp, pc.video_rtp
        new_rtp = phone._new_rtp(address=address)
        new_video = phone._new_rtp(video=True, address=address) if old_video is not None else None
        offer = _readdressed(base, old_address, address, new_rtp.port,
                             new_video.port if new_video is not None else None)
        was_sending = bool(old_rtp.sending)
        pc.rtp, pc.video_rtp = new_rtp, new_video
        if pc.recorder is not None:
            old_rtp.detach_recorder()
            new_rtp.attach_recorder(pc.recorder, {c.static_payload_type: c for c in phone.codecs})
        old_rtp.stop_sending()
        if was_sending:
            phone.start_media(pc)
        log.info("call %s: moving to %s (%s); re-INVITE sent %.0f ms after the news", pc.id, address,
                 reason, (time.monotonic() - started) * 1000)
        try:
            response = yield pc.call.reinvite(pc.oa.create_offer(offer).to_bytes())
        except SIPError as exc:
            pc.oa.rollback()
            if exc.status == 491 and retries > 0:  # our own earlier re-INVITE is still pending
                yield _sleep(phone.reactor, RETRY_DELAY)
                yield self._reinvite(pc, address, reason, started, retries - 1)
            else:
                log.warning("call %s with %s could not be moved to %s: %s %s; its media stays on "
                            "the new address", pc.id, pc.peer, address, exc.status, exc.reason)
            _close(old_rtp, old_video)
            return
        try:
            answer = parse(response.body or b"")
            pc.oa.receive_answer(answer)
        except (SDPParseError, OfferAnswerError) as exc:
            log.warning("call %s: unusable answer to the move's re-INVITE: %s", pc.id, exc)
            _close(old_rtp, old_video)
            return
        pc.cn_sdp = answer
        pc.local_sdp = offer
        if was_sending:
            phone.start_media(pc)  # to wherever the answer says
        _close(old_rtp, old_video)
        elapsed = time.monotonic() - started
        self.moves = [*self.moves[-9:], {"call": pc.id, "to": address, "reason": reason,
                                         "seconds": round(elapsed, 3)}]
        log.info("call %s with %s moved to %s in %.0f ms", pc.id, pc.peer, address, elapsed * 1000)


    # Calls still ringing ----------------------------------------------------------------------------

    def _move_ringing(self, r: Ringing, address: str, failed: str, reason: str, started: float) -> None:
        """An outgoing call rings on an egress that failed. With an early dialog whose offer/answer
        is complete (a reliable 18x, PRACKed: RFC 3262, RFC 3311 §5.1) and a way in still there
        (the link up, the address ours: the callee's 2xx follows the INVITE's Via to it), UPDATE
        it from `address`. Else CANCEL it (from `address`, with the INVITE's Via, §9.1) and INVITE
        again from `address`: the callee rings anew."""
        handle = r.handle
        if handle is None or not self.phone.ua.ringing(handle) or r.address == address or r.again is not None:
            return  # answered meanwhile (then moved as a call), or being moved already
        try:
            local = self.phone.ua.local_address(address)
        except CannotListenError as exc:
            log.warning("call being placed: no SIP socket on %s (%s); it stays where it is", address, exc)
            return
        old, r.address = r.address, address
        self.phone.ua.bind_ringing(handle, local)
        e = self.monitor.egresses.egresses.get(failed)
        way_in = e is not None and e.link_up is not False and old in e.addresses
        if r.answered_early and way_in and r.updating is None:
            log.info("call being placed rings on %s (%s): UPDATE in its early dialog from %s", old, reason,
                     address)
            r.updating = self._update_ringing(r, handle, old, address, local, reason, started)
            return
        why = ("no early dialog can carry an UPDATE (no reliable 18x answered our offer)"
               if not r.answered_early else f"the callee's answer could not reach {old} any more")
        self._cancel_ringing(r, old, address, local, f"{reason}; {why}")

    def _cancel_ringing(self, r: Ringing, old: str, address: str, local: Address, why: str) -> None:
        log.warning("call being placed rang on %s: %s: CANCEL, and the INVITE again from %s", old, why,
                    address)
        r.again = (address, local)
        self.moves = [*self.moves[-9:], {"call": "(ringing)", "to": address, "reason": why,
                                         "how": "CANCEL and INVITE again", "seconds": 0.0}]
        r.invite.cancel()

    @defer.inlineCallbacks
    def _update_ringing(self, r: Ringing, handle: int, old: str, address: str, local: Address, reason: str,
                        started: float) -> Any:
        phone = self.phone
        try:
            new_rtp = phone._new_rtp(address=address)
        except CannotListenError as exc:
            r.updating = None
            self._cancel_ringing(r, old, address, local, f"{reason}; no RTP socket on {address} ({exc})")
            return
        failure = ""
        try:
            if r.oa.local is None:
                raise OfferAnswerError("no description of ours agreed yet")
            offer = _readdressed(r.oa.local, old, address, new_rtp.port, None)
            response = yield phone.ua.update_early(handle, r.oa.create_offer(offer).to_bytes())
            if response.status >= 300:
                failure = f"{response.status} {response.reason}"
            else:
                r.oa.receive_answer(parse(response.body or b""))
        except (SIPError, SDPParseError, OfferAnswerError) as exc:
            failure = str(exc)
        finally:
            r.updating = None
        if failure:
            r.oa.rollback()
            new_rtp.close()
            log.warning("call being placed: the UPDATE moving it to %s failed: %s", address, failure)
            if phone.ua.ringing(handle):
                self._cancel_ringing(r, old, address, local, f"{reason}; the UPDATE failed ({failure})")
            return
        r.rtp, old_rtp = new_rtp, r.rtp
        old_rtp.close()
        elapsed = time.monotonic() - started
        self.moves = [*self.moves[-9:], {"call": "(ringing)", "to": address, "reason": reason,
                                         "how": "UPDATE", "seconds": round(elapsed, 3)}]
        log.info("call being placed moved to %s by UPDATE while ringing, in %.0f ms", address, elapsed * 1000)

    # Other gateways ---------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def _find_peers(self) -> Any:
        """Gateways in SLP (``service:sip-egress``) that we do not follow yet: SUBSCRIBE to them."""
        slp = self.phone.slp
        try:
            entries = yield slp.find_services("service:sip-egress")
        except Exception as exc:
            log.debug("no gateways found: %s", exc)
            return
        for entry in entries[:MAX_PEERS]:
            if entry.url == self._advertised:
                continue
            try:
                attrs = yield slp.find_attributes(entry.url, "home")
            except Exception:
                attrs = {}
            home = attrs.get("home")
            values = getattr(home, "values", ())
            target = str(values[0]) if values else egress_event.contact_of(entry.url)
            if target in self._peer_subscriptions or target == self._home_uri():
                continue
            self._peer_subscriptions[target] = None
            self._follow(target)

    def _home_apart(self) -> bool:
        """Whether we listen on the home network apart from our egresses (a gateway with a LAN
        side) rather than on an egress's address."""
        listen = self.phone.config.listen.address
        egresses = self.monitor.egresses.egresses.values()
        return listen not in ("0.0.0.0", "::") and all(
            listen not in e.addresses and listen != e.spec.address for e in egresses)

    def _home_local(self) -> Address:
        """Our SIP address on the home network: other gateways take our requests there only."""
        return self.phone.ua.local_address(self.phone.config.listen.address)

    def _home_uri(self) -> str:
        listen = self.phone.config.listen
        return f"sip:mn@{f'[{listen.address}]' if ':' in listen.address else listen.address}:{listen.port}"

    def _follow(self, target: str) -> None:
        def notified(_subscription: Any, request: Any) -> None:
            try:
                self.peers[target] = egress_event.decode(request.body or b"")
            except egress_event.EgressEventError as exc:
                log.info("gateway %s: unusable Egress List: %s", target, exc)
                return
            log.info("gateway %s: egresses %s", target, ", ".join(
                f"{e.eface} {'ON' if e.status else 'OFF'}" for e in self.peers[target].entries))
            self._check_relays(target)
            self._relay_stranded()

        def subscribed(subscription: Any) -> None:
            self._peer_subscriptions[target] = subscription
            subscription.terminated.addCallback(lambda _reason: forget())

        def forget() -> None:
            self._peer_subscriptions.pop(target, None)
            self.peers.pop(target, None)

        def failed(failure: Any) -> None:
            log.info("gateway %s: SUBSCRIBE failed: %s", target, failure.getErrorMessage())
            forget()

        try:
            d = self.phone.ua.subscribe(target, egress_event.EVENT, expires=3600, on_notify=notified,
                                        local=self._home_local())
        except SIPError as exc:  # a URI that is no SIP URI
            log.info("gateway %s: cannot SUBSCRIBE: %s", target, exc)
            return
        d.addCallbacks(subscribed, failed)

    def _check_relays(self, target: str) -> None:
        """The egress of gateway `target` under one of our relays is no longer ON (its NOTIFY
        says so): give those relays back and let `_relay_stranded` ask again; the gateway
        allocates new ones on its best egress now, and the CN gets one more re-INVITE."""
        body = self.peers.get(target)
        if body is None:
            return
        on = {e.contact for e in body.entries if e.status and e.contact}
        for call, (subscription, real, outside) in list(self._relayed.items()):
            if subscription is None or self._relay_gateway.get(call) != target or outside.host in on:
                continue
            pc = self.phone.calls.get(call)
            log.warning("call %s: the egress of gateway %s under its relay (%s) is down; asking for "
                        "new relays", call, target, outside.host)
            del self._relayed[call]
            subscription.unsubscribe().addErrback(lambda _f: None)
            # the old relay address stays usable until the new one is bound to the call
            self.phone.reactor.callLater(10.0, self._drop_relay_address, outside)
            if pc is not None:
                pc.cn_sdp = real  # the CN's own description: the new relays are asked for its ends

    def relay_hosts(self, call_id: str) -> frozenset[str]:
        """The hosts the CN's requests of the call with SIP `call_id` arrive from through another
        gateway's relays (the phone's policy takes requests inside the call from them)."""
        for call, hosts in self._relay_inside.items():
            pc = self.phone.calls.get(call)
            if pc is not None and pc.call.call_id == call_id:
                return frozenset(hosts)
        return frozenset()

    def _drop_relay_address(self, outside: Address) -> None:
        if all(r[2] != outside for r in self._relayed.values()):
            self.phone.ua.remove_relay(outside)

    def _peer_with_egress(self) -> str | None:
        usable = [(min(e.load for e in body.entries if e.status and e.contact), url)
                  for url, body in self.peers.items() if any(e.status and e.contact for e in body.entries)]
        return min(usable)[1] if usable else None

    def _relay_stranded(self) -> None:
        if not self.config.share.peers:
            return
        if self.monitor.egresses.stranded and self._peer_with_egress() is None:
            self._find_peers()  # a gateway that came after our last look
        for session in sorted(self.monitor.egresses.stranded):
            pc = self.phone.calls.get(session)
            target = self._peer_with_egress()
            if pc is None or target is None or session in self._relayed:
                continue
            self._relayed[session] = (None, pc.cn_sdp, Address("", 0, "udp"))  # being set up

            def failed(failure: Any, session: str = session) -> None:
                log.warning("call %s: no relay: %s", session, failure.getErrorMessage())
                self._relayed.pop(session, None)

            self._relay_call(pc, target).addErrback(failed)

    @defer.inlineCallbacks
    def _relay_call(self, pc: PhoneCall, target: str) -> Any:
        phone = self.phone
        started = time.monotonic()
        index = phone.audio_index(pc)
        base = pc.oa.local
        if index is None or base is None or pc.call.dialog is None:
            raise RuntimeError("no audio stream to relay")
        conn = pc.cn_sdp.connection_for(index)
        if conn is None:
            raise RuntimeError("the CN's audio has no address")
        sip_peer = pc.call.dialog.destination()
        far_ends = [(sip_peer.host, sip_peer.port), (conn.address, pc.cn_sdp.media[index].port)]
        video = _our_video(pc, base)
        if video is not None:  # the video we receive here is relayed too (a third far end)
            video_conn = pc.cn_sdp.connection_for(video)
            if video_conn is not None:
                far_ends.append((video_conn.address, pc.cn_sdp.media[video].port))
            else:
                video = None
        far_ends.append(_rtcp_far_end(pc.cn_sdp, index, conn.host))  # last: the audio's RTCP
        answered: defer.Deferred[tuple[relay.Allocation, ...]] = defer.Deferred()

        def notified(_subscription: Any, request: Any) -> None:
            if answered.called:
                return
            try:
                answered.callback(relay.decode_answer(request.body or b""))
            except ValueError as exc:
                answered.errback(exc)

        subscription = yield phone.ua.subscribe(target, relay.EVENT, expires=RELAY_EXPIRES,
                                                on_notify=notified, local=self._home_local(),
                                                headers=[(relay.HEADER, relay.encode_request(far_ends))])
        answered.addTimeout(5, phone.reactor)
        try:
            allocations = yield answered
            sip_relay, rtp_relay = allocations[:2]
            video_relay = allocations[2] if video is not None else None
            rtcp_relay = allocations[-1] if len(allocations) == len(far_ends) else None
        except Exception:
            subscription.unsubscribe()
            raise
        if phone.calls.get(pc.id) is not pc or pc.id not in self.monitor.egresses.stranded:
            subscription.unsubscribe()  # ended, or one of our egresses came back meanwhile
            self._relayed.pop(pc.id, None)
            return
        lan = phone.config.listen.address
        outside = Address(sip_relay.wan[0], sip_relay.wan[1], "udp")
        phone.ua.relay_address(outside, lan, sip_relay.lan)
        phone.ua.bind_call(pc.call.call_id, outside)
        self._relayed[pc.id] = (subscription, pc.cn_sdp, outside)
        self._relay_gateway[pc.id] = target
        self._relay_inside.setdefault(pc.id, set()).add(sip_relay.lan[0])
        self._call_address[pc.id] = outside.host
        self._keep_relay(pc.id, subscription)
        old_rtp, old_video = pc.rtp, None
        was_sending = bool(old_rtp.sending)
        pc.rtp = phone._new_rtp(address=lan)
        if video is not None and video_relay is not None:
            old_video, pc.video_rtp = pc.video_rtp, phone._new_rtp(video=True, address=lan)
            for _ in range(3):  # the relay learns where we take its video (empty: not passed on)
                pc.video_rtp.hello(video_relay.lan)
        offer = _readdressed(base, _our_address(base), rtp_relay.wan[0], rtp_relay.wan[1],
                             video_relay.wan[1] if video_relay is not None else None)
        if rtcp_relay is not None:  # the CN's RTCP to the relay (RFC 3605), ours to its LAN end
            offer = _with_rtcp(offer, index, rtcp_relay.wan)
        real = pc.cn_sdp
        pc.cn_sdp = _towards(real, index, rtp_relay.lan, rtcp_relay)  # our audio goes to the relay at once
        if video is not None and video_relay is not None:
            pc.cn_sdp = _towards(pc.cn_sdp, video, video_relay.lan)
        old_rtp.stop_sending()
        if was_sending:
            phone.start_media(pc)
        log.info("call %s: moving over gateway %s (relay %s:%d); re-INVITE sent %.0f ms after the news",
                 pc.id, target, outside.host, outside.port, (time.monotonic() - started) * 1000)
        try:
            response = yield pc.call.reinvite(pc.oa.create_offer(offer).to_bytes())
            answer = parse(response.body or b"")
            pc.oa.receive_answer(answer)
        except (SIPError, SDPParseError, OfferAnswerError) as exc:
            log.warning("call %s could not be moved over gateway %s: %s", pc.id, target, exc)
            _close(old_rtp, old_video)
            return
        pc.local_sdp = offer
        self._relayed[pc.id] = (subscription, answer, outside)
        pc.cn_sdp = _towards(answer, index, rtp_relay.lan, rtcp_relay)
        if video is not None and video_relay is not None:
            pc.cn_sdp = _towards(pc.cn_sdp, video, video_relay.lan)
        if was_sending:
            phone.start_media(pc)
        _close(old_rtp, old_video)
        elapsed = time.monotonic() - started
        self.moves = [*self.moves[-9:], {"call": pc.id, "to": f"{outside.host} (gateway {target})",
                                         "reason": "every egress of ours is down",
                                         "seconds": round(elapsed, 3)}]
        log.info("call %s with %s moved over gateway %s in %.0f ms", pc.id, pc.peer, target, elapsed * 1000)

    def _keep_relay(self, call: str, subscription: Any) -> None:
        """Refresh the relay subscription while the call uses it (at 80 % of its lifetime)."""
        def refresh() -> None:
            relayed = self._relayed.get(call)
            if relayed is None or relayed[0] is not subscription or subscription.terminated.called:
                return
            subscription.refresh(RELAY_EXPIRES).addErrback(
                lambda f: log.warning("call %s: relay refresh failed: %s", call, f.getErrorMessage()))
            self.phone.reactor.callLater(RELAY_EXPIRES * 0.8, refresh)

        self.phone.reactor.callLater(RELAY_EXPIRES * 0.8, refresh)

    def _unrelay(self, call: str) -> None:
        relayed = self._relayed.get(call)
        if relayed is None or (call in self.phone.calls and self._call_address.get(call) == relayed[2].host):
            return  # still relayed (or being set up): keep it
        del self._relayed[call]
        self._relay_gateway.pop(call, None)
        self._relay_inside.pop(call, None)
        if relayed[0] is not None:
            relayed[0].unsubscribe().addErrback(lambda _f: None)
        self.phone.ua.remove_relay(relayed[2])


def _towards(sdp: SessionDescription, index: int, address: tuple[str, int],
             rtcp: relay.Allocation | None = None) -> SessionDescription:
    """The CN's description as our audio sees it through a relay: stream `index` at `address`,
    its RTCP at the `rtcp` relay's LAN end (without one, the CN's own ``a=rtcp`` is dropped:
    port + 1 of the relay, as before)."""
    out = sdp.with_media(index, sdp.media[index].with_connection(address[0]).with_port(address[1]))
    return _with_rtcp(out, index, rtcp.lan if rtcp is not None else None)


def _rtcp_far_end(sdp: SessionDescription, index: int, host: str) -> tuple[str, int]:
    """Where the CN takes the RTCP of stream `index` (RFC 3605 ``a=rtcp``, else RTP's port + 1)."""
    stated = sdp.media[index].rtcp
    if stated is None:
        return host, sdp.media[index].port + 1
    return (stated.connection.host if stated.connection is not None else host), stated.port


def _with_rtcp(sdp: SessionDescription, index: int, address: tuple[str, int] | None) -> SessionDescription:
    """Stream `index` with ``a=rtcp`` (RFC 3605) naming `address` (None: without one)."""
    media = sdp.media[index]
    attributes = [a for a in media.attributes if a.name.lower() != "rtcp"]
    if address is not None:
        family = "IP6" if ":" in address[0] else "IP4"
        attributes.append(Attribute("rtcp", f"{address[1]} IN {family} {address[0]}"))
    return sdp.with_media(index, media.with_attributes(attributes))


def _our_video(pc: PhoneCall, ours: SessionDescription) -> int | None:
    """The index of the call's video stream when it is received here (not on a device)."""
    if pc.video_rtp is None:
        return None
    here = _our_address(ours)
    for i, m in enumerate(pc.cn_sdp.media):
        conn = ours.connection_for(i) if i < len(ours.media) else None
        if m.media == "video" and m.port and conn is not None and conn.address == here:
            return i
    return None


def _our_address(sdp: SessionDescription) -> str | None:
    conn = sdp.connection or next((m.connection for m in sdp.media if m.connection), None)
    return conn.address if conn is not None else None


def _readdressed(sdp: SessionDescription, old: str | None, new: str, audio_port: int,
                 video_port: int | None) -> SessionDescription:
    """Our streams (those at `old`) at `new` on the new ports; streams on devices unchanged."""
    out = sdp
    if sdp.connection is not None and sdp.connection.address == old:
        # streams without their own c= were ours: they keep the session-level one, now `new`
        out = out.with_connection(new)
        for i, m in enumerate(sdp.media):
            if m.connection is not None and m.connection.address != old:
                out = out.with_media(i, out.media[i].with_connection(m.connection))
    for i, m in enumerate(sdp.media):
        conn = sdp.connection_for(i)
        if conn is None or conn.address != old or m.port == 0:
            continue
        if m.connection is not None:
            out = out.with_media(i, out.media[i].with_connection(new))
        if m.media == "audio":
            out = out.with_port(i, audio_port)
        elif m.media == "video" and video_port is not None:
            out = out.with_port(i, video_port)
    return out


def _numeric(call: str) -> tuple[int, str]:
    return (int(call), call) if call.isdigit() else (1 << 62, call)


def _close(*endpoints: Any) -> None:
    for endpoint in endpoints:
        if endpoint is not None:
            endpoint.close()


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d
