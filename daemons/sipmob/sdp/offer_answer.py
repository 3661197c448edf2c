"""The SDP offer/answer model (RFC 3264): answering an offer, reading the outcome, tracking a dialog.

- `answer` builds the answer a device with given `LocalCapabilities` gives to an offer: the same
  m-lines in the same order (§6), codecs intersected and the offer's payload type numbers kept (§6.1),
  streams it cannot take rejected with port 0 and a valid format list, direction answered per §6.1.
- `negotiate` reads an offer and its answer into what the media layer needs per stream (`Negotiated`):
  accepted or not, where to send, which codecs and payload numbers each way, which direction.
- `common_codecs` / `no_common_codec` say what two sides share, or one sentence naming what each side
  has when they share nothing, for the refusal a person reads.
- `hold` / `resume` / `puts_on_hold`: §8.4 hold, both the ``a=sendonly``/``inactive`` way and the
  RFC 2543 ``c=0.0.0.0`` way (recognised, never produced).
- `answer_again`: the answer to an offer inside an established session (§8), from the session's
  real state: our ports kept, our own hold kept, the codec in use kept first, streams added or
  removed by the offerer answered, an unchanged offer answered with an unchanged description.
- `hold_state`: who holds a stream (the peer, us, both), as a person reads it.
- `OfferAnswerState`: our side of one dialog: which offer is outstanding, the last descriptions agreed,
  and the ``o=`` version rule of §8 (+1 on every change, unchanged when the description is unchanged;
  m-lines may be added but never removed).

Not here: SIP (which message carries which description is the dialog's business), parsing
(`sipmob.sdp.session`), combining several devices into one description (`sipmob.sdp.stitch`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import Literal, cast

from sipmob.sdp.session import (
    Attribute,
    Connection,
    Direction,
    MediaDescription,
    Origin,
    SessionDescription,
    Timing,
)


class OfferAnswerError(ValueError):
    """An offer/answer exchange that breaks RFC 3264 (or an operation made in the wrong state)."""


# Formats that ride along with a real codec and cannot carry a call on their own.
AUXILIARY_ENCODINGS = frozenset({"telephone-event", "cn", "red", "ulpfec", "flexfec", "rtx"})


@dataclasses.dataclass(frozen=True, slots=True)
class Codec:
    """An RTP payload format by what it is, not by its payload type number."""

    encoding: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def auxiliary(self) -> bool:
        return self.encoding.lower() in AUXILIARY_ENCODINGS

    def matches(self, other: Codec) -> bool:
        """Same format: name (case-insensitively), clock rate, channels, and compatible fmtp."""
        return (self.encoding.lower() == other.encoding.lower()
                and self.clock_rate == other.clock_rate and self.channels == other.channels
                and fmtp_compatible(self.encoding, self.fmtp, other.fmtp))

    def __str__(self) -> str:
        text = f"{self.encoding}/{self.clock_rate}"
        return text if self.channels == 1 else f"{text}/{self.channels}"


def _fmtp_params(fmtp: str | None) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in (fmtp or "").split(";"):
        key, _, value = item.strip().partition("=")
        if key:
            params[key.strip().lower()] = value.strip()
    return params


def _events(fmtp: str | None) -> set[int]:
    """RFC 4733 §2.4.1: the events list; 0-15 when absent."""
    events: set[int] = set()
    for item in (fmtp or "0-15").replace(" ", "").split(","):
        lo, _, hi = item.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            first, last = int(lo), int(hi or lo)
            events.update(range(first, min(last, 255) + 1))
    return events


def _events_text(events: set[int]) -> str:
    ranges: list[str] = []
    for event in sorted(events):
        if ranges and "-" not in ranges[-1] and int(ranges[-1]) == event - 1:
            ranges[-1] = f"{event - 1}-{event}"
        elif ranges and "-" in ranges[-1] and int(ranges[-1].split("-")[1]) == event - 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{event}"
        else:
            ranges.append(str(event))
    return ",".join(ranges)


def fmtp_compatible(encoding: str, a: str | None, b: str | None) -> bool:
    """Whether two fmtp lines of the same encoding describe formats that can interwork.

    Only the parameters that change the bitstream are compared; the rest are preferences each side
    may state independently.
    """
    name = encoding.lower()
    if name == "telephone-event":
        return bool(_events(a) & _events(b))
    pa, pb = _fmtp_params(a), _fmtp_params(b)
    if name == "h264":  # RFC 6184 §8.1: packetization mode must agree; so must the profile
        return (pa.get("packetization-mode", "0") == pb.get("packetization-mode", "0")
                and pa.get("profile-level-id", "42")[:2].lower()
                == pb.get("profile-level-id", "42")[:2].lower())
    if name in ("amr", "amr-wb"):  # RFC 4867 §8.3: octet-aligned and bandwidth-efficient differ
        return pa.get("octet-align", "0") == pb.get("octet-align", "0")
    return True


def codecs_of(media: MediaDescription) -> tuple[tuple[int, Codec], ...]:
    """The payload types of an m-line with the codec each stands for (unknown dynamic ones skipped)."""
    out: list[tuple[int, Codec]] = []
    for pt in media.payload_types:
        rtpmap = media.rtpmap(pt)
        if rtpmap is not None:
            out.append((pt, Codec(rtpmap.encoding, rtpmap.clock_rate, rtpmap.channels, media.fmtp(pt))))
    return tuple(out)


def _as_codecs(side: MediaDescription | Iterable[Codec]) -> tuple[Codec, ...]:
    if isinstance(side, MediaDescription):
        return tuple(codec for _, codec in codecs_of(side))
    return tuple(side)


def common_codecs(a: MediaDescription | Iterable[Codec],
                  b: MediaDescription | Iterable[Codec]) -> tuple[Codec, ...]:
    """The codecs of ``a`` that ``b`` also has, in ``a``'s order of preference."""
    theirs = _as_codecs(b)
    return tuple(c for c in _as_codecs(a) if any(c.matches(o) for o in theirs))


