"""`sipmob phone` as a mobility-enhanced device of the home (draft §5.3, Figs. 4 and 5).

Responsible for: the device's SLP registration (``service:sip-device`` with ``mobility=enhanced``, its
name, room, media and codecs from ``mn.toml``, kept alive by `SLPServiceAgent`, under the LAN
address or moved with the contact, see `DeviceRole.url`); who may hand it a
call (`DeviceRole.allowed`: the ``[device] owners``, and for a call it took over, the party that
handed it over; anyone else gets 403); acting on a REFER with Replaces (§6.1 first: OPTIONS to the
CN and its codecs against ours, then INVITE the CN with Replaces and Referred-By, Fig. 4) and on
a nested REFER (send the REFER it names, carrying Replaces for our own dialog with the CN, Fig. 5),
each reported to the referrer in NOTIFYs.

Not here: the phone's side of SH mode (`sipmob.mn.handoff`), SLP (`sipmob.service.slp`), SIP.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from sipmob.mn.devices import SERVICE_TYPE
from sipmob.mn.handoff import REPLACED_WAIT, same_party, within
from sipmob.sdp import SDPParseError, codecs_of, parse
from sipmob.service.sipua import AcceptedRefer, IncomingRequest, ReferProgress, SIPError
from sipmob.service.slp import SLPServiceAgent
from sipmob.sip.headers import Replaces
from sipmob.sip.ua import Referred
from sipmob.sip.uri import URI, NameAddr
from sipmob.slp.attrs import Attribute

if TYPE_CHECKING:
    from sipmob.mn.phone import Phone, PhoneCall

log = logging.getLogger("sipmob.mn.device")


@dataclasses.dataclass(slots=True)
class TakenOver:
    """A call this device took over by REFER, and who handed it to us."""

    call_id: str  # our PhoneCall's id
    cn: URI
    referrer: URI


class DeviceRole:
    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.config = phone.config.device
        self.owners = [URI.parse(o) for o in self.config.owners]
        self.taken: dict[str, TakenOver] = {}
        self.sa: SLPServiceAgent | None = None
        self.registered: str | None = None  # the URL the device is registered under
        self.apart = False  # whether we listen on the home network apart from our egresses, see `url`

    # SLP ------------------------------------------------------------------------------------------

    def attributes(self) -> dict[str, Attribute]:
        name = self.config.name or self.phone.config.identity.user
        attrs = [Attribute("name", (name,))]
        if self.config.room:
            attrs.append(Attribute("room", (self.config.room,)))
        attrs += [Attribute("media", ("audio-sendrecv",)),
                  Attribute("audio-codecs", tuple(c.name for c in self.phone.codecs)),
                  Attribute("mobility", ("enhanced",))]
        return {a.tag: a for a in attrs}

    def start(self) -> None:
        config = self.phone.config
        da = config.da_address
        self.sa = SLPServiceAgent(self.phone.reactor, das=[da] if da is not None else [],
                                  scopes=config.slp.scopes, multicast=da is None,
                                  config=self.phone.slp_signing)
        self.sa.start()
        # Decided once, while the listen address is certainly there: once an egress is renumbered,
        # its old address (our listen address) would look apart from the egresses, yet be gone.
        self.apart = self.phone.egress is not None and self.phone.egress._home_apart()
        self.registered = self.url()
        self.sa.register(self.registered, SERVICE_TYPE, self.attributes(), lifetime=self.config.lifetime)
        log.info("registered in SLP as a mobility-enhanced device: %s", self.registered)

    def url(self) -> str:
        """Where the home's devices and the MDSM reach this phone. A phone that listens on the home
        network apart from its egresses (a LAN side) is reached there: that address stays when an
        egress fails or is renumbered, while the contact follows the egress (a WAN address the home
        may not even route to). A phone whose listen address is an egress's has no address that
        stays, so the device follows the contact (HMMP), see `follow`."""
        contact = self.phone.ua.contact
        assert contact is not None
        if self.apart:
            listen = self.phone.config.listen
            return str(contact.replace(host=listen.address, port=listen.port))
        return str(contact)

    def follow(self) -> None:
        """The phone's contact moved: the device is registered under its new URL first, then the old
        one is deregistered (only the device's: the egress advert has a URL of its own), both signed
        by the shared signer, so no one calls a dead address and there is no gap."""
        if self.sa is None or self.registered is None:
            return
        url = self.url()
        if url == self.registered:
            return
        old, self.registered = self.registered, url
        self.sa.register(url, SERVICE_TYPE, self.attributes(), lifetime=self.config.lifetime)
        self.sa.deregister(old)
        log.info("device registration moved in SLP: %s -> %s", old, url)

    def stop(self) -> defer.Deferred[Any]:
        if self.sa is None:
            return defer.succeed(None)
        sa, self.sa = self.sa, None
        return sa.stop().addTimeout(5, self.phone.reactor).addErrback(lambda _: None)

    # REFER ----------------------------------------------------------------------------------------

    def allowed(self, referrer: URI, what: Referred) -> bool:
        if any(same_party(referrer, owner) for owner in self.owners):
            return True
        if what.method == "REFER":  # Fig. 5: only who handed us the call may ask for it back
            return self._taken_for(referrer, what) is not None
        return False

    def _taken_for(self, referrer: URI, what: Referred) -> TakenOver | None:
        inner = _inner_target(what)
        for t in self.taken.values():
            if same_party(t.referrer, referrer) and (inner is None or same_party(t.cn, inner)):
                if t.call_id in self.phone.calls:
                    return t
        return None

    def on_refer(self, incoming: IncomingRequest, what: Referred) -> None:
        referrer = incoming.request.from_.uri
        if not self.allowed(referrer, what):
            log.warning("REFER from %s refused: not an owner of this device nor the call's party", referrer)
            raise SIPError(403, "Not an owner of this device")
        if what.method == "REFER":
            self._nested(incoming, what, referrer)
        else:
            self._take_over(incoming, what, referrer)

    def _take_over(self, incoming: IncomingRequest, what: Referred, referrer: URI) -> None:
        accepted = incoming.accept_refer()
        d = self._check_and_invite(what)

        def established(pc: PhoneCall) -> None:
            self.taken[pc.id] = TakenOver(pc.id, what.target, referrer)
            log.info("took over the call with %s from %s (call %s)", what.target, referrer, pc.id)
            accepted.notify(200)

        d.addCallbacks(established, lambda f: _report_failure(accepted, f, "taking over"))

    @defer.inlineCallbacks
    def _check_and_invite(self, what: Referred) -> Any:
        # §6.1 in SH mode: the CN's codecs before we invite it
        try:
            response = yield self.phone.ua.options(what.target,
                                                   timeout=self.phone.config.calls.options_timeout)
        except Exception as exc:
            log.info("OPTIONS to %s failed (%s): inviting it anyway", what.target, exc)
        else:
            ours = {c.name.lower() for c in self.phone.codecs}
            theirs = _audio_codecs(response.body) if 200 <= response.status < 300 else None
            if theirs is not None and theirs and not theirs & ours:
                raise SIPError(488, f"no common codec with {what.target} ({', '.join(sorted(theirs))})")
        pc = yield self.phone.place_call(str(what.target), headers=what.headers)
        return pc

    def _nested(self, incoming: IncomingRequest, what: Referred, referrer: URI) -> None:
        taken = self._taken_for(referrer, what)
        pc = self.phone.calls.get(taken.call_id) if taken is not None else None
        if taken is None or pc is None:
            raise SIPError(481, "No call to hand back")
        accepted = incoming.accept_refer()
        call = pc.call
        dialog = call.dialog
        replaces = Replaces(dialog.call_id, to_tag=dialog.remote_tag, from_tag=dialog.local_tag)
        inner = _inner_target(what) or taken.cn
        # RFC 4538: the REFER names the dialog of the REFER that asked for it, which the
        # referrer can check (it is on the other side of it)
        mine = accepted.dialog
        target_dialog = ([("Target-Dialog", f"{mine.call_id};local-tag={mine.local_tag};"
                                            f"remote-tag={mine.remote_tag}")] if mine is not None else [])
        d = self.phone.ua.refer(what.target, inner, replaces=replaces, headers=target_dialog,
                                referred_by=str(NameAddr(None, self.phone.ua_aor)))

        def sent(progress: ReferProgress) -> Any:
            return progress.final.addCallback(handed_back)

        def handed_back(status: int) -> Any:
            accepted.notify(status)
            if status >= 300:
                return None
            # the CN ends our dialog once the referrer's INVITE replaced it; one that ignores
            # Replaces keeps it, and then we end it: the call is the referrer's again either way
            return within(call.terminated, REPLACED_WAIT, self.phone.reactor).addErrback(
                lambda f: f.trap(defer.TimeoutError) and call.bye())

        d.addCallbacks(sent, lambda f: _report_failure(accepted, f, "handing back"))


def _inner_target(what: Referred) -> URI | None:
    for name, value in what.headers:
        if name.lower() == "refer-to":
            return NameAddr.parse(value).uri.replace(headers=())
    return None


def _audio_codecs(body: bytes) -> set[str] | None:
    if not body:
        return None
    try:
        sdp = parse(body)
    except SDPParseError:
        return None
    names: set[str] = set()
    for m in sdp.media:
        if m.media == "audio":
            names |= {codec.encoding.lower() for _, codec in codecs_of(m)}
    return names


def _report_failure(accepted: AcceptedRefer, failure: Any, doing: str) -> None:
    exc = failure.value
    status = exc.status if isinstance(exc, SIPError) else 500
    log.warning("%s failed: %s", doing, exc)
    accepted.notify(status if status >= 300 else 500)
