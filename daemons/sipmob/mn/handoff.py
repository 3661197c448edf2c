"""Session Handoff mode (draft §5.3, Figs. 4 and 5): a call moves by REFER, not by re-INVITE.

Responsible for, on the phone's side: choosing the mode of a transfer (`choose_mode`: ``--mode``,
else ``[calls] mode``, where ``auto`` means handoff for a device registered ``mobility=enhanced``);
the transfer (Fig. 4: REFER outside a dialog to the device, ``Refer-To: <CN?Replaces=our dialog>``,
``Referred-By: us``; the device INVITEs the CN with Replaces and the CN's BYE ends our call, which
stays listed as "handed off to <device>"); the retrieval (Fig. 5: the nested REFER, ``Refer-To:
<us;method=REFER?Refer-To=<CN>>``; the device REFERs us back, we INVITE the CN with Replaces and
Referred-By, and the call gets its old number again); and the rule for an INVITE with Replaces to
us (RFC 3891 §6 leaves it to us: `sipmob.sip.policy` decides, in the core). A handed-off call
is written to the phone's call store (`sipmob.mn.store`) once the device has it, and removed when
it is hung up or retrieved: a phone killed and restarted still lists it and can hang it up.

Not here: the device's half (`sipmob.mn.device`), SIP itself (`sipmob.service.sipua`), media, MNC
mode (`sipmob.mn.mobility`, `sipmob.mn.executor`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import sqlite3
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from sipmob.mn import devices as discovery
from sipmob.mn.control import CommandError
from sipmob.service.sipua import IncomingRequest, ReferProgress, SIPError
from sipmob.sip.headers import Replaces
from sipmob.sip.ua import Referred, referred
from sipmob.sip.uri import URI, NameAddr, SIPParseError

if TYPE_CHECKING:
    from sipmob.mn.phone import Phone, PhoneCall

log = logging.getLogger("sipmob.mn.handoff")

REPLACED_WAIT = 2.0  # seconds the CN has to end our dialog once the device's INVITE succeeded


class Mode(enum.StrEnum):
    AUTO = "auto"
    MNC = "mnc"
    HANDOFF = "handoff"


def choose_mode(requested: str | None, configured: str, device: discovery.Found) -> Mode:
    """The mode a transfer to `device` uses: the command's, else the configuration's; ``auto`` is
    handoff only for a device that said it is mobility-enhanced (it acts on REFER)."""
    mode = Mode(requested or configured)
    if mode is not Mode.AUTO:
        return mode
    mobility = {v.lower() for v in device.attributes.get("mobility", ())}
    return Mode.HANDOFF if "enhanced" in mobility else Mode.MNC


def same_party(a: URI, b: URI) -> bool:
    """Whether two SIP URIs name the same party: user and host (ports and parameters aside, since
    an AOR has no port while the URI a device registered in SLP has one)."""
    return (a.user or "") == (b.user or "") and a.host.lower().strip("[]") == b.host.lower().strip("[]")


@dataclasses.dataclass(slots=True)
class HandedOff:
    """A call of ours that a device took over; `retrieve` brings it back under the same number."""

    id: str
    peer: str  # the CN as the user knows it
    cn_target: URI  # the CN's Contact: where the device's INVITE (and ours, on retrieval) goes
    device: str  # the device's name
    device_uri: URI
    replaced: Replaces | None = None  # our dialog with the CN, which the device's replaced
    members: tuple[str, ...] = ()  # a virtual device's members (its SLP ``members`` attribute)
    short: str = ""  # its short name, as ``sipmob devices`` lists it (and ``--to`` takes it)
    retrieving: defer.Deferred[str] | None = None
    nested: int | None = None  # the core's handle of our nested REFER while it lasts
    ending: bool = False

    def to_record(self) -> dict[str, Any]:
        r = self.replaced
        return {"peer": self.peer, "cn_target": str(self.cn_target), "device": self.device,
                "device_uri": str(self.device_uri), "replaced": str(r) if r is not None else None,
                "members": list(self.members), "short": self.short}

    @classmethod
    def from_record(cls, call_id: str, data: Mapping[str, Any]) -> HandedOff:
        replaced = data.get("replaced")
        return cls(call_id, str(data["peer"]), URI.parse(str(data["cn_target"])), str(data["device"]),
                   URI.parse(str(data["device_uri"])), Replaces.parse(replaced) if replaced else None,
                   tuple(str(m) for m in data.get("members") or ()), str(data.get("short") or ""))

    def describe(self) -> dict[str, Any]:
        state = f"handed off to {self.device}"
        if self.members:
            state += f" ({', '.join(self.members)})"
        return {"id": self.id, "peer": self.peer, "state": state, "handed_off_to": self.short or self.device,
                "members": list(self.members), "streams": [], "devices": [str(self.device_uri)],
                "sending": False}


class PhoneHandoff:
    """The phone's half of SH mode; the phone owns one and routes commands and REFERs to it."""

    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.handed_off: dict[str, HandedOff] = {}

    @property
    def timeout(self) -> float:
        return self.phone.config.calls.device_timeout

    def describe(self) -> list[dict[str, Any]]:
        return [h.describe() for h in self.handed_off.values()]

    # On disk ---------------------------------------------------------------------------------------

    def restore(self) -> None:
        """The calls a previous run handed off, from the phone's store (at start, before any new
        call takes a number)."""
        store = self.phone.store
        if store is None:
            return
        try:
            rows = store.handed_off()
        except sqlite3.Error as exc:
            log.warning("cannot read handed-off calls from %s: %s", store.path, exc)
            return
        for call_id, data in rows:
            try:
                record = HandedOff.from_record(call_id, data)
            except (KeyError, TypeError, ValueError, SIPParseError) as exc:
                log.warning("dropping handed-off call %s: %s", call_id, exc)
                self._drop(call_id)
                continue
            self.handed_off[call_id] = record
            if call_id.isdigit():
                self.phone._next_id = max(self.phone._next_id, int(call_id) + 1)
            log.info("call %s with %s: still handed off to %s", call_id, record.peer, record.device)

    def _save(self, record: HandedOff) -> None:
        store = self.phone.store
        if store is None:
            return
        try:
            store.put_handed_off(record.id, record.to_record())
        except sqlite3.Error as exc:
            log.warning("call %s: cannot write %s: %s", record.id, store.path, exc)

    def _drop(self, call_id: str) -> None:
        store = self.phone.store
        if store is None:
            return
        try:
            store.delete_handed_off(call_id)
        except sqlite3.Error as exc:
            log.warning("call %s: cannot remove it from %s: %s", call_id, store.path, exc)

    # Transfer (Fig. 4) ---------------------------------------------------------------------------

    @defer.inlineCallbacks
    def transfer(self, pc: PhoneCall, device: discovery.Found) -> Any:
        ua = self.phone.ua
        dialog = pc.call.dialog
        # the Replaces the device sends names the dialog as the CN sees it (RFC 3891 §3)
        replaces = Replaces(dialog.call_id, to_tag=dialog.remote_tag, from_tag=dialog.local_tag)
        record = HandedOff(pc.id, pc.peer, dialog.remote_target, device.name, URI.parse(device.uri),
                           replaces, tuple(device.attributes.get("members", ())), device.short)
        pc.busy = True
        note = ""
        try:
            try:
                progress: ReferProgress = yield within(ua.refer(
                    record.device_uri, dialog.remote_target, replaces=replaces,
                    referred_by=str(NameAddr(None, self.phone.ua_aor))), self.timeout, self.phone.reactor)
            except defer.TimeoutError:
                raise CommandError(f"{device.name} did not answer our REFER within {self.timeout:g} s: "
                                   "it does not take calls handed off by REFER outside a dialog "
                                   "(use --mode mnc)") from None
            log.info("call %s: %s accepted the REFER (%d)", pc.id, device.name, progress.response.status)
            final = yield within(progress.final, self.timeout, self.phone.reactor)
            if final >= 300:
                raise CommandError(f"{device.name} could not take the call over: its INVITE to "
                                   f"{pc.peer} got {final}")
            # Fig. 4: the CN ends our dialog once the device's has replaced it; a CN that takes
            # the device's INVITE as a new call (it ignores Replaces) keeps ours: we end it
            try:
                yield within(pc.call.terminated, REPLACED_WAIT, self.phone.reactor)
            except defer.TimeoutError:
                log.info("call %s: %s kept our dialog after the device's INVITE with Replaces: "
                         "ending it ourselves", pc.id, pc.peer)
                note = " (the other party ignored Replaces: we ended our dialog with it)"
                yield pc.call.bye()
        except SIPError as exc:
            raise CommandError(f"{device.name} refused the handoff: {exc.status} {exc.reason}") from None
        except defer.TimeoutError:
            raise CommandError(f"{device.name} did not finish the handoff within "
                               f"{self.timeout:g} s") from None
        finally:
            pc.busy = False
        self.handed_off[pc.id] = record
        self._save(record)
        # each step as the device's NOTIFYs reported it (RFC 3515 §2.4.5)
        steps = ", ".join(str(s) for s in progress.statuses)
        log.info("call %s with %s handed off to %s (REFER %d, NOTIFY %s)", pc.id, pc.peer, device.name,
                 progress.response.status, steps)
        return (f"call {pc.id} with {pc.peer} handed off to {device.name}{note} "
                f"[REFER {progress.response.status}, NOTIFY {steps}]")

    # Retrieval (Fig. 5) --------------------------------------------------------------------------

    @defer.inlineCallbacks
    def retrieve(self, args: Mapping[str, Any]) -> Any:
        cid = str(args.get("call", ""))
        record = self.handed_off.get(cid)
        if record is None:
            raise CommandError(f"call {cid!r} is not handed off")
        if record.retrieving is not None:
            raise CommandError(f"call {cid} is being retrieved already")
        ua = self.phone.ua
        assert ua.contact is not None
        inner = NameAddr(None, record.cn_target)
        nested = ua.contact.replace(params=(*ua.contact.params, ("method", "REFER")),
                                    headers=(("Refer-To", str(inner)),))
        done: defer.Deferred[str] = defer.Deferred()
        record.retrieving = done
        try:
            try:
                progress: ReferProgress = yield within(ua.refer(
                    record.device_uri, nested, referred_by=str(NameAddr(None, self.phone.ua_aor))),
                    self.timeout, self.phone.reactor)
            except defer.TimeoutError:
                raise CommandError(f"{record.device} did not answer the nested REFER within "
                                   f"{self.timeout:g} s (it may not support nested REFER, draft Fig. 5)"
                                   ) from None
            record.nested = progress.handle
            final = yield within(progress.final, self.timeout, self.phone.reactor)
            if final >= 300 and not done.called:
                raise CommandError(f"{record.device} did not hand call {cid} back: its REFER to us "
                                   f"got {final} (does it support nested REFER, draft Fig. 5?)")
            result = yield within(done, self.timeout, self.phone.reactor)
        except SIPError as exc:
            raise CommandError(f"{record.device} refused the nested REFER: {exc.status} {exc.reason} "
                               "(it may not support nested REFER, draft Fig. 5)") from None
        except defer.TimeoutError:
            raise CommandError(f"{record.device} did not hand call {cid} back within "
                               f"{self.timeout:g} s") from None
        finally:
            record.retrieving = None
            record.nested = None
        return result

    # Hanging up a handed-off call -----------------------------------------------------------------

    @defer.inlineCallbacks
    def hangup(self, args: Mapping[str, Any]) -> Any:
        """End a call we are no longer in: REFER the device with ``Refer-To: <CN;method=BYE>`` and
        ``Target-Dialog`` naming our old dialog with the CN (RFC 4538: knowing it is what shows
        we were that call's party); the device BYEs the CN (an MDSM every member too) and its
        NOTIFY says how the CN answered."""
        cid = str(args.get("call", ""))
        record = self.handed_off.get(cid)
        if record is None:
            raise CommandError(f"call {cid!r} is not handed off")
        if record.retrieving is not None or record.ending:
            raise CommandError(f"call {cid} is busy with another change; try again when it is done")
        if record.replaced is None:
            raise CommandError(f"call {cid}: which dialog {record.device} holds is not known here")
        r = record.replaced
        target_dialog = f"{r.call_id};local-tag={r.from_tag};remote-tag={r.to_tag}"
        bye = record.cn_target.replace(params=(*record.cn_target.params, ("method", "BYE")), headers=())
        record.ending = True
        try:
            try:
                progress: ReferProgress = yield within(self.phone.ua.refer(
                    record.device_uri, bye, referred_by=str(NameAddr(None, self.phone.ua_aor)),
                    headers=[("Target-Dialog", target_dialog)]), self.timeout, self.phone.reactor)
                final = yield within(progress.final, self.timeout, self.phone.reactor)
            except SIPError as exc:
                if exc.status != 481:
                    raise CommandError(f"{record.device} refused to end call {cid}: {exc.status} "
                                       f"{exc.reason}") from None
                final = 481  # it knows no such call: it has ended already
            except defer.TimeoutError:
                raise CommandError(f"{record.device} did not end call {cid} within {self.timeout:g} s") \
                    from None
        finally:
            record.ending = False
        self.handed_off.pop(cid, None)
        self._drop(cid)
        self.phone.controls.log.announce("state", call=cid, peer=record.peer, state="ended", reason="hung up")
        log.info("call %s with %s (handed off to %s) hung up: the BYE to the other party got %d", cid,
                 record.peer, record.device, final)
        if final == 481:
            return f"call {cid} with {record.peer} had ended already"
        if final >= 300:
            return f"call {cid} hung up by {record.device} (the other party answered its BYE {final})"
        return f"call {cid} hung up by {record.device}"

    def _names_nested(self, record: HandedOff, target_dialog: str) -> bool:
        dialog = self.phone.ua.machine.dialog(record.nested) if record.nested is not None else None
        return dialog is not None and names_dialog(target_dialog, dialog.call_id,
                                                   {dialog.local_tag, dialog.remote_tag})

    def on_refer(self, incoming: IncomingRequest, what: Referred) -> bool:
        """A REFER outside a dialog: ours to act on when a device we handed a call to sends it
        back (Fig. 5, second REFER). False: not about any call we handed off."""
        sender = incoming.request.from_.uri
        target_dialog = incoming.request.headers.get("Target-Dialog")
        record = next((r for r in self.handed_off.values()
                       if r.retrieving is not None and same_party(r.device_uri, sender)
                       and what.method == "INVITE" and what.replaces is not None
                       and same_party(r.cn_target, what.target)
                       and (target_dialog is None or self._names_nested(r, target_dialog))), None)
        if record is None:
            return False
        accepted = incoming.accept_refer()
        done = record.retrieving
        assert done is not None

        def established(pc: PhoneCall) -> None:
            self.handed_off.pop(record.id, None)
            self._drop(record.id)
            self.phone.renumber(pc.id, record.id)
            accepted.notify(200)
            log.info("call %s with %s retrieved from %s", record.id, record.peer, record.device)
            if not done.called:
                done.callback(f"call {record.id} with {record.peer} retrieved from {record.device}")

        def failed(failure: Any) -> None:
            exc = failure.value
            status = exc.status if isinstance(exc, SIPError) else 500
            accepted.notify(status if status >= 300 else 500)
            if not done.called:
                done.errback(CommandError(f"our INVITE to {record.peer} failed: {exc}"))

        d = self.phone.place_call(str(what.target), headers=what.headers)
        d.addCallbacks(established, failed)
        return True


def names_dialog(value: str, call_id: str, tags: set[str]) -> bool:
    """Whether a Target-Dialog value (RFC 4538 §7) names the dialog `call_id` with both `tags`
    (either way round: which side's is local depends on who writes it)."""
    callid, *params = [p.strip() for p in value.split(";")]
    named = {v.strip() for n, _, v in (p.partition("=") for p in params)
             if n.strip().lower() in ("local-tag", "remote-tag")}
    return callid == call_id and named == tags


def parse_refer(incoming: IncomingRequest) -> Referred:
    try:
        return referred(incoming.request)
    except (SIPParseError, ValueError) as exc:
        raise SIPError(400, f"Bad Refer-To: {exc}") from None


def within(d: defer.Deferred[Any], seconds: float, reactor: Any) -> defer.Deferred[Any]:
    """`d`, or TimeoutError after `seconds` (without cancelling `d`, which others may hold)."""
    out: defer.Deferred[Any] = defer.Deferred()
    def expire() -> None:
        if not out.called:
            out.errback(defer.TimeoutError())

    timer = reactor.callLater(seconds, expire)

    def fire(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback(result)
        return result

    def fail(failure: Any) -> Any:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.errback(failure)
        return None

    d.addCallbacks(fire, fail)
    return out
