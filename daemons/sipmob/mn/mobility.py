"""Planning session transfer, split and retrieval in Mobile Node Control mode (draft §5.2, §6.1).

Sans-I/O: given where each stream of a call is now (`CallState`, its `Layout`) and the devices the
user named (`Device`, from SLP), `plan_transfer`, `plan_split` and `plan_retrieve` return a `Plan`:
the ordered SIP and media steps an executor performs, the layout once they are done, and for each
point where the transfer can fail the steps that put the call back where it was.

The order follows the draft's figures. Transfer (Figs. 2-3): INVITE each device in turn with the
CN's current description (never an empty offer: a device given the CN's parameters plays its RTP
at once, §5.2.1), re-INVITE the CN with the devices' answers stitched into one offer, ACK the CN,
ACK the devices, keep sending our own media for a grace period (the CN keeps playing our stream
until the devices' media reaches it, §7.1), stop it, then release devices that no longer carry
anything. Retrieval (§5.2.3): re-INVITE the CN with our own parameters, ACK, start our media, BYE
the devices. Before any of it, the capability check of §6.1: the CN's codecs (its OPTIONS answer,
else its current description) against the devices' SLP ``audio-codecs``/``video-codecs``; no common
codec refuses the plan with one sentence naming both sides (`PlanError`).

Failure points: a device that rejects its INVITE or never answers (the executor CANCELs it), and a
CN that rejects the re-INVITE (RFC 3261 §14.1: the session stays as it was). Each undoes only what
was done: devices that answered are ACKed and sent BYE, our media never stopped.

Not here: SIP dialogs, transactions and timers (the executor and `sipmob.service.sipua`), RTP, SLP
queries (`sipmob.mn.devices`), the ``o=`` versions of each dialog (`sipmob.sdp.OfferAnswerState`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

from sipmob.sdp import (
    Codec,
    DuplexSplit,
    MediaDescription,
    Origin,
    SessionDescription,
    codecs_of,
    no_common_codec,
    split,
    stitch,
)

# Where a stream on the mobile node itself is, in a `Layout`; device keys are SIP URIs, never this.
MOBILE_NODE: Final = "mobile-node"

# Where one m-line of the CN's description is played and captured: on the MN, on one device,
# split by direction between an output and an input device, or nowhere (the m-line is disabled).
Location = str | DuplexSplit[str] | None
Layout = tuple[Location, ...]

MediaChoice = Literal["audio", "video", "all"]

# Clock rates of the payload names SLP attributes carry (RFC 3551 §6, RFC 7587 for opus): SLP
# lists names only, `Codec.matches` compares rates too.
_CLOCK_RATES: Final = {"pcmu": 8000, "pcma": 8000, "g722": 8000, "g729": 8000, "gsm": 8000,
                       "opus": 48000, "l16": 44100, "h261": 90000, "h263": 90000,
                       "h263-1998": 90000, "h264": 90000, "vp8": 90000, "vp9": 90000}


class PlanError(ValueError):
    """The request cannot be carried out as asked; the message is one line for the user."""


class NoCommonCodec(PlanError):
    """§6.1's check failed: m-line ``index`` shares no codec between the CN and ``device``. The
    phone may still carry it through a transcoder (`sipmob.mn.transcoding`)."""

    def __init__(self, reason: str, index: int, device: Device, media: str) -> None:
        super().__init__(reason)
        self.index = index
        self.device = device
        self.media = media


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    """A device as SLP describes it (docs/slp-schema.md, ``service:sip-device``)."""

    uri: str
    name: str
    media: frozenset[str] = frozenset()  # "audio-sendrecv", "video-recvonly", ...; empty: unknown
    audio_codecs: tuple[str, ...] = ()
    video_codecs: tuple[str, ...] = ()

    def handles(self, media: str, need: Literal["sendrecv", "recvonly", "sendonly"]) -> bool:
        """Whether it can take a ``media`` stream that needs ``need`` (the device's view)."""
        if not self.media:
            return True  # it did not say: let its answer decide
        if f"{media}-sendrecv" in self.media:
            return True
        return need != "sendrecv" and f"{media}-{need}" in self.media

    def codecs(self, media: str) -> tuple[str, ...]:
        return self.audio_codecs if media == "audio" else self.video_codecs if media == "video" else ()


@dataclasses.dataclass(frozen=True, slots=True)
class CallState:
    """What the planner needs to know about one call with the CN."""

    call_id: str
    cn: str  # the CN's URI, for messages
    cn_sdp: SessionDescription  # the CN's current description (its last offer or answer)
    local_sdp: SessionDescription  # our own description of the MN's media, used on retrieval
    layout: Layout  # one location per m-line of cn_sdp
    device_sdps: Mapping[str, SessionDescription] = dataclasses.field(default_factory=dict)
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)  # device key -> short name

    def __post_init__(self) -> None:
        if len(self.layout) != len(self.cn_sdp.media):
            raise ValueError(f"layout has {len(self.layout)} entries for {len(self.cn_sdp.media)} m-lines")

    def devices_in_use(self) -> tuple[str, ...]:
        return _devices_of(self.layout)

    def name(self, device: str) -> str:
        return "this phone" if device == MOBILE_NODE else self.names.get(device, device)


