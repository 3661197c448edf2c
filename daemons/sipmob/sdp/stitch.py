"""Stitching several devices' descriptions into one, and splitting one into several (3PCC).

In Mobile Node Control mode (session mobility draft §5.2) the mobile node INVITEs each local device
with the correspondent node's (CN's) description, then re-INVITEs the CN with one offer made of the
devices' answers, and later splits the CN's description back into one per device.

`split(cn_sdp, assignment)` derives the description to send to each device. ``assignment`` maps an
m-line index of the CN's description to a device, or to a `DuplexSplit` of that stream between an
output device and an input device. Each device gets the CN's whole description with its own m-lines
as they are and every other m-line disabled (port 0), so its answer has the CN's m-line count and
order and m-line *i* of the answer belongs to m-line *i* of the CN.

`stitch(parts, template, origin)` builds the offer to the CN: m-line *i* of the result is m-line *k*
of the device description named by a part ``(i, device_sdp, k)``. The result keeps the template's
(the CN's) m-line count and order (RFC 3264 §8); template m-lines no part covers are disabled. Each
lifted m-line keeps its device's attributes, bandwidth and key lines verbatim, and carries its
device's connection address in a media-level ``c=`` (devices differ), except that the session-level
``c=`` is the first active part's and m-lines at that address do not repeat it. A session-level
direction attribute of a device is moved onto its m-lines. Other session-level attributes and
unknown lines of the parts are kept once each; session-level ``b=`` only when a single device
contributes (two devices' session totals cannot be added up truthfully); a device's ``i=``, ``u=``,
``e=``, ``p=``, ``k=`` at session level describe its own session and are dropped.

Full-duplex split (draft §5.1.2, §5.2.2): the two directions of one stream go to two devices, e.g.
video from the CN to a TV and video to the CN from a camera. `split` offers the CN's m-line to the
output device as ``sendonly`` (the CN only sends to it) and to the input device as ``recvonly`` (the CN
only receives from it); their answers say ``recvonly`` and ``sendonly``. `stitch`, given both answers
for the same template index, merges them into ONE ``sendrecv`` m-line: port and ``c=`` are the output
device's (an SDP address is where its describer receives, so the CN sends there), the formats are the
output device's payload types that the input device can also send, its attributes come first and the
input device's attributes the output device lacks are appended (except per-format and receive-side
ones: rtpmap, fmtp, rtcp, ptime, maxptime, mid, direction). The input device sends to the CN's
address, which it already has from its own offer. The draft's example instead offers the CN two
one-way m-lines; we keep one so that the CN's m-line count does not change and CNs that handle a
single video stream (most phones) still take it. Side effect: the CN's RTCP reports go to the output
device. `split` of the CN's answer with the same assignment gives each device its part again
(``sendonly`` to the output device, ``recvonly`` to the input device).

Not here: SIP dialogs and which device is which (the mobile node), the ``o=`` version rule of each
dialog (`sipmob.sdp.offer_answer.OfferAnswerState`: pass the results through it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping, Sequence
from typing import Generic, TypeVar

from sipmob.sdp.offer_answer import codecs_of, no_common_codec
from sipmob.sdp.session import (
    DIRECTION_NAMES,
    Attribute,
    Bandwidth,
    Connection,
    Direction,
    MediaDescription,
    Origin,
    SessionDescription,
    Timing,
)

D = TypeVar("D", bound=Hashable)


class StitchError(ValueError):
    """The parts cannot make one valid description (wrong media, indices, directions, no codec)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DuplexSplit(Generic[D]):
    """One stream of the CN split by direction between two devices."""

    output_device: D  # plays what the CN sends (display, speaker)
    input_device: D  # captures what the CN receives (camera, microphone)


def _disabled(m: MediaDescription) -> MediaDescription:
    """Port 0, same formats, their rtpmaps and mid kept so the line stays meaningful (RFC 3264 §8.2)."""
    keep = tuple(a for a in m.attributes if a.name in ("mid", "rtpmap"))
    return MediaDescription(m.media, 0, m.proto, m.formats, connection=m.connection, attributes=keep)


def split(sdp: SessionDescription,
          assignment: Mapping[int, D | DuplexSplit[D]]) -> dict[D, SessionDescription]:
    """The description to offer each device: its m-lines active, every other m-line port 0."""
    for index in assignment:
        if not 0 <= index < len(sdp.media):
            raise StitchError(f"m-line {index} does not exist (the description has {len(sdp.media)})")
    sdp = sdp.materialise_directions()
    devices: list[D] = []
    for index in sorted(assignment):
        assigned = assignment[index]
        for device in ((assigned.output_device, assigned.input_device)
                       if isinstance(assigned, DuplexSplit) else (assigned,)):
            if device not in devices:
                devices.append(device)
    out: dict[D, SessionDescription] = {}
    for device in devices:
        media: list[MediaDescription] = []
        for index, m in enumerate(sdp.media):
            role = assignment.get(index)
            if isinstance(role, DuplexSplit) and role.output_device != role.input_device:
                if role.output_device == device:
                    m = m.with_direction(sdp.direction(index).intersect(Direction.SENDONLY))
                elif role.input_device == device:
                    m = m.with_direction(sdp.direction(index).intersect(Direction.RECVONLY))
                else:
                    m = _disabled(m)
            elif not (role == device or (isinstance(role, DuplexSplit) and role.output_device == device)):
                m = _disabled(m)
            media.append(m)
        out[device] = dataclasses.replace(sdp, media=tuple(media))
    return out


