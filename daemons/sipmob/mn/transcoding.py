"""Moving a call's audio to a device through a transcoder when the CN and the device share no codec.

Responsible for the phone's side of draft §6.1 with `sipmob-transcoder` (its SDP convention is
`sipmob.transcoder.invocation`, RFC 4117 §3.3 "addresses not known yet"):

1. **Find** a transcoder in the DA: ``service:sip-transcoder`` whose ``audio-codecs`` hold one of
   the CN's codecs and one of the device's, with ``free-channels`` > 0 (the most free first), and
   registered by a host the DA trusts (its ``trusted`` keyword): the call's audio goes there.
2. **Invoke** it with one INVITE, "SDP A + SDP B": line 1 the CN's codec in use now (the CN hears
   no codec change), line 2 the device's codecs (its SLP ``audio-codecs``), both port 0 on
   0.0.0.0 so that the transcoder sends nothing yet. Its 200 gives TA and TB: its receive address
   and the one codec it chose for each side.
3. **INVITE the device** with TB as the offer (the device sends to the transcoder from its answer on).
4. **re-INVITE the transcoder** with the CN's current description and the device's answer, so it
   knows where each party is before the CN moves (its first packets are converted, not dropped).
5. **re-INVITE the CN** with TA in place of the audio m-line (the other streams stay where they are);
   should it answer from another address, the transcoder is re-INVITEd once more.
6. Our own audio keeps flowing for the grace period, then stops; a device or transcoder the audio
   was on before is released (BYE).

**DTMF** (RFC 4117: the parties' dialogs end here, so their INFO comes to us, not to the
transcoder). A digit the CN sends as SIP INFO (``application/dtmf-relay`` or ``application/dtmf``)
while its audio goes through a transcoder is passed to the transcoder in our dialog with it with
``Side=A`` (the device's with ``Side=B``), and the transcoder plays it as RFC 4733 events to the
other party; when that party has no telephone-event the transcoder answers 488 and we pass the
INFO to the party ourselves. A digit the transcoder sends us (a party's events the other side
cannot take) goes, without its ``Side=`` line, to the other party. A device's INFO on a call with
no transcoder goes to the CN (the person is dialling on the device). The party's INFO is answered
with what the next hop answered; digits are bounded per call (`DIGIT_RATE`, 503 over it) and an
INFO that is not DTMF is answered 200 and goes nowhere, as before.

A failure leaves the call where it was: up to step 5 only the new legs are ended (BYE, or CANCEL
for a device that does not answer); a transcoder that fails the last re-INVITE after the CN moved
makes us re-INVITE the CN with what it had agreed before. The transcoder's dialog is kept among the call's
device legs (`PhoneCall.device_calls`, keyed by its URI), so a hang-up, the CN's BYE, a phone
stopping, the call store and a restarted phone end it like any other leg; `TranscoderLeg` says
which device it serves. For the planner the device's description is TA (what the CN is told), so
a later plan that keeps the audio there stitches the right address for it.

Not here: the transcoder itself, plans that need no transcoder (`sipmob.mn.mobility`), when a
transcoder is released after such a plan (`sipmob.mn.phone`).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task

from sipmob.media import dtmf
from sipmob.mn.control import CommandError
from sipmob.mn.executor import SignallingFailed
from sipmob.mn.mobility import MOBILE_NODE, NoCommonCodec
from sipmob.sdp import DuplexSplit, MediaDescription, SessionDescription, codecs_of, parse, stitch
from sipmob.slp.attrs import escape_value

if TYPE_CHECKING:
    from sipmob.mn.phone import Phone, PhoneCall, _CallControl

log = logging.getLogger("sipmob.mn")

SERVICE_TYPE = "service:sip-transcoder"
TRUSTED = "trusted"
# What SLP's codec names are on an m-line (RFC 3551 §6 static numbers, RFC 7587 for Opus).
_RTPMAPS: Mapping[str, tuple[int, str]] = {"pcmu": (0, "PCMU/8000"), "pcma": (8, "PCMA/8000"),
                                           "g722": (9, "G722/8000"), "opus": (111, "opus/48000/2")}
_EVENT_PT = 101
DIGIT_RATE, DIGIT_BURST = 8.0, 16  # DTMF INFOs a second passed on per call (a person dials under 10)
_NAMES = {"opus": "Opus", "l16": "L16"}


class _NoMap:
    encoding = ""


_NO_MAP = _NoMap()


class TranscodingFailed(Exception):
    """No transcoder could be had, or it refused; the message is for the user."""


# Sans-I/O pieces -----------------------------------------------------------------------------------

def display(codec: str) -> str:
    """How a codec is named to a person: "Opus", "PCMU", "G722"."""
    return _NAMES.get(codec.lower(), codec.upper())


def predicate(cn_codecs: Iterable[str], device_codecs: Iterable[str]) -> str:
    """The SrvRqst filter for a transcoder that takes one of each side's codecs."""
    def any_of(names: Iterable[str]) -> str:
        terms = [f"(audio-codecs={escape_value(n)})" for n in dict.fromkeys(names)]
        return terms[0] if len(terms) == 1 else "(|" + "".join(terms) + ")"

    return f"(&{any_of(cn_codecs)}{any_of(device_codecs)})"


