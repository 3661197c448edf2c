"""A SIP user agent on the Twisted reactor: `UserAgent`, `IncomingCall`, `Call`.

Maps the sans-I/O `sipmob.sip.ua.UACore` to Deferreds and callbacks: `SIPTransport` carries the
bytes and drives the core, the one machine of a UA (its transaction layer is inside it), with one
pump and one timer for every deadline (transaction timers, 2xx retransmission, glare back-off,
REGISTER refreshes and retries), and each core event fires the Deferred or handler waiting for it.
`UserAgent.register` gives a `Registration`; the credentials given to `UserAgent` answer 401/407
challenges (the core does that).

Not here: any SIP rule (they are all in `sipmob.sip`), SDP negotiation (the application passes SDP
bytes in and gets SDP bytes out), media.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer

from sipmob.service.sipnet import SIPTransport
from sipmob.sip import ua as core
from sipmob.sip.dialog import Dialog
from sipmob.sip.headers import Replaces
from sipmob.sip.message import Request, Response, reason_phrase
from sipmob.sip.policy import RequestPolicy
from sipmob.sip.session_timer import Policy as SessionTimerPolicy
from sipmob.sip.transaction import TimerConfig
from sipmob.sip.transport import Address
from sipmob.sip.uri import URI, NameAddr

__all__ = ["AcceptedRefer", "Call", "CallFailed", "IncomingCall", "IncomingRequest", "ReferProgress",
           "Registration", "RegistrationFailed", "SIPError", "Subscription", "UserAgent"]

log = logging.getLogger("sipmob.sip.ua")

AckSdp = Callable[[bytes], "bytes | defer.Deferred[bytes]"]


class SIPError(Exception):
    """A SIP failure with its status: raise it from a handler to answer with that status, or get
    it from a request's Deferred (408 for a timeout)."""

    def __init__(self, status: int, reason: str | None = None, response: Response | None = None) -> None:
        self.status = status
        self.reason = reason or reason_phrase(status)
        self.response = response
        super().__init__(f"{status} {self.reason}")


class CallFailed(SIPError):
    """An INVITE that made no call: its final status (408 on timeout, 487 when cancelled)."""


def _uri(target: str | URI) -> URI:
    return target if isinstance(target, URI) else URI.parse(target.strip().strip("<>"))


class RegistrationFailed(SIPError):
    """The first REGISTER of a `Registration` failed; `registration` keeps trying after its
    back-off until it is unregistered."""

    def __init__(self, status: int, reason: str | None, registration: Registration) -> None:
        super().__init__(status, reason)
        self.registration = registration


class Registration:
    """A binding at a registrar that the core keeps fresh (`sipmob.sip.ua.UACore.register`).

    `state` is registering, registered, failed, unregistering or gone; `expires` what the registrar
    last granted. `on_change(handler)` hears every change as ``handler(registration)``."""

    def __init__(self, ua: UserAgent, handle: int, registrar: URI) -> None:
        self.ua = ua
        self.handle = handle
        self.registrar = registrar
        self.expires: int | None = None
        self.last_failure: tuple[int, str] | None = None
        self.retry_in: float | None = None
        self._handlers: list[Callable[[Registration], Any]] = []
        self._first: defer.Deferred[Registration] | None = None
        self._gone: defer.Deferred[None] | None = None

    @property
    def state(self) -> str:
        return self.ua.machine.registration_state(self.handle)

    def on_change(self, handler: Callable[[Registration], Any]) -> None:
        self._handlers.append(handler)

    def unregister(self) -> defer.Deferred[None]:
        """Remove the binding (expires=0); fires once the registrar answered (whatever it said)."""
        if self.state == "gone":
            return defer.succeed(None)
        if self._gone is None:
            self._gone = defer.Deferred()
            gone = self._gone
            self.ua.machine.unregister(self.handle, self.ua.now())
            self.ua.flush()
            return gone
        return self._gone

    def _changed(self) -> None:
        for handler in list(self._handlers):
            try:
                handler(self)
            except Exception:
                log.exception("registration handler failed")


@dataclasses.dataclass(frozen=True, slots=True)
class _PendingReinvite:
    deferred: defer.Deferred[Response]
    ack_sdp: AckSdp | None


class ReferProgress:
    """A REFER the peer accepted (202). `final` fires with the status of the last NOTIFY's
    sipfrag (RFC 3515 §2.4.5); `statuses` lists every status reported so far."""

    def __init__(self, response: Response, handle: int | None = None) -> None:
        self.response = response
        self.handle = handle  # the core's handle of a REFER outside a dialog (its own dialog)
        self.statuses: list[int] = []
        self.final: defer.Deferred[int] = defer.Deferred()


class IncomingRequest:
    """An out-of-dialog request given to an `UserAgent.on_request` handler."""

    def __init__(self, ua: UserAgent, rid: int, request: Request) -> None:
        self.ua = ua
        self.rid = rid
        self.request = request
        self.responded = False
        self.subscription: Subscription | None = None

    def respond(self, status: int, reason: str | None = None, *, headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"", content_type: str | None = None) -> None:
        """Answer the request (once)."""
        if self.responded:
            return
        self.responded = True
        created = self.ua.machine.respond(self.rid, status, self.ua.now(), reason=reason, headers=headers,
                                        body=body, content_type=content_type)
        if created is not None:
            event = (self.request.headers.get("Event") or "").strip()
            self.subscription = Subscription(self.ua, created, event)
            self.ua.adopt_subscription(self.subscription)
        self.ua.flush()

    def accept_refer(self) -> AcceptedRefer:
        """Accept an out-of-dialog REFER (202, then NOTIFY 100: RFC 3515 §2.4); report how the
        referred request went with `AcceptedRefer.notify`."""
        self.responded = True
        handle = self.ua.machine.accept_refer_outside(self.rid, self.ua.now())
        self.ua.flush()
        return AcceptedRefer(self.ua, handle, self.request.cseq.seq)

    def accept_subscription(self, expires: int) -> Subscription:
        """Answer a SUBSCRIBE with 200 and return the notifier's `Subscription`; send the first
        NOTIFY with `Subscription.notify` (RFC 6665 §4.2.1.2 wants one at once)."""
        self.respond(200, headers=[("Expires", str(expires))])
        assert self.subscription is not None
        return self.subscription


