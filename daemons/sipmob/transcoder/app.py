"""`sipmob-transcoder`'s application: who may invoke it, admission, calls and their media, SLP.

An INVITE is handled in this order, each step before any cost is taken on:

1. **Who**: the request's source host (its top Via's ``received``, or the sent-by the transport
   found equal to the source, RFC 3261 §18.2.1) must be in ``[access] allowed_networks``; else 403.
2. **Cost of the request**: an SDP body over ``[capacity] max_sdp`` octets gets 413; a body that is
   not the RFC 4117 "SDP A + SDP B" of `sipmob.transcoder.invocation` gets its 400/488.
3. **Admission**: a call takes two channels (one per direction). Over ``[capacity] channels`` the
   answer is 503 with ``Retry-After`` (RFC 3261 §21.5.4), so the calls already running keep their
   share of the core; so is a port range with no pair left.
4. Two port pairs are bound and handed to a worker; once it says they are in its epoll set (the
   parties send as soon as they have the answer, and their first packets must be served at once)
   the 200 carries "SDP TA + SDP TB". A worker that does not say so within `OPEN_WAIT` (or dies)
   gets the call 503 with ``Retry-After`` and its ports back.

**DTMF** (RFC 4117 §3.2 puts the parties' dialogs at the controller, so their INFO reaches it, not
us): an INFO in the call with an ``application/dtmf-relay`` (``Signal=``, ``Duration=``) or
``application/dtmf`` body and a ``Side=A`` or ``Side=B`` line (`sipmob.transcoder.invocation`) is
a digit that party sent: the worker plays it as RFC 4733 events to the other side (200), or, when
that side has no telephone-event, 488 tells the controller to pass the INFO on itself. The other
way, digits a party sends as events that the other side cannot take come back from the worker and
go to the controller as one INFO each (``Side=`` the party that sent it), one at a time in order.
Only the host that invoked the call may send them (403 otherwise). Both ways are bounded per call
(`DIGIT_RATE`; 503 over it, and at most `MAX_PENDING_INFO` INFOs waiting: more are dropped and
counted).

Within a call, only the host that invoked it speaks (`ControllerOnly`): a BYE, re-INVITE or INFO
from any other, whoever knows the Call-ID and tags, gets 403 before it changes anything of the
dialog, its CSeq included (RFC 3261 §12.2.2), so the controller's next requests stay in order.

A re-INVITE in the call with the same two lines updates where each party is and, if the controller
changed a party's codec, the conversion (the output streams carry on).

Egress (calls that survive a failing WAN link): the transcoder follows no egress list of
its own. A controller that anchors a call's media here for a CN outside the home names, per side,
the address to bind (``a=x-bind``, `sipmob.transcoder.invocation`): its CN-facing side on the
call's egress address, its member-facing side on ``[rtp] address``. The egress side is latched to
its party's first packet (symmetric RTP for a CN behind a NAT; the rules in
`sipmob.transcoder.worker`). When the egress fails the
controller re-INVITEs us with the surviving egress's address, we answer the new port there, and it
re-INVITEs the CN with it. Why the controller decides and not the transcoder: the controller
already holds the CN's dialog and must re-INVITE it from the new egress with our new port in the
same breath; two daemons reacting to the same netlink event would each have half the move and a
race between them. Our SIP with the controller stays inside the home and never moves. An address
that is not this host's (nothing can be bound there) gets 488 and the side stays where it was.

BYE, or no RTP from either party for ``[capacity] idle_timeout`` seconds, ends the call and frees
its channels.

Discovery: one ``service:sip-transcoder`` registration (docs/slp-schema.md) with the codec pairs,
capacity and ``free-channels``, re-registered when the free count changes (at most every
``[slp] update_interval`` seconds) and deregistered at stop.

Not here: the media engine (`sipmob.media.transcode`), ports and RTCP (`sipmob.transcoder.media`),
the SDP convention (`sipmob.transcoder.invocation`).
"""

from __future__ import annotations

import gc
import ipaddress
import itertools
import logging
import socket
from typing import Any