def free_channels(attributes: Mapping[str, Sequence[Any]]) -> int:
    values = attributes.get("free-channels") or ()
    try:
        return int(values[0]) if values else 0
    except (TypeError, ValueError):
        return 0


def trusted(attributes: Mapping[str, Sequence[Any]]) -> bool:
    """Whether the DA vouches for the registration (it sets the keyword ``trusted`` on those of
    its trusted registrants and strips it from everyone else's, docs/slp-schema.md)."""
    return TRUSTED in attributes


def choose(entries: Sequence[tuple[str, Mapping[str, Sequence[Any]]]]) -> str | None:
    """The trusted transcoder with the most free channels, None when none has one: a stranger on
    the LAN registering a transcoder must not receive a call's audio."""
    ranked = sorted(((free_channels(a), url) for url, a in entries if trusted(a)),
                    key=lambda e: (-e[0], e[1]))
    return ranked[0][1] if ranked and ranked[0][0] > 0 else None


def cn_names(media: MediaDescription) -> list[str]:
    return [c.encoding for _, c in codecs_of(media) if not c.auxiliary]


def null_section(media: MediaDescription) -> list[str]:
    """An m-section with port 0 on 0.0.0.0: the codecs, no address yet (RFC 4117 §3.3)."""
    return list(media.with_port(0).with_connection("0.0.0.0").lines())


def device_section(names: Iterable[str]) -> list[str]:
    """The device's side from its SLP ``audio-codecs``, port 0: codecs only."""
    known = [_RTPMAPS[n.lower()] for n in dict.fromkeys(names) if n.lower() in _RTPMAPS]
    if not known:
        raise TranscodingFailed(f"none of the device's codecs ({', '.join(names)}) can be named in SDP here")
    pts = " ".join(str(pt) for pt, _ in known)
    lines = [f"m=audio 0 RTP/AVP {pts} {_EVENT_PT}", "c=IN IP4 0.0.0.0"]
    lines += [f"a=rtpmap:{pt} {name}" for pt, name in known]
    lines += [f"a=rtpmap:{_EVENT_PT} telephone-event/8000", f"a=fmtp:{_EVENT_PT} 0-15", "a=sendrecv"]
    return lines


def section(sdp: SessionDescription, index: int) -> list[str]:
    """m-line ``index`` of a party's description with its own c= line, for "SDP A + SDP B"."""
    media = sdp.media[index]
    connection = media.connection or sdp.connection
    return list(media.with_connection(connection).lines())


def invocation(a: list[str], b: list[str], host: str) -> SessionDescription:
    family = "IP6" if ":" in host else "IP4"
    return parse("\r\n".join(["v=0", f"o=sipmob 1 1 IN {family} {host}", "s=-", "t=0 0", *a, *b]) + "\r\n")


def party(answer: SessionDescription, index: int) -> SessionDescription:
    """The transcoder's side ``index`` as a description of its own (the offer to that party)."""
    origin = answer.origin
    return parse("\r\n".join(["v=0", f"o=sipmob {origin.sess_id} 1 {origin.nettype} {origin.addrtype} "
                              f"{origin.address}", "s=-", "t=0 0", *section(answer, index)]) + "\r\n")


def shaped(side: SessionDescription, template: SessionDescription, index: int) -> SessionDescription:
    """A one-line description (the transcoder's side for the CN) in the CN's m-line order: line
    ``index`` is it, every other line of ``template`` is disabled (port 0), as a device's answer is."""
    media = side.media[0].with_connection(side.media[0].connection or side.connection)
    out = template
    for i, m in enumerate(template.media):
        out = out.with_media(i, media if i == index else m.with_port(0))
    return out.with_origin(side.origin)