class AcceptedRefer:
    """The notifier's side of a REFER we accepted outside a dialog."""

    def __init__(self, ua: UserAgent, handle: int, refer_id: int) -> None:
        self.ua = ua
        self.handle = handle
        self.refer_id = refer_id
        self.done = False

    @property
    def dialog(self) -> Dialog | None:
        """The REFER's own dialog (None once it has ended)."""
        return self.ua.machine.dialog(self.handle)

    def notify(self, status: int, reason: str | None = None) -> None:
        """A ``message/sipfrag`` NOTIFY with `status`; a final one ends the subscription."""
        if self.done:
            return
        self.done = status >= 200
        try:
            self.ua.machine.notify_refer(self.handle, self.refer_id, status, self.ua.now(), reason=reason)
        except core.UAError as exc:
            log.info("cannot report REFER progress: %s", exc)
        self.ua.flush()


class Subscription:
    """A subscription dialog (RFC 6665), on either side: the subscriber gets NOTIFYs through
    `on_notify`, the notifier sends them with `notify`."""

    def __init__(self, ua: UserAgent, handle: int, event: str) -> None:
        self.ua = ua
        self.handle = handle
        self.event = event
        self.terminated: defer.Deferred[str] = defer.Deferred()
        self._dialog = ua._core.dialog(handle)
        self._notify_handler: Callable[[Subscription, Request], Any] | None = None
        self._refresh_handler: Callable[[Subscription, Request], Any] | None = None

    @property
    def dialog(self) -> Dialog:
        d = self.ua.machine.dialog(self.handle) or self._dialog
        assert d is not None
        return d

    def on_notify(self, handler: Callable[[Subscription, Request], Any]) -> None:
        """Who hears NOTIFYs: `handler` returns a status (None: 200) or a Deferred of one."""
        self._notify_handler = handler

    def notify(self, state: str, body: bytes = b"", content_type: str | None = None
               ) -> defer.Deferred[Response]:
        """Send a NOTIFY with ``Subscription-State: state``; "terminated..." ends the dialog."""
        return self.ua.in_dialog(self.handle, "NOTIFY", headers=[
            ("Event", self.event), ("Subscription-State", state)], body=body, content_type=content_type)

    def on_refresh(self, handler: Callable[[Subscription, Request], Any]) -> None:
        """Notifier side: who hears a refreshing SUBSCRIBE (answered 200 with its Expires)."""
        self._refresh_handler = handler

    def refresh(self, expires: int) -> defer.Deferred[Response]:
        """Subscriber side: SUBSCRIBE again in the dialog for `expires` seconds (RFC 6665 §4.1.2.1)."""
        return self.ua.in_dialog(self.handle, "SUBSCRIBE", headers=[("Event", self.event),
                                                                       ("Expires", str(expires))])

    def unsubscribe(self) -> defer.Deferred[Response]:
        """Send SUBSCRIBE with Expires: 0; the notifier's final NOTIFY then ends the dialog."""
        return self.ua.in_dialog(self.handle, "SUBSCRIBE", headers=[("Event", self.event),
                                                                       ("Expires", "0")])

    def _ended(self, reason: str) -> None:
        if not self.terminated.called:
            self.terminated.callback(reason)


class Call:
    """An established call (a confirmed INVITE dialog)."""

    def __init__(self, ua: UserAgent, handle: int) -> None:
        self.ua = ua
        self.handle = handle
        self.terminated: defer.Deferred[str] = defer.Deferred()
        self._dialog: Dialog | None = ua._core.dialog(handle)
        self._sdp: tuple[bytes | None, bytes | None] = (None, None)
        self._reinvite_handler: Callable[[Call, Request], bytes | defer.Deferred[bytes]] | None = None
        self._refer_handler: Callable[[Call, Request], Any] | None = None
        self._request_handlers: dict[str, Callable[[Call, Request], Any]] = {}
        self._terminated_handlers: list[Callable[[Call, str], None]] = []

    def __repr__(self) -> str:
        return f"<Call {self.call_id} {self.state}>"

    @property
    def dialog(self) -> Dialog:
        d = self.ua.machine.dialog(self.handle) or self._dialog
        assert d is not None
        self._dialog = d
        return d

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    @property
    def peer_host(self) -> str:
        """Where its dialog-forming request came from or went to (`sipmob.sip.ua.UACore.peer_host`)."""
        return self.ua.machine.peer_host(self.handle)

    @property
    def state(self) -> str:
        return self.ua.machine.call_state(self.handle)

    @property
    def local_sdp(self) -> bytes | None:
        if self.state != "terminated":
            self._sdp = self.ua.machine.sdp(self.handle)
        return self._sdp[0]

    @property
    def remote_sdp(self) -> bytes | None:
        if self.state != "terminated":
            self._sdp = self.ua.machine.sdp(self.handle)
        return self._sdp[1]

    def reinvite(self, sdp: bytes | None, *, ack_sdp: AckSdp | None = None) -> defer.Deferred[Response]:
        """Send a re-INVITE with a new offer. Fires with the 2xx once ACKed; a 491 is retried after
        the §14.1 back-off; errback `SIPError` for any other final status or a timeout.

        Without an offer, `ack_sdp(offer)` makes the ACK's answer (bytes or a Deferred of them);
        without `ack_sdp` the ACK is held for `ack`."""
        try:
            op = self.ua.machine.reinvite(self.handle, sdp, self.ua.now())
        except core.UAError as exc:
            return defer.fail(_misuse(exc))
        d: defer.Deferred[Response] = defer.Deferred()
        self.ua.expect_reinvite(op, d, ack_sdp)
        self.ua.flush()
        return d

    def ack(self, sdp: bytes | None) -> None:
        """Send the ACK held for a late-offer 2xx, carrying our answer `sdp`."""
        self.ua.machine.ack(self.handle, sdp, self.ua.now())
        self.ua.flush()

    @property
    def ack_pending(self) -> bool:
        """Whether a late-offer 2xx waits for `ack`."""
        return self.ua.machine.ack_pending(self.handle)

    def on_reinvite(self, handler: Callable[[Call, Request], bytes | defer.Deferred[bytes]]) -> None:
        """Who answers the peer's re-INVITEs: `handler` returns the answer SDP (or our offer when the
        re-INVITE had none), or a Deferred of it; raising or errbacking `SIPError` rejects it.
        Without a handler, re-INVITEs are answered with the current local SDP. When the UA allows
        UPDATE, an UPDATE with an offer goes to the same handler (one without goes to `on_request`)."""
        self._reinvite_handler = handler

    def bye(self) -> defer.Deferred[None]:
        """Hang up: fires when the BYE is answered (or has timed out)."""
        if self.state == "terminated":
            return defer.succeed(None)
        op = self.ua.machine.bye(self.handle, self.ua.now())
        d: defer.Deferred[None] = defer.Deferred()
        if op:
            self.ua.expect(op, lambda _response: d.callback(None))
        else:
            d.callback(None)
        self.ua.flush()
        return d

    def refer(self, refer_to: str | URI, *, replaces: Replaces | None = None,
              referred_by: str | None = None) -> defer.Deferred[ReferProgress]:
        """Send a REFER (RFC 3515), with ``?Replaces=`` embedded in Refer-To (RFC 3891) and a
        Referred-By (RFC 3892) if given. Fires with a `ReferProgress` on 202; errback `SIPError`."""
        uri = _uri(refer_to)
        if replaces is not None:
            uri = uri.replace(headers=(("Replaces", str(replaces)),))
        by = NameAddr.parse(referred_by) if referred_by else None
        try:
            op = self.ua.machine.refer(self.handle, NameAddr(None, uri), self.ua.now(), referred_by=by)
        except core.UAError as exc:
            return defer.fail(_misuse(exc))
        d: defer.Deferred[ReferProgress] = defer.Deferred()

        def completed(response: Response | None) -> None:
            if response is None or response.status >= 300:
                d.errback(_error(response))
                return
            d.callback(self.ua.refer_accepted(op, ReferProgress(response)))

        self.ua.expect(op, completed)
        self.ua.flush()
        return d

    def on_refer(self, handler: Callable[[Call, Request], Any]) -> None:
        """Who acts on the peer's REFERs. Raising `SIPError` declines; otherwise the REFER gets 202
        and NOTIFY 100, and the handler's result is the outcome reported in the final NOTIFY: an
        int status, a `Call` (200), or a Deferred of either (errback `SIPError` gives its status,
        anything else 503). None leaves the subscription to `notify_refer`. Without a handler,
        REFERs are declined with 603."""
        self._refer_handler = handler

    def notify_refer(self, refer_id: int, status: int, reason: str | None = None) -> None:
        """Report progress of a REFER we accepted (``refer_id`` is the REFER's CSeq number)."""
        self.ua.machine.notify_refer(self.handle, refer_id, status, self.ua.now(), reason=reason)
        self.ua.flush()

    def on_request(self, method: str, handler: Callable[[Call, Request], Any]) -> None:
        """Who answers other requests within the call (INFO, SUBSCRIBE, NOTIFY...): `handler`
        returns a status (or a Deferred of one; None means 200). Without one, INFO and NOTIFY get
        200 and the rest 405."""
        self._request_handlers[method.upper()] = handler

    def info(self, body: bytes, content_type: str) -> defer.Deferred[Response]:
        """Send an INFO within the call; fires with the final response (errback `SIPError` on a
        timeout)."""
        return self.ua.in_dialog(self.handle, "INFO", body=body, content_type=content_type)

    def on_terminated(self, handler: Callable[[Call, str], None]) -> None:
        """Called once when the call ends, with the reason ("bye", "local", "replaced", "no-ack",
        "timeout")."""
        self._terminated_handlers.append(handler)

    def _ended(self, reason: str) -> None:
        for handler in self._terminated_handlers:
            try:
                handler(self, reason)
            except Exception:
                log.exception("a terminated handler failed")
        if not self.terminated.called:
            self.terminated.callback(reason)