def no_common_codec(a: MediaDescription | Iterable[Codec], b: MediaDescription | Iterable[Codec], *,
                    a_name: str, b_name: str, media: str | None = None) -> str | None:
    """None when ``a`` and ``b`` share a codec that can carry media, else one sentence naming both sides.

    telephone-event, comfort noise and the like do not count: a call cannot be made of them.
    """
    if any(not c.auxiliary for c in common_codecs(a, b)):
        return None
    kind = media or next((s.media for s in (a, b) if isinstance(s, MediaDescription)), "media")

    def names(side: MediaDescription | Iterable[Codec]) -> str:
        return ", ".join(str(c) for c in _as_codecs(side) if not c.auxiliary) or "none"

    return f"no common {kind} codec: {a_name} has {names(a)}; {b_name} has {names(b)}"


@dataclasses.dataclass(frozen=True, slots=True)
class MediaCapability:
    """What a device can do with one kind of media: its codecs in order of preference, and whether
    it can send, receive or both (a display only receives video, a camera only sends it)."""

    media: str
    codecs: tuple[Codec, ...]
    direction: Direction = Direction.SENDRECV
    protos: tuple[str, ...] = ("RTP/AVP",)
    # Added verbatim to every m-line of this media the device accepts (a=ptime:20, a=rtcp-mux...).
    attributes: tuple[Attribute, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class LocalCapabilities:
    media: tuple[MediaCapability, ...]

    def for_media(self, media: str) -> MediaCapability | None:
        return next((m for m in self.media if m.media == media), None)


def _rejected(offered: MediaDescription) -> MediaDescription:
    """§6: port 0, and the format list still valid: the offer's first format with its rtpmap."""
    fmt = offered.formats[0]
    attrs = [Attribute("mid", offered.mid)] if offered.mid is not None else []
    attrs += [a for a in offered.attributes
              if a.name == "rtpmap" and a.value is not None and a.value.split(" ", 1)[0] == fmt]
    return MediaDescription(offered.media, 0, offered.proto, (fmt,), attributes=tuple(attrs))


def _port_for(ports: Mapping[int, int] | Mapping[str, int], index: int, media: str) -> int | None:
    lookup = cast(Mapping[object, int], ports)
    return lookup.get(index, lookup.get(media))


def answer(offer: SessionDescription, local: LocalCapabilities, *, origin: Origin,
           connection_address: str, ports: Mapping[int, int] | Mapping[str, int],
           prefer: Literal["offer", "local"] = "offer", session_name: str = " ") -> SessionDescription:
    """The answer a device with ``local`` capabilities gives to ``offer`` (RFC 3264 §6).

    ``ports`` gives the receive port per m-line index or, failing that, per media type; a stream the
    device could take but has no port for is a programming error (`OfferAnswerError`). ``prefer``
    orders the accepted codecs: the offerer's order (the default, §6.1) or the device's own.
    """
    out: list[MediaDescription] = []
    for index, offered in enumerate(offer.media):
        cap = local.for_media(offered.media)
        if offered.port == 0 or cap is None or offered.proto not in cap.protos:
            out.append(_rejected(offered))
            continue
        chosen: list[tuple[int, Codec, int]] = []  # (offered pt, offered codec, local preference)
        for pt, codec in codecs_of(offered):
            rank = next((i for i, c in enumerate(cap.codecs) if c.matches(codec)), None)
            if rank is not None:
                chosen.append((pt, codec, rank))
        offered_all_auxiliary = all(c.auxiliary for _, c in codecs_of(offered))
        if not chosen or (not offered_all_auxiliary and all(c.auxiliary for _, c, _ in chosen)):
            out.append(_rejected(offered))
            continue
        port = _port_for(ports, index, offered.media)
        if port is None:
            raise OfferAnswerError(f"no local port given for m-line {index} ({offered.media})")
        if prefer == "local":
            chosen.sort(key=lambda item: item[2])
        attrs: list[Attribute] = []
        if offered.mid is not None:
            attrs.append(Attribute("mid", offered.mid))  # RFC 5888 §9.1: the answer echoes mid
        for pt, codec, rank in chosen:
            attrs.append(Attribute("rtpmap", f"{pt} {codec}"))
            fmtp = codec.fmtp
            if codec.encoding.lower() == "telephone-event" and cap.codecs[rank].fmtp is not None:
                fmtp = _events_text(_events(codec.fmtp) & _events(cap.codecs[rank].fmtp))
            if fmtp is not None:
                attrs.append(Attribute("fmtp", f"{pt} {fmtp}"))
        attrs.extend(cap.attributes)
        # §6.1: sendonly is answered recvonly, recvonly sendonly, within what the device can do.
        direction = offer.direction(index).reversed().intersect(cap.direction)
        if direction is not Direction.SENDRECV:
            attrs.append(Attribute(direction.value))
        out.append(MediaDescription(offered.media, port, offered.proto,
                                    tuple(str(pt) for pt, _, _ in chosen), attributes=tuple(attrs)))
    return SessionDescription(origin=origin, session_name=session_name, timings=(Timing(),),
                              connection=Connection.for_address(connection_address), media=tuple(out))


# --- reading the outcome ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class NegotiatedCodec:
    """A codec both sides agreed on; each direction uses the receiver's payload number (§5.1)."""

    codec: Codec
    send_payload_type: int
    recv_payload_type: int


@dataclasses.dataclass(frozen=True, slots=True)
class NegotiatedStream:
    index: int
    media: str
    accepted: bool
    direction: Direction  # ours, after both descriptions and any 0.0.0.0 hold
    remote_address: str | None
    remote_port: int
    remote_rtcp_address: str | None
    remote_rtcp_port: int | None
    codecs: tuple[NegotiatedCodec, ...]

    @property
    def primary(self) -> NegotiatedCodec | None:
        """The first agreed codec that carries media (not telephone-event or comfort noise)."""
        return next((c for c in self.codecs if not c.codec.auxiliary), None)


@dataclasses.dataclass(frozen=True, slots=True)
class Negotiated:
    streams: tuple[NegotiatedStream, ...]

    @property
    def accepted(self) -> tuple[NegotiatedStream, ...]:
        return tuple(s for s in self.streams if s.accepted)


def negotiate(offer: SessionDescription, answer: SessionDescription, *,
              local: Literal["offerer", "answerer"] = "offerer") -> Negotiated:
    """What an offer and its answer agreed, per m-line, from the ``local`` side's point of view."""
    if len(offer.media) != len(answer.media):
        raise OfferAnswerError(f"the answer has {len(answer.media)} m-lines, the offer "
                               f"{len(offer.media)} (RFC 3264 §6 requires the same number)")
    remote = answer if local == "offerer" else offer
    streams: list[NegotiatedStream] = []
    for index, (o, a) in enumerate(zip(offer.media, answer.media, strict=True)):
        if o.media != a.media:
            raise OfferAnswerError(f"m-line {index} is {o.media} in the offer but {a.media} in the answer")
        offered = codecs_of(o)
        codecs: list[NegotiatedCodec] = []
        for apt, acodec in codecs_of(a):
            # Prefer the same number; RFC 4317 §2.3 shows an answer may renumber a dynamic type.
            match = next((opt for opt, oc in offered if opt == apt and oc.matches(acodec)), None)
            if match is None:
                match = next((opt for opt, oc in offered if oc.matches(acodec)), None)
            if match is not None:
                send, recv = (apt, match) if local == "offerer" else (match, apt)
                codecs.append(NegotiatedCodec(acodec, send, recv))
        accepted = o.port != 0 and a.port != 0 and bool(codecs)
        mine, theirs = ((offer.direction(index), answer.direction(index)) if local == "offerer"
                        else (answer.direction(index), offer.direction(index)))
        direction = mine.intersect(theirs.reversed())
        conn = remote.connection_for(index)
        if conn is not None and conn.is_null:  # RFC 3264 §8.4: RFC 2543 hold, nowhere to send
            direction = direction.intersect(Direction.RECVONLY)
        if not accepted:
            direction = Direction.INACTIVE
        rm = remote.media[index]
        rtcp = rm.rtcp
        rtcp_conn = rtcp.connection if rtcp is not None and rtcp.connection is not None else conn
        streams.append(NegotiatedStream(
            index=index, media=o.media, accepted=accepted, direction=direction,
            remote_address=conn.host if conn is not None else None, remote_port=rm.port,
            remote_rtcp_address=rtcp_conn.host if rtcp_conn is not None else None,
            remote_rtcp_port=(rtcp.port if rtcp is not None else rm.port + 1) if rm.port else None,
            codecs=tuple(codecs)))
    return Negotiated(tuple(streams))


# --- hold -------------------------------------------------------------------------------------------

def _indices(sdp: SessionDescription, index: int | Iterable[int] | None) -> list[int]:
    if index is None:
        return [i for i, m in enumerate(sdp.media) if m.port != 0]
    return [index] if isinstance(index, int) else list(index)


def hold(sdp: SessionDescription, index: int | Iterable[int] | None = None, *,
         inactive: bool = False) -> SessionDescription:
    """Our description with the stream(s) on hold (§8.4): sendrecv becomes sendonly, recvonly
    inactive; with ``inactive`` every held stream becomes inactive. Default: every active m-line."""
    for i in _indices(sdp, index):
        held = Direction.INACTIVE if inactive else sdp.direction(i).intersect(Direction.SENDONLY)
        sdp = sdp.with_direction(held, i)
    return sdp


def resume(sdp: SessionDescription, index: int | Iterable[int] | None = None, *,
           direction: Direction = Direction.SENDRECV) -> SessionDescription:
    """Take the stream(s) off hold, back to ``direction`` (sendrecv unless the device is one-way)."""
    for i in _indices(sdp, index):
        sdp = sdp.with_direction(direction, i)
    return sdp


def puts_on_hold(sdp: SessionDescription, index: int) -> bool:
    """Whether a peer's description of m-line ``index`` asks us not to send (it will not receive)."""
    conn = sdp.connection_for(index)
    return not sdp.direction(index).receives or (conn is not None and conn.is_null)


# --- offers inside an established session (§8) --------------------------------------------------

def answer_again(offer: SessionDescription, ours: SessionDescription, local: LocalCapabilities, *,
                 new_ports: Mapping[int, int] | None = None,
                 limits: Mapping[int, Direction] | None = None,
                 in_use: Mapping[int, Codec] | None = None) -> SessionDescription:
    """Our answer to ``offer``, a new offer in a session where ``ours`` is our current description.

    Streams we already carry keep our address and port (§8.3.1: the offerer moving its own media
    changes nothing on our side); a stream the offer adds is taken on ``new_ports[index]`` when
    given, else rejected with port 0 (§8.2 allows that); a stream the offer disables (port 0) is
    answered with port 0 (§8.2). ``limits`` is our own wish per stream (sendonly while we hold it):
    the answered direction is the reverse of the offer's within it and within what the device can
    do (§8.4). ``in_use`` is the codec each stream carries now: kept first when still offered, so
    a re-offer of the same codecs does not switch codecs mid-call. The answer is the same value for
    the same offer and state, so a session refresh is answered with an unchanged description (the
    caller's `OfferAnswerState` then keeps the ``o=`` version).
    """
    new_ports = new_ports or {}
    limits = limits or {}
    in_use = in_use or {}
    ports: dict[int, int] = {}
    taken: list[MediaDescription] = []
    for index, offered in enumerate(offer.media):
        current = ours.media[index].port if index < len(ours.media) else 0
        port = current or new_ports.get(index, 0)
        if port:
            ports[index] = port
            taken.append(offered)
        else:
            taken.append(dataclasses.replace(offered, port=0))
    address = ours.connection.host if ours.connection is not None else ours.origin.address
    base = answer(dataclasses.replace(offer, media=tuple(taken)), local, origin=ours.origin,
                  connection_address=address, ports=ports, session_name=ours.session_name)
    media = list(base.media)
    for index, m in enumerate(media):
        if m.port == 0:
            continue
        codec = in_use.get(index)
        if codec is not None:
            first = next((pt for pt, c in codecs_of(m) if c.matches(codec)), None)
            if first is not None and m.formats[0] != str(first):
                m = dataclasses.replace(m, formats=(str(first), *(f for f in m.formats if f != str(first))))
        limit = limits.get(index)
        if limit is not None:
            direction = m.direction.intersect(limit)
            m = m.with_direction(None if direction is Direction.SENDRECV else direction)
        media[index] = m
    return dataclasses.replace(base, media=tuple(media))


HoldState = Literal["", "held by the remote party", "on hold", "on hold both ways"]


def hold_state(ours: SessionDescription, theirs: SessionDescription, index: int) -> HoldState:
    """Who holds m-line ``index``, from our description and the peer's last one.

    The peer holds when its description says it will not receive (``sendonly``, ``inactive``, or
    the RFC 2543 ``c=0.0.0.0``), we hold when ours says so. SDP does not say who asked first, so an
    ``inactive`` answered ``inactive`` reads as held both ways.
    """
    if index >= len(ours.media) or index >= len(theirs.media) or ours.media[index].port == 0:
        return ""
    by_peer = puts_on_hold(theirs, index)
    by_us = not ours.direction(index).receives
    if by_peer and by_us:
        return "on hold both ways"
    return "held by the remote party" if by_peer else "on hold" if by_us else ""


# --- one dialog's offer/answer state ----------------------------------------------------------------

class Pending(enum.Enum):
    NONE = "none"
    LOCAL_OFFER = "local offer"
    REMOTE_OFFER = "remote offer"


class OfferAnswerState:
    """Our side of the offer/answer exchanges of one dialog (RFC 3264 §4, §8).

    Every description we send goes through `create_offer` or `create_answer`, which stamp it with our
    ``o=`` line: the version goes up by one whenever the description differs from the last one we
    sent and stays when it does not. Only one offer may be outstanding at a time; an offer arriving
    while ours is outstanding is glare (SIP answers 491), reported as `OfferAnswerError`.
    """

    def __init__(self, origin: Origin) -> None:
        self._origin = origin
        self._last_sent: SessionDescription | None = None
        self._force_bump = False
        self._offer: SessionDescription | None = None
        self.pending = Pending.NONE
        self.local: SessionDescription | None = None  # last agreed, ours
        self.remote: SessionDescription | None = None  # last agreed, theirs
        self.negotiated: Negotiated | None = None

    @property
    def origin(self) -> Origin:
        return self._origin

    def _stamp(self, sdp: SessionDescription) -> SessionDescription:
        stamped = sdp.with_origin(self._origin)
        if self._last_sent is not None and (stamped != self._last_sent or self._force_bump):
            self._origin = dataclasses.replace(self._origin, sess_version=self._origin.sess_version + 1)
            stamped = sdp.with_origin(self._origin)
        self._last_sent = stamped
        self._force_bump = False
        return stamped

    def _check_growth(self, sdp: SessionDescription, who: str) -> None:
        if self.local is not None and len(sdp.media) < len(self.local.media):
            raise OfferAnswerError(f"{who} offer has {len(sdp.media)} m-lines, fewer than the "
                                   f"{len(self.local.media)} agreed (RFC 3264 §8: disable with port 0)")

    def create_offer(self, sdp: SessionDescription) -> SessionDescription:
        """Stamp and record an offer we are about to send."""
        if self.pending is not Pending.NONE:
            raise OfferAnswerError(f"cannot offer: a {self.pending.value} is outstanding")
        self._check_growth(sdp, "our")
        self._offer = self._stamp(sdp)
        self.pending = Pending.LOCAL_OFFER
        return self._offer

    def receive_answer(self, sdp: SessionDescription) -> Negotiated:
        if self.pending is not Pending.LOCAL_OFFER or self._offer is None:
            raise OfferAnswerError("an answer arrived but we have no offer outstanding")
        negotiated = negotiate(self._offer, sdp, local="offerer")
        self.local, self.remote, self.negotiated = self._offer, sdp, negotiated
        self._offer, self.pending = None, Pending.NONE
        return negotiated

    def receive_offer(self, sdp: SessionDescription) -> None:
        if self.pending is not Pending.NONE:
            raise OfferAnswerError(f"offer received while a {self.pending.value} is outstanding (glare)")
        self._check_growth(sdp, "their")
        self._offer, self.pending = sdp, Pending.REMOTE_OFFER

    def create_answer(self, sdp: SessionDescription) -> tuple[SessionDescription, Negotiated]:
        """Stamp and record the answer we send to the outstanding remote offer."""
        if self.pending is not Pending.REMOTE_OFFER or self._offer is None:
            raise OfferAnswerError("cannot answer: no remote offer is outstanding")
        negotiated = negotiate(self._offer, sdp, local="answerer")  # checks before we stamp
        stamped = self._stamp(sdp)
        self.local, self.remote, self.negotiated = stamped, self._offer, negotiated
        self._offer, self.pending = None, Pending.NONE
        return stamped, negotiated

    def rollback(self) -> None:
        """Forget the outstanding offer (its re-INVITE failed; the session stays as it was,
        RFC 3261 §14.1). Our next description gets a new version even if it repeats the failed one."""
        if self.pending is Pending.LOCAL_OFFER:
            self._force_bump = True
        self._offer, self.pending = None, Pending.NONE