from twisted.internet import defer

from sipmob.media import dtmf
from sipmob.service.config import ConfigError, ConfigProblem, split_host_port
from sipmob.service.daemon import Runtime
from sipmob.service.sipua import Call, IncomingCall, SIPError, UserAgent
from sipmob.sip.message import Request
from sipmob.sip.policy import Admission, Refusal, ReplacesPolicy
from sipmob.sip.session_timer import Policy as SessionTimerPolicy
from sipmob.transcoder.config import TranscoderConfig
from sipmob.transcoder.invocation import InvocationError, Plan, answer, parse_invocation
from sipmob.transcoder.media import CallMedia, PortPool, Workers, default_workers

log = logging.getLogger("sipmob.transcoder")

SERVICE_TYPE = "service:sip-transcoder"
CHANNELS_PER_CALL = 2
STOP_BYE_TIMEOUT = 2.0
OPEN_WAIT = 2.0  # seconds a worker has to watch a new call's sockets before the INVITE gets 503
DIGIT_RATE, DIGIT_BURST = 8.0, 16  # INFO digits a second per call from the controller
MAX_PENDING_INFO = 16  # digits waiting to go to the controller as INFO, per call


def source_host(request: Request) -> str:
    """Where a request came from: the transport puts the source in ``received`` when it differs
    from the sent-by (RFC 3261 §18.2.1), so the sent-by is the source when ``received`` is absent."""
    via = request.top_via
    return via.received or via.host


class ControllerOnly(ReplacesPolicy):
    """The core's policy: RFC 3891 §6 on Replaces, and within a call only the host that invoked
    it (`controllers`, by Call-ID, kept by the application while the call lasts)."""

    def __init__(self) -> None:
        super().__init__()
        self.controllers: dict[str, str] = {}
        self.refused = 0

    def admit(self, admission: Admission) -> Refusal | None:
        refusal = super().admit(admission)
        dialog = admission.dialog
        if refusal is not None or dialog is None:
            return refusal
        controller = self.controllers.get(dialog.call_id)
        if controller is None or admission.source.host == controller:
            return None
        self.refused += 1
        log.info("%s in call %s from %s, not its controller %s: 403", admission.request.method,
                 dialog.call_id, admission.source.host, controller)
        return Refusal(403, "Not The Controller")


class TranscoderCall:
    """One invocation: its SIP call (once answered), its plan and media."""

    def __init__(self, number: int, plan: Plan, media: CallMedia, source: str, call_id: str = "") -> None:
        self.number = number
        self.call_id = call_id
        self.plan = plan
        self.media = media
        self.source = source
        self.call: Call | None = None
        self.version = 1
        self.info_bucket = dtmf.TokenBucket(DIGIT_RATE, DIGIT_BURST)
        self.outbox: list[bytes] = []  # INFO bodies for the controller, sent one at a time
        self.sending = False
        self.digits_refused = 0