class IncomingCall:
    """An INVITE for us, not answered yet. ``replaced`` is the call its Replaces header names."""

    def __init__(self, ua: UserAgent, event: core.IncomingInvite) -> None:
        self.ua = ua
        self.handle = event.call
        self.request = event.request
        self.offer = event.offer
        self.replaces = event.replaces
        self.referred_by = event.referred_by
        self.source = event.source
        self.replaced: Call | None = ua.call(event.replaces_call) if event.replaces_call else None
        self.cancelled: defer.Deferred[None] = defer.Deferred()
        self._accepted: defer.Deferred[Call] | None = None
        self._early_answer: bytes | None = None
        self._early_offer_handler: Callable[[IncomingCall, Request],
                                            bytes | defer.Deferred[bytes]] | None = None
        self._unanswered: Callable[[], None] | None = None

    def answer_early(self, sdp: bytes,
                     handler: Callable[[IncomingCall, Request], bytes | defer.Deferred[bytes]],
                     unanswered: Callable[[], None]) -> None:
        """Put our answer `sdp` to the INVITE's offer in the 180 (which goes reliably: call this only
        when the caller supports or requires 100rel), so that the caller may offer again before the
        200: `handler` answers such an offer (in a PRACK, RFC 3262 §5, or an UPDATE, RFC 3311 §5.2)
        as `on_reinvite`'s handler does. `unanswered` is called when the INVITE ends without a 2xx
        (refused, cancelled)."""
        self._early_answer = sdp
        self._early_offer_handler = handler
        self._unanswered = unanswered

    def _never_answered(self) -> None:
        gone, self._unanswered = self._unanswered, None
        if gone is not None:
            gone()

    def ringing(self) -> None:
        """Send 180 Ringing (an early dialog; with our answer when `answer_early` gave one)."""
        self.ua.machine.answer_invite(self.handle, 180, self.ua.now(), sdp=self._early_answer)
        self.ua.flush()

    def accept(self, sdp: bytes) -> defer.Deferred[Call]:
        """Answer 200 with `sdp` (our answer, or our offer if the INVITE had none; then the ACK
        carries their answer). Fires with the `Call` when the ACK arrives; errback `CallFailed`
        if the caller cancelled first."""
        d: defer.Deferred[Call] = defer.Deferred()
        self._accepted = d
        self.ua.expect_ack(self)
        self.ua.machine.answer_invite(self.handle, 200, self.ua.now(), sdp=sdp)
        self.ua.flush()
        return d

    def reject(self, status: int = 486, reason: str | None = None,
               headers: Sequence[tuple[str, str]] = ()) -> None:
        """Refuse the call with a final status (and `headers`, such as Retry-After)."""
        self.ua.machine.answer_invite(self.handle, status, self.ua.now(), reason=reason, headers=headers)
        self.ua.flush()
        self._never_answered()