def prefer(media: MediaDescription, codec: str) -> MediaDescription:
    """``media`` with the payload types of ``codec`` first: the transcoder takes the first it converts."""
    first = [f for f in media.formats if (media.rtpmap(int(f)) or _NO_MAP).encoding.lower() == codec.lower()]
    return dataclasses.replace(media, formats=(*first, *(f for f in media.formats if f not in first)))


def codec_of(sdp: SessionDescription, index: int) -> str:
    media = sdp.media[index]
    first = next((c for _, c in codecs_of(media) if not c.auxiliary), None)
    return first.encoding if first is not None else "?"


def widen(cn_sdp: SessionDescription, index: int,
          capabilities: SessionDescription | None) -> SessionDescription:
    """The CN's description with m-line ``index`` listing every codec it said it takes (its
    OPTIONS answer) at its current address: after a transcoded move the CN's description names
    only the transcoder's codec, which a device sharing another codec with the CN could not take."""
    if capabilities is None:
        return cn_sdp
    current = cn_sdp.media[index]
    wide = next((m for m in capabilities.media if m.media == current.media and m.is_rtp and m.port), None)
    if wide is None:
        return cn_sdp
    media = dataclasses.replace(wide, port=current.port, connection=cn_sdp.connection_for(index))
    return cn_sdp.with_media(index, media.with_direction(current.direction_attribute))


@dataclasses.dataclass(frozen=True, slots=True)
class TranscoderLeg:
    """The transcoder a call's audio goes through: its dialog is ``device_calls[url]``."""

    url: str
    device: str  # the device on its far side
    index: int  # the CN's m-line it carries
    cn_codec: str
    device_codec: str

    @property
    def summary(self) -> str:
        return f"{display(self.cn_codec)} <-> {display(self.device_codec)}"

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TranscoderLeg:
        return cls(str(record["url"]), str(record["device"]), int(record["index"]), str(record["cn_codec"]),
                   str(record["device_codec"]))


@defer.inlineCallbacks
def find(slp: Any, reactor: Any, timeout: float, cn: Sequence[str], device: Sequence[str]) -> Any:
    """The URL of a trusted transcoder in the DA (through the SLP client ``slp``) that converts
    between one of the ``cn`` codecs and one of the ``device`` codecs and has room; raises
    `TranscodingFailed` with why not. Shared by the phone and the MDSM."""
    wanted = f"{'/'.join(cn)} and {'/'.join(device)}"
    try:
        d = slp.find_services(SERVICE_TYPE, predicate(cn, device))
        d.addTimeout(timeout, reactor)
        urls = yield d
        entries = []
        for entry in urls:
            q = slp.find_attributes(entry.url, "")  # all: the keyword `trusted` too
            q.addTimeout(timeout, reactor)
            attrs = yield q
            entries.append((entry.url, {a.tag.lower(): tuple(a.values) for a in attrs.values()}))
    except Exception as exc:
        raise TranscodingFailed(f"cannot look for a transcoder: no answer from the DA ({exc})") from None
    if not urls:
        raise TranscodingFailed(f"no transcoder in the DA converts between {wanted}")
    url = choose(entries)
    if url is None:
        if not any(trusted(a) for _, a in entries):
            raise TranscodingFailed(f"no transcoder the DA trusts converts between {wanted} "
                                    f"({len(entries)} registered by others)")
        raise TranscodingFailed(f"every transcoder that converts between {wanted} is full")
    return url


# The phone's side ----------------------------------------------------------------------------------

