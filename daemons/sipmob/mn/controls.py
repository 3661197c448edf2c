"""The phone's call controls: ringing, answer, reject, hang up, hold, resume, DTMF, and call events.

Responsible for:
- incoming calls without auto-answer: 180 Ringing, listed by ``calls`` with who is calling, until
  ``answer`` (the phone accepts it as it would have auto-answered), ``reject`` (603 Decline, RFC
  3261 §21.6.2: the user said no), the caller's CANCEL, or `ring_timeout` (480 Temporarily
  Unavailable, §21.4.18: nobody is there to answer);
- ``hangup``: BYE to the CN and to every device the call's media is on; on a ringing call it is
  ``reject``; on a call handed off to a device, a REFER asking the device to BYE the CN
  (`sipmob.mn.handoff.PhoneHandoff.hangup`);
- ``hold`` / ``resume``: a re-INVITE whose streams are ``sendonly`` (RFC 3264 §8.4, RFC 6337 §5.3),
  then the description from before the hold again. Only while the media is on the phone: a call
  whose media is on devices is brought back first (hold would otherwise mean re-INVITing every
  device too);
- ``dtmf``: RFC 4733 telephone-events in the audio stream when both descriptions agreed on
  telephone-event and the audio is on the phone; one SIP INFO ``application/dtmf-relay`` per
  digit otherwise (the CN then hears no tones, but reads the digits);
- an event log on the control socket: incoming calls and every change of a call's state, numbered,
  read by ``events`` as a long poll (``{"since": N, "wait": S}`` answers at once with what is newer
  than N, or when something happens, or after S seconds with nothing). `sipmob watch` loops on it.
  The log keeps the last `EVENT_LOG_SIZE` events and at most `MAX_WAITERS` pending polls, so a
  client that never reads costs nothing and many clients cost a bounded amount.

Not here: mobility (`sipmob.mn.phone`, `sipmob.mn.mobility`), the wire of the control socket
(`sipmob.mn.control`), the event payload bytes (`sipmob.media.dtmf`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from sipmob.media import dtmf
from sipmob.mn.control import CommandError
from sipmob.mn.mobility import MOBILE_NODE
from sipmob.sdp import Direction, OfferAnswerError, SDPParseError, SessionDescription, codecs_of, parse
from sipmob.service.sipua import IncomingCall, SIPError

if TYPE_CHECKING:
    from sipmob.mn.phone import Phone, PhoneCall

log = logging.getLogger("sipmob.mn")

EVENT_LOG_SIZE = 256
MAX_WAITERS = 32
MAX_WAIT = 60.0  # seconds a poll may ask to wait
REJECT_STATUS = 603
RING_TIMEOUT_STATUS = 480
HANGUP_WAIT = 2.0  # seconds we wait for the BYE's answer before saying it is done
COMMANDS = frozenset({"answer", "reject", "hangup", "hold", "resume", "dtmf", "events", "calls"})


class EventLog:
    """Numbered events; `poll` answers with those after a number, waiting for one if none yet."""

    def __init__(self, reactor: Any, size: int = EVENT_LOG_SIZE, max_waiters: int = MAX_WAITERS) -> None:
        self.reactor = reactor
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.next = 1
        self.max_waiters = max_waiters
        self._waiters: list[tuple[int, defer.Deferred[Any], Any]] = []

    def announce(self, kind: str, **fields: Any) -> None:
        event = {"seq": self.next, "time": round(time.time(), 3), "event": kind, **fields}
        self.next += 1
        self.events.append(event)
        waiters, self._waiters = self._waiters, []
        for since, d, timer in waiters:
            if timer.active():
                timer.cancel()
            d.callback(self._after(since))

    def _after(self, since: int) -> dict[str, Any]:
        return {"events": [e for e in self.events if e["seq"] > since], "next": self.next - 1}

    def poll(self, since: int | None, wait: float) -> Any:
        """Events after ``since`` (None: from now on), waiting up to ``wait`` s for the first."""
        # A number from before the phone restarted (larger than any now) means "from now on" too.
        since = self.next - 1 if since is None or since < 0 or since >= self.next else since
        found = self._after(since)
        if found["events"] or wait <= 0:
            return found
        if len(self._waiters) >= self.max_waiters:
            raise CommandError(f"too many watchers (at most {self.max_waiters})")
        d: defer.Deferred[Any] = defer.Deferred()
        entry: list[Any] = [since, d]

        def expired() -> None:
            self._waiters = [w for w in self._waiters if w[1] is not d]
            d.callback(self._after(since))

        entry.append(self.reactor.callLater(min(wait, MAX_WAIT), expired))
        self._waiters.append((entry[0], entry[1], entry[2]))
        return d

    def close(self) -> None:
        waiters, self._waiters = self._waiters, []
        for since, d, timer in waiters:
            if timer.active():
                timer.cancel()
            d.callback(self._after(since))


@dataclasses.dataclass
class RingingCall:
    id: str
    incoming: IncomingCall
    caller: str  # the From URI
    display: str  # the From display name, or ""
    since: float
    timer: Any = None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "peer": self.caller, "display": self.display, "state": "ringing",
                "ringing_for": round(time.time() - self.since, 1), "streams": [], "devices": [],
                "sending": False, "rtp_sent": 0, "rtp_received": 0, "video_received": 0}


class CallControls:
    """The commands in `COMMANDS`, for the phone's control socket."""

    def __init__(self, phone: Phone, reactor: Any, ring_timeout: float = 60.0) -> None:
        self.phone = phone
        self.reactor = reactor
        self.ring_timeout = ring_timeout
        self.log = EventLog(reactor)
        self.ringing: dict[str, RingingCall] = {}
        self.held: dict[str, SessionDescription] = {}  # call id -> our description before the hold
        self.since: dict[str, float] = {}  # call id -> when it was established (wall clock)

    # Hooks the phone calls -----------------------------------------------------------------------

    def ring(self, incoming: IncomingCall, cid: str) -> None:
        """An incoming call nobody answers automatically: ring until answered, refused or given up."""
        caller = incoming.request.from_
        ringing = RingingCall(cid, incoming, str(caller.uri), caller.display_name or "", time.time())
        self.ringing[cid] = ringing
        ringing.timer = self.reactor.callLater(self.ring_timeout, self._ring_timed_out, cid)
        incoming.cancelled.addCallback(lambda _: self._ring_ended(cid, "cancelled"))
        incoming.ringing()
        log.info("call %s: %s is calling", cid, ringing.caller)
        self.log.announce("incoming", call=cid, peer=ringing.caller, display=ringing.display)

    def established(self, pc: PhoneCall) -> None:
        self.since[pc.id] = time.time()
        self.log.announce("state", call=pc.id, peer=pc.peer, state="established")

    def ended(self, pc: PhoneCall, reason: str) -> None:
        self.held.pop(pc.id, None)
        self.since.pop(pc.id, None)
        self.log.announce("state", call=pc.id, peer=pc.peer, state="ended", reason=reason)

    def stop(self) -> None:
        for cid in list(self.ringing):
            ringing = self.ringing.pop(cid)
            self._cancel_timer(ringing)
            ringing.incoming.reject(RING_TIMEOUT_STATUS)
        self.log.close()

    # Ringing -------------------------------------------------------------------------------------

    @staticmethod
    def _cancel_timer(ringing: RingingCall) -> None:
        if ringing.timer is not None and ringing.timer.active():
            ringing.timer.cancel()

    def _ring_timed_out(self, cid: str) -> None:
        ringing = self.ringing.pop(cid, None)
        if ringing is not None:
            ringing.incoming.reject(RING_TIMEOUT_STATUS)
            log.info("call %s from %s not answered in %g s", cid, ringing.caller, self.ring_timeout)
            self.log.announce("state", call=cid, peer=ringing.caller, state="ended", reason="not answered")

    def _ring_ended(self, cid: str, reason: str) -> None:
        ringing = self.ringing.pop(cid, None)
        if ringing is not None:
            self._cancel_timer(ringing)
            log.info("call %s from %s %s", cid, ringing.caller, reason)
            self.log.announce("state", call=cid, peer=ringing.caller, state="ended", reason=reason)

    def _ringing_call(self, args: Mapping[str, Any]) -> RingingCall:
        cid = str(args.get("call", ""))
        ringing = self.ringing.get(cid)
        if ringing is None:
            if cid in self.phone.calls:
                raise CommandError(f"call {cid} is answered already")
            raise CommandError(f"no ringing call {cid!r} (ringing: {', '.join(self.ringing) or 'none'})")
        return ringing

    @defer.inlineCallbacks
    def answer(self, args: Mapping[str, Any]) -> Any:
        ringing = self._ringing_call(args)
        del self.ringing[ringing.id]
        self._cancel_timer(ringing)
        try:
            pc = yield self.phone.accept_incoming(ringing.incoming, ringing.id)
        except CommandError:
            self.log.announce("state", call=ringing.id, peer=ringing.caller, state="ended",
                              reason="refused")
            raise
        except SIPError as exc:
            self.log.announce("state", call=ringing.id, peer=ringing.caller, state="ended",
                              reason=f"{exc.status} {exc.reason}")
            raise CommandError(f"call {ringing.id} ended before it was answered: {exc.reason}") from None
        return f"call {pc.id} with {pc.peer} answered"

    def reject(self, args: Mapping[str, Any]) -> str:
        ringing = self._ringing_call(args)
        del self.ringing[ringing.id]
        self._cancel_timer(ringing)
        ringing.incoming.reject(REJECT_STATUS)
        log.info("call %s from %s rejected", ringing.id, ringing.caller)
        self.log.announce("state", call=ringing.id, peer=ringing.caller, state="ended", reason="rejected")
        return f"call {ringing.id} from {ringing.caller} rejected"

    # Established calls ---------------------------------------------------------------------------

    def _call(self, args: Mapping[str, Any]) -> PhoneCall:
        cid = str(args.get("call", ""))
        pc = self.phone.calls.get(cid)
        if pc is None:
            raise CommandError(f"no call {cid!r} (calls: {', '.join(self.phone.calls) or 'none'})")
        if pc.busy:
            raise CommandError(f"call {cid} is busy with another change; try again when it is done")
        return pc

    @defer.inlineCallbacks
    def hangup(self, args: Mapping[str, Any]) -> Any:
        if str(args.get("call", "")) in self.ringing:
            return self.reject(args)
        if str(args.get("call", "")) in self.phone.handoff.handed_off:
            return (yield self.phone.handoff.hangup(args))  # we are not in it: the device ends it
        pc = self._call(args)
        byes = [call.bye() for call in list(pc.device_calls.values())]  # a BYE may end one at once
        pc.device_calls.clear()
        byes.append(pc.call.bye())
        if self.phone.calls.get(pc.id) is pc:
            self.phone.end_call(pc, "hung up")
        waiting = defer.DeferredList(byes, consumeErrors=True)
        waiting.addTimeout(HANGUP_WAIT, self.reactor)
        try:
            yield waiting
        except defer.TimeoutError:
            return f"call {pc.id} hung up (no answer to the BYE yet)"
        return f"call {pc.id} hung up"

    def _media_here(self, pc: PhoneCall) -> None:
        away = [pc.names.get(str(loc), str(loc)) for loc in pc.layout
                if loc is not None and loc != MOBILE_NODE]
        if away:
            raise CommandError(f"call {pc.id} has media on {', '.join(sorted(set(away)))}: "
                               "bring it back first")

    @defer.inlineCallbacks
    def _reoffer(self, pc: PhoneCall, offer: SessionDescription, what: str) -> Any:
        pc.busy = True
        try:
            response = yield pc.call.reinvite(pc.oa.create_offer(offer).to_bytes())
            theirs = parse(response.body or b"")
            pc.oa.receive_answer(theirs)
        except SIPError as exc:
            pc.oa.rollback()
            raise CommandError(f"{what} of call {pc.id} refused by {pc.peer}: {exc.status} {exc.reason}") \
                from None
        except (SDPParseError, OfferAnswerError) as exc:
            raise CommandError(f"{what} of call {pc.id}: unusable answer from {pc.peer}: {exc}") from None
        finally:
            pc.busy = False
        pc.cn_sdp = theirs
        return theirs

    @defer.inlineCallbacks
    def hold(self, args: Mapping[str, Any]) -> Any:
        pc = self._call(args)
        if pc.id in self.held:
            raise CommandError(f"call {pc.id} is on hold already")
        self._media_here(pc)
        before = pc.oa.local
        assert before is not None
        offer = before.materialise_directions()
        for i, m in enumerate(offer.media):
            if m.port:
                offer = offer.with_direction(m.direction.intersect(Direction.SENDONLY), i)
        yield self._reoffer(pc, offer, "hold")
        self.held[pc.id] = before
        pc.rtp.stop_sending()  # sendonly allows silence, and we have no music to play
        log.info("call %s with %s on hold", pc.id, pc.peer)
        self.log.announce("state", call=pc.id, peer=pc.peer, state="held")
        return f"call {pc.id} on hold"

    @defer.inlineCallbacks
    def resume(self, args: Mapping[str, Any]) -> Any:
        pc = self._call(args)
        before = self.held.get(pc.id)
        if before is None:
            raise CommandError(f"call {pc.id} is not on hold")
        yield self._reoffer(pc, before, "resume")
        del self.held[pc.id]
        self.phone.start_media(pc)
        log.info("call %s with %s resumed", pc.id, pc.peer)
        self.log.announce("state", call=pc.id, peer=pc.peer, state="resumed")
        return f"call {pc.id} resumed"

    # DTMF ----------------------------------------------------------------------------------------

    def telephone_event_pt(self, pc: PhoneCall) -> int | None:
        """The CN's payload type for telephone-event when both sides agreed on it and our audio is
        on the phone and flowing; None means SIP INFO."""
        index = self.phone.audio_index(pc)
        local = pc.oa.local
        if (index is None or local is None or index >= len(pc.cn_sdp.media) or pc.id in self.held
                or pc.layout[index:index + 1] != (MOBILE_NODE,) or not pc.rtp.sending):
            return None
        ours = any(c.encoding.lower() == "telephone-event" for _, c in codecs_of(local.media[index]))
        theirs = [pt for pt, c in codecs_of(pc.cn_sdp.media[index])
                  if c.encoding.lower() == "telephone-event" and c.clock_rate == 8000]
        # Events ride in the audio's stream on its clock (RFC 4733 §2.1) and ours are 8000 Hz
        # events: over Opus (48 kHz, RFC 7587) the digits go as SIP INFO instead.
        audio = next((c for _, c in codecs_of(pc.cn_sdp.media[index]) if not c.auxiliary), None)
        if audio is not None and audio.clock_rate != 8000:
            return None
        return theirs[0] if ours and theirs else None

    @defer.inlineCallbacks
    def send_dtmf(self, args: Mapping[str, Any]) -> Any:
        pc = self._call(args)
        try:
            digits = dtmf.check_digits(str(args.get("digits", "")))
        except dtmf.DtmfError as exc:
            raise CommandError(str(exc)) from None
        pt = self.telephone_event_pt(pc)
        pc.busy = True
        try:
            if pt is not None:
                yield self._rtp_events(pc, digits, pt)
                method = "rfc4733"
            else:
                for digit in digits:
                    try:
                        response = yield pc.call.info(dtmf.info_body(digit), "application/dtmf-relay")
                    except SIPError as exc:
                        raise CommandError(f"INFO to {pc.peer} failed: {exc.status} {exc.reason}") from None
                    if response.status >= 300:
                        raise CommandError(f"{pc.peer} refused the INFO for {digit}: "
                                           f"{response.status} {response.reason}")
                method = "info"
        finally:
            pc.busy = False
        log.info("call %s: sent DTMF %s (%s)", pc.id, digits, method)
        self.log.announce("dtmf", call=pc.id, peer=pc.peer, digits=digits, method=method)
        return f"call {pc.id}: sent {digits} as {'RFC 4733 events' if method == 'rfc4733' else 'SIP INFO'}"

    def _rtp_events(self, pc: PhoneCall, digits: str, pt: int) -> defer.Deferred[None]:
        """Pause our audio, send the events paced on the reactor, resume the audio (§2.5.1: the
        events replace the audio while a digit sounds)."""
        base = pc.rtp.stream_timestamp() or 0
        schedule = dtmf.event_schedule(digits)
        pc.rtp.stop_sending()
        done: defer.Deferred[None] = defer.Deferred()
        start = self.reactor.seconds()

        def send(i: int) -> None:
            if self.phone.calls.get(pc.id) is not pc:  # hung up meanwhile
                done.callback(None)
                return
            packet = schedule[i]
            try:
                pc.rtp.send_in_stream(pt, packet.payload, (base + packet.timestamp_offset) % 2**32,
                                      packet.marker)
            except ValueError:
                pass
            if i + 1 < len(schedule):
                delay = start + schedule[i + 1].at - self.reactor.seconds()
                self.reactor.callLater(max(0.0, delay), send, i + 1)
            else:
                self.phone.start_media(pc)
                done.callback(None)

        send(0)
        return done

    # The socket ----------------------------------------------------------------------------------

    def calls(self) -> list[dict[str, Any]]:
        out = [r.describe() for r in self.ringing.values()]
        for pc in self.phone.calls.values():
            described = pc.describe()
            described["held"] = pc.id in self.held
            described["since"] = round(self.since.get(pc.id, time.time()), 1)
            if pc.id in self.held:
                described["state"] = "held"
            out.append(described)
        return out

    def handle(self, command: str, args: Mapping[str, Any]) -> Any:
        if command == "calls":
            return self.calls()
        if command == "events":
            since = args.get("since")
            wait = args.get("wait", 0)
            if (since is not None and not isinstance(since, int)) or not isinstance(wait, int | float):
                raise CommandError("events: 'since' is an event number, 'wait' seconds")
            return self.log.poll(since, float(wait))
        if command == "answer":
            return self.answer(args)
        if command == "reject":
            return self.reject(args)
        if command == "hangup":
            return self.hangup(args)
        if command == "hold":
            return self.hold(args)
        if command == "resume":
            return self.resume(args)
        if command == "dtmf":
            return self.send_dtmf(args)
        raise CommandError(f"unknown command {command!r}")