# Steps -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class InviteDevice:
    """INVITE a device into a new dialog offering ``offer`` (the CN's parameters, §5.2.1)."""

    device: str
    offer: SessionDescription


@dataclasses.dataclass(frozen=True, slots=True)
class ReinviteDevice:
    """re-INVITE a device already in a dialog with this call, offering ``offer``."""

    device: str
    offer: SessionDescription


@dataclasses.dataclass(frozen=True, slots=True)
class ReinviteCN:
    """re-INVITE the CN with `Plan.cn_offer` of the devices' answers."""


@dataclasses.dataclass(frozen=True, slots=True)
class AckCN:
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class AckDevice:
    """ACK the device's 200 to our INVITE (held back until the CN answered, RFC 3725 flow I)."""

    device: str


@dataclasses.dataclass(frozen=True, slots=True)
class CancelDevice:
    """CANCEL an INVITE the device never answered."""

    device: str


@dataclasses.dataclass(frozen=True, slots=True)
class ByeDevice:
    device: str


@dataclasses.dataclass(frozen=True, slots=True)
class StartLocalMedia:
    """Send (and play) the MN's own media on these m-lines again."""

    indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Grace:
    """Keep our own media flowing this long before stopping it (§7.1: the CN may not hear the
    devices yet)."""

    seconds: float