class Transcoding:
    """Finds a transcoder and moves a call's audio through it, for `sipmob.mn.phone.Phone`."""

    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self._buckets: dict[str, dtmf.TokenBucket] = {}

    # DTMF ------------------------------------------------------------------------------------------

    def info(self, pc: PhoneCall, source: str | None, request: Any) -> Any:
        """An INFO in one of the call's dialogs: ``source`` None for the CN's, else the key of the
        device or transcoder leg. Returns the status (or a Deferred of it) to answer."""
        digit = dtmf_of(request)
        if not isinstance(digit, dtmf.Digit):
            return digit
        if pc.ended or self.phone.calls.get(pc.id) is not pc:
            return 481
        bucket = self._buckets.get(pc.id)
        if bucket is None:
            for gone in [c for c in self._buckets if c not in self.phone.calls]:  # calls ended since
                del self._buckets[gone]
            bucket = self._buckets[pc.id] = dtmf.TokenBucket(DIGIT_RATE, DIGIT_BURST)
        if not bucket.take(self.phone.reactor.seconds()):
            return 503
        leg = pc.transcoder
        device_call = pc.device_calls.get(leg.device) if leg is not None else None
        if leg is not None and source == leg.url:
            side = dtmf.info_side(request.body or b"")
            target = device_call if side == "A" else pc.call if side == "B" else None
            if target is None:
                return 400
            log.info("call %s: digit %s from %s passed on", pc.id, digit.digit,
                     pc.peer if side == "A" else pc.names.get(leg.device, leg.device))
            return forward_dtmf(target, digit)
        if leg is not None and device_call is not None and source in (None, leg.device):
            side = "A" if source is None else "B"
            log.info("call %s: digit %s from side %s passed to the transcoder", pc.id, digit.digit, side)
            return pass_digit(digit, side, pc.device_calls.get(leg.url),
                              device_call if source is None else pc.call)
        if source is not None and source in pc.device_calls:
            return forward_dtmf(pc.call, digit)  # a device dialling to the CN
        return None

    def find(self, cn: Sequence[str], device: Sequence[str]) -> defer.Deferred[str]:
        """The URL of a transcoder that converts between ``cn`` and ``device`` codecs and has room."""
        phone = self.phone
        return find(phone.slp, phone.reactor, phone.config.slp.timeout, cn, device)

    @defer.inlineCallbacks
    def transfer(self, pc: PhoneCall, gap: NoCommonCodec, capabilities: SessionDescription | None,
                 moved: Sequence[int], action: str = "transfer") -> Any:
        """Move m-line ``gap.index`` to ``gap.device`` through a transcoder; the line for the user.
        Raises `CommandError` with why, the call left where it was."""
        from sipmob.mn.phone import _CallControl

        device, index = gap.device, gap.index
        if gap.media != "audio" or list(moved) != [index]:
            raise CommandError(f"{gap}; a transcoder carries audio only: move the audio alone "
                               "(--media audio)")
        pc.names[device.uri] = device.name
        # The CN keeps the codec it uses now: a codec change mid-call is where endpoints break
        # (baresip 1.0 keeps framing its source for the old rate and every Opus frame then fails
        # to encode), and the device's side is narrower anyway or the CN would share its codec.
        cn_media = pc.cn_sdp.media[index]
        if not cn_names(cn_media) and capabilities is not None:
            cn_media = next((m for m in capabilities.media if m.media == "audio" and m.is_rtp), cn_media)
        where = f"{action} of call {pc.id}"
        try:
            url = yield self.find(cn_names(cn_media), device.codecs("audio"))
            first = invocation(null_section(cn_media), device_section(device.codecs("audio")),
                               self.phone.address)
        except TranscodingFailed as exc:
            raise CommandError(f"{gap}, and {exc}; the call stays as it was") from None
        if url in pc.device_calls:
            # The same transcoder already carries this call's audio to the device it leaves: the
            # new leg needs a key of its own until the old one is released (unknown URI
            # parameters are ignored by the transcoder, RFC 3261 §19.1.1).
            url = f"{url};leg={secrets.token_hex(4)}"
        control = _CallControl(self.phone, pc)
        timeout = self.phone.config.calls.device_timeout
        log.info("call %s: no common codec with %s; invoking the transcoder %s", pc.id, device.name, url)
        try:
            tx = yield _within(control.invite_device(url, first), timeout, self.phone.reactor)
        except SignallingFailed as exc:
            raise CommandError(f"{where} failed: {gap}, and the transcoder {url} refused ({exc}); "
                               "the call stays as it was") from None
        undo: list[str] = [url]
        try:
            try:
                ta, tb = party(tx, 0), party(tx, 1)
            except (ValueError, IndexError) as exc:  # not the two lines of its convention
                raise _Undo(f"{where} failed: the transcoder {url} answered with an unusable "
                            f"description ({exc}); the call stays as it was") from None
            try:
                device_answer = yield _within(control.invite_device(device.uri, tb), timeout,
                                              self.phone.reactor)
            except SignallingFailed as exc:
                raise _Undo(f"{where} failed: {device.name} "
                            f"{'did not answer' if exc.status in (None, 408) else 'rejected it'} ({exc}); "
                            "the call stays as it was") from None
            undo.insert(0, device.uri)
            address = self.phone.address
            cn_before = pc.cn_sdp
            try:
                # The transcoder learns both addresses before the CN moves, so that the CN's first
                # packets to it are converted rather than dropped as a stranger's; until the CN's
                # re-INVITE it hears both us and the transcoder, as in any transfer (§7.1).
                early = invocation(section(cn_before, index), section(device_answer, 0), address)
                yield _within(control.reinvite_device(url, early), timeout, self.phone.reactor)
            except (SignallingFailed, ValueError, IndexError) as exc:
                raise _Undo(f"{where} failed: the transcoder {url} did not take the parties' addresses "
                            f"({exc}); the call stays as it was") from None
            before = pc.oa.local
            try:
                cn_answer = yield control.reinvite_cn(self._cn_offer(pc, index, ta))
            except SignallingFailed as exc:
                raise _Undo(f"{where} failed: {pc.peer} refused the new media ({exc}); "
                            "the call stays as it was") from None
            if _endpoint(cn_answer, index) != _endpoint(cn_before, index):
                try:  # the CN answered from another address: the transcoder must send there
                    update = invocation(section(cn_answer, index), section(device_answer, 0), address)
                    yield _within(control.reinvite_device(url, update), timeout, self.phone.reactor)
                except (SignallingFailed, ValueError, IndexError) as exc:
                    assert before is not None
                    yield self._back(control, before)
                    raise _Undo(f"{where} failed: the transcoder {url} did not take {pc.peer}'s new "
                                f"address ({exc}); the call stays as it was") from None
        except _Undo as failed:
            for key in undo:
                yield _quietly(control.bye_device(key))
            log.info("%s", failed)
            raise CommandError(str(failed)) from None
        leg = TranscoderLeg(url, device.uri, index, codec_of(tx, 0), codec_of(tx, 1))
        yield self._settle(pc, control, leg, ta)
        message = f"call {pc.id}: audio on {device.name} via transcoder: {leg.summary}"
        log.info("%s (%s)", message, url)
        return message

    def _cn_offer(self, pc: PhoneCall, index: int, ta: SessionDescription) -> SessionDescription:
        """The CN's new description: TA for the audio, every other stream where it is."""
        parts: list[tuple[int, SessionDescription, int]] = []
        for i, location in enumerate(pc.layout):
            if i == index:
                parts.append((i, shaped(ta, pc.cn_sdp, index), i))
            elif isinstance(location, DuplexSplit):
                parts += [(i, pc.device_sdps[location.output_device], i),
                          (i, pc.device_sdps[location.input_device], i)]
            elif location == MOBILE_NODE:
                parts.append((i, pc.local_sdp, i))
            elif location is not None:
                parts.append((i, pc.device_sdps[location], i))
        return stitch(parts, pc.cn_sdp, pc.oa.origin)

    @defer.inlineCallbacks
    def _back(self, control: _CallControl, before: SessionDescription) -> Any:
        try:
            yield control.reinvite_cn(before)
        except SignallingFailed as exc:
            log.warning("call %s: %s refused its old media back (%s)", control.pc.id, control.pc.peer, exc)

    @defer.inlineCallbacks
    def _settle(self, pc: PhoneCall, control: _CallControl, leg: TranscoderLeg,
                ta: SessionDescription) -> Any:
        """The audio is on the device: the call's state says so, and what it was on is let go."""
        old, old_leg = pc.layout[leg.index], pc.transcoder
        layout = list(pc.layout)
        layout[leg.index] = leg.device
        pc.layout = tuple(layout)
        pc.device_sdps[leg.device] = shaped(ta, pc.cn_sdp, leg.index)  # what the CN is told
        pc.transcoder = leg
        self.phone.persist(pc)
        if old == MOBILE_NODE:
            yield task.deferLater(self.phone.reactor, self.phone.config.calls.grace_period, lambda: None)
            control.stop_local_media([leg.index])
        elif isinstance(old, str) and old not in pc.layout:
            pc.device_sdps.pop(old, None)
            yield _quietly(control.bye_device(old))
        if old_leg is not None:
            yield _quietly(control.bye_device(old_leg.url))
        self.phone.persist(pc)

    @defer.inlineCallbacks
    def reoffer(self, pc: PhoneCall, part: SessionDescription) -> Any:
        """The CN re-offered (a refresh, a new address): the transcoder, not the device, is told,
        and its side for the CN, in the CN's m-line order, is the device's part of the answer."""
        from sipmob.mn.phone import _CallControl

        leg = pc.transcoder
        assert leg is not None
        device = parse(pc.device_calls[leg.device].remote_sdp or b"")
        cn = part.with_media(leg.index, prefer(part.media[leg.index], leg.cn_codec))
        update = invocation(section(cn, leg.index), section(device, 0), self.phone.address)
        tx = yield _CallControl(self.phone, pc).reinvite_device(leg.url, update)
        return shaped(party(tx, 0), part, leg.index)

    def release(self, pc: PhoneCall) -> str:
        """After a plan that needed no transcoder: BYE the one whose device no longer has the audio."""
        leg = pc.transcoder
        if leg is None or (leg.index < len(pc.layout) and pc.layout[leg.index] == leg.device):
            return ""
        pc.transcoder = None
        call = pc.device_calls.pop(leg.url, None)
        pc.device_oas.pop(leg.url, None)
        self.phone.persist(pc)
        if call is not None:
            call.bye().addErrback(lambda f: log.warning("BYE to the transcoder %s failed: %s", leg.url,
                                                        f.getErrorMessage()))
        log.info("call %s: transcoder %s released", pc.id, leg.url)
        return "; transcoder released"

    def ended(self, pc: PhoneCall, url: str) -> None:
        """The transcoder ended its leg itself (it stopped, or heard no RTP): the audio is cut."""
        leg = pc.transcoder
        if leg is not None and leg.url == url:
            pc.transcoder = None
            log.warning("call %s: the transcoder %s ended its leg: %s hears nothing now; retrieve the "
                        "call or move it", pc.id, url, pc.names.get(leg.device, leg.device))
            self.phone.persist(pc)


