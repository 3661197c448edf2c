"""`sipmob-transcoder`'s application: who may invoke it, admission, calls and their media, SLP.

An INVITE is handled in this order, each step before any cost is taken on:

1. **Who**: the request's source host (its top Via's ``received``, or the sent-by the transport
   found equal to the source, RFC 3261 §18.2.1) must be in ``[access] allowed_networks``; else 403.
2. **Cost of the request**: an SDP body over ``[capacity] max_sdp`` octets gets 413; a body that is
   not the RFC 4117 "SDP A + SDP B" of `sipmob.transcoder.invocation` gets its 400/488.
3. **Admission**: a call takes two channels (one per direction). Over ``[capacity] channels`` the
   answer is 503 with ``Retry-After`` (RFC 3261 §21.5.4), so the calls already running keep their
   share of the core; so is a port range with no pair left.
4. Two port pairs are bound, the channels built, and the 200 carries "SDP TA + SDP TB".

A re-INVITE in the call with the same two lines updates where each party is and, if the controller
changed a party's codec, the conversion (the output streams carry on). BYE, or no RTP from either
party for ``[capacity] idle_timeout`` seconds, ends the call and frees its channels.

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
from typing import Any

from twisted.internet import defer

from sipmob.service.config import ConfigError, ConfigProblem, split_host_port
from sipmob.service.daemon import Runtime
from sipmob.service.sipua import Call, IncomingCall, SIPError, UserAgent
from sipmob.sip.message import Request
from sipmob.sip.session_timer import Policy as SessionTimerPolicy
from sipmob.transcoder.config import TranscoderConfig
from sipmob.transcoder.invocation import InvocationError, Plan, answer, parse_invocation
from sipmob.transcoder.media import CallMedia, PortPool, Workers, default_workers

log = logging.getLogger("sipmob.transcoder")

SERVICE_TYPE = "service:sip-transcoder"
CHANNELS_PER_CALL = 2
STOP_BYE_TIMEOUT = 2.0


def source_host(request: Request) -> str:
    """Where a request came from: the transport puts the source in ``received`` when it differs
    from the sent-by (RFC 3261 §18.2.1), so the sent-by is the source when ``received`` is absent."""
    via = request.top_via
    return via.received or via.host


class TranscoderCall:
    """One invocation: its SIP call (once answered), its plan and media."""

    def __init__(self, number: int, plan: Plan, media: CallMedia, source: str) -> None:
        self.number = number
        self.plan = plan
        self.media = media
        self.source = source
        self.call: Call | None = None
        self.version = 1


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
                               self._idle_call, self._calls_lost, gather=config.media.gather_ms / 1000)
        self.calls: dict[int, TranscoderCall] = {}
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
                            session_timer=SessionTimerPolicy())
        self.ua.on_incoming_call(self._incoming)
        # SIP is served (OPTIONS, INVITE) only once the workers can take calls.
        ua = self.ua
        d = workers_ready.addCallback(lambda _: ua.start())

        def bound(addresses: list[Any]) -> None:
            port = addresses[0].port
            host = self.config.advertised_address()
            self.url = f"sip:transcoder@{f'[{host}]' if ':' in host else host}:{port}"
            if self.config.slp.enabled:
                from sipmob.service.slp import SLPServiceAgent

                slp = self.config.slp
                self.sa = SLPServiceAgent(self.reactor, das=[split_host_port(d, 427) for d in slp.das],
                                          scopes=slp.scopes)
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
                              plan.a.destination, plan.b.destination, self.config.capacity.idle_timeout)
        except OSError as exc:
            self._refuse(incoming, 503, str(exc), retry)
            return
        tc = TranscoderCall(number, plan, media, host)
        self.calls[tc.number] = tc
        self._status_changed()
        sdp = answer(plan, self.config.advertised_address(), media.port_a, media.port_b, tc.number)
        log.info("call %s from %s: %s (A %s, B %s)", request.call_id, host, plan.summary,
                 plan.a.destination, plan.b.destination)
        d = incoming.accept(sdp)
        d.addCallbacks(lambda call: self._answered(tc, call), lambda f: self._end(tc, f.getErrorMessage()))

    def _answered(self, tc: TranscoderCall, call: Call) -> None:
        tc.call = call
        call.on_reinvite(lambda c, request: self._reinvite(tc, request))
        call.on_terminated(lambda c, reason: self._end(tc, reason))

    def _reinvite(self, tc: TranscoderCall, request: Request) -> bytes:
        body = request.body or b""
        if len(body) > self.config.capacity.max_sdp:
            raise SIPError(413)
        try:
            plan = parse_invocation(body, self.enabled, self.config.media.relay)
        except InvocationError as exc:
            raise SIPError(exc.status, exc.reason) from None
        tc.media.update(plan.format_a, plan.format_b, plan.a.destination, plan.b.destination)
        tc.plan = plan
        tc.version += 1
        log.info("call %d updated: %s (A %s, B %s)", tc.number, plan.summary, plan.a.destination,
                 plan.b.destination)
        return answer(plan, self.config.advertised_address(), tc.media.port_a, tc.media.port_b, tc.number,
                      tc.version)

    def _end(self, tc: TranscoderCall, reason: str) -> None:
        if self.calls.pop(tc.number, None) is None:
            return
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
            self.pool.release(tc.media.port_a)
            self.pool.release(tc.media.port_b)
            log.error("call %d ended: its media worker died", number)
        self._status_changed()
