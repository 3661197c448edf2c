"""Which member of a virtual device carries which stream of the CN's session, and the descriptions
each leg gets (third-party call control, RFC 3725; the draft's Fig. 6), sans-I/O.

Responsible for: the `Plan` of one call, a list of `Slot` ``(i, member, k)``: m-line ``i`` of the
CN's session is m-line ``k`` of ``member``'s session (two slots with the same ``i`` are a
full-duplex split, an output and an input device, `sipmob.sdp.stitch`); building it from the
members' late offers (`plan_from_offers`: each medium goes to the first member, in the system's
order, that offers it, and a second member offering it the other way round makes a duplex pair)
or from the CN's offer (`plan_for_offer`, MNC mode: each m-line to the first member that handles
its medium); and the descriptions that follow: the offer to the CN (`cn_description`), each
member's part of a description of the CN's (`member_description`), what is left when a member
goes (`without_member`). Everything goes through `sipmob.sdp.stitch`, so attributes we do not know
pass through unchanged.

Not here: SIP (the dialogs are `sipmob.mdsm.app`'s), the ``o=`` version of each leg (the caller
passes the origin to use).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sipmob.sdp import (
    Direction,
    DuplexSplit,
    MediaDescription,
    Origin,
    SessionDescription,
    StitchError,
    Timing,
    split,
    stitch,
)

__all__ = ["Plan", "PlanError", "Slot", "cn_description", "member_description", "plan_for_offer",
           "plan_from_offers", "refused", "without_member"]


class PlanError(ValueError):
    """The members' descriptions cannot make one session (nothing offered, a stitch failed)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Slot:
    """m-line ``i`` of the CN's session is m-line ``k`` of ``member``'s."""

    i: int
    member: str
    k: int


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    slots: tuple[Slot, ...]
    cn_lines: int  # m-lines of the CN's session (slots may leave some disabled)

    def members(self) -> list[str]:
        out: list[str] = []
        for s in self.slots:
            if s.member not in out:
                out.append(s.member)
        return out

    def of(self, member: str) -> list[Slot]:
        return [s for s in self.slots if s.member == member]

    def as_dict(self) -> dict[str, object]:
        return {"cn_lines": self.cn_lines, "slots": [[s.i, s.member, s.k] for s in self.slots]}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Plan:
        slots = data["slots"]
        assert isinstance(slots, list)
        cn_lines = data["cn_lines"]
        assert isinstance(cn_lines, int)
        return cls(tuple(Slot(int(i), str(m), int(k)) for i, m, k in slots), cn_lines)


def _active(m: MediaDescription) -> bool:
    return m.port != 0


def plan_from_offers(offers: Sequence[tuple[str, SessionDescription]]) -> Plan:
    """Fig. 6: the members answered our offer-less INVITEs with offers; each medium goes to the
    first member offering it (the system's order is the household's preference), except that an
    input device (sendonly) pairs with an output device (recvonly) of the same medium."""
    slots: list[Slot] = []
    taken: dict[str, tuple[int, Direction, bool]] = {}  # medium -> (i, direction, paired)
    i = 0
    for member, sdp in offers:
        sdp = sdp.materialise_directions()
        for k, m in enumerate(sdp.media):
            if not _active(m):
                continue
            direction = sdp.direction(k)
            seen = taken.get(m.media)
            if seen is None:
                taken[m.media] = (i, direction, False)
                slots.append(Slot(i, member, k))
                i += 1
            elif not seen[2] and {seen[1], direction} == {Direction.RECVONLY, Direction.SENDONLY}:
                taken[m.media] = (seen[0], seen[1], True)
                slots.append(Slot(seen[0], member, k))
    if not slots:
        raise PlanError("no member offered any stream")
    return Plan(tuple(slots), i)


def plan_for_offer(offer: SessionDescription, members: Sequence[tuple[str, frozenset[str]]]) -> Plan:
    """MNC mode: the CN's (the MN's) offer m-line ``i`` goes to the first member handling its
    medium (an empty set: any); its m-line index in the member's session is ``i`` too, since
    `sipmob.sdp.stitch.split` keeps the CN's m-line count."""
    slots: list[Slot] = []
    for i, m in enumerate(offer.media):
        if not _active(m):
            continue
        for member, media in members:
            if not media or m.media in media:
                slots.append(Slot(i, member, i))
                break
    if not slots:
        raise PlanError("no member handles any stream of the offer")
    return Plan(tuple(slots), len(offer.media))


def _assignment(plan: Plan) -> dict[int, str | DuplexSplit[str]]:
    out: dict[int, str | DuplexSplit[str]] = {}
    by_i: dict[int, list[Slot]] = {}
    for s in plan.slots:
        by_i.setdefault(s.i, []).append(s)
    for i, group in by_i.items():
        out[i] = group[0].member if len(group) == 1 else DuplexSplit(group[0].member, group[1].member)
    return out


def _skeleton(plan: Plan, members: Mapping[str, SessionDescription]) -> SessionDescription:
    """A CN-shaped template: m-line ``i`` of the kind its slot's member offers."""
    media: list[MediaDescription | None] = [None] * plan.cn_lines
    for s in plan.slots:
        if media[s.i] is None:
            media[s.i] = members[s.member].media[s.k]
    if any(m is None for m in media):
        raise PlanError("the plan leaves an m-line of the CN's session without a member")
    any_sdp = next(iter(members.values()))
    return SessionDescription(origin=any_sdp.origin, session_name="-", timings=(Timing(),),
                              media=tuple(m for m in media if m is not None))


def cn_description(plan: Plan, members: Mapping[str, SessionDescription], origin: Origin,
                   template: SessionDescription | None = None) -> SessionDescription:
    """The description for the CN made of the members' (their offers in Fig. 6, their answers in
    MNC mode and after a re-INVITE): m-line ``i`` is the member's m-line ``k``. `template` is the
    CN's own description when there is one (its m-line count and order rule, RFC 3264 §8)."""
    parts = [(s.i, members[s.member], s.k) for s in plan.slots if s.member in members]
    if template is None:
        template = _skeleton(plan, members)
    try:
        return stitch(parts, template, origin)
    except StitchError as exc:
        raise PlanError(str(exc)) from None


def member_description(plan: Plan, member: str, cn: SessionDescription, template: SessionDescription,
                       origin: Origin) -> SessionDescription:
    """``member``'s part of the CN's description `cn`, in the shape of the member's own session
    `template`: its m-line ``k`` is the CN's m-line ``i``; its other m-lines are disabled."""
    mine = plan.of(member)
    if not mine:
        return refused(template, origin)
    try:
        per_member = split(cn, _assignment(plan))[member]
        return stitch([(s.k, per_member, s.i) for s in mine], template, origin)
    except StitchError as exc:
        raise PlanError(str(exc)) from None


def refused(template: SessionDescription, origin: Origin) -> SessionDescription:
    """Every m-line of `template` disabled (port 0): the answer to a member we do not use."""
    return dataclasses.replace(template, origin=origin,
                               media=tuple(m.with_port(0) for m in template.media))


def without_member(plan: Plan, member: str) -> Plan:
    """The plan once `member` has gone: its m-lines stay in the CN's session, disabled."""
    return Plan(tuple(s for s in plan.slots if s.member != member), plan.cn_lines)