class _Undo(Exception):
    pass


def _within(d: defer.Deferred[Any], timeout: float, reactor: Any) -> defer.Deferred[Any]:
    """``d``, or `SignallingFailed` when it has no answer in ``timeout`` (cancelling it sends CANCEL)."""
    d.addTimeout(timeout, reactor)

    def timed_out(failure: Any) -> Any:
        failure.trap(defer.TimeoutError)
        raise SignallingFailed(None, f"no answer in {timeout:g} s")

    return d.addErrback(timed_out)


def dtmf_of(request: Any) -> dtmf.Digit | int | None:
    """The digit of a DTMF INFO; else what to answer it: None (200, as any INFO that is not DTMF:
    passed nowhere) or 400 (a DTMF body we cannot read). Shared by the phone and the MDSM."""
    content_type = request.headers.get("Content-Type") or ""
    if content_type.split(";", 1)[0].strip().lower() not in dtmf.INFO_TYPES:
        return None
    try:
        return dtmf.parse_info(request.body or b"", content_type)
    except dtmf.DtmfError as exc:
        log.info("DTMF INFO refused: %s", exc)
        return 400


def forward_dtmf(call: Any, digit: dtmf.Digit, side: str | None = None) -> defer.Deferred[int]:
    """Send ``digit`` as an INFO in ``call``; fires with the status to answer the one it came from."""
    d: defer.Deferred[int] = call.info(dtmf.relay_body(digit, side), "application/dtmf-relay").addCallbacks(
        lambda response: response.status, lambda failure: 408)
    return d


def pass_digit(digit: dtmf.Digit, side: str, transcoder: Any, other: Any) -> defer.Deferred[int]:
    """Party ``side``'s digit to the transcoder's dialog (played as events to the other side), or
    to the ``other`` party's dialog when the transcoder answers 488 (that side has no
    telephone-event) or there is no transcoder dialog."""
    if transcoder is None:
        return forward_dtmf(other, digit)
    def passed(status: int) -> int | defer.Deferred[int]:
        return forward_dtmf(other, digit) if status == 488 else status

    d: defer.Deferred[int] = forward_dtmf(transcoder, digit, side).addCallback(passed)
    return d


def _endpoint(sdp: SessionDescription, index: int) -> tuple[str, int]:
    connection = sdp.connection_for(index)
    return (connection.host if connection is not None else "", sdp.media[index].port)


def _quietly(d: defer.Deferred[Any] | None) -> defer.Deferred[Any]:
    if d is None:
        return defer.succeed(None)
    return d.addErrback(lambda f: log.warning("BYE failed: %s", f.getErrorMessage()))