def _lift(sdp: SessionDescription, k: int) -> MediaDescription:
    """m-line ``k`` with its effective connection and direction made explicit."""
    m = sdp.media[k]
    if m.direction_attribute is None and sdp.direction_attribute is not None:
        m = m.with_direction(sdp.direction_attribute)
    return m.with_connection(sdp.connection_for(k))


_RECEIVE_SIDE = DIRECTION_NAMES | {"rtpmap", "fmtp", "rtcp", "ptime", "maxptime", "mid"}


def _merge_duplex(index: int, a: MediaDescription, b: MediaDescription) -> MediaDescription:
    directions = {a.direction, b.direction}
    if directions != {Direction.RECVONLY, Direction.SENDONLY}:
        raise StitchError(f"m-line {index}: two parts answered {a.direction} and {b.direction}; a "
                          "full-duplex split needs one recvonly (output) and one sendonly (input) part")
    output, input_ = (a, b) if a.direction is Direction.RECVONLY else (b, a)
    if output.port == 0 or input_.port == 0:
        which = "output" if output.port == 0 else "input"
        raise StitchError(f"m-line {index}: the {which} device rejected the stream (port 0)")
    if output.is_rtp:
        sendable = [c for _, c in codecs_of(input_)]
        keep = [str(pt) for pt, c in codecs_of(output) if any(c.matches(s) for s in sendable)]
        reason = no_common_codec(output, input_, a_name="the output device", b_name="the input device")
        if reason is not None:
            raise StitchError(f"m-line {index}: {reason}")
    else:
        keep = [f for f in output.formats if f in input_.formats]
        if not keep:
            raise StitchError(f"m-line {index}: the output and input devices share no format")
    kept = set(keep)

    def for_kept_format(attr: Attribute) -> bool:
        if attr.name in ("rtpmap", "fmtp") and attr.value is not None:
            return attr.value.split(" ", 1)[0] in kept
        return True

    attrs = [x for x in output.attributes if x.name not in DIRECTION_NAMES and for_kept_format(x)]
    names = {x.name for x in output.attributes}
    attrs += [x for x in input_.attributes if x.name not in names and x.name not in _RECEIVE_SIDE]
    return dataclasses.replace(output, formats=tuple(keep), attributes=tuple(attrs))


def stitch(parts: Sequence[tuple[int, SessionDescription, int]], template: SessionDescription,
           origin: Origin, *, session_name: str = "-") -> SessionDescription:
    """One description whose m-line ``i`` is m-line ``k`` of the part ``(i, device_sdp, k)``.

    Two parts naming the same ``i`` are a full-duplex split (one recvonly, one sendonly answer) and
    become one sendrecv m-line at the output device's address (see the module docstring).
    """
    if not parts:
        raise StitchError("nothing to stitch: no parts given")
    groups: dict[int, list[MediaDescription]] = {}
    contributors: list[SessionDescription] = []
    for i, sdp, k in parts:
        if not 0 <= i < len(template.media):
            raise StitchError(f"template m-line {i} does not exist (it has {len(template.media)})")
        if not 0 <= k < len(sdp.media):
            raise StitchError(f"part for m-line {i} names its m-line {k}, but it has {len(sdp.media)}")
        if sdp.media[k].media != template.media[i].media:
            raise StitchError(f"m-line {i} is {template.media[i].media} but the part gives "
                              f"{sdp.media[k].media}")
        groups.setdefault(i, []).append(_lift(sdp, k))
        if sdp not in contributors:
            contributors.append(sdp)
    lifted: dict[int, MediaDescription] = {}
    for i, group in groups.items():
        if len(group) == 1:
            lifted[i] = group[0]
        elif len(group) == 2:
            lifted[i] = _merge_duplex(i, group[0], group[1])
        else:
            raise StitchError(f"m-line {i} is given by {len(group)} parts (at most 2: output and input)")
    in_order = [lifted[i] for i in sorted(lifted)]
    first = next((m for m in in_order if m.port != 0), in_order[0])
    session_conn: Connection | None = first.connection
    media: list[MediaDescription] = []
    for i, tm in enumerate(template.media):
        if i in lifted:
            m = lifted[i]
            media.append(m.with_connection(None) if m.connection == session_conn else m)
        else:
            media.append(_disabled(tm).with_connection(None))
    attributes: list[Attribute] = []
    unknown: list[tuple[str, str]] = []
    for sdp in contributors:
        attributes += [a for a in sdp.attributes if a.name not in DIRECTION_NAMES and a not in attributes]
        unknown += [line for line in sdp.unknown_lines if line not in unknown]
    bandwidths: tuple[Bandwidth, ...] = contributors[0].bandwidths if len(contributors) == 1 else ()
    return SessionDescription(origin=origin, session_name=session_name, timings=(Timing(),),
                              connection=session_conn, bandwidths=bandwidths, attributes=tuple(attributes),
                              unknown_lines=tuple(unknown), media=tuple(media))
