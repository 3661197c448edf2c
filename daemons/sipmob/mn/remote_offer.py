"""The CN's offers inside a call (re-INVITE), answered from the call's real state (RFC 3264 §8).

`RemoteOffers.attach` makes the phone answer every re-INVITE of a call's CN:

- **Media on the phone:** the answer comes from `sipmob.sdp.answer_again` over our current
  description (ports kept, codec in use first, direction the reverse of the offer's), goes through
  the call's `OfferAnswerState` (the ``o=`` version rises exactly when the answer differs), and the
  outcome is applied before the 200 leaves: RTP (and RTCP: where ``a=rtcp`` says, RFC 3605, else
  port + 1) to the CN's new address at once,
  the agreed codec and payload number, sending stopped while the CN holds and started again when
  it resumes. A stream the CN adds is taken when the phone can (video: receive only), else port 0.
- **Media on devices** (after a transfer or split), the phone is the RFC 3725 controller: the offer
  is split per device (`sipmob.sdp.split`), each device whose part changed is re-INVITEd with it
  (sipua retries a 491 itself), and the devices' answers plus our own part are stitched back
  (`sipmob.sdp.stitch`) into the CN's answer. A device that fails loses its streams (port 0 in the
  answer, the device's dialog ended) rather than failing the call. A stream that reaches its device
  through a transcoder is carried to the transcoder instead (`sipmob.mn.transcoding`): the device's
  side does not change.
- While the phone rings, its answer went in a reliable 180 (the caller requires 100rel): a new offer
  of the caller's in a PRACK (RFC 3262 §5) or an UPDATE (RFC 3311 §5.2) is answered the same way
  (`answer_early`), and the call starts from the last exchange; so is a callee's UPDATE after its
  reliable 18x answered the phone's INVITE.
- An UPDATE (RFC 3311, confirmed dialogs) with an offer is answered the same way in its 2xx; one
  without (a session refresh) gets 200.
- A re-INVITE without an offer is answered with our current description unchanged (same version);
  the ACK's answer is not read (see the issue's "not done").
- While one of our own actions on the call is running (a transfer, a retrieval), or our own offer
  is outstanding, the re-INVITE gets 491 (RFC 3261 §14.2) and the CN tries again later.

Session timers (RFC 4028) are the SIP core's (`sipmob.sip.session_refresh`, the phone gives it a
policy): it states ``Supported: timer``, answers 422 to an interval below 90 s, adds
``Session-Expires`` to the 2xx of the INVITE, of each re-INVITE and UPDATE, refreshes with UPDATE (or
a re-INVITE with the unchanged description) when it is the refresher, and ends the call with BYE
when the peer's refreshes stop. Refresh re-INVITEs reach `answer` like any offer: an unchanged one
is answered with an unchanged description.

`stream_status` is what ``sipmob calls`` shows per stream: the codec in use and who holds it.

Not here: the SDP rules (`sipmob.sdp.offer_answer`), our own hold (the call controls), SIP.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from sipmob.mn.mobility import MOBILE_NODE
from sipmob.sdp import (
    Attribute,
    Codec,
    DuplexSplit,
    NegotiatedStream,
    OfferAnswerError,
    OfferAnswerState,
    SDPParseError,
    SessionDescription,
    answer_again,
    codecs_of,
    hold_state,
    parse,
    split,
    stitch,
)
from sipmob.service.sipua import Call, SIPError
from sipmob.sip.message import Request

if TYPE_CHECKING:
    from sipmob.media import codecs as media_codecs
    from sipmob.mn.phone import Phone, PhoneCall

log = logging.getLogger("sipmob.mn")


def _devices_of(location: Any) -> tuple[str, ...]:
    if location is None:
        return ()
    if isinstance(location, DuplexSplit):
        return tuple(d for d in (location.output_device, location.input_device) if d != MOBILE_NODE)
    return () if location == MOBILE_NODE else (str(location),)


def _assignment(layout: Any) -> dict[int, Any]:
    """The m-lines on devices only (a duplex split with the phone on one side stays ours)."""
    return {i: loc for i, loc in enumerate(layout)
            if loc is not None and loc != MOBILE_NODE
            and not (isinstance(loc, DuplexSplit) and MOBILE_NODE in (loc.output_device, loc.input_device))}


class RemoteOffers:
    """Answers the CN's re-INVITEs for the phone's calls."""

    def __init__(self, phone: Phone) -> None:
        self.phone = phone

    def attach(self, pc: PhoneCall) -> None:
        """Answer the CN's re-INVITEs of `pc` (and its UPDATEs with an offer)."""
        pc.call.on_reinvite(lambda call, request: self.answer(pc, call, request))

    # answering ------------------------------------------------------------------------------------

    def answer(self, pc: PhoneCall, call: Call, request: Request) -> bytes | defer.Deferred[bytes]:
        if pc.busy:
            raise SIPError(491, "Request Pending")
        ours = pc.oa.local
        if not request.body or ours is None:
            if ours is None:
                raise SIPError(500, "No session yet")
            return ours.to_bytes()
        try:
            offer = parse(request.body)
        except SDPParseError as exc:
            raise SIPError(488, f"Unreadable SDP: {exc}") from None
        try:
            pc.oa.receive_offer(offer)
        except OfferAnswerError as exc:
            # Our own offer is outstanding (glare), or the offer removes m-lines.
            raise SIPError(491 if "glare" in str(exc) else 488, str(exc)) from None
        try:
            if _assignment(pc.layout):
                d: defer.Deferred[bytes] = self._through_devices(pc, offer)
                d.addErrback(self._undo, pc)
                return d
            return self._on_phone(pc, offer).to_bytes()
        except Exception:
            pc.oa.rollback()
            raise

    def answer_early(self, oa: OfferAnswerState, request: Request) -> bytes:
        """A new offer before the INVITE's 2xx, the first exchange having completed reliably (RFC
        3262 §5): the caller's while the phone rings (in a PRACK, or an UPDATE, RFC 3311 §5.2), our
        answer having gone in the reliable 180; or the callee's UPDATE after its reliable 18x
        answered our offer. Answered from `oa` the way a re-INVITE is (our ports kept, the codec
        agreed kept first, the direction reversed, a stream it adds refused with port 0). Nothing
        plays yet: the call's media starts from the last exchange when the 2xx comes."""
        ours = oa.local
        if ours is None or not request.body:
            raise SIPError(488, "No session yet")
        try:
            offer = parse(request.body)
        except SDPParseError as exc:
            raise SIPError(488, f"Unreadable SDP: {exc}") from None
        try:
            oa.receive_offer(offer)
        except OfferAnswerError as exc:
            raise SIPError(491 if "glare" in str(exc) else 488, str(exc)) from None
        in_use = {stream.index: stream.primary.codec for stream in oa.negotiated.streams
                  if stream.primary is not None} if oa.negotiated is not None else {}
        try:
            stamped, _ = oa.create_answer(own_fmtp(answer_again(offer, ours, self.phone._local_caps(),
                                                                in_use=in_use), self.phone.codecs))
        except (OfferAnswerError, ValueError) as exc:
            oa.rollback()
            raise SIPError(488, str(exc)) from None
        log.info("a new offer before the 2xx; answered %s", _summary(stamped))
        return stamped.to_bytes()

    @staticmethod
    def _undo(failure: Any, pc: PhoneCall) -> Any:
        pc.oa.rollback()
        return failure

    def _layout_for(self, pc: PhoneCall, offer: SessionDescription, answered: SessionDescription) -> Any:
        layout = list(pc.layout) + [None] * (len(offer.media) - len(pc.layout))
        for i, m in enumerate(answered.media):
            if m.port == 0:
                layout[i] = None
            elif layout[i] is None:
                layout[i] = MOBILE_NODE
        return tuple(layout)

    def _new_ports(self, pc: PhoneCall, offer: SessionDescription,
                   ours: SessionDescription) -> dict[int, int]:
        """Ports for streams the CN adds (or enables again) that the phone itself can take."""
        ports: dict[int, int] = {}
        for i, m in enumerate(offer.media):
            if m.port == 0 or (i < len(ours.media) and ours.media[i].port):
                continue
            if m.media == "audio" and not any(o.media == "audio" and o.port for o in ours.media):
                ports[i] = pc.rtp.port
            elif m.media == "video" and not any(o.media == "video" and o.port for o in ours.media):
                if pc.video_rtp is None:
                    conn = pc.local_sdp.connection  # the call's egress, not the phone's own address
                    pc.video_rtp = self.phone._new_rtp(video=True, address=conn.address if conn else None)
                ports[i] = pc.video_rtp.port
        return ports

    def _phone_answer(self, pc: PhoneCall, offer: SessionDescription) -> SessionDescription:
        """Our own answer (this phone's ports), whatever the devices carry: the CN's answer when
        the media is here, our part of it when some is on devices, and what a later retrieval offers."""
        ours = pc.local_sdp
        in_use: dict[int, Codec] = {}
        if pc.oa.negotiated is not None:
            for stream in pc.oa.negotiated.streams:
                if stream.primary is not None:
                    in_use[stream.index] = stream.primary.codec
        again = answer_again(offer, ours, self.phone._local_caps(),
                             new_ports=self._new_ports(pc, offer, ours), in_use=in_use)
        return own_fmtp(again, self.phone.codecs)

    def _on_phone(self, pc: PhoneCall, offer: SessionDescription) -> SessionDescription:
        stamped, negotiated = pc.oa.create_answer(self._phone_answer(pc, offer))
        previous = pc.local_sdp
        pc.cn_sdp, pc.local_sdp = offer, stamped
        pc.layout = self._layout_for(pc, offer, stamped)
        self.apply(pc, negotiated.streams)
        if stamped != previous:
            log.info("call %s: %s re-offered; answered %s", pc.id, pc.peer, _summary(stamped))
        return stamped

    def apply(self, pc: PhoneCall, streams: tuple[NegotiatedStream, ...]) -> None:
        """Our audio to where, how and whether the agreed description says."""
        for stream in streams:
            where = pc.layout[stream.index] if stream.index < len(pc.layout) else None
            if stream.media != "audio" or where != MOBILE_NODE:
                continue
            send = stream.accepted and stream.direction.sends and stream.remote_address is not None
            primary = stream.primary
            codec = (next((c for c in self.phone.codecs
                           if c.name.lower() == primary.codec.encoding.lower()), None)
                     if primary is not None else None)
            if not send or primary is None or codec is None or stream.remote_address is None:
                pc.rtp.stop_sending()
                continue
            destination = (stream.remote_address, stream.remote_port)
            if stream.remote_rtcp_port is not None:
                # RFC 3605: a=rtcp, or RTP's port + 1 at the RTP address when the CN states none
                pc.rtp.set_rtcp_destination((stream.remote_rtcp_address or stream.remote_address,
                                             stream.remote_rtcp_port))
            if (pc.rtp.sending and pc.rtp.sending_as == (codec, primary.send_payload_type)
                    and pc.rtp.destination == destination):
                continue  # a refresh, or a change elsewhere: the stream goes on untouched
            # (Re)started rather than only retargeted: the first packet to the new place leaves now,
            # not at the next tick, and the same SSRC and sequence carry on (RtpEndpoint).
            pc.rtp.start_sending(self.phone._source(codec.clock_rate), codec.fresh(),
                                 primary.send_payload_type, destination)

    # RFC 3725: the CN's offer carried to the devices ----------------------------------------------

    @defer.inlineCallbacks
    def _through_devices(self, pc: PhoneCall, offer: SessionDescription) -> Any:
        from sipmob.mn.phone import _CallControl

        pc.busy = True
        try:
            assignment = _assignment(pc.layout)
            assignment = {i: loc for i, loc in assignment.items() if i < len(offer.media)}
            fresh = split(offer, assignment) if assignment else {}
            before = split(pc.cn_sdp, assignment) if assignment else {}
            control = _CallControl(self.phone, pc)
            changed = [d for d, part in fresh.items()
                       if d in pc.device_calls and part.with_origin(offer.origin)
                       != before.get(d, part).with_origin(offer.origin)]
            leg = pc.transcoder
            results = yield defer.DeferredList(
                [self.phone.transcoding.reoffer(pc, fresh[d]) if leg is not None and d == leg.device
                 else control.reinvite_device(d, fresh[d]) for d in changed], consumeErrors=True)
            answers = dict(pc.device_sdps)
            failed: set[str] = {d for d in fresh if d not in pc.device_calls}
            for device, (ok, value) in zip(changed, results, strict=True):
                if ok:
                    answers[device] = value
                else:
                    log.warning("call %s: %s refused the CN's new offer (%s); its streams are removed",
                                pc.id, pc.names.get(device, device), value.getErrorMessage())
                    failed.add(device)
            for device in failed & set(pc.device_calls):
                bye = control.bye_device(device)
                if bye is not None:
                    bye.addErrback(lambda f, d=device: log.warning("BYE to %s failed: %s", d, f.value))
            phone_part = self._phone_answer(pc, offer)
            pieces: list[tuple[int, SessionDescription, int]] = []
            layout = list(pc.layout) + [None] * (len(offer.media) - len(pc.layout))
            for i in range(len(offer.media)):
                location = layout[i]
                devices = _devices_of(location)
                if offer.media[i].port == 0 or any(d in failed for d in devices):
                    layout[i] = None
                elif i in assignment:
                    pieces += [(i, answers[d], i) for d in devices]
                elif location == MOBILE_NODE or isinstance(location, DuplexSplit):
                    pieces.append((i, phone_part, i))
            if pieces:
                stitched = stitch(pieces, offer, pc.oa.origin)
            else:  # every stream was on devices that failed: all of them disabled, the call kept
                stitched = phone_part
                for i in range(len(phone_part.media)):
                    stitched = stitched.with_port(i, 0)
                stitched = answer_again(offer, stitched, self.phone._local_caps())
            stamped, negotiated = pc.oa.create_answer(stitched)
            pc.cn_sdp, pc.local_sdp = offer, phone_part  # ours stays ours: a retrieval offers it
            pc.layout = tuple(layout)
            pc.device_sdps = {d: s for d, s in answers.items() if d not in failed}
            self.apply(pc, negotiated.streams)
            self.phone.transcoding.release(pc)  # its device lost the stream: the transcoder goes too
            log.info("call %s: %s re-offered; carried to %s; answered %s", pc.id, pc.peer,
                     ", ".join(pc.names.get(d, d) for d in changed) or "no device", _summary(stamped))
            return stamped.to_bytes()
        finally:
            pc.busy = False


