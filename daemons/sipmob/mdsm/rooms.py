"""Virtual devices made per room from the basic devices the DA knows (``[auto] per_room``), sans-I/O.

Responsible for `per_room`: given the devices found in SLP (`sipmob.mn.devices.Found`), one
`RoomSystem` per room holding at least two usable basic devices, its members in the order that
makes `sipmob.mdsm.plan.plan_from_offers` pick the room's best audio output and input and video
output and input: a device that does audio both ways first (else the one that plays audio), then the
display, then the camera, then a microphone. Devices that speak SLP themselves
(``mobility=enhanced``: phones, other virtual devices) are not members; a device registered as
``restricted=true`` is a member only when its devices.d file (and so its ``allow`` list) is known
here, since its users are not published.

Not here: asking the DA (`sipmob.mdsm.app`), the explicitly configured systems (`sipmob.mdsm.config`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sipmob.mdsm.config import Member
from sipmob.mn.devices import Found, slug

__all__ = ["RoomSystem", "per_room"]

# (medium-direction values of the `media` attribute, in order of preference) per role
_ROLES: tuple[tuple[str, ...], ...] = (
    ("audio-sendrecv", "audio-recvonly"),  # what plays the CN's voice
    ("video-recvonly", "video-sendrecv"),  # what shows the CN's picture
    ("video-sendonly",),  # the camera
    ("audio-sendonly",),  # a microphone, when nothing does audio both ways
)


@dataclasses.dataclass(frozen=True, slots=True)
class RoomSystem:
    name: str
    room: str
    members: tuple[Member, ...]


def _media(found: Found) -> set[str]:
    return {v.lower() for v in found.attributes.get("media", ())}


def _usable(found: Found, known: Mapping[str, Member]) -> bool:
    a = found.attributes
    if [v.lower() for v in a.get("mobility", ())] == ["enhanced"] or a.get("members"):
        return False
    restricted = [v.lower() for v in a.get("restricted", ())] == ["true"]
    return not restricted or found.uri.lower() in known


def per_room(found: Sequence[Found], known: Mapping[str, Member], taken: set[str]) -> list[RoomSystem]:
    """One system per room with two or more usable devices; `known` maps a devices.d device's
    lower-cased URI to its `Member` (media and allow list from its file); `taken` are names in use."""
    rooms: dict[str, list[Found]] = {}
    for f in found:
        room = next(iter(f.attributes.get("room", ())), "")
        if room and _usable(f, known):
            rooms.setdefault(room, []).append(f)
    out: list[RoomSystem] = []
    for room in sorted(rooms):
        devices = rooms[room]
        chosen: list[Found] = []
        for wanted in _ROLES:
            covers = set(wanted) | ({"audio-sendrecv"} if wanted == _ROLES[3] else set())
            if any(_media(c) & covers for c in chosen):
                continue  # that role is filled by a device chosen earlier
            for value in wanted:
                pick = next((f for f in devices if value in _media(f) and f not in chosen), None)
                if pick is not None:
                    chosen.append(pick)
                    break
        if len(chosen) < 2:
            continue
        name = slug(room)
        if not name or name in taken:
            continue
        members = []
        for f in chosen:
            member = known.get(f.uri.lower())
            if member is None:
                media = frozenset(v.split("-", 1)[0] for v in _media(f))
                member = Member(f.short, f.uri, media, ())
            members.append(member)
        out.append(RoomSystem(name, room, tuple(members)))
        taken.add(name)
    return out