class UserAgent:
    """A SIP UA on the reactor: calls out and in, re-INVITE, REFER, OPTIONS, INFO.

    `listen` are ``(host, port, transport)``; the first is our Contact. `capabilities_sdp` makes
    the body of our OPTIONS answers.
    """

    def __init__(self, reactor: Any = None, *,
                 listen: Sequence[tuple[str, int, str]] = (("127.0.0.1", 5060, "udp"),),
                 user: str = "sipmob", display_name: str | None = None, user_agent: str = "sipmob/0.1",
                 timers: TimerConfig | None = None,
                 capabilities_sdp: Callable[[], bytes] | None = None,
                 credentials: core.CredentialsLookup | tuple[str, str] | None = None,
                 allow: Sequence[str] = core.ALLOW, aor: str | URI | None = None,
                 advertise: str | None = None, policy: RequestPolicy | None = None,
                 session_timer: SessionTimerPolicy | None = None) -> None:
        """`credentials` answer Digest challenges (401/407): ``(username, password)`` or a
        function of the realm returning them (or None). `allow` are the methods we take (others
        get 405), `aor` our From (default ``sip:USER@HOST``), `advertise` the host put in Via and
        Contact when the socket is bound to any address. `policy` decides which requests from
        outside a dialog the core acts on (`sipmob.sip.policy`). `session_timer` makes the core a
        full RFC 4028 party (`sipmob.sip.session_refresh`)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self._listen = listen
        self._options = {"user": user, "display_name": display_name, "user_agent": user_agent,
                         "timers": timers, "capabilities_sdp": capabilities_sdp,
                         "credentials": credentials, "allow": allow,
                         "aor": _uri(aor) if aor is not None else None,
                         "policy": policy, "session_timer": session_timer}
        self._advertise = advertise
        self._transport = SIPTransport(reactor, None, listen, on_event=self._on_core_event)
        self._core_obj: core.UACore | None = None
        self._call_handler: Callable[[IncomingCall], None] | None = None
        self._request_handlers: dict[str, Callable[[IncomingRequest], Any]] = {}
        self._calls: dict[int, Call] = {}
        self._incoming: dict[int, IncomingCall] = {}
        self._outgoing: dict[int, tuple[defer.Deferred[Call], Callable[[Response], Any] | None]] = {}
        self._reinvites: dict[int, _PendingReinvite] = {}
        self._requests: dict[int, Callable[[Response | None], Any]] = {}
        self._refers: dict[int, ReferProgress] = {}
        self._early_notifies: dict[int, list[tuple[int, bool]]] = {}
        self._subscriptions: dict[int, Subscription] = {}
        self._ack_sdp: dict[int, AckSdp] = {}  # by call handle, for a late-offer INVITE
        # by call handle: who answers the callee's offers before its 2xx (RFC 3311 §5.2)
        self._early_offers: dict[int, Callable[[Any, Request], bytes | defer.Deferred[bytes]]] = {}
        self._registrations: dict[int, Registration] = {}
        self.contact: URI | None = None
        self.aor: URI | None = None
        self.addresses: list[Address] = []

    # Life cycle ---------------------------------------------------------------------------------

    def start(self) -> defer.Deferred[list[Address]]:
        """Bind the sockets; afterwards `contact`, `aor` and `addresses` are set."""
        try:
            self.addresses = self._transport.start()
        except Exception:
            return defer.fail()
        local = [Address(self._advertise, a.port, a.transport) if self._advertise else a
                 for a in self.addresses]
        self._core_obj = core.UACore(local, **self._options)  # type: ignore[arg-type]
        self._core_obj.app_methods.update(self._request_handlers)
        self.contact = self._core_obj.contact_uri
        self.aor = self._core_obj.aor
        self._transport.use_layer(self._core_obj)
        return defer.succeed(list(self.addresses))

    def stop(self) -> defer.Deferred[None]:
        """Close the sockets. Calls are not hung up: that is the application's decision."""
        d = self._transport.stop()
        return d.addCallback(lambda _: None)

    def move_to(self, host: str) -> Address:
        """Send from `host` and be reached there from now on (HMMP; an egress failover): SIP goes
        out of a socket bound to it, Via and Contact name it, and every registration is refreshed
        at once. The application re-INVITEs its calls (with its new SDP) afterwards. Keeps our
        port when it is free on `host`; raises twisted's CannotListenError when nothing is."""
        from twisted.internet.error import CannotListenError

        port = self.contact.port if self.contact is not None and self.contact.port else 5060
        try:
            bound = self._transport.bind_udp(host, port)
        except CannotListenError:
            bound = self._transport.bind_udp(host, 0)
        local = [bound]
        if self._tcp():
            local.append(self._add_tcp(host, port))  # and TCP too leaves from there: a new connection
            self._transport.send_tcp_from(host)
        self.machine.set_local(local, self.now())
        self.contact = self.machine.contact_uri
        self.flush()
        return bound

    def local_address(self, host: str) -> Address:
        """Our UDP address on `host` (bound now if it is not yet: our port when it is free there,
        else any), for calls that must leave from `host`; the default address stays. Raises
        twisted's CannotListenError."""
        from twisted.internet.error import CannotListenError

        port = self.contact.port if self.contact is not None and self.contact.port else 5060
        try:
            bound = self._transport.add_udp(host, port)
        except CannotListenError:
            bound = self._transport.add_udp(host, 0)
        if self._tcp():
            # a call bound to `host` that goes over TCP opens its connection from there
            self._core.layer.add_local(self._add_tcp(host, port))
        return bound

    def _tcp(self) -> bool:
        return any(a.transport == "tcp" for a in self.addresses)

    def _add_tcp(self, host: str, port: int) -> Address:
        from twisted.internet.error import CannotListenError

        try:
            return self._transport.add_tcp(host, port)
        except CannotListenError:
            return self._transport.add_tcp(host, 0)

    def release_address(self, host: str) -> bool:
        """Close our SIP socket on `host` (one `local_address` or `move_to` opened: an address that
        has gone) unless something may still leave from it: a call bound there, our Contact, a
        transaction sent from it that may retransmit. True once it is closed (or there was none);
        False: still in use, ask again later."""
        if host not in self._transport.added_udp():
            return True
        if (self.contact is not None and self.contact.host == host) or self._core.layer.sends_from(host):
            return False
        bound = self._transport.release_udp(host)
        if bound is not None:
            self._core.layer.forget_local(bound)
        self._transport.release_tcp(host)
        return True

    def added_addresses(self) -> list[str]:
        """The hosts we opened SIP sockets on after start (`local_address`, `move_to`)."""
        return self._transport.added_udp()

    def bind_call(self, call_id: str, local: Address | None) -> None:
        """The call's SIP leaves from `local` from now on (None: from the default address), Via
        and our Contact naming it; the next re-INVITE tells the peer."""
        self._core.layer.bind_call(call_id, local)

    def relay_address(self, advertised: Address, from_host: str, via: tuple[str, int]) -> None:
        """Calls bound to `advertised` (another gateway's relay) send from our socket on
        `from_host` to the relay's inside end `via` (`SIPTransport.add_relay`)."""
        self._transport.add_relay(advertised, from_host, via)

    def remove_relay(self, advertised: Address) -> None:
        self._transport.remove_relay(advertised)

    def bound(self, call_id: str) -> Address | None:
        return self._core.layer.bound(call_id)

    def own_host(self, host: str) -> bool:
        """Whether `host` is an address this agent sends SIP from (a process on this very host)."""
        return host == (self.contact.host if self.contact is not None else None) or \
            self._core.layer.is_local_host(host)

    # Handlers -----------------------------------------------------------------------------------

    def set_policy(self, policy: RequestPolicy) -> None:
        """Decide with `policy` from now on (a reloaded configuration)."""
        self._options["policy"] = policy
        if self._core_obj is not None:
            self._core_obj.policy = policy

    def on_incoming_call(self, handler: Callable[[IncomingCall], None]) -> None:
        """Who hears of new INVITEs; without a handler they get 480."""
        self._call_handler = handler

    def on_request(self, method: str, handler: Callable[[IncomingRequest], Any]) -> None:
        """Who answers out-of-dialog requests of `method` (OPTIONS is answered by default).
        `handler` may respond itself, or return a status, or a Deferred of one; None means 200."""
        method = method.upper()
        self._request_handlers[method] = handler
        if self._core_obj is not None:
            self._core_obj.app_methods.add(method)

    # Requests -----------------------------------------------------------------------------------

    def invite(self, target: str | URI, sdp: bytes | None, *, headers: Sequence[tuple[str, str]] = (),
               on_provisional: Callable[[Response], Any] | None = None,
               ack_sdp: AckSdp | None = None, local: Address | None = None,
               on_early_offer: Callable[[Request], bytes | defer.Deferred[bytes]] | None = None,
               on_sent: Callable[[int], None] | None = None) -> defer.Deferred[Call]:
        """Call `target` with our offer. Fires with the `Call` on 2xx, once ACKed; errback
        `CallFailed(status, reason)`. Cancelling the Deferred sends CANCEL.

        `on_early_offer(request)` answers an offer of the callee's before its 2xx (an UPDATE, RFC 3311
        §5.2, once its reliable 1xx answered ours): our answer, or a Deferred of it; `SIPError` refuses.
        Without it such an offer gets 488.

        Late offer (`sdp` None): `ack_sdp(offer)` returns the answer for the ACK, or a Deferred of
        it (3PCC, RFC 3725: the answer comes from another dialog); without `ack_sdp` the Deferred
        fires with the ACK still held and the application sends it with `Call.ack`.

        `local` (from `local_address`): the call's SIP leaves from there, Via and Contact naming
        it (a multihomed gateway's per-session egress), until `bind_call` moves it. `on_sent(handle)`
        hears the handle of the INVITE (for `ringing`, `bind_ringing`, `update_early`)."""
        handle = self._core.invite(_uri(target), sdp, self._now(), headers=headers)
        if on_sent is not None:
            on_sent(handle)
        if local is not None:
            self._core.layer.bind_call(self._core.call_id(handle), local)
        if ack_sdp is not None:
            self._ack_sdp[handle] = ack_sdp
        if on_early_offer is not None:
            early_offer = on_early_offer
            self._early_offers[handle] = lambda _call, request: early_offer(request)

        def cancel(_: Any) -> None:
            if self._core.call_state(handle) in ("calling", "early"):
                self._core.cancel(handle, self._now())
                self._flush()

        d: defer.Deferred[Call] = defer.Deferred(cancel)
        self._outgoing[handle] = (d, on_provisional)
        self._flush()
        return d

    def ringing(self, handle: int) -> bool:
        """Whether our INVITE `handle` (see `invite`'s `on_sent`) has no final answer yet."""
        return handle in self._outgoing

    def bind_ringing(self, handle: int, local: Address) -> None:
        """The rest of a ringing call's SIP (its PRACKs, an UPDATE, its CANCEL, the ACK) leaves from
        `local`; the INVITE's own transaction keeps the address it started from."""
        self._core.layer.bind_call(self._core.call_id(handle), local)

    def update_early(self, handle: int, sdp: bytes) -> defer.Deferred[Response]:
        """UPDATE with a new offer in the early dialog of our ringing INVITE `handle` (RFC 3311
        §5.1: once the INVITE's offer was answered reliably); fires with its final response."""
        return self.in_dialog(handle, "UPDATE", body=sdp, content_type="application/sdp")

    def subscribe(self, target: str | URI, event: str, *, expires: int = 600,
                  headers: Sequence[tuple[str, str]] = (),
                  on_notify: Callable[[Subscription, Request], Any] | None = None,
                  local: Address | None = None) -> defer.Deferred[Subscription]:
        """Subscribe to `event` at `target` (RFC 6665). Fires with the `Subscription` on 2xx;
        errback `SIPError` otherwise. NOTIFYs go to `on_notify` (None: answered 200). `local`: the
        subscription's SIP leaves from there (`local_address`), as `invite` has it."""
        handle = self._core.subscribe(_uri(target), event, self._now(), expires=expires, headers=headers)
        if local is not None:
            self._core.layer.bind_call(self._core.call_id(handle), local)
        subscription = Subscription(self, handle, event)
        subscription._notify_handler = on_notify
        self._subscriptions[handle] = subscription
        d: defer.Deferred[Subscription] = defer.Deferred()

        def completed(response: Response | None) -> None:
            if response is None or response.status >= 300:
                self._subscriptions.pop(handle, None)
                d.errback(_error(response))
            else:
                subscription._dialog = self._core.dialog(handle)
                d.callback(subscription)

        self._requests[handle] = completed
        self._flush()
        return d

    def refer(self, target: str | URI, refer_to: str | URI, *, replaces: Replaces | None = None,
              referred_by: str | None = None,
              headers: Sequence[tuple[str, str]] = ()) -> defer.Deferred[ReferProgress]:
        """Send a REFER outside any dialog (RFC 3515 §2.4), with ``?Replaces=`` embedded in Refer-To
        (RFC 3891) and a Referred-By (RFC 3892) if given; `headers` may add Target-Dialog (RFC 4538).
        Fires with a `ReferProgress` on 2xx; errback `SIPError`."""
        uri = _uri(refer_to)
        if replaces is not None:
            uri = uri.replace(headers=(("Replaces", str(replaces)),))
        by = NameAddr.parse(referred_by) if referred_by else None
        op = self.machine.refer_outside(_uri(target), NameAddr(None, uri), self.now(), referred_by=by,
                                        headers=headers)
        d: defer.Deferred[ReferProgress] = defer.Deferred()

        def completed(response: Response | None) -> None:
            if response is None or response.status >= 300:
                d.errback(_error(response))
                return
            d.callback(self.refer_accepted(op, ReferProgress(response, op)))

        self.expect(op, completed)
        self.flush()
        return d

    @property
    def registrations(self) -> list[Registration]:
        """The registrations not yet gone."""
        return list(self._registrations.values())

    def register(self, registrar: str | URI, *, aor: str | URI | None = None, expires: int = 3600,
                 on_change: Callable[[Registration], Any] | None = None) -> defer.Deferred[Registration]:
        """Register our Contact for `aor` (default: ours) at `registrar` (RFC 3261 §10) and keep
        it fresh. Fires with the `Registration` once the registrar accepted it; errback
        `RegistrationFailed` (the registration goes on trying) on a first failure. `on_change`
        hears every outcome, the first one included."""
        handle = self._core.register(_uri(registrar), self._now(), aor=_uri(aor) if aor is not None else None,
                                     expires=expires)
        registration = Registration(self, handle, _uri(registrar))
        registration._first = defer.Deferred()
        if on_change is not None:
            registration.on_change(on_change)
        self._registrations[handle] = registration
        first = registration._first
        self._flush()
        return first

    def adopt(self, dialog: Dialog, *, local_sdp: bytes | None = None,
              remote_sdp: bytes | None = None, peer_host: str = "") -> Call:
        """A `Call` for a confirmed dialog held before a restart (`sipmob.sip.ua.UACore.adopt`): it
        hears its peer's re-INVITEs and BYE like any other."""
        try:
            handle = self.machine.adopt(dialog, local_sdp=local_sdp, remote_sdp=remote_sdp,
                                        peer_host=peer_host)
        except core.UAError as exc:
            raise _misuse(exc) from None
        call = Call(self, handle)
        self._calls[handle] = call
        return call

    def options(self, target: str | URI, *, timeout: float | None = None,
                local: Address | None = None) -> defer.Deferred[Response]:
        """Send OPTIONS (from `local` if given, as `request`); fires with the final response (any
        status), errback `SIPError(408)` on a transaction timeout or twisted's TimeoutError after
        `timeout` seconds."""
        d = self.request("OPTIONS", target, local=local)
        if timeout is not None:
            d.addTimeout(timeout, self.reactor)
        return d

    def request(self, method: str, target: str | URI, *, headers: Sequence[tuple[str, str]] = (),
                body: bytes = b"", content_type: str | None = None,
                destination: Address | None = None, local: Address | None = None) -> defer.Deferred[Response]:
        """Send an out-of-dialog request (to `destination` if given, else where `target` says; from
        `local`, one of our addresses from `local_address`, if given); fires with the final response
        (any status), errback `SIPError(408)` on a timeout."""
        op = self._core.request(method.upper(), _uri(target), self._now(), headers=headers, body=body,
                                content_type=content_type, destination=destination, local=local)
        d: defer.Deferred[Response] = defer.Deferred()
        self._requests[op] = _fire_response(d, any_status=True)
        self._flush()
        return d

    # The surface the handles (Call, IncomingCall, Subscription...) act through -----------------

    @property
    def machine(self) -> core.UACore:
        """The sans-I/O core, the one machine of this UA; after acting on it, `flush`."""
        if self._core_obj is None:
            raise RuntimeError("UserAgent.start() first")
        return self._core_obj

    def now(self) -> float:
        return float(self.reactor.seconds())

    def flush(self) -> None:
        """Send what the core wants sent and hand its events out (the transport's one pump:
        folded into the outer loop when called from an event handler)."""
        self._transport.flush()

    def call(self, handle: int) -> Call | None:
        """The established `Call` of a core handle."""
        return self._calls.get(handle)

    def expect(self, op: int, completed: Callable[[Response | None], Any]) -> None:
        """Who hears the final response (None: a timeout) of the core's request `op`."""
        self._requests[op] = completed

    def expect_reinvite(self, op: int, d: defer.Deferred[Response], ack_sdp: AckSdp | None) -> None:
        """Fire `d` when our re-INVITE `op` completes; `ack_sdp` makes a held ACK's answer."""
        self._reinvites[op] = _PendingReinvite(d, ack_sdp)

    def expect_ack(self, incoming: IncomingCall) -> None:
        """An incoming call we answered 2xx: its `accept` Deferred fires on the ACK."""
        self._incoming[incoming.handle] = incoming

    def refer_accepted(self, op: int, progress: ReferProgress) -> ReferProgress:
        """Our REFER `op` got 202: its NOTIFYs (those that overtook the 202 first) go to `progress`."""
        self._refers[op] = progress
        for status, terminated in self._early_notifies.pop(op, []):
            self._refer_notified(progress, status, terminated)
        return progress

    def adopt_subscription(self, subscription: Subscription) -> None:
        """A subscription dialog made by answering a SUBSCRIBE: its requests go to it."""
        self._subscriptions[subscription.handle] = subscription

    def in_dialog(self, handle: int, method: str, **kw: Any) -> defer.Deferred[Response]:
        """Send `method` within the dialog of `handle`; fires with the final response (any status)."""
        try:
            op = self.machine.request_in_call(handle, method, self.now(), **kw)
        except core.UAError as exc:
            return defer.fail(_misuse(exc))
        d: defer.Deferred[Response] = defer.Deferred()
        self._requests[op] = _fire_response(d, any_status=True)
        self.flush()
        return d

    # Internals ----------------------------------------------------------------------------------

    @property
    def _core(self) -> core.UACore:
        return self.machine

    def _now(self) -> float:
        return self.now()

    def _flush(self) -> None:
        self.flush()

    def _on_core_event(self, event: core.UAEvent) -> None:
        try:
            self._on_event(event)
        except Exception:
            log.exception("handling %s failed", type(event).__name__)

    def _on_event(self, event: core.UAEvent) -> None:
        if isinstance(event, core.IncomingInvite):
            incoming = IncomingCall(self, event)
            self._incoming[event.call] = incoming
            if self._call_handler is None:
                incoming.reject(480)
            else:
                self._call_handler(incoming)
        elif isinstance(event, core.CallProgress):
            pending = self._outgoing.get(event.call)
            if pending is not None and pending[1] is not None:
                pending[1](event.response)
        elif isinstance(event, core.CallEstablished):
            self._call_established(event)
        elif isinstance(event, core.CallFailed):
            self._call_failed(event)
        elif isinstance(event, core.CallTerminated):
            self._call_terminated(event)
        elif isinstance(event, core.ReinviteReceived):
            self._answer_reinvite(event)
        elif isinstance(event, core.ReinviteCompleted):
            self._reinvite_completed(event)
        elif isinstance(event, core.RequestReceived):
            self._answer_request(event)
        elif isinstance(event, core.ReferNotified):
            progress = self._refers.get(event.op)
            if progress is None:
                # the NOTIFY overtook the 202 (RFC 3515 §2.4.5 allows it): keep it for later
                self._early_notifies.setdefault(event.op, []).append((event.status, event.terminated))
            else:
                self._refer_notified(progress, event.status, event.terminated)
                if event.terminated:
                    self._refers.pop(event.op, None)
        elif isinstance(event, core.Registered | core.RegistrationFailed | core.Unregistered):
            self._registration_event(event)
        elif isinstance(event, core.RequestCompleted):
            callback = self._requests.pop(event.op, None)
            if callback is not None:
                callback(event.response)

    def _registration_event(
            self, event: core.Registered | core.RegistrationFailed | core.Unregistered) -> None:
        registration = self._registrations.get(event.reg)
        if registration is None:
            return
        first, registration._first = registration._first, None
        if isinstance(event, core.Registered):
            registration.expires = event.expires
            registration.last_failure = None
            registration.retry_in = None
            if first is not None:
                first.callback(registration)
        elif isinstance(event, core.RegistrationFailed):
            registration.last_failure = (event.status, event.reason)
            registration.retry_in = event.retry_in
            if first is not None:
                first.errback(RegistrationFailed(event.status, event.reason, registration))
        else:
            del self._registrations[event.reg]
            registration.expires = None
            if first is not None:
                first.errback(RegistrationFailed(0, "unregistered before registered", registration))
            gone, registration._gone = registration._gone, None
            if gone is not None:
                gone.callback(None)
        registration._changed()

    def _call_established(self, event: core.CallEstablished) -> None:
        self._early_offers.pop(event.call, None)
        call = Call(self, event.call)
        self._calls[event.call] = call
        out = self._outgoing.pop(event.call, None)
        if out is not None:
            d_out = out[0]
            ack_sdp = self._ack_sdp.pop(event.call, None)
            if ack_sdp is not None and self._core.ack_pending(event.call) and event.remote_sdp:
                self._held_ack(call, ack_sdp, event.remote_sdp).addCallbacks(
                    lambda _: d_out.callback(call), d_out.errback)
            else:
                d_out.callback(call)
        incoming = self._incoming.pop(event.call, None)
        if incoming is not None and incoming._accepted is not None:
            incoming._accepted.callback(call)

    def _call_terminated(self, event: core.CallTerminated) -> None:
        subscription = self._subscriptions.pop(event.call, None)
        if subscription is not None:
            subscription._ended(event.reason)
        call = self._calls.pop(event.call, None)
        if call is not None:
            call._ended(event.reason)
        incoming = self._incoming.pop(event.call, None)
        if incoming is not None:
            incoming._never_answered()
        if incoming is not None and incoming._accepted is not None and not incoming._accepted.called:
            status = 408 if event.reason == "no-ack" else 487
            incoming._accepted.errback(CallFailed(status, f"ended before the ACK ({event.reason})"))

    def _reinvite_completed(self, event: core.ReinviteCompleted) -> None:
        pending = self._reinvites.pop(event.op, None)
        call = self._calls.get(event.call)
        if pending is None:
            return
        d, ack_sdp = pending.deferred, pending.ack_sdp
        response = event.response
        if (ack_sdp is not None and call is not None and response is not None
                and self._core.ack_pending(event.call) and response.body):
            self._held_ack(call, ack_sdp, response.body).addCallbacks(
                lambda _: d.callback(response), d.errback)
        else:
            _fire_response(d, any_status=False)(response)

    def _call_failed(self, event: core.CallFailed) -> None:
        error = CallFailed(event.status, event.reason)
        self._early_offers.pop(event.call, None)
        out = self._outgoing.pop(event.call, None)
        if out is not None and not out[0].called:
            out[0].errback(error)
        incoming = self._incoming.pop(event.call, None)
        if incoming is not None:
            incoming._never_answered()
            if not incoming.cancelled.called:
                incoming.cancelled.callback(None)
            if incoming._accepted is not None and not incoming._accepted.called:
                incoming._accepted.errback(error)

    def _held_ack(self, call: Call, ack_sdp: AckSdp, offer: bytes) -> defer.Deferred[None]:
        """Send the held ACK once `ack_sdp` has produced the answer (a plain ACK if it fails)."""
        def send(answer: bytes | None) -> None:
            if self._core.ack_pending(call.handle):
                call.ack(answer)

        def failed(failure: Any) -> Any:
            send(None)
            return failure

        return defer.maybeDeferred(ack_sdp, offer).addCallbacks(send, failed)

    @staticmethod
    def _refer_notified(progress: ReferProgress, status: int, terminated: bool) -> None:
        progress.statuses.append(status)
        if terminated and not progress.final.called:
            progress.final.callback(status)

    def _answer_reinvite(self, event: core.ReinviteReceived) -> None:
        call = self._calls.get(event.call)
        handle, rid = event.call, event.rid

        def answer(sdp: bytes) -> None:
            self._core.answer_reinvite(handle, rid, 200, self._now(), sdp=sdp)
            self._flush()

        def reject(failure: Any) -> None:
            exc = failure.value
            status = exc.status if isinstance(exc, SIPError) else 500
            if not isinstance(exc, SIPError):
                log.error("the re-INVITE handler failed: %s", exc)
            self._core.answer_reinvite(handle, rid, status, self._now())
            self._flush()

        if call is None or call._reinvite_handler is None:
            answer(self._core.sdp(handle)[0] or b"")
            return
        d = defer.maybeDeferred(call._reinvite_handler, call, event.request)
        d.addCallbacks(answer, reject).addErrback(lambda f: log.error("re-INVITE answer: %s", f.value))

    def _answer_request(self, event: core.RequestReceived) -> None:
        request = event.request
        method = request.method
        rid = event.rid
        if event.call is None:
            incoming = IncomingRequest(self, rid, request)
            handler = self._request_handlers.get(method)
            if handler is None:
                incoming.respond(405)
                return
            self._run_handler(lambda: handler(incoming), incoming.respond,
                              lambda: incoming.responded)
            return
        subscription = self._subscriptions.get(event.call)
        if subscription is not None:
            self._answer_in_subscription(subscription, event)
            return
        call = self._calls.get(event.call)
        if method == "REFER":
            self._answer_refer(call, event)
            return
        if method == "UPDATE" and call is not None and call._reinvite_handler is not None and request.body:
            self._answer_update(call._reinvite_handler, call, event)
            return
        if method in ("UPDATE", "PRACK") and call is None and request.body:
            # an offer in an early dialog (RFC 3311 §5.2, RFC 3262 §5): answered when the
            # application said how (`IncomingCall.answer_early`)
            ringing = self._incoming.get(event.call)
            early = (ringing._early_offer_handler if ringing is not None
                     else self._early_offers.get(event.call) if method == "UPDATE" else None)
            if early is None:
                self._respond(rid, 488)
            else:
                self._answer_update(early, ringing, event)
            return
        call_handler = call._request_handlers.get(method) if call is not None else None
        if call is None or call_handler is None:
            self._respond(rid, 200 if method in ("INFO", "NOTIFY", "UPDATE") else 405)
            return
        done = [False]

        def respond_once(status: int, reason: str | None = None) -> None:
            done[0] = True
            self._respond(rid, status, reason)

        self._run_handler(lambda: call_handler(call, request), respond_once, lambda: done[0])

    def _answer_update(self, handler: Callable[[Any, Request], bytes | defer.Deferred[bytes]],
                       subject: Call | IncomingCall | None, event: core.RequestReceived) -> None:
        """RFC 3311 §5.2: an UPDATE's offer is answered in its 2xx like a re-INVITE's, by the same
        handler (one without an offer, such as an RFC 4028 refresh, is an ordinary request); so is
        the offer of a PRACK (RFC 3262 §5)."""
        rid = event.rid

        def answer(sdp: bytes) -> None:
            self._core.respond(rid, 200, self._now(), body=sdp, content_type="application/sdp")
            self._flush()

        def reject(failure: Any) -> None:
            exc = failure.value
            if not isinstance(exc, SIPError):
                log.error("the UPDATE handler failed: %s", exc)
            self._respond(rid, exc.status if isinstance(exc, SIPError) else 500)

        d = defer.maybeDeferred(handler, subject, event.request)
        d.addCallbacks(answer, reject).addErrback(lambda f: log.error("UPDATE answer: %s", f.value))

    def _answer_in_subscription(self, subscription: Subscription, event: core.RequestReceived) -> None:
        request, rid = event.request, event.rid
        done = [False]

        def respond(status: int, reason: str | None = None) -> None:
            done[0] = True
            headers = []
            if request.method == "SUBSCRIBE":
                headers.append(("Expires", (request.headers.get("Expires") or "0").strip()))
            self._core.respond(rid, status, self._now(), reason=reason, headers=headers)
            self._flush()

        handler = subscription._notify_handler
        if request.method == "SUBSCRIBE" and subscription._refresh_handler is not None:
            try:
                subscription._refresh_handler(subscription, request)
            except Exception:
                log.exception("the refresh handler of a %s subscription failed", subscription.event)
        if request.method != "NOTIFY" or handler is None:
            respond(200)
            if request.method == "SUBSCRIBE" and (request.headers.get("Expires") or "").strip() == "0":
                subscription.notify("terminated;reason=timeout")  # RFC 6665 §4.2.1.2
            return
        self._run_handler(lambda: handler(subscription, request), respond, lambda: done[0])

    def _run_handler(self, run: Callable[[], Any], respond: Callable[..., None],
                     responded: Callable[[], bool]) -> None:
        def ok(result: Any) -> None:
            if not responded():
                respond(result if isinstance(result, int) else 200)

        def failed(failure: Any) -> None:
            exc = failure.value
            if not isinstance(exc, SIPError):
                log.error("a request handler failed: %s", exc)
            if not responded():
                respond(exc.status if isinstance(exc, SIPError) else 500)

        defer.maybeDeferred(run).addCallbacks(ok, failed)

    def _respond(self, rid: int, status: int, reason: str | None = None) -> None:
        self._core.respond(rid, status, self._now(), reason=reason)
        self._flush()

    def _answer_refer(self, call: Call | None, event: core.RequestReceived) -> None:
        handle, rid = event.call, event.rid
        assert handle is not None
        if call is None or call._refer_handler is None:
            self._respond(rid, 603)
            return
        try:
            result = call._refer_handler(call, event.request)
        except SIPError as exc:
            self._respond(rid, exc.status, exc.reason)
            return
        except Exception:
            log.exception("the REFER handler failed")
            self._respond(rid, 500)
            return
        refer_id = self._core.accept_refer(handle, rid, self._now())
        self._flush()

        def final(status: int) -> None:
            if self._core.call_state(handle) != "terminated":
                self._core.notify_refer(handle, refer_id, status, self._now())
                self._flush()

        def outcome(value: Any) -> None:
            if isinstance(value, int):
                final(value)
            elif isinstance(value, Call):
                final(200)

        def failed(failure: Any) -> None:
            exc = failure.value
            final(exc.status if isinstance(exc, SIPError) else 503)

        if isinstance(result, defer.Deferred):
            result.addCallbacks(outcome, failed)
        else:
            outcome(result)


def _misuse(exc: core.UAError) -> SIPError:
    """A request the call's state does not allow fails as a peer would answer it: 491 while
    another re-INVITE is pending or owes its ACK (§14.1), 481 when there is no dialog."""
    text = str(exc)
    status = 491 if "pending" in text or "ACK" in text else 481
    return SIPError(status, text)


def _error(response: Response | None) -> SIPError:
    if response is None:
        return SIPError(408, "Request Timeout")
    return SIPError(response.status, response.reason, response)


def _fire_response(d: defer.Deferred[Any], *, any_status: bool) -> Callable[[Response | None], None]:
    def fire(response: Response | None) -> None:
        if d.called:
            return
        if response is None or (not any_status and response.status >= 300):
            d.errback(_error(response))
        else:
            d.callback(response)
    return fire