def own_fmtp(sdp: SessionDescription, codecs: Sequence[media_codecs.Codec]) -> SessionDescription:
    """Our answer with our own fmtp for Opus rather than the offer's echoed: in an answer they
    say what we receive and send (RFC 7587 §7.1), and we send mono, so an offerer's
    ``sprop-stereo=1`` would be untrue of us."""
    mine = {c.name.lower(): c.fmtp for c in codecs if c.factory is not None}
    media = []
    for m in sdp.media:
        pts = {str(pt): mine[c.encoding.lower()] for pt, c in codecs_of(m) if c.encoding.lower() in mine}
        if not pts:
            media.append(m)
            continue
        attrs = []
        for a in m.attributes:
            pt = (a.value or "").split(" ", 1)[0]
            if a.name == "fmtp" and pt in pts:
                continue
            attrs.append(a)
            if a.name == "rtpmap" and pts.get(pt):
                attrs.append(Attribute("fmtp", f"{pt} {pts[pt]}"))
        media.append(m.with_attributes(attrs))
    return dataclasses.replace(sdp, media=tuple(media))


def _summary(sdp: SessionDescription) -> str:
    return "; ".join(f"{m.media} {m.port} {' '.join(m.formats)} {m.direction.value}" for m in sdp.media)


def stream_status(pc: PhoneCall, index: int) -> dict[str, str]:
    """The codec m-line ``index`` carries and who holds it, for ``sipmob calls``."""
    out: dict[str, str] = {}
    negotiated = pc.oa.negotiated
    if negotiated is not None and index < len(negotiated.streams):
        primary = negotiated.streams[index].primary
        if primary is not None:
            out["codec"] = str(primary.codec)
    if pc.oa.local is not None:
        held = hold_state(pc.oa.local, pc.cn_sdp, index)
        if held:
            out["hold"] = held
    return out