class TranscoderApp:
    def __init__(self, config: TranscoderConfig, runtime: Runtime | None = None, reactor: Any = None) -> None:
        self.config = config
        self.runtime = runtime
        if reactor is None and runtime is not None:
            reactor = runtime.reactor
        self.reactor: Any = reactor
        if self.reactor is None:
            from twisted.internet import reactor as default_reactor

            self.reactor = default_reactor
        self._apply(config)
        self.ua: UserAgent | None = None
        self.sa: Any = None
        self.pool = PortPool(config.rtp.address, config.rtp.port_min, config.rtp.port_max)
        self.workers = Workers(self.reactor, config.media.workers or default_workers(), config.log.level,
                               self._idle_call, self._calls_lost, on_digit=self._digit_heard,
                               gather=config.media.gather_ms / 1000)
        self.calls: dict[int, TranscoderCall] = {}
        self.policy = ControllerOnly()  # who may speak within a call
        self._numbers = itertools.count(1)
        self._slp_update: Any = None
        self._slp_last = 0.0
        self._registered_free: int | None = None
        self.url = ""
        self.refused = {403: 0, 413: 0, 400: 0, 488: 0, 503: 0}

    def _apply(self, config: TranscoderConfig) -> None:
        self.config = config
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.access.allowed_networks]
        self.enabled = {c.upper() for c in config.media.codecs}

    # Life cycle ---------------------------------------------------------------------------------

    @property
    def channels_in_use(self) -> int:
        return CHANNELS_PER_CALL * len(self.calls)

    @property
    def free_channels(self) -> int:
        return max(0, self.config.capacity.channels - self.channels_in_use)

    @property
    def channels_per_worker(self) -> int:
        """Each worker's share of ``[capacity] channels``: a core carries no more than its share."""
        share = -(-self.config.capacity.channels // self.workers.count)
        return CHANNELS_PER_CALL * -(-share // CHANNELS_PER_CALL)  # whole calls

    def status(self) -> str:
        calls = len(self.calls)
        shares = "/".join(str(CHANNELS_PER_CALL * len(w.calls)) for w in self.workers.processes)
        return (f"{self.channels_in_use} of {self.config.capacity.channels} channels in use, "
                f"{calls} call{'' if calls == 1 else 's'}, {self.workers.count} "
                f"worker{'' if self.workers.count == 1 else 's'} ({shares})")

    def start(self) -> defer.Deferred[Any]:
        sip = self.config.sip
        workers_ready = self.workers.start()
        self.ua = UserAgent(self.reactor, listen=[(sip.address, sip.port, "udp")], user="transcoder",
                            user_agent="sipmob-transcoder/0.1",
                            # RFC 4028: a controller that dies without BYE stops refreshing, and
                            # the core ends the call, so its channels do not stay taken for good
                            session_timer=SessionTimerPolicy(), policy=self.policy)
        self.ua.on_incoming_call(self._incoming)
        # SIP is served (OPTIONS, INVITE) only once the workers can take calls.
        ua = self.ua
        d = workers_ready.addCallback(lambda _: ua.start())

        def bound(addresses: list[Any]) -> None:
            port = addresses[0].port
            host = self.config.advertised_address()
            self.url = f"sip:transcoder@{f'[{host}]' if ':' in host else host}:{port}"
            if self.config.slp.enabled:
                from sipmob.service import slpkeys
                from sipmob.service.slp import SLPServiceAgent

                slp = self.config.slp
                self.sa = SLPServiceAgent(self.reactor, das=[split_host_port(d, 427) for d in slp.das],
                                          scopes=slp.scopes, config=slpkeys.signing(slp, log))
                self.sa.start()
                self._register()
            log.info("transcoder at %s, RTP ports %d-%d, codecs %s, %d media worker(s) (pids %s)", self.url,
                     self.pool.low, self.pool.high, ", ".join(self.config.media.codecs), self.workers.count,
                     ", ".join(str(w.pid) for w in self.workers.processes))
            # What start-up made will live as long as the process: out of the collector's sight.
            gc.freeze()

        return d.addCallback(bound)

    def reload(self, config: TranscoderConfig) -> None:
        old = self.config
        if (old.sip, old.rtp, old.media.workers) != (config.sip, config.rtp, config.media.workers):
            raise ConfigError([ConfigProblem("[sip]/[rtp]/[media] workers", "",
                                             "addresses, ports and workers change only on a restart")])
        self._apply(config)
        self._register()
        self._status_changed()

    def stop(self) -> defer.Deferred[Any]:
        if self._slp_update is not None and self._slp_update.active():
            self._slp_update.cancel()
        waits = []
        for tc in list(self.calls.values()):
            if tc.call is not None:
                # A controller that is gone would hold the stop for Timer F (32 s): give BYE 2 s.
                waits.append(tc.call.bye().addTimeout(STOP_BYE_TIMEOUT, self.reactor)
                             .addErrback(lambda _: None))
            self._end(tc, "transcoder stopping")
        if self.sa is not None:
            waits.append(self.sa.stop())
        # The workers end their calls (RTCP BYE) once their control sockets close.
        self.workers.stop()
        d = defer.DeferredList(waits)
        d.addCallback(lambda _: self.workers.wait())
        if self.ua is not None:
            ua = self.ua
            d.addCallback(lambda _: ua.stop())
        return d

    # SLP ----------------------------------------------------------------------------------------

    def attributes(self) -> str:
        codecs = [c if c.upper() != "OPUS" else "opus" for c in self.config.media.codecs]
        pairs = [f"{a}/{b}" for a in codecs for b in codecs if a != b]
        return (f"(name={self.config.slp.name}),(codec-pairs={','.join(pairs)}),"
                f"(audio-codecs={','.join(codecs)}),(max-sessions={self.config.capacity.channels // 2}),"
                f"(channels={self.config.capacity.channels}),(free-channels={self.free_channels})")

    def _register(self) -> None:
        if self.sa is None:
            return
        self._slp_last = self.reactor.seconds()
        self._registered_free = self.free_channels
        self.sa.register(self.url, SERVICE_TYPE, self.attributes(), self.config.slp.lifetime)

    def _free_changed(self) -> None:
        if self.sa is None or self._registered_free == self.free_channels:
            return
        if self._slp_update is not None and self._slp_update.active():
            return
        wait = max(0.0, self._slp_last + self.config.slp.update_interval - self.reactor.seconds())
        self._slp_update = self.reactor.callLater(wait, self._register)

    def _status_changed(self) -> None:
        if self.runtime is not None:
            self.runtime.status_changed(self)
        self._free_changed()

    # Calls --------------------------------------------------------------------------------------

    def _refuse(self, incoming: IncomingCall, status: int, reason: str,
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1
        log.info("INVITE %s refused: %d %s", incoming.request.call_id, status, reason)
        incoming.reject(status, headers=headers)

    def _incoming(self, incoming: IncomingCall) -> None:
        request = incoming.request
        host = source_host(request)
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is None or not any(address in n for n in self.networks):
            self._refuse(incoming, 403, f"{host} is not in [access] allowed_networks")
            return
        body = incoming.offer or b""
        if len(body) > self.config.capacity.max_sdp:
            self._refuse(incoming, 413, f"SDP of {len(body)} octets")
            return
        try:
            plan = parse_invocation(body, self.enabled, self.config.media.relay)
        except InvocationError as exc:
            self._refuse(incoming, exc.status, exc.reason)
            return
        retry = (("Retry-After", str(self.config.capacity.retry_after)),)
        if self.channels_in_use + CHANNELS_PER_CALL > self.config.capacity.channels:
            self._refuse(incoming, 503, "at capacity", retry)
            return
        # The call goes to the worker with the fewest calls; if even that one has no room for its
        # share, the core it runs on is full whatever the total says.
        worker = self.workers.least_loaded()
        if worker is not None and CHANNELS_PER_CALL * (len(worker.calls) + 1) > self.channels_per_worker:
            self._refuse(incoming, 503, "every worker at its share of capacity", retry)
            return
        number = next(self._numbers)
        try:
            media = CallMedia(number, self.workers, self.pool, self.url, plan.format_a, plan.format_b,
                              plan.a.destination, plan.b.destination, self.config.capacity.idle_timeout,
                              plan.a.bind, plan.b.bind)
        except OSError as exc:
            bound = [b for b in (plan.a.bind, plan.b.bind) if b]
            if bound and any(not self._local(b) for b in bound):
                self._refuse(incoming, 488, f"a=x-bind names an address not of this host ({exc})")
            else:
                self._refuse(incoming, 503, str(exc), retry)
            return
        tc = TranscoderCall(number, plan, media, host, request.call_id)
        self.calls[tc.number] = tc
        self.policy.controllers[request.call_id] = host
        self._latch(tc, plan)
        self._status_changed()
        media.opened.addTimeout(OPEN_WAIT, self.reactor)
        media.opened.addCallbacks(lambda _: self._opened(tc, incoming),
                                  lambda f: self._not_opened(tc, incoming, f.getErrorMessage()))

    def _opened(self, tc: TranscoderCall, incoming: IncomingCall) -> None:
        """The worker watches the call's sockets: answer."""
        request = incoming.request
        if tc.number not in self.calls:  # ended meanwhile (its worker died, the daemon stopping)
            self._refuse(incoming, 503, "media worker lost",
                         (("Retry-After", str(self.config.capacity.retry_after)),))
            return
        if incoming.cancelled.called:
            self._end(tc, "cancelled before the answer")
            return
        sdp = self._answer(tc)
        log.info("call %s from %s: %s (A %s, B %s)", request.call_id, tc.source, tc.plan.summary,
                 tc.plan.a.destination, tc.plan.b.destination)
        d = incoming.accept(sdp)
        d.addCallbacks(lambda call: self._answered(tc, call), lambda f: self._end(tc, f.getErrorMessage()))

    def _not_opened(self, tc: TranscoderCall, incoming: IncomingCall, why: str) -> None:
        self._end(tc, f"media not ready: {why}")
        if not incoming.cancelled.called:
            self._refuse(incoming, 503, f"media worker did not take the call in {OPEN_WAIT:.0f} s ({why})",
                         (("Retry-After", str(self.config.capacity.retry_after)),))

    def _answered(self, tc: TranscoderCall, call: Call) -> None:
        tc.call = call
        call.on_reinvite(lambda c, request: self._reinvite(tc, request))
        call.on_request("INFO", lambda c, request: self._info(tc, request))
        call.on_terminated(lambda c, reason: self._end(tc, reason))
        self._send_info(tc)

    def _reinvite(self, tc: TranscoderCall, request: Request) -> bytes:
        body = request.body or b""
        if len(body) > self.config.capacity.max_sdp:
            raise SIPError(413)
        try:
            plan = parse_invocation(body, self.enabled, self.config.media.relay)
        except InvocationError as exc:
            raise SIPError(exc.status, exc.reason) from None
        for side, bind, current in (("A", plan.a.bind, tc.media.address_a),
                                    ("B", plan.b.bind, tc.media.address_b)):
            if bind is not None and bind != current:
                try:
                    port = tc.media.rebind(side, bind)
                except OSError as exc:
                    raise SIPError(488, f"side {side} cannot move to {bind}: {exc}") from None
                log.info("call %d: side %s moved from %s to %s:%d", tc.number, side, current, bind, port)
        tc.media.update(plan.format_a, plan.format_b, plan.a.destination, plan.b.destination)
        self._latch(tc, plan, tc.plan)
        tc.plan = plan
        tc.version += 1
        log.info("call %d updated: %s (A %s, B %s)", tc.number, plan.summary, plan.a.destination,
                 plan.b.destination)
        return self._answer(tc)

    def _latch(self, tc: TranscoderCall, plan: Plan, before: Plan | None = None) -> None:
        """A side bound to an egress (a=x-bind) faces a party outside, maybe behind a NAT:
        symmetric RTP from its next first packet, never to the home. Armed at the offer/answer and
        again by a re-INVITE that moves the side or describes its party anew, not by any other."""
        for side, now, then in (("A", plan.a, before.a if before else None),
                                ("B", plan.b, before.b if before else None)):
            if now.bind is not None and (then is None or (now.bind, now.destination)
                                         != (then.bind, then.destination)):
                tc.media.latch(side, self.config.access.allowed_networks)

    def _answer(self, tc: TranscoderCall) -> bytes:
        media, default = tc.media, self.pool.address
        return answer(tc.plan, self.config.advertised_address(), media.port_a, media.port_b, tc.number,
                      tc.version, address_a=media.address_a if media.address_a != default else None,
                      address_b=media.address_b if media.address_b != default else None)

    @staticmethod
    def _local(address: str) -> bool:
        """Whether `address` is one of this host's (a socket can be bound to it)."""
        try:
            with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((address, 0))
        except OSError:
            return False
        return True

    # DTMF ---------------------------------------------------------------------------------------

    def _info(self, tc: TranscoderCall, request: Request) -> int:
        """A digit from the controller: ``Side=`` says which party sent it; played to the other."""
        if source_host(request) != tc.source:
            # Only the host that invoked us speaks for the parties (knowing the dialog is not enough).
            log.info("call %d: INFO from %s, not the controller %s: 403", tc.number, source_host(request),
                     tc.source)
            return 403
        content_type = request.headers.get("Content-Type") or ""
        if content_type.split(";", 1)[0].strip().lower() not in dtmf.INFO_TYPES:
            return 415
        try:
            digit = dtmf.parse_info(request.body or b"", content_type)
        except dtmf.DtmfError as exc:
            log.info("call %d: INFO refused: %s", tc.number, exc)
            return 400
        side = dtmf.info_side(request.body or b"")
        if side is None:
            log.info("call %d: DTMF INFO without Side=A or Side=B", tc.number)
            return 400
        to = tc.plan.format_b if side == "A" else tc.plan.format_a
        if to.dtmf_payload_type is None:
            return 488  # the other side has no telephone-event: the controller passes the INFO on
        if not tc.info_bucket.take(self.reactor.seconds()):
            tc.digits_refused += 1
            return 503
        tc.media.dtmf(side, digit.digit, digit.duration_ms)
        log.info("call %d: digit %s from %s (%d ms) played to the other side", tc.number, digit.digit, side,
                 digit.duration_ms)
        return 200

    def _digit_heard(self, number: int, side: str, digit: str, duration_ms: int) -> None:
        """Party ``side`` sent a digit as events the other cannot take: one INFO to the controller."""
        tc = self.calls.get(number)
        if tc is None:
            return
        # A digit heard before the controller's ACK (the worker has the call once it is answered)
        # waits in the outbox: `_answered` sends it.
        if len(tc.outbox) >= MAX_PENDING_INFO:
            tc.digits_refused += 1
            return
        tc.outbox.append(dtmf.relay_body(dtmf.Digit(digit, duration_ms), side))
        log.info("call %d: digit %s from %s (%d ms) sent to the controller as INFO", number, digit, side,
                 duration_ms)
        self._send_info(tc)

    def _send_info(self, tc: TranscoderCall) -> None:
        # One at a time: INFOs in flight together could arrive out of order (RFC 6086 §4.2.2).
        if tc.sending or not tc.outbox or tc.call is None or self.calls.get(tc.number) is not tc:
            return
        tc.sending = True
        body = tc.outbox.pop(0)

        def done(result: Any) -> None:
            tc.sending = False
            if not hasattr(result, "status") or result.status >= 300:
                log.info("call %d: the controller did not take a DTMF INFO (%s)", tc.number,
                         getattr(result, "status", None) or result.getErrorMessage())
            self._send_info(tc)

        tc.call.info(body, "application/dtmf-relay").addBoth(done)

    def _end(self, tc: TranscoderCall, reason: str) -> None:
        if self.calls.pop(tc.number, None) is None:
            return
        self.policy.controllers.pop(tc.call_id, None)
        # Its worker logs "call N ended" with the figures it holds (in, out, concealed, late...).
        tc.media.close(reason)
        log.debug("call %d closing (%s)", tc.number, reason)
        self._status_changed()

    def _idle_call(self, number: int) -> None:
        tc = self.calls.get(number)
        if tc is None:
            return
        if tc.call is not None:
            tc.call.bye().addErrback(lambda _: None)
        self._end(tc, "no RTP")

    def _calls_lost(self, numbers: list[int]) -> None:
        for number in numbers:
            tc = self.calls.get(number)
            if tc is None:
                continue
            if tc.call is not None:
                tc.call.bye().addErrback(lambda _: None)
            tc.media.closed = True  # its worker and sockets are gone
            self.calls.pop(number, None)
            self.policy.controllers.pop(tc.call_id, None)
            self.pool.release(tc.media.port_a)
            self.pool.release(tc.media.port_b)
            log.error("call %d ended: its media worker died", number)
        self._status_changed()