@dataclasses.dataclass(frozen=True, slots=True)
class StopLocalMedia:
    indices: tuple[int, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """One line telling the user what happened."""

    message: str


Step = (InviteDevice | ReinviteDevice | ReinviteCN | AckCN | AckDevice | CancelDevice | ByeDevice
        | StartLocalMedia | Grace | StopLocalMedia | Report)


class FailureKind(enum.Enum):
    DEVICE_REJECTED = "device rejected"
    DEVICE_NO_ANSWER = "device did not answer"
    CN_REJECTED = "CN rejected"


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A point where the plan can fail: a device's INVITE, or the CN's re-INVITE (device None)."""

    kind: FailureKind
    device: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """m-line ``index`` of the offer to the CN comes from m-line ``index`` of ``source``'s description."""

    index: int
    source: str  # a device key or MOBILE_NODE


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """The steps of one transfer, split or retrieval, and how to undo each failure."""

    call: CallState
    action: Literal["transfer", "split", "retrieve"]
    layout: Layout  # where the streams are once the plan has run
    steps: tuple[Step, ...]
    parts: tuple[Part, ...]  # what the re-INVITE to the CN is made of
    invited: tuple[str, ...]  # new dialogs, in the order they are INVITEd
    summary: str  # the line reported on success

    @property
    def failure_points(self) -> tuple[Failure, ...]:
        points = [Failure(kind, device) for device in self.invited
                  for kind in (FailureKind.DEVICE_REJECTED, FailureKind.DEVICE_NO_ANSWER)]
        return (*points, Failure(FailureKind.CN_REJECTED))

    def rollback(self, failure: Failure, detail: str = "") -> tuple[Step, ...]:
        """The steps that leave the call where it was after ``failure`` (``detail``: "486 Busy Here")."""
        if failure not in self.failure_points:
            raise ValueError(f"{failure} is not a failure point of this plan")
        why = f" ({detail})" if detail else ""
        if failure.kind is FailureKind.CN_REJECTED:
            answered = self.invited
            message = f"{self.action} of call {self.call.call_id} failed: {self.call.cn} refused " \
                      f"the new media{why}; the call stays as it was"
            steps: list[Step] = []
        else:
            assert failure.device is not None
            answered = self.invited[:self.invited.index(failure.device)]
            did = "rejected it" if failure.kind is FailureKind.DEVICE_REJECTED else "did not answer"
            message = f"{self.action} of call {self.call.call_id} failed: {self.call.name(failure.device)} " \
                      f"{did}{why}; the call stays as it was"
            steps = [CancelDevice(failure.device)] if failure.kind is FailureKind.DEVICE_NO_ANSWER else []
        for device in answered:
            steps += [AckDevice(device), ByeDevice(device)]
        return (*steps, Report(message))

    def cn_offer(self, answers: Mapping[str, SessionDescription], origin: Origin) -> SessionDescription:
        """The offer for `ReinviteCN`: devices' answers (new ones in ``answers``, others as they were)
        and our own description, stitched in the CN's m-line order (`sipmob.sdp.stitch`)."""
        known = {**self.call.device_sdps, **answers}
        pieces: list[tuple[int, SessionDescription, int]] = []
        for part in self.parts:
            if part.source == MOBILE_NODE:
                pieces.append((part.index, self.call.local_sdp, part.index))
            elif part.source in known:
                pieces.append((part.index, known[part.source], part.index))
            else:
                raise PlanError(f"no answer from {self.call.name(part.source)} to stitch")
        return stitch(pieces, self.call.cn_sdp, origin)

    def device_updates(self, cn_answer: SessionDescription) -> tuple[ReinviteDevice, ...]:
        """re-INVITEs for devices whose part of the CN's answer differs from what they were offered
        (§5.2.1 has the ACK carry it; RFC 3264 allows no offer in that ACK, so a re-INVITE it is)."""
        offers = {s.device: s.offer for s in self.steps if isinstance(s, InviteDevice)}
        fresh = _assignment_split(cn_answer, self.layout)
        return tuple(ReinviteDevice(d, fresh[d]) for d in self.invited
                     if d in fresh and not _offer_still_holds(offers[d], fresh[d]))


def _offer_still_holds(offered: SessionDescription, answered: SessionDescription) -> bool:
    """Whether what a device was offered still says where the CN's media is and what it may carry:
    the same streams at the same addresses, and no format the device was not offered. The CN
    answering with fewer formats (the ones the device chose, not the telephone-event it left out)
    changes nothing the device must hear of."""
    if len(offered.media) != len(answered.media):
        return False
    for i, (was, now) in enumerate(zip(offered.media, answered.media, strict=True)):
        if (was.port, str(offered.connection_for(i))) != (now.port, str(answered.connection_for(i))):
            return False
        if not set(now.formats) <= set(was.formats):
            return False
    return True


def _devices_of(layout: Iterable[Location]) -> tuple[str, ...]:
    out: list[str] = []
    for location in layout:
        found = ((location.output_device, location.input_device) if isinstance(location, DuplexSplit)
                 else (location,) if location is not None else ())
        out += [d for d in found if d != MOBILE_NODE and d not in out]
    return tuple(out)


def _holds(location: Location, device: str) -> bool:
    if isinstance(location, DuplexSplit):
        return device in (location.output_device, location.input_device)
    return location == device


def _assignment_split(cn_sdp: SessionDescription, layout: Layout) -> dict[str, SessionDescription]:
    assignment: dict[int, str | DuplexSplit[str]] = {
        i: loc for i, loc in enumerate(layout)
        if loc is not None and loc != MOBILE_NODE and not (isinstance(loc, DuplexSplit) and MOBILE_NODE in
                                                             (loc.output_device, loc.input_device))}
    return split(cn_sdp, assignment) if assignment else {}


def _slp_codecs(names: Sequence[str], cn_side: MediaDescription) -> tuple[Codec, ...]:
    """SLP codec names as `Codec`s, with the CN's rate and channels for a name it shares."""
    theirs = {c.encoding.lower(): c for _, c in codecs_of(cn_side)}
    out: list[Codec] = []
    for name in names:
        if name.lower() in theirs:
            c = theirs[name.lower()]
            out.append(Codec(name, c.clock_rate, c.channels, c.fmtp))
        else:
            out.append(Codec(name, _CLOCK_RATES.get(name.lower(), 0), 2 if name.lower() == "opus" else 1))
    return tuple(out)


def check_codecs(call: CallState, targets: Mapping[int, Sequence[Device]],
                 cn_capabilities: SessionDescription | None = None) -> str | None:
    """§6.1: None when every moved stream has a codec in common between the CN and its devices,
    else one sentence naming the codecs on each side. ``cn_capabilities`` is the body of the CN's
    answer to OPTIONS; without one, the codecs of its current description are used."""
    gap = codec_gap(call, targets, cn_capabilities)
    return None if gap is None else str(gap)


def codec_gap(call: CallState, targets: Mapping[int, Sequence[Device]],
              cn_capabilities: SessionDescription | None = None) -> NoCommonCodec | None:
    """The first moved stream and device without a common codec (`check_codecs`), or None."""
    for index, devices in sorted(targets.items()):
        current = call.cn_sdp.media[index]
        cn_side = current
        if cn_capabilities is not None:
            cn_side = next((m for m in cn_capabilities.media if m.media == current.media and m.is_rtp),
                           current)
        for device in devices:
            names = device.codecs(current.media)
            if not names or not current.is_rtp:
                continue  # SLP did not say: the device's answer will
            reason = no_common_codec(cn_side, _slp_codecs(names, cn_side), a_name=call.cn,
                                     b_name=device.name, media=current.media)
            if reason is not None:
                return NoCommonCodec(reason, index, device, current.media)
    return None


def _indices(call: CallState, media: MediaChoice) -> tuple[int, ...]:
    return tuple(i for i, m in enumerate(call.cn_sdp.media)
                 if call.layout[i] is not None and m.port != 0 and (media == "all" or m.media == media))


def _need(call: CallState, index: int) -> Literal["sendrecv", "recvonly", "sendonly"]:
    # The device takes the MN's place: it must do what the CN expects of the MN (the reverse of
    # the CN's direction).
    direction = call.cn_sdp.direction(index).reversed()
    if direction.sends and direction.receives:
        return "sendrecv"
    return "sendonly" if direction.sends else "recvonly"


def _build(call: CallState, action: Literal["transfer", "split", "retrieve"],
           new_layout: Layout, grace: float, summary: str) -> Plan:
    old_devices = call.devices_in_use()
    new_devices = _devices_of(new_layout)
    invited = tuple(d for d in new_devices if d not in old_devices)
    offers = _assignment_split(call.cn_sdp, new_layout)
    leaving_mn = tuple(i for i, (old, new) in enumerate(zip(call.layout, new_layout, strict=True))
                       if old == MOBILE_NODE and new != MOBILE_NODE)
    coming_home = tuple(i for i, (old, new) in enumerate(zip(call.layout, new_layout, strict=True))
                        if new == MOBILE_NODE and old != MOBILE_NODE)
    parts: list[Part] = []
    for i, location in enumerate(new_layout):
        if isinstance(location, DuplexSplit):
            parts += [Part(i, location.output_device), Part(i, location.input_device)]
        elif location is not None:
            parts.append(Part(i, location))
    steps: list[Step] = [InviteDevice(d, offers[d]) for d in invited]
    steps += [ReinviteCN(), AckCN()]
    steps += [AckDevice(d) for d in invited]
    if coming_home:
        steps.append(StartLocalMedia(coming_home))
    if leaving_mn:
        steps += [Grace(grace), StopLocalMedia(leaving_mn)]
    for device in old_devices:
        if device not in new_devices:
            steps.append(ByeDevice(device))
        elif [_holds(loc, device) for loc in call.layout] != [_holds(loc, device) for loc in new_layout]:
            steps.append(ReinviteDevice(device, offers[device]))
    steps.append(Report(summary))
    return Plan(call, action, new_layout, tuple(steps), tuple(parts), invited, summary)


def _where(call: CallState, layout: Layout) -> str:
    said: list[str] = []
    for i, location in enumerate(layout):
        kind = call.cn_sdp.media[i].media
        if isinstance(location, DuplexSplit):
            said.append(f"{kind} out on {call.name(location.output_device)}, "
                        f"{kind} in from {call.name(location.input_device)}")
        elif location is not None:
            said.append(f"{kind} on {call.name(location)}")
    return "; ".join(dict.fromkeys(said))


def where(call: CallState) -> str:
    """Where each stream of ``call`` is, in words ("audio on Desk phone; video on TV")."""
    return _where(call, call.layout)


def _check_free(call: CallState, devices: Iterable[str], moved: Sequence[int]) -> None:
    """A device already carrying a stream this plan does not move cannot take another one: that
    would need a re-INVITE of a live device whose failure we cannot undo."""
    for device in devices:
        for i, location in enumerate(call.layout):
            if _holds(location, device) and i not in moved:
                raise PlanError(f"{call.name(device)} already carries the {call.cn_sdp.media[i].media} "
                                f"of call {call.call_id}; retrieve it first")
        if any(_holds(call.layout[i], device) for i in moved):
            raise PlanError(f"{call.name(device)} already carries that media of call {call.call_id}")


def plan_transfer(call: CallState, devices: Sequence[Device], media: MediaChoice = "all", *,
                  grace: float = 1.0, cn_capabilities: SessionDescription | None = None) -> Plan:
    """Move the ``media`` streams of ``call`` to ``devices`` (Fig. 2 with one device, Fig. 3 with
    several): each stream goes to the first device listed that handles it in both directions."""
    if not devices:
        raise PlanError("no device given")
    moved = _indices(call, media)
    if not moved:
        raise PlanError(f"call {call.call_id} has no active {'media' if media == 'all' else media} stream")
    names = {**call.names, **{d.uri: d.name for d in devices}}
    call = dataclasses.replace(call, names=names)
    layout = list(call.layout)
    targets: dict[int, Sequence[Device]] = {}
    for i in moved:
        kind = call.cn_sdp.media[i].media
        need = _need(call, i)
        device = next((d for d in devices if d.handles(kind, need)), None)
        if device is None:
            listed = ", ".join(d.name for d in devices)
            raise PlanError(f"none of {listed} can {'play and capture' if need == 'sendrecv' else 'take'} "
                            f"{kind}; use split to send its two directions to two devices")
        layout[i] = device.uri
        targets[i] = (device,)
    _check_free(call, {d.uri for d in targets_flat(targets)}, moved)
    gap = codec_gap(call, targets, cn_capabilities)
    if gap is not None:
        raise gap
    new_layout = tuple(layout)
    return _build(call, "transfer", new_layout, grace,
                  f"call {call.call_id}: {_where(call, new_layout)}")


def targets_flat(targets: Mapping[int, Sequence[Device]]) -> tuple[Device, ...]:
    out: list[Device] = []
    for devices in targets.values():
        out += [d for d in devices if d not in out]
    return tuple(out)


def plan_split(call: CallState, video_out: Device, video_in: Device, audio: Device | None = None, *,
               grace: float = 1.0, cn_capabilities: SessionDescription | None = None) -> Plan:
    """Split video by direction: what the CN sends to ``video_out`` (a display), what it receives
    from ``video_in`` (a camera) (§5.1.2, §5.2.2); audio to ``audio`` if given, else where it is."""
    video = _indices(call, "video")
    if not video:
        raise PlanError(f"call {call.call_id} has no active video stream to split")
    if video_out.uri == video_in.uri:
        raise PlanError("the display and the camera must be two devices (use transfer for one)")
    devices = [video_out, video_in, *([audio] if audio is not None else [])]
    names = {**call.names, **{d.uri: d.name for d in devices}}
    call = dataclasses.replace(call, names=names)
    if not video_out.handles("video", "recvonly"):
        raise PlanError(f"{video_out.name} cannot show video "
                        f"(its media: {', '.join(sorted(video_out.media))})")
    if not video_in.handles("video", "sendonly"):
        raise PlanError(f"{video_in.name} cannot capture video "
                        f"(its media: {', '.join(sorted(video_in.media))})")
    layout = list(call.layout)
    targets: dict[int, Sequence[Device]] = {}
    for i in video:
        layout[i] = DuplexSplit(video_out.uri, video_in.uri)
        targets[i] = (video_out, video_in)
    moved = list(video)
    if audio is not None:
        for i in _indices(call, "audio"):
            if not audio.handles("audio", _need(call, i)):
                raise PlanError(f"{audio.name} cannot play and capture audio")
            layout[i] = audio.uri
            targets[i] = (audio,)
            moved.append(i)
    _check_free(call, {d.uri for d in devices}, moved)
    gap = codec_gap(call, targets, cn_capabilities)
    if gap is not None:
        raise gap
    new_layout = tuple(layout)
    return _build(call, "split", new_layout, grace, f"call {call.call_id}: {_where(call, new_layout)}")


def plan_retrieve(call: CallState, media: MediaChoice = "all") -> Plan:
    """Bring the ``media`` streams back to the MN (§5.2.3): re-INVITE the CN with our own
    parameters, then BYE the devices left with nothing (re-INVITE those that keep a stream)."""
    moved = tuple(i for i in _indices(call, media) if call.layout[i] != MOBILE_NODE)
    if not moved:
        raise PlanError(f"call {call.call_id}: {'its media' if media == 'all' else media} is already "
                        f"on this phone")
    layout = tuple(MOBILE_NODE if i in moved else loc for i, loc in enumerate(call.layout))
    return _build(call, "retrieve", layout, 0.0, f"call {call.call_id}: {_where(call, layout)}")


def initial_layout(cn_sdp: SessionDescription) -> Layout:
    """Every active stream on the MN, as a call starts."""
    return tuple(None if m.port == 0 else MOBILE_NODE for m in cn_sdp.media)
