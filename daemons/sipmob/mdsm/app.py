"""`sipmob-mdsm`: the Multi-Device System Manager (session mobility draft §5.3.3, Fig. 6).

Responsible for: the virtual devices of ``mdsm.toml`` (one SIP URI each, ``sip:NAME@GATEWAY:5064``,
registered in SLP as a mobility-enhanced ``service:sip-device`` with a ``members`` attribute,
docs/slp-schema.md); taking a session handed to one by REFER (Fig. 6: 202, an offer-less INVITE to
each member, the members' offers stitched into one INVITE to the CN with Replaces and
Referred-By, each member ACKed with its part of the CN's answer, a sipfrag NOTIFY to the referrer
at each stage) or by an INVITE straight to its URI (MNC mode: the offer split among the members,
their answers stitched into the 200); handing it back (Fig. 5's nested REFER: we REFER the mobile
node to the CN with Replaces for our dialog); and, for the life of the call, controlling every leg
(RFC 3725): the CN's re-INVITEs propagated to the members they concern and the answers stitched
back, a member's re-INVITE propagated to the CN, a member that leaves has its streams disabled in
the CN's session (port 0), the CN's BYE ends every member's leg.

A member that shares no audio codec with the CN (its codecs from its OPTIONS answer) is reached
through a `sipmob-transcoder` found in the DA (draft §6.1, RFC 4117 3PCC, docs/mdsm.md): the CN is
offered the transcoder's side, the member ACKed with the other side, the transcoder's dialog kept
with the call (`Via`). No transcoder: that member's stream is disabled (port 0). DTMF as SIP INFO
crosses as the phone's does (`sipmob.mn.transcoding`): the CN's INFO goes to the transcoder of
the first member behind one with ``Side=A`` (played there as RFC 4733 events; on 488 to that
member itself), that member's INFO with ``Side=B`` (or to the CN), the transcoder's INFO to the
party on the other side, and a member's INFO on a call without a transcoder to the CN; digits
bounded per call (503 over the rate).

With ``[egress] file`` a handoff whose CN is outside the home puts the CN's dialog on the egress
the policy picks, and (``[egress] anchor``) every audio stream through the transcoder with its CN
side bound to that egress's address, a relay when the codecs are common; `move_call` moves both
to another egress when it fails or readdresses (`sipmob.mdsm.egress` says why it is done so).

A member that left is still asked OPTIONS at each keepalive round: one that had been out of reach
(it stopped answering, or it BYEd and then stopped answering, as a device switched off does) and
answers again is invited back: an INVITE without SDP, its offer put back at the m-lines it had in
a re-INVITE to the CN, its ACK with its part of the CN's answer. One that BYEd and kept answering
was told to stop by someone at the device and is not asked back.

Hanging up a call handed to us: the referrer is no longer in the call once the CN has BYEd it,
so it cannot end it itself. It sends us ``REFER`` with ``Refer-To: <CN;method=BYE>`` and a
``Target-Dialog`` (RFC 4538) naming the call: our dialog with the CN, or the referrer's own dialog
with the CN that ours replaced (the only one it has seen; we keep the Replaces of its handoff).
Knowing the dialog identifiers is not enough: the sender must also be the call's referrer or an
owner (403 otherwise, before anything is sent; 481 when no call of ours is named). We answer 202,
BYE the CN and every member, and NOTIFY the status of the CN's answer to our BYE. The generic
REFER code of the core accepts only INVITE and REFER as referred methods, so this REFER is told
apart here, before it is parsed as a handoff.

Who may do what: only a system's ``owners`` may hand it a session or send an INVITE to it (the
CN checks that the Referred-By is the replaced dialog's party, RFC 3891 §6; we cannot see that
dialog), only the party that handed a call over (or an owner) may take it back, and a member whose
``devices.d`` file has an ``allow`` list is used only for those users. Everything else is 403
before anything is sent. An owner listed in ``[auth] users_file`` must first answer a Digest
challenge (401), since a From is only a claim.

One departure from Fig. 6: the CN's ACK (message 8) goes out as soon as its 200 arrives, before
the members' ACKs (message 7), because the user agent acknowledges a 2xx to an offer at once; the
order does not change what any party learns.

Cost per request is bounded: at most ``max_calls`` calls, at most 8 members a system, every setup
abandoned after ``setup_timeout``.

Calls outlive the daemon: every leg's dialog and descriptions and the plan are saved in SQLite
(`sipmob.mdsm.store`) before each message that depends on them goes out, and `start` takes every
saved call up again (`sipmob.service.sipua.UserAgent.adopt`), media never having stopped,
since it flows between the CN and the members directly.

A handoff still being set up (between our 202 and the CN's answer) is saved too, as a `Setup`:
the referrer's subscription dialog before the first INVITE goes out, then each leg as soon as we
learn how to undo it (its first provisional response, which gives what a CANCEL must repeat;
its dialog once it answers, before its ACK). A restarted daemon rolls such a handoff back rather
than completing it (the answers it was waiting for went to the dead process): a ringing leg is
CANCELled, an answered one BYEd, and the referrer gets a final NOTIFY ``500``; the referrer's call
with the CN never changed, since the CN had not answered our INVITE with Replaces. Limits: a leg
that has sent nothing but 100 Trying when the daemon dies cannot be cancelled (it rings until its
own timeout); the CN answering in the instant between its 200 and the call's row being written
is undone by BYE like a member, where completing it would have kept the call. An INVITE straight
to a virtual device (MNC mode) is saved the same way (without a referrer to tell): its members'
legs are undone; the caller's INVITE, whose transaction died with the process, fails on its side.

Not here: which member carries which stream and the descriptions (`sipmob.mdsm.plan`), SIP rules
(`sipmob.sip`), the main loop (`sipmob.service.daemon`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall

from sipmob.mdsm.config import MdsmConfig, Member, System, device_members, members_of, read_users
from sipmob.mdsm.egress import MdsmEgress, Route
from sipmob.mdsm.plan import (
    Plan,
    PlanError,
    Slot,
    cn_description,
    member_description,
    plan_for_offer,
    plan_from_offers,
    refused,
    without_member,
)
from sipmob.mdsm.rooms import per_room
from sipmob.mdsm.store import Store, dialog_from_dict, dialog_to_dict
from sipmob.media.dtmf import Digit, TokenBucket, info_side
from sipmob.mn.devices import SERVICE_TYPE, Found, discover
from sipmob.mn.handoff import names_dialog, same_party
from sipmob.mn.transcoding import (
    DIGIT_BURST,
    DIGIT_RATE,
    TranscodingFailed,
    cn_names,
    codec_of,
    display,
    dtmf_of,
    find,
    forward_dtmf,
    invocation,
    null_section,
    party,
    pass_digit,
    section,
)
from sipmob.sdp import Origin, SDPParseError, SessionDescription, parse
from sipmob.service import slpkeys
from sipmob.service.daemon import Runtime
from sipmob.service.sipua import (
    AcceptedRefer,
    Call,
    IncomingCall,
    IncomingRequest,
    ReferProgress,
    SIPError,
    UserAgent,
)
from sipmob.service.slp import SLPClient, SLPServiceAgent
from sipmob.sip.auth import DigestServer, compute_ha1
from sipmob.sip.headers import Replaces
from sipmob.sip.message import Request, Response
from sipmob.sip.session_timer import Policy as SessionTimerPolicy
from sipmob.sip.ua import Referred, UAError, referred
from sipmob.sip.uri import URI, NameAddr, SIPParseError
from sipmob.slp.attrs import Attribute

log = logging.getLogger("sipmob.mdsm")


@dataclasses.dataclass(slots=True)
class Leg:
    """One dialog the MDSM holds: with the CN (``name`` "cn") or with a member."""

    name: str
    uri: str
    call: Call
    local: bytes  # our current description in this dialog
    remote: bytes  # theirs
    version: int = 1  # o= version of our descriptions here

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "dialog": dialog_to_dict(self.call.dialog), "local": self.local.decode(),
                "remote": self.remote.decode(), "version": self.version}


@dataclasses.dataclass(slots=True)
class Gone:
    """A member that left a call, kept so that it can be asked back when it returns."""

    uri: str
    slots: tuple[Slot, ...]  # what it carried (its m-lines in the CN's session)
    away: bool  # it has been seen unreachable (a BYE alone means the device was told to stop)
    rejoining: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "slots": [[s.i, s.member, s.k] for s in self.slots], "away": self.away}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gone:
        return cls(str(data["uri"]), tuple(Slot(int(i), str(m), int(k)) for i, m, k in data["slots"]),
                   bool(data["away"]))


@dataclasses.dataclass(slots=True)
class Via:
    """A member that shares no audio codec with the CN: its stream goes through a transcoder
    (RFC 4117 3PCC, the convention of `sipmob.transcoder.invocation`: line 1 the CN, line 2 the
    member). ``leg`` is our dialog with the transcoder; the CN is told ``facing`` (the member's
    description with m-line ``k`` replaced by the transcoder's side for the CN, TA), the member
    was told the transcoder's side for it (TB) in its ACK."""

    leg: Leg
    i: int  # the CN's m-line
    k: int  # the member's m-line
    summary: str  # "Opus <-> PCMU"
    facing: bytes
    bind: str | None = None  # the address of the transcoder's CN side (the call's egress), anchored

    def as_dict(self) -> dict[str, Any]:
        return {"leg": self.leg.as_dict(), "i": self.i, "k": self.k, "summary": self.summary,
                "facing": self.facing.decode(), "bind": self.bind}


@dataclasses.dataclass(slots=True)
class ManagedCall:
    id: str
    system: str
    referrer: str  # who handed it to us
    cn: Leg
    members: dict[str, Leg]
    plan: Plan
    sess_id: int
    ending: bool = False
    replaced: Replaces | None = None  # the referrer's dialog with the CN that ours replaced (Fig. 6)
    gone: dict[str, Gone] = dataclasses.field(default_factory=dict)  # members that left, by name
    via: dict[str, Via] = dataclasses.field(default_factory=dict)  # members behind a transcoder
    egress: str | None = None  # the egress the CN's dialog (and anchored audio) uses
    egress_address: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"referrer": self.referrer, "sess_id": self.sess_id, "plan": self.plan.as_dict(),
                "cn": self.cn.as_dict(), "members": {n: leg.as_dict() for n, leg in self.members.items()},
                "replaced": str(self.replaced) if self.replaced is not None else None,
                "gone": {n: g.as_dict() for n, g in self.gone.items()},
                "via": {n: v.as_dict() for n, v in self.via.items()},
                "egress": [self.egress, self.egress_address] if self.egress is not None else None}

    def facing(self) -> dict[str, SessionDescription]:
        """Each member's description as the CN sees it: a transcoded member's audio is the
        transcoder's side for the CN."""
        return {n: parse(self.via[n].facing) if n in self.via else parse(leg.remote)
                for n, leg in self.members.items()}

    def named_by(self, target_dialog: str) -> bool:
        """Whether a Target-Dialog value (RFC 4538) names this call: our dialog with the CN, or the
        referrer's dialog with the CN that ours replaced (the only one the referrer has seen)."""
        dialog = self.cn.call.dialog
        if names_dialog(target_dialog, dialog.call_id, {dialog.local_tag, dialog.remote_tag}):
            return True
        r = self.replaced
        return r is not None and names_dialog(target_dialog, r.call_id, {r.to_tag, r.from_tag})


@dataclasses.dataclass(slots=True)
class Setup:
    """A handoff by REFER between our 202 and the CN's answer, or an INVITE to a virtual device
    between its arrival and its ACK: what a restarted daemon needs to undo it (see
    `MdsmApp._roll_back`). `legs` maps a member's name (or ``CN``) to its URI and
    either ``ringing`` (from its first provisional response: what a CANCEL must repeat) or
    ``dialog`` (answered, its ACK still held)."""

    id: str
    system: str
    referrer: str
    accepted: AcceptedRefer | None  # None: an INVITE straight to the virtual device (MNC mode)
    legs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        refer = None
        if self.accepted is not None:
            dialog = self.accepted.dialog
            # two NOTIFYs may follow a save (183, then the final one): CSeq numbers reserved for both
            refer = {"dialog": dialog_to_dict(dialog, reserve=2) if dialog is not None else None,
                     "id": self.accepted.refer_id}
        return {"referrer": self.referrer, "refer": refer, "legs": self.legs}


MOVE_RETRIES = 5  # re-INVITEs of a moved call while another re-INVITE of the dialog is in progress
MOVE_RETRY_DELAY = 0.3
CN_LEG = "CN"  # the key of the CN's leg in `Setup.legs` (member names are lower-case)


class MdsmApp:
    def __init__(self, config: MdsmConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.configured = members_of(config, runtime.config_path)
        self.auto: dict[str, tuple[System, list[Member]]] = {}  # [auto] per_room: made from the DA
        self.members: dict[str, list[Member]] = {}
        self.systems: dict[str, System] = {}
        self._combine()
        self.host = config.host  # resolved once: it goes into every URI and description
        self.ua = UserAgent(self.reactor, listen=[(config.listen.address, config.listen.port, "udp")],
                            user="mdsm", user_agent="sipmob-mdsm/0.1",
                            # RFC 4028 with every leg: a CN or member that vanishes without BYE
                            # ends its leg when its refreshes stop, and ours keep providers' up
                            session_timer=SessionTimerPolicy())
        self.ua.on_request("REFER", self._on_refer)
        self.ua.on_incoming_call(self._on_invite)
        self.store: Store | None = None
        self.calls: dict[str, ManagedCall] = {}
        self._digit_buckets: dict[str, TokenBucket] = {}  # per call: DTMF INFOs passed on
        self.setting_up = 0
        self.sa: SLPServiceAgent | None = None
        self.registered: set[str] = set()
        self.slp: SLPClient | None = None
        self.rooms_loop: LoopingCall | None = None
        self.keepalive_loop: LoopingCall | None = None
        self.passwords: dict[str, str] = read_users(config.auth.users_file) if config.auth.users_file else {}
        self.digest = DigestServer(config.auth.realm, secrets.token_bytes(32))
        self.egress: MdsmEgress | None = None
        if config.egress.file:  # calls with an outside CN on the egress list (sipmob.mdsm.egress)
            self.egress = MdsmEgress.from_file(self, config.egress.file, config.egress.anchor,
                                               config.egress.control)

    # Life cycle -----------------------------------------------------------------------------------

    def start(self) -> defer.Deferred[Any]:
        d = self.ua.start()

        def started(_: Any) -> None:
            if self.config.listen.address == "0.0.0.0" or self.config.listen.advertise_address:
                machine = self.ua.machine
                machine.contact_uri = machine.contact_uri.replace(host=self.host)
            self.store = Store(self.config.state_file)
            if self.egress is not None:
                self.egress.start()
            self._restore()
            self._roll_back()
            self._register_all()
            self._watch_rooms()
            self._keep_alive()
            log.info("listening on %s:%d; %s", self.host, self.config.listen.port, self.status())

        return d.addCallback(started)

    def stop(self) -> defer.Deferred[Any]:
        # calls are NOT ended: they go on without us and the next start takes them up again
        waits = []
        for loop in (self.rooms_loop, self.keepalive_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self.slp is not None:
            waits.append(self.slp.close().addErrback(lambda _: None))
        if self.sa is not None:
            sa, self.sa = self.sa, None
            waits.append(sa.stop().addTimeout(5, self.reactor).addErrback(lambda _: None))
        if self.egress is not None:
            waits.append(self.egress.stop())
        waits.append(self.ua.stop())
        d = defer.DeferredList(waits)
        if self.store is not None:
            store, self.store = self.store, None
            d.addBoth(lambda _: store.close())
        return d

    def reload(self, config: MdsmConfig) -> None:
        """Systems added, changed or removed; calls in progress keep going on what they had."""
        configured = members_of(config, self.runtime.config_path)
        old = self.config
        if (config.listen, config.state, config.slp, config.egress) != (old.listen, old.state, old.slp,
                                                                         old.egress):
            log.warning("[listen], [slp], [state] and [egress] changes need a restart")
        self.config = dataclasses.replace(config, listen=self.config.listen, state=self.config.state,
                                          slp=self.config.slp, egress=self.config.egress)
        self.configured = configured
        self.passwords = read_users(config.auth.users_file) if config.auth.users_file else {}
        if config.auth.realm != self.digest.realm:
            self.digest = DigestServer(config.auth.realm, secrets.token_bytes(32))
        if not config.auto.per_room:
            self.auto = {}
        self._combine()
        self._register_all()
        self._watch_rooms()
        self._keep_alive()
        self.runtime.status_changed(self)

    def _combine(self) -> None:
        """The systems of the file, then those made per room (a name in the file wins)."""
        self.systems = {s.name: s for s in self.config.system}
        self.members = {name: list(members) for name, members in self.configured.items()}
        for name, (system, members) in self.auto.items():
            if name not in self.systems:
                self.systems[name] = system
                self.members[name] = members

    # [auto] per_room ----------------------------------------------------------------------------

    def _watch_rooms(self) -> None:
        auto = self.config.auto
        if self.rooms_loop is not None and self.rooms_loop.running:
            self.rooms_loop.stop()
        self.rooms_loop = None
        if not auto.per_room:
            return
        if self.slp is None:
            da = self.config.da_address
            self.slp = SLPClient(self.reactor, da=da, scopes=self.config.slp.scopes, multicast=da is None)
        self.rooms_loop = LoopingCall(self._ask_rooms)
        self.rooms_loop.clock = self.reactor
        self.rooms_loop.start(auto.refresh, now=True).addErrback(
            lambda f: log.error("per-room refresh stopped: %s", f.getErrorMessage()))

    def _ask_rooms(self) -> defer.Deferred[Any]:
        assert self.slp is not None
        d = discover(self.slp).addTimeout(max(2.0, self.config.auto.refresh / 2), self.reactor)
        return d.addCallbacks(self._rooms_found,
                              lambda f: log.info("asking the DA for the rooms' devices failed: %s",
                                                 f.getErrorMessage()))

    def _rooms_found(self, found: list[Found]) -> None:
        taken = {s.name for s in self.config.system}
        rooms = per_room(found, device_members(self.config), taken)
        owners = list(self.config.auto.owners)
        auto = {r.name: (System(r.name, [m.uri for m in r.members], owners, r.room, r.room), list(r.members))
                for r in rooms}
        if auto == self.auto:
            return
        log.info("virtual devices per room: %s", "; ".join(
            f"{n} ({', '.join(m.name for m in ms)})" for n, (_, ms) in auto.items()) or "none")
        self.auto = auto
        self._combine()
        self._register_all()
        self.runtime.status_changed(self)

    def status(self) -> str:
        n, c = len(self.systems), len(self.calls)
        egress = f"; {self.egress.status()}" if self.egress is not None else ""
        return f"{n} virtual device{'' if n == 1 else 's'}, {c} call{'' if c == 1 else 's'}{egress}"

    # SLP ------------------------------------------------------------------------------------------

    def attributes(self, system: System) -> dict[str, Attribute]:
        members = self.members.get(system.name, [])
        media: list[str] = []
        for m in members:
            for kind in sorted(m.media) or ["audio", "video"]:
                if f"{kind}-sendrecv" not in media:
                    media.append(f"{kind}-sendrecv")
        attrs = [Attribute("name", (system.title or system.name,))]
        if system.room:
            attrs.append(Attribute("room", (system.room,)))
        attrs += [Attribute("media", tuple(media)), Attribute("mobility", ("enhanced",)),
                  Attribute("members", tuple(m.name for m in members)),
                  Attribute("audio-codecs", ("PCMU", "PCMA"))]
        return {a.tag: a for a in attrs}

    def _register_all(self) -> None:
        if self.sa is None:
            da = self.config.da_address
            self.sa = SLPServiceAgent(self.reactor, das=[da] if da is not None else [],
                                      scopes=self.config.slp.scopes, multicast=da is None,
                                      config=slpkeys.signing(self.config.slp, log))  # only we change them
            self.sa.start()
        wanted = {self.config.uri(name): s for name, s in self.systems.items()}
        for url in sorted(self.registered - set(wanted)):
            self.sa.deregister(url)
        for url, system in wanted.items():
            self.sa.register(url, SERVICE_TYPE, self.attributes(system), lifetime=self.config.slp.lifetime)
        self.registered = set(wanted)

    # Who may do what ------------------------------------------------------------------------------

    def _system_of(self, uri: URI) -> System:
        system = self.systems.get(uri.user or "")
        if system is None:
            raise SIPError(404, "No such virtual device")
        return system

    @staticmethod
    def _owner(system: System, who: URI) -> bool:
        return any(same_party(URI.parse(o), who) for o in system.owners)

    @staticmethod
    def _may_use(member: Member, who: URI) -> bool:
        return not member.allow or any(same_party(URI.parse(a), who) for a in member.allow)

    def _usable_members(self, system: System, who: URI) -> list[Member]:
        members = [m for m in self.members.get(system.name, []) if self._may_use(m, who)]
        if not members:
            raise SIPError(403, "No device of this system is allowed for you")
        return members

    def _challenge(self, request: Request, who: URI) -> str | None:
        """None when `who` has no password here or the request carries valid Digest credentials
        for it (RFC 3261 §22.4, RFC 7616); else the WWW-Authenticate value to answer 401 with."""
        user = who.user or ""
        if user not in self.passwords:
            return None
        now = self.ua.now()

        def ha1(username: str, realm: str, algorithm: str) -> str | None:
            password = self.passwords.get(username)
            return compute_ha1(algorithm, username, realm, password) if password is not None else None

        stale = False
        for value in request.headers.get_all("Authorization"):
            result = self.digest.verify(value, request.method, ha1, now, body=request.body)
            if result.ok and result.username == user:
                return None
            stale = stale or result.stale
        return str(self.digest.make_challenge(now, stale=stale))

    def _check_capacity(self) -> None:
        if len(self.calls) + self.setting_up >= self.config.limits.max_calls:
            raise SIPError(503, "Too many calls")

    @contextlib.contextmanager
    def _as(self, name: str) -> Iterator[None]:
        """Requests made inside come From the system's own URI (a referee checks who REFERs it)."""
        machine = self.ua.machine
        saved = machine.aor, machine.display_name
        host = self.host
        machine.aor = URI.parse(f"sip:{name}@{f'[{host}]' if ':' in host else host}")
        machine.display_name = None
        try:
            yield
        finally:
            machine.aor, machine.display_name = saved

    def _aor(self, system: System) -> str:
        host = self.host
        return f"sip:{system.name}@{f'[{host}]' if ':' in host else host}"

    # REFER: handoff (Fig. 6) and retrieval (Fig. 5) ---------------------------------------------------

    def _on_refer(self, incoming: IncomingRequest) -> None:
        request = incoming.request
        system = self._system_of(request.uri)
        if _refer_method(request) == "BYE":
            self._hang_up(incoming, system)
            return
        try:
            what = referred(request)
        except (SIPParseError, ValueError) as exc:
            raise SIPError(400, f"Bad Refer-To: {exc}") from None
        who = request.from_.uri
        if what.method != "REFER" and not self._owner(system, who):
            log.warning("REFER from %s to %s refused: not an owner", who, system.name)
            raise SIPError(403, "Not an owner of this virtual device")
        challenge = self._challenge(request, who)
        if challenge is not None:
            incoming.respond(401, headers=[("WWW-Authenticate", challenge)])
            return
        if what.method == "REFER":
            self._retrieve(incoming, system, what, who)
            return
        if what.referred_by is not None and not same_party(what.referred_by.uri, who):
            raise SIPError(403, "Referred-By names another party")
        self._check_capacity()
        members = self._usable_members(system, who)
        accepted = incoming.accept_refer()
        self.setting_up += 1
        setup = Setup(secrets.token_hex(8), system.name, str(who), accepted)
        self._save_setup(setup)  # before the first INVITE goes out
        d = self._hand_over(system, members, what, str(who), accepted, setup)

        def done(result: Any) -> None:
            self.setting_up -= 1
            self._drop_setup(setup)
            self.runtime.status_changed(self)

        d.addErrback(lambda f: log.error("handoff to %s failed: %s", system.name, f.getErrorMessage()))
        d.addBoth(done)

    def _invite(self, system: System | str, target: str, sdp: bytes | None,
                headers: tuple[tuple[str, str], ...] = (),
                on_provisional: Callable[[Response], Any] | None = None,
                route: Route | None = None) -> defer.Deferred[Call]:
        with self._as(system if isinstance(system, str) else system.name):
            d = self.ua.invite(target, sdp, headers=headers, on_provisional=on_provisional,
                               local=route.local if route is not None else None)
        return d.addTimeout(self.config.limits.setup_timeout, self.reactor)

    # A handoff being set up, on disk ------------------------------------------------------------------

    def _save_setup(self, setup: Setup) -> None:
        if self.store is not None:
            self.store.save_setup(setup.id, setup.system, setup.as_dict())

    def _drop_setup(self, setup: Setup) -> None:
        if self.store is not None:
            self.store.delete_setup(setup.id)

    def _leg_invite(self, setup: Setup, name: str, target: str, sdp: bytes | None,
                    headers: tuple[tuple[str, str], ...] = (), route: Route | None = None
                    ) -> defer.Deferred[Call]:
        """`_invite`, with the leg written to the setup's row as soon as we learn how to undo it:
        its first provisional response (a CANCEL repeats its Via, From, To, Call-ID and CSeq), then
        its dialog once it answers (before its ACK, which waits for the CN's answer)."""
        def provisional(response: Response) -> None:
            if "dialog" not in setup.legs.get(name, {}):
                setup.legs[name] = {"uri": target, "ringing": _cancel_fields(response)}
                self._save_setup(setup)

        def answered(call: Call) -> Call:
            setup.legs[name] = {"uri": target, "dialog": dialog_to_dict(call.dialog)}
            self._save_setup(setup)
            return call

        return self._invite(setup.system, target, sdp, headers, provisional, route).addCallback(answered)

    def _origin(self, sess_id: int, leg_version: int) -> Origin:
        host = self.host
        return Origin("sipmob-mdsm", sess_id, leg_version, "IN", "IP6" if ":" in host else "IP4", host)

    def _release(self, call: Call, template: bytes | None, sess_id: int) -> None:
        """A member we asked but do not use: ACK with every stream refused, then BYE."""
        if call.ack_pending:
            try:
                sdp = parse(template or b"")
                call.ack(refused(sdp, self._origin(sess_id, 1)).to_bytes())
            except SDPParseError:
                call.ack(None)
        call.bye()

    @defer.inlineCallbacks
    def _hand_over(self, system: System, members: list[Member], what: Referred, referrer: str,
                   accepted: AcceptedRefer, setup: Setup) -> Any:
        """Fig. 6, with the CN on an egress when it is outside (`sipmob.mdsm.egress`)."""
        route = self.egress.route(what.target.host) if self.egress is not None else None
        try:
            mc = yield self._hand_over_on(system, members, what, referrer, accepted, setup, route)
        finally:
            if route is not None and self.egress is not None:
                self.egress.done(route)
        return mc

    @defer.inlineCallbacks
    def _hand_over_on(self, system: System, members: list[Member], what: Referred, referrer: str,
                      accepted: AcceptedRefer, setup: Setup, route: Route | None) -> Any:
        sess_id = secrets.randbelow(2**31)
        # the CN's codecs, asked while the members answer: a member sharing none needs a transcoder
        caps = self._cn_capabilities(what.target, route)
        # messages 3-4: an INVITE without SDP to each member; their 200s carry offers
        results = yield defer.DeferredList([self._leg_invite(setup, m.name, m.uri, None) for m in members],
                                           consumeErrors=True)
        answered: list[tuple[Member, Call, SessionDescription]] = []
        for m, (ok, value) in zip(members, results, strict=True):
            if not ok:
                log.info("member %s of %s did not answer: %s", m.name, system.name, value.getErrorMessage())
                continue
            try:
                answered.append((m, value, parse(value.remote_sdp or b"")))
            except SDPParseError as exc:
                log.warning("member %s offered an unusable description: %s", m.name, exc)
                self._release(value, None, sess_id)
        if not answered:
            accepted.notify(480, "No member answered")
            return None
        self._save_setup(setup)  # its CSeq reservation covers this NOTIFY
        accepted.notify(183, "Session Progress")
        try:
            plan = plan_from_offers([(m.name, sdp) for m, _, sdp in answered])
        except PlanError as exc:
            log.warning("handoff to %s: %s", system.name, exc)
            for _, call, _sdp in answered:
                self._release(call, call.remote_sdp, sess_id)
            accepted.notify(488)
            return None
        used = set(plan.members())
        for m, call, _sdp in answered:
            if m.name not in used:
                self._release(call, call.remote_sdp, sess_id)
        answered = [a for a in answered if a[0].name in used]
        offers = {m.name: sdp for m, _, sdp in answered}
        cn_call: Call | None = None
        # §6.1: a member sharing no audio codec with the CN is reached through a transcoder
        anchored = route is not None and self.egress is not None and self.egress.anchor
        anchor = route.address if route is not None and anchored else None
        facing, vias = yield self._transcoders(system, what, plan, offers, setup, caps, anchor)

        def abandon(status: int) -> None:
            for _, call, _sdp in answered:
                self._release(call, call.remote_sdp, sess_id)
            for via in vias.values():
                via.leg.call.bye()
            if cn_call is not None:
                cn_call.bye()
            accepted.notify(status if status >= 300 else 500)

        try:
            offer = cn_description(plan, facing, self._origin(sess_id, 1))
        except PlanError as exc:
            log.warning("handoff to %s: the members' offers make no session: %s", system.name, exc)
            abandon(488)
            return None
        if not any(m.port for m in offer.media):
            log.warning("handoff to %s: no stream is left for the CN", system.name)
            abandon(488)
            return None
        # message 5: the CN, with the members' offers as one, Replaces and Referred-By
        try:
            cn_call = yield self._leg_invite(setup, CN_LEG, str(what.target), offer.to_bytes(), what.headers,
                                             route)
            assert cn_call is not None
            answer = parse(cn_call.remote_sdp or b"")
            parts = {m.name: member_description(plan, m.name, answer, sdp, self._origin(sess_id, 1))
                     for m, _, sdp in answered}
            for name, via in vias.items():  # the member sends to, and hears, the transcoder
                tb = party(parse(via.leg.remote), 1).media[0]
                parts[name] = parts[name].with_media(via.k, tb.with_connection(
                    tb.connection or party(parse(via.leg.remote), 1).connection))
        except Exception as exc:
            status = exc.status if isinstance(exc, SIPError) else 488 if isinstance(exc, PlanError) else 500
            log.info("the CN %s refused the handoff to %s: %s", what.target, system.name, exc)
            abandon(status)
            return None
        cn = Leg("cn", str(what.target), cn_call, offer.to_bytes(), cn_call.remote_sdp or b"")
        legs = {m.name: Leg(m.name, m.uri, call, parts[m.name].to_bytes(), call.remote_sdp or b"")
                for m, call, _sdp in answered}
        mc = ManagedCall(cn_call.call_id, system.name, referrer, cn, legs, plan, sess_id,
                         replaced=what.replaces, via=vias)
        if route is not None:
            mc.egress, mc.egress_address = route.egress, route.address
        self._save(mc)
        self._drop_setup(setup)  # a call now: a restart takes it up rather than undoing it
        # messages 7-8: each member's ACK with its part of the CN's answer (the CN's ACK is out)
        for leg in legs.values():
            leg.call.ack(leg.local)
        self._adopt(mc)
        if route is not None and self.egress is not None:
            self.egress.placed(mc, route)
        for name, via in vias.items():  # the transcoder learns where the CN is
            yield self._tell_transcoder(mc, name, via, answer)
        through = "; ".join(f"{n} via transcoder: {v.summary}" for n, v in vias.items())
        accepted.notify(200, f"OK ({through})" if through else None)
        log.info("call with %s handed to %s by %s (%s)%s", what.target, system.name, referrer,
                 ", ".join(f"m{s.i}->{s.member}" for s in plan.slots), f"; {through}" if through else "")
        return mc

    # Members that share no codec with the CN: through a transcoder (draft §6.1, RFC 4117) -----------

    @defer.inlineCallbacks
    def _cn_capabilities(self, target: URI, route: Route | None = None) -> Any:
        """The CN's codecs from its OPTIONS answer (RFC 3261 §11.2); None when it gives none. On the
        call's egress (`route`) as the INVITE that follows: the same link, the same NAT binding."""
        try:
            response = yield self.ua.options(target.replace(headers=()),
                                             timeout=min(2.0, self.config.limits.setup_timeout),
                                             local=route.local if route is not None else None)
            return parse(response.body) if response.status < 300 and response.body else None
        except Exception as exc:
            log.info("OPTIONS to %s failed (%s): its codecs are not known", target, exc)
            return None

    def _slp_client(self) -> SLPClient:
        if self.slp is None:
            da = self.config.da_address
            self.slp = SLPClient(self.reactor, da=da, scopes=self.config.slp.scopes, multicast=da is None)
        return self.slp

    @defer.inlineCallbacks
    def _transcoders(self, system: System, what: Referred, plan: Plan,
                     offers: Mapping[str, SessionDescription], setup: Setup,
                     capabilities: defer.Deferred[SessionDescription | None],
                     anchor: str | None = None) -> Any:
        """What the CN is offered for each member, and the transcoders invoked for those sharing
        no audio codec with it. A member whose transcoder cannot be had has that stream disabled
        (port 0): the call goes on with the others.

        With `anchor` (the call's egress address, `sipmob.mdsm.egress`) every audio stream goes
        through a transcoder, its CN side bound to `anchor` (a relay when the codecs are common); a
        member sharing a codec whose anchor cannot be had talks to the CN directly, with a warning
        that a failure of the link will cut its audio."""
        facing = dict(offers)
        vias: dict[str, Via] = {}
        lines = [s for s in plan.slots if offers[s.member].media[s.k].media == "audio"
                 and offers[s.member].media[s.k].is_rtp
                 and sum(1 for t in plan.slots if t.i == s.i) == 1]  # not a duplex pair
        if not lines:
            return facing, vias  # no audio: whatever the CN's OPTIONS answer says is not waited for
        caps = yield capabilities
        cn_media = next((m for m in caps.media if m.media == "audio" and m.is_rtp), None) if caps else None
        cn = cn_names(cn_media) if cn_media is not None else []
        if (cn_media is None or not cn) and anchor is None:
            return facing, vias  # its codecs are unknown: offered as before, it answers what it takes
        for s in lines:
            media = offers[s.member].media[s.k]
            mine = cn_names(media)
            # unknown CN codecs: the member's are offered to it through the relay, as without one
            common = not cn or bool({c.lower() for c in cn} & {c.lower() for c in mine})
            if common and anchor is None:
                continue
            if common:
                try:
                    via = yield self._invoke(setup, s, cn_media if cn else media, offers[s.member],
                                             cn or mine, mine, anchor)
                except TranscodingFailed as exc:
                    log.warning("member %s of %s: its audio is not anchored (%s): it flows to %s directly, "
                                "and a failure of the call's link will cut it", s.member, system.name, exc,
                                what.target)
                    continue
                log.info("member %s of %s: audio anchored in transcoder %s on %s: %s", s.member, system.name,
                         via.leg.uri, anchor, via.summary)
                vias[s.member] = via
                facing[s.member] = parse(via.facing)
                continue
            gap = (f"member {s.member} of {system.name} shares no audio codec with {what.target} "
                   f"({'/'.join(mine) or 'none'} vs {'/'.join(cn)})")
            try:
                via = yield self._invoke(setup, s, cn_media, offers[s.member], cn, mine, anchor)
            except TranscodingFailed as exc:
                log.warning("%s, and %s: its audio is disabled (port 0), the call goes on without it",
                            gap, exc)
                facing[s.member] = facing[s.member].with_media(s.k, media.with_port(0))
                continue
            log.info("%s: via transcoder %s: %s", gap, via.leg.uri, via.summary)
            vias[s.member] = via
            facing[s.member] = parse(via.facing)
        return facing, vias

    @defer.inlineCallbacks
    def _invoke(self, setup: Setup, s: Slot, cn_media: Any, member: SessionDescription,
                cn: list[str], mine: list[str], bind: str | None = None) -> Any:
        """RFC 4117 §3.3: one INVITE to the transcoder with the CN's codecs (no address yet: it
        has not answered us) and the member's offer; its 200 gives TA (for the CN) and TB. With
        `bind`, TA is on that address (the call's egress)."""
        timeout = min(5.0, self.config.limits.setup_timeout)
        url = yield find(self._slp_client(), self.reactor, timeout, cn, mine)
        body = invocation(_bound(null_section(cn_media), bind), section(member, s.k), self.host)
        try:
            call = yield self._leg_invite(setup, f"{s.member}+transcoder", url, body.to_bytes())
        except Exception as exc:
            raise TranscodingFailed(f"the transcoder {url} refused ({exc})") from None
        if call.ack_pending:
            call.ack(None)
        try:
            tx = parse(call.remote_sdp or b"")
            ta = party(tx, 0)
            first, second = display(codec_of(tx, 0)), display(codec_of(tx, 1))
            summary = f"relay {first}" if first == second else f"{first} <-> {second}"
        except (SDPParseError, ValueError, IndexError) as exc:
            call.bye()
            why = f"the transcoder {url} answered an unusable description ({exc})"
            raise TranscodingFailed(why) from None
        side = ta.media[0].with_connection(ta.media[0].connection or ta.connection)
        leg = Leg("transcoder", url, call, body.to_bytes(), call.remote_sdp or b"")
        return Via(leg, s.i, s.k, summary, member.with_media(s.k, side).to_bytes(), bind)

    @defer.inlineCallbacks
    def _tell_transcoder(self, mc: ManagedCall, name: str, via: Via, cn: SessionDescription) -> Any:
        """re-INVITE the transcoder with the CN's address (line 1) and the member's (line 2)."""
        try:
            body = invocation(_bound(section(cn, via.i), via.bind),
                              section(parse(mc.members[name].remote), via.k), self.host).to_bytes()
            via.leg.version += 1
            response = yield via.leg.call.reinvite(body)
        except Exception as exc:
            log.error("call %s: the transcoder %s did not take the CN's address (%s): %s hears nothing",
                      mc.id, via.leg.uri, exc, name)
            return None
        via.leg.local, via.leg.remote = body, response.body or via.leg.remote
        self._save(mc)
        return None

    def _transcoder_gone(self, mc: ManagedCall, name: str, via: Via, reason: str) -> None:
        if mc.ending or mc.via.get(name) is not via:
            return
        del mc.via[name]
        self._save(mc)
        log.warning("call %s: the transcoder %s ended its leg (%s): %s hears nothing now", mc.id,
                    via.leg.uri, reason, name)

    def _release_transcoders(self, mc: ManagedCall) -> None:
        for name, via in list(mc.via.items()):
            if via.leg.call.state != "terminated":
                log.info("call %s: transcoder %s released (%s)", mc.id, via.leg.uri, name)
                via.leg.call.bye()

    def _retrieve(self, incoming: IncomingRequest, system: System, what: Referred, who: URI) -> None:
        """Fig. 5: the nested REFER; we REFER its target to the CN with Replaces for our dialog."""
        inner = _inner_target(what)
        mc = next((c for c in self.calls.values() if c.system == system.name and not c.ending
                   and (same_party(URI.parse(c.referrer), who) or self._owner(system, who))
                   and (inner is None or same_party(URI.parse(c.cn.uri), inner))), None)
        if mc is None:
            if not self._owner(system, who) and not any(same_party(URI.parse(c.referrer), who)
                                                        for c in self.calls.values()):
                raise SIPError(403, "Not the party that handed a call here, nor an owner")
            raise SIPError(481, "No call to hand back")
        accepted = incoming.accept_refer()
        dialog = mc.cn.call.dialog
        replaces = Replaces(dialog.call_id, to_tag=dialog.remote_tag, from_tag=dialog.local_tag)
        # RFC 4538: our REFER names the dialog of the nested REFER that asked for it, so the mobile
        # node can tell it from a stranger's
        mine = accepted.dialog
        target_dialog = ([("Target-Dialog", f"{mine.call_id};local-tag={mine.local_tag};"
                                            f"remote-tag={mine.remote_tag}")] if mine is not None else [])
        with self._as(system.name):
            d = self.ua.refer(what.target, inner or URI.parse(mc.cn.uri), replaces=replaces,
                              referred_by=str(NameAddr(None, URI.parse(self._aor(system)))),
                              headers=target_dialog)

        def sent(progress: ReferProgress) -> Any:
            return progress.final.addCallback(lambda status: accepted.notify(status))

        def failed(failure: Any) -> None:
            exc = failure.value
            status = exc.status if isinstance(exc, SIPError) else 500
            accepted.notify(status if status >= 300 else 500)

        d.addCallbacks(sent, failed)

    # Hanging up a call handed to us -----------------------------------------------------------------

    def _hang_up(self, incoming: IncomingRequest, system: System) -> None:
        """``REFER`` with ``Refer-To: <CN;method=BYE>`` and a ``Target-Dialog`` (RFC 4538) naming the
        call: the phone that handed it over (or an owner) ends it. The referrer is no longer in the
        call, so it cannot BYE anyone itself; we BYE the CN and every member and NOTIFY how the CN's
        BYE went (RFC 3515 §2.4.5: a sipfrag of its response)."""
        request = incoming.request
        who = request.from_.uri
        owner = self._owner(system, who)
        if not owner and not any(c.system == system.name and same_party(URI.parse(c.referrer), who)
                                 for c in self.calls.values()):
            log.warning("hang-up REFER from %s to %s refused: not a party to its calls, nor an owner",
                        who, system.name)
            raise SIPError(403, "Not the party that handed a call here, nor an owner")
        challenge = self._challenge(request, who)
        if challenge is not None:
            incoming.respond(401, headers=[("WWW-Authenticate", challenge)])
            return
        values = request.headers.get_lines("Refer-To")
        target_dialog = request.headers.get("Target-Dialog")
        if target_dialog is None:
            raise SIPError(400, "A hang-up REFER names its call in Target-Dialog (RFC 4538)")
        try:
            target = NameAddr.parse(values[0].strip()).uri
        except (SIPParseError, IndexError) as exc:
            raise SIPError(400, f"Bad Refer-To: {exc}") from None
        mc = next((c for c in self.calls.values() if c.system == system.name and not c.ending
                   and c.named_by(target_dialog)), None)
        if mc is None or not same_party(URI.parse(mc.cn.uri), target):
            raise SIPError(481, "No such call here")
        if not owner and not same_party(URI.parse(mc.referrer), who):
            log.warning("hang-up REFER from %s for call %s refused: not its party", who, mc.id)
            raise SIPError(403, "Not the party that handed this call here, nor an owner")
        accepted = incoming.accept_refer()
        log.info("call %s: %s hangs up: BYE to the CN and to %s", mc.id, who,
                 ", ".join(mc.members) or "nobody")
        self._forget(mc)
        for leg in mc.members.values():
            if leg.call.state != "terminated":
                leg.call.bye()
        self._release_transcoders(mc)
        self._bye_status(mc.cn.call).addCallback(lambda status: accepted.notify(status))

    def _bye_status(self, call: Call) -> defer.Deferred[int]:
        """BYE `call`; fires with the status of its answer (408 when none came)."""
        d: defer.Deferred[int] = defer.Deferred()
        if call.state == "terminated":
            d.callback(481)
            return d
        op = self.ua.machine.bye(call.handle, self.ua.now())
        if op:
            self.ua.expect(op, lambda response: d.callback(response.status if response is not None else 408))
        else:
            d.callback(200)
        self.ua.flush()
        return d

    # INVITE to a virtual device (MNC mode) ---------------------------------------------------------------

    def _on_invite(self, incoming: IncomingCall) -> None:
        request = incoming.request
        try:
            system = self._system_of(request.uri)
            who = request.from_.uri
            if not self._owner(system, who):
                raise SIPError(403, "Not an owner of this virtual device")
            challenge = self._challenge(request, who)
            if challenge is not None:
                self.ua.machine.answer_invite(incoming.handle, 401, self.ua.now(),
                                              headers=[("WWW-Authenticate", challenge)])
                self.ua.flush()
                return
            if incoming.replaces is not None:
                raise SIPError(403, "No call here to replace")
            if incoming.offer is None:
                raise SIPError(488, "An offer is needed to split the session")
            self._check_capacity()
            members = self._usable_members(system, who)
            offer = parse(incoming.offer)
            plan = plan_for_offer(offer, [(m.name, m.media) for m in members])
        except SIPError as exc:
            incoming.reject(exc.status, exc.reason)
            return
        except (SDPParseError, PlanError) as exc:
            log.info("INVITE to a virtual device refused: %s", exc)
            incoming.reject(488)
            return
        self.setting_up += 1
        setup = Setup(secrets.token_hex(8), system.name, str(who), None)
        self._save_setup(setup)
        d = self._fan_out(system, [m for m in members if m.name in plan.members()], incoming, offer, plan,
                          str(who), setup)

        def done(_: Any) -> None:
            self.setting_up -= 1
            self._drop_setup(setup)
            self.runtime.status_changed(self)

        d.addErrback(lambda f: log.error("call to %s failed: %s", system.name, f.getErrorMessage()))
        d.addBoth(done)

    @defer.inlineCallbacks
    def _fan_out(self, system: System, members: list[Member], incoming: IncomingCall,
                 offer: SessionDescription, plan: Plan, who: str, setup: Setup) -> Any:
        sess_id = secrets.randbelow(2**31)
        parts = {m.name: member_description(plan, m.name, offer, offer, self._origin(sess_id, 1))
                 for m in members}
        results = yield defer.DeferredList([self._leg_invite(setup, m.name, m.uri, parts[m.name].to_bytes())
                                            for m in members], consumeErrors=True)
        legs: dict[str, Leg] = {}
        for m, (ok, value) in zip(members, results, strict=True):
            if not ok:
                plan = without_member(plan, m.name)
                continue
            legs[m.name] = Leg(m.name, m.uri, value, parts[m.name].to_bytes(), value.remote_sdp or b"")
        if not legs or not plan.slots:
            for leg in legs.values():
                leg.call.bye()
            incoming.reject(480, "No member answered")
            return None
        try:
            answer = cn_description(plan, {n: parse(leg.remote) for n, leg in legs.items()},
                                    self._origin(sess_id, 1), template=offer)
        except (SDPParseError, PlanError) as exc:
            log.warning("call to %s: %s", system.name, exc)
            for leg in legs.values():
                leg.call.bye()
            incoming.reject(488)
            return None
        accepted = incoming.accept(answer.to_bytes())
        try:
            cn_call = yield accepted
        except Exception:
            for leg in legs.values():
                leg.call.bye()
            return None
        cn = Leg("cn", str(request_uri_of(incoming)), cn_call, answer.to_bytes(), incoming.offer or b"")
        mc = ManagedCall(cn_call.call_id, system.name, who, cn, legs, plan, sess_id)
        self._save(mc)
        self._drop_setup(setup)
        self._adopt(mc)
        log.info("call from %s split over %s", who, ", ".join(legs))
        return mc

    # The life of a call (RFC 3725) -----------------------------------------------------------------

    def _adopt(self, mc: ManagedCall) -> None:
        self.calls[mc.id] = mc
        mc.cn.call.on_reinvite(lambda call, request: self._cn_reinvite(mc, request))
        mc.cn.call.on_terminated(lambda call, reason: self._cn_gone(mc, reason))
        mc.cn.call.on_request("INFO", lambda call, request: self._info(mc, None, request))
        for name, leg in mc.members.items():
            self._watch_member(mc, name, leg)
        for name, via in mc.via.items():
            def ended(call: Call, reason: str, name: str = name, via: Via = via) -> None:
                self._transcoder_gone(mc, name, via, reason)

            via.leg.call.on_terminated(ended)
            def info(call: Call, request: Request, name: str = name) -> Any:
                return self._info(mc, name, request, True)

            via.leg.call.on_request("INFO", info)
        self.runtime.status_changed(self)

    def _watch_member(self, mc: ManagedCall, name: str, leg: Leg) -> None:
        leg.call.on_terminated(lambda call, reason: self._member_gone(mc, name, reason))
        leg.call.on_reinvite(lambda call, request: self._member_reinvite(mc, name, request))
        leg.call.on_request("INFO", lambda call, request: self._info(mc, name, request))

    def _info(self, mc: ManagedCall, name: str | None, request: Request, transcoder: bool = False) -> Any:
        """A DTMF INFO from the CN (``name`` None), member ``name``, or the transcoder of member
        ``name``: passed on as the module docstring says; the status (or a Deferred of it)."""
        digit = dtmf_of(request)
        if not isinstance(digit, Digit):
            return digit
        if mc.ending or self.calls.get(mc.id) is not mc:
            return 481
        bucket = self._digit_buckets.setdefault(mc.id, TokenBucket(DIGIT_RATE, DIGIT_BURST))
        if not bucket.take(self.reactor.seconds()):
            return 503
        if transcoder:
            side = info_side(request.body or b"")
            member = mc.members.get(name or "")
            target = (member.call if side == "A" and member is not None
                      else mc.cn.call if side == "B" else None)
            return forward_dtmf(target, digit) if target is not None else 400
        if name is None:
            through = next(((n, v) for n, v in mc.via.items() if n in mc.members), None)
            if through is None:
                return None  # the members hear the CN directly: nothing of ours to convert
            log.info("call %s: digit %s from the CN passed to the transcoder of %s", mc.id, digit.digit,
                     through[0])
            return pass_digit(digit, "A", through[1].leg.call, mc.members[through[0]].call)
        via = mc.via.get(name)
        log.info("call %s: digit %s from %s passed on", mc.id, digit.digit, name)
        return pass_digit(digit, "B", via.leg.call if via is not None else None, mc.cn.call)

    def _save(self, mc: ManagedCall) -> None:
        if self.store is not None and not mc.ending:
            self.store.save(mc.id, mc.system, mc.as_dict())

    def _forget(self, mc: ManagedCall) -> None:
        mc.ending = True
        self._digit_buckets.pop(mc.id, None)
        self.calls.pop(mc.id, None)
        if self.egress is not None:
            self.egress.ended(mc)
        if self.store is not None:
            self.store.delete(mc.id)
        self.runtime.status_changed(self)

    def _cn_gone(self, mc: ManagedCall, reason: str) -> None:
        if mc.ending:
            return
        log.info("call %s: the CN's leg ended (%s): releasing %s", mc.id, reason,
                 ", ".join([*mc.members, *(f"the transcoder of {n}" for n in mc.via)]))
        self._forget(mc)
        for leg in mc.members.values():
            if leg.call.state != "terminated":
                leg.call.bye()
        self._release_transcoders(mc)

    def _member_gone(self, mc: ManagedCall, name: str, reason: str) -> None:
        if mc.ending or name not in mc.members:
            return
        leg = mc.members.pop(name)
        mc.gone[name] = Gone(leg.uri, tuple(mc.plan.of(name)), away=reason != "bye")
        mc.plan = without_member(mc.plan, name)
        via = mc.via.pop(name, None)
        if via is not None and via.leg.call.state != "terminated":
            log.info("call %s: transcoder %s released (%s left)", mc.id, via.leg.uri, name)
            via.leg.call.bye()
        if not mc.plan.slots:
            log.info("call %s: its last member %s left (%s): ending it", mc.id, name, reason)
            self._forget(mc)
            self._release_transcoders(mc)
            mc.cn.call.bye()
            return
        log.info("call %s: member %s left (%s): its streams removed from the CN's session",
                 mc.id, name, reason)
        try:
            offer = cn_description(mc.plan, mc.facing(),
                                   self._origin(mc.sess_id, mc.cn.version + 1), template=parse(mc.cn.local))
        except (SDPParseError, PlanError) as exc:
            log.error("call %s: cannot describe what is left (%s): ending it", mc.id, exc)
            self._forget(mc)
            self._cn_gone(mc, "error")
            return
        mc.cn.version += 1
        mc.cn.local = offer.to_bytes()
        self._save(mc)
        d = mc.cn.call.reinvite(mc.cn.local)

        def answered(response: Any) -> None:
            mc.cn.remote = response.body or mc.cn.remote
            self._save(mc)

        d.addCallbacks(answered, lambda f: log.warning("call %s: re-INVITE to the CN failed: %s", mc.id,
                                                       f.getErrorMessage()))

    @defer.inlineCallbacks
    def _cn_reinvite(self, mc: ManagedCall, request: Any) -> Any:
        if not request.body:
            return mc.cn.local  # an offer-less re-INVITE: our current description as the offer
        try:
            offer = parse(request.body)
            if len(offer.media) < mc.plan.cn_lines:
                raise PlanError("the CN's offer has fewer m-lines than the session (RFC 3264 §8)")
            changed: dict[str, SessionDescription] = {}
            for name in mc.plan.members():
                if name in mc.via:
                    continue  # the transcoder follows the CN, not the member (below)
                leg = mc.members[name]
                current = parse(leg.local)
                part = member_description(mc.plan, name, offer, parse(leg.remote),
                                          self._origin(mc.sess_id, leg.version + 1))
                if (part.media, part.connection, part.attributes) != (current.media, current.connection,
                                                                      current.attributes):
                    changed[name] = part
        except (SDPParseError, PlanError) as exc:
            raise SIPError(488, str(exc)) from None
        for name, part in changed.items():
            leg = mc.members[name]
            leg.version += 1
            leg.local = part.to_bytes()
        self._save(mc)
        reinvites = [mc.members[n].call.reinvite(mc.members[n].local) for n in changed]
        results = yield defer.DeferredList(reinvites, consumeErrors=True)
        for name, (ok, value) in zip(changed, results, strict=True):
            if not ok:
                raise SIPError(value.value.status if isinstance(value.value, SIPError) else 500,
                               f"member {name} refused the change")
            mc.members[name].remote = value.body or mc.members[name].remote
        for name, via in list(mc.via.items()):
            if _endpoint(offer, via.i) != _endpoint(parse(mc.cn.remote), via.i):
                yield self._tell_transcoder(mc, name, via, offer)
        try:
            answer = cn_description(mc.plan, mc.facing(),
                                    self._origin(mc.sess_id, mc.cn.version + 1), template=offer)
        except (SDPParseError, PlanError) as exc:
            raise SIPError(488, str(exc)) from None
        mc.cn.version += 1
        mc.cn.local, mc.cn.remote = answer.to_bytes(), request.body
        self._save(mc)
        log.info("call %s: the CN's re-INVITE went to %s", mc.id, ", ".join(changed) or "no member")
        return mc.cn.local

    @defer.inlineCallbacks
    def _member_reinvite(self, mc: ManagedCall, name: str, request: Any) -> Any:
        leg = mc.members.get(name)
        if leg is None or not request.body:
            return leg.local if leg is not None else b""
        via = mc.via.get(name)
        if via is not None:  # the member talks to the transcoder: it, not the CN, learns the change
            leg.remote = request.body
            yield self._tell_transcoder(mc, name, via, parse(mc.cn.remote))
            return leg.local
        try:
            theirs = parse(request.body)
            members = mc.facing()
            members[name] = theirs
            offer = cn_description(mc.plan, members, self._origin(mc.sess_id, mc.cn.version + 1),
                                   template=parse(mc.cn.local))
        except (SDPParseError, PlanError) as exc:
            raise SIPError(488, str(exc)) from None
        mc.cn.version += 1
        mc.cn.local = offer.to_bytes()
        self._save(mc)
        try:
            response = yield mc.cn.call.reinvite(mc.cn.local)
        except SIPError as exc:
            raise SIPError(exc.status, "the CN refused the change") from None
        mc.cn.remote = response.body or mc.cn.remote
        try:
            part = member_description(mc.plan, name, parse(mc.cn.remote), theirs,
                                      self._origin(mc.sess_id, leg.version + 1))
        except (SDPParseError, PlanError) as exc:
            raise SIPError(488, str(exc)) from None
        leg.version += 1
        leg.local, leg.remote = part.to_bytes(), request.body
        self._save(mc)
        return leg.local

    # Members that stop answering --------------------------------------------------------------------

    def _keep_alive(self) -> None:
        if self.keepalive_loop is not None and self.keepalive_loop.running:
            self.keepalive_loop.stop()
        self.keepalive_loop = None
        if self.config.limits.keepalive > 0:
            self.keepalive_loop = LoopingCall(self._ping_members)
            self.keepalive_loop.clock = self.reactor
            self.keepalive_loop.start(self.config.limits.keepalive, now=False).addErrback(
                lambda f: log.error("member keepalive stopped: %s", f.getErrorMessage()))

    def _ping_members(self) -> None:
        """OPTIONS to every member of every call (a device switched off sends no BYE): any answer
        is alive; none within keepalive_timeout ends its leg, which removes its streams."""
        for mc in list(self.calls.values()):
            for name, leg in list(mc.members.items()):
                d = self.ua.options(leg.uri, timeout=self.config.limits.keepalive_timeout)
                d.addErrback(lambda _f, mc=mc, name=name, leg=leg: self._member_silent(mc, name, leg))
            for name, gone in list(mc.gone.items()):
                if gone.rejoining:
                    continue
                d = self.ua.options(gone.uri, timeout=self.config.limits.keepalive_timeout)
                d.addCallbacks(lambda _r, mc=mc, name=name, gone=gone: self._member_answers(mc, name, gone),
                               lambda _f, mc=mc, gone=gone: self._member_away(mc, gone))

    def _member_silent(self, mc: ManagedCall, name: str, leg: Leg) -> None:
        if mc.ending or mc.members.get(name) is not leg:
            return
        log.info("call %s: member %s does not answer OPTIONS: ending its leg", mc.id, name)
        leg.call.bye()  # our BYE ends the leg at once (on_terminated "local"), answered or not

    # Members that come back -------------------------------------------------------------------------

    def _member_away(self, mc: ManagedCall, gone: Gone) -> None:
        if not gone.away and not mc.ending:
            gone.away = True
            self._save(mc)

    def _member_answers(self, mc: ManagedCall, name: str, gone: Gone) -> None:
        """A member that left answers OPTIONS again: asked back if it had been away (switched off,
        unplugged, out of reach). One that BYEd and never stopped answering was told to stop by
        someone at the device, and stays out of the call."""
        if mc.ending or mc.gone.get(name) is not gone or not gone.away or gone.rejoining:
            return
        gone.rejoining = True
        log.info("call %s: member %s answers again: inviting it back", mc.id, name)
        self._rejoin(mc, name, gone).addErrback(
            lambda f: log.error("call %s: taking %s back failed: %s", mc.id, name, f.getErrorMessage()))

    @defer.inlineCallbacks
    def _rejoin(self, mc: ManagedCall, name: str, gone: Gone) -> Any:
        """Fig. 6 for one member within the call: an INVITE without SDP to it, its offer stitched
        into a re-INVITE to the CN at the m-lines it had (port 0 since it left), and its ACK with
        its part of the CN's answer."""
        try:
            call = yield self._invite(mc.system, gone.uri, None)
        except Exception as exc:
            log.info("call %s: member %s did not take the call back: %s", mc.id, name, exc)
            gone.rejoining = False
            return None
        if mc.ending or mc.gone.get(name) is not gone:
            self._release(call, call.remote_sdp, mc.sess_id)
            return None
        try:
            theirs = parse(call.remote_sdp or b"")
            current = parse(mc.cn.local)
            slots = tuple(s for s in gone.slots if s.k < len(theirs.media) and theirs.media[s.k].port != 0
                          and theirs.media[s.k].media == current.media[s.i].media)
            if not slots:
                raise PlanError("it offers none of the streams it carried")
            plan = Plan(tuple(sorted((*mc.plan.slots, *slots), key=lambda s: s.i)), mc.plan.cn_lines)
            members = mc.facing()
            members[name] = theirs
            offer = cn_description(plan, members, self._origin(mc.sess_id, mc.cn.version + 1),
                                   template=current)
        except (SDPParseError, PlanError) as exc:
            log.warning("call %s: member %s cannot come back: %s", mc.id, name, exc)
            self._release(call, call.remote_sdp, mc.sess_id)
            gone.rejoining = False
            return None
        before = mc.cn.local, mc.plan
        leg = Leg(name, gone.uri, call, b"", call.remote_sdp or b"")
        mc.members[name] = leg
        del mc.gone[name]
        mc.plan = plan
        mc.cn.version += 1
        mc.cn.local = offer.to_bytes()
        self._save(mc)
        try:
            response = yield mc.cn.call.reinvite(mc.cn.local)
            mc.cn.remote = response.body or mc.cn.remote
            part = member_description(plan, name, parse(mc.cn.remote), theirs, self._origin(mc.sess_id, 1))
        except Exception as exc:
            log.warning("call %s: the CN did not take %s back: %s", mc.id, name, exc)
            if mc.members.get(name) is leg:
                del mc.members[name]
                mc.gone[name] = dataclasses.replace(gone, rejoining=False)
                mc.cn.local, mc.plan = before
                self._save(mc)
            self._release(call, call.remote_sdp, mc.sess_id)
            return None
        leg.local = part.to_bytes()
        self._save(mc)
        call.ack(leg.local)
        self._watch_member(mc, name, leg)
        log.info("call %s: member %s is back (%s)", mc.id, name, ", ".join(f"m{s.i}" for s in slots))
        return mc

    # A failed or readdressed egress (`sipmob.mdsm.egress`) -------------------------------------------

    def move_call(self, mc: ManagedCall, egress: str, address: str, reason: str, started: float) -> None:
        """The call's egress failed (or changed address): its SIP goes to `address` at once, each
        anchored stream's transcoder side is moved there, then the CN is re-INVITEd from it."""
        if mc.ending or (mc.egress, mc.egress_address) == (egress, address):
            return
        mc.egress, mc.egress_address = egress, address
        assert self.egress is not None
        self.egress.bind(mc, address)
        self._save(mc)
        self._move(mc, address, reason, started, MOVE_RETRIES).addErrback(
            lambda f: log.error("call %s: moving to %s failed: %s", mc.id, address, f.getErrorMessage()))

    @defer.inlineCallbacks
    def _move(self, mc: ManagedCall, address: str, reason: str, started: float, retries: int) -> Any:
        if mc.ending or mc.egress_address != address:
            return None  # ended, or moved again meanwhile
        cn_remote = parse(mc.cn.remote)
        for name, via in list(mc.via.items()):
            if via.bind is None or via.bind == address or name not in mc.members:
                continue
            body = invocation(_bound(section(cn_remote, via.i), address),
                              section(parse(mc.members[name].remote), via.k), self.host).to_bytes()
            via.leg.version += 1
            try:
                response = yield via.leg.call.reinvite(body)
                ta = party(parse(response.body or b""), 0)
            except Exception as exc:
                log.error("call %s: the transcoder %s could not move %s's CN side to %s: %s", mc.id,
                          via.leg.uri, name, address, exc)
                continue
            side = ta.media[0].with_connection(ta.media[0].connection or ta.connection)
            via.facing = parse(via.facing).with_media(via.k, side).to_bytes()
            via.leg.local, via.leg.remote, via.bind = body, response.body or via.leg.remote, address
            self._save(mc)
        if mc.ending or mc.egress_address != address:
            return None
        try:
            offer = cn_description(mc.plan, mc.facing(), self._origin(mc.sess_id, mc.cn.version + 1),
                                   template=parse(mc.cn.local))
        except (SDPParseError, PlanError) as exc:
            log.error("call %s cannot be moved to %s: %s", mc.id, address, exc)
            return None
        mc.cn.version += 1
        mc.cn.local = offer.to_bytes()
        self._save(mc)
        log.info("call %s: moving to %s (%s); re-INVITE to the CN sent %.0f ms after the news", mc.id,
                 address, reason, (time.monotonic() - started) * 1000)
        try:
            response = yield mc.cn.call.reinvite(mc.cn.local)
        except SIPError as exc:
            if exc.status == 491 and retries > 0:  # a re-INVITE of ours (or theirs) was in progress
                yield _sleep(self.reactor, MOVE_RETRY_DELAY)
                mc.cn.version -= 1  # the offer is made again from what is current then
                return (yield self._move(mc, address, reason, started, retries - 1))
            log.warning("call %s could not be moved to %s: %s %s; its audio leaves from there, the CN "
                        "may not answer it", mc.id, address, exc.status, exc.reason)
            return None
        mc.cn.remote = response.body or mc.cn.remote
        self._save(mc)
        elapsed = time.monotonic() - started
        if self.egress is not None:
            self.egress.moved(mc, address, reason, elapsed)
        log.info("call %s with %s moved to %s in %.0f ms", mc.id, mc.cn.uri, address, elapsed * 1000)
        self.runtime.status_changed(self)
        return mc

    # Restart ----------------------------------------------------------------------------------------

    def _roll_back(self) -> None:
        """Handoffs a previous run left half done (killed between the 202 and the CN's answer):
        each leg it created is undone, a ringing one by CANCEL, an answered one by BYE (its ACK
        was never sent), and the referrer gets a final NOTIFY saying the handoff failed. The
        referrer's call with the CN is untouched: the CN never answered our INVITE with Replaces."""
        assert self.store is not None
        for setup_id, system, data in list(self.store.setups()):
            undone: list[str] = []
            for name, leg in (data.get("legs") or {}).items():
                try:
                    if leg.get("dialog"):
                        self.ua.adopt(dialog_from_dict(leg["dialog"])).bye()
                        undone.append(f"{name} ended")
                    elif leg.get("ringing"):
                        _send_cancel(str(leg["uri"]), leg["ringing"])
                        undone.append(f"{name} cancelled")
                except (KeyError, TypeError, ValueError, OSError, SIPError) as exc:
                    log.error("half-done handoff %s: cannot undo leg %s: %s", setup_id, name, exc)
            refer = data.get("refer") or {}
            try:
                if refer.get("dialog"):
                    handle = self.ua.machine.adopt(dialog_from_dict(refer["dialog"]))
                    self.ua.in_dialog(handle, "NOTIFY", headers=[
                        ("Event", f"refer;id={int(refer['id'])}"),
                        ("Subscription-State", "terminated;reason=noresource")],
                        body=b"SIP/2.0 500 Handoff Interrupted By A Restart\r\n",
                        content_type="message/sipfrag").addErrback(lambda _f: None)
                    undone.append(f"{data.get('referrer')} told")
            except (KeyError, TypeError, ValueError, SIPError, UAError) as exc:
                log.error("half-done handoff %s: cannot tell the referrer: %s", setup_id, exc)
            self.store.delete_setup(setup_id)
            log.warning("handoff to %s by %s was interrupted by a restart: rolled back (%s)", system,
                        data.get("referrer"), ", ".join(undone) or "nothing was sent yet")

    def _restore(self) -> None:
        assert self.store is not None
        for call_id, system, data in list(self.store.load()):
            try:
                mc = self._revive(call_id, system, data)
            except (KeyError, TypeError, ValueError, SIPError) as exc:
                log.error("saved call %s cannot be taken up again (%s): dropped", call_id, exc)
                self.store.delete(call_id)
                continue
            self._adopt(mc)
            if self.egress is not None:
                self.egress.restored(mc)
            log.info("call %s taken up again: %s with %s%s", call_id, system, ", ".join(mc.members),
                     f" on egress {mc.egress} ({mc.egress_address})" if mc.egress else "")

    def _revive(self, call_id: str, system: str, data: dict[str, Any]) -> ManagedCall:
        def leg(name: str, d: dict[str, Any]) -> Leg:
            local, remote = d["local"].encode(), d["remote"].encode()
            call = self.ua.adopt(dialog_from_dict(d["dialog"]), local_sdp=local, remote_sdp=remote)
            return Leg(name, str(d["uri"]), call, local, remote, int(d["version"]))

        cn = leg("cn", data["cn"])
        members = {n: leg(n, d) for n, d in data["members"].items()}
        replaced = data.get("replaced")
        gone = {str(n): Gone.from_dict(g) for n, g in (data.get("gone") or {}).items()}
        via = {str(n): Via(leg("transcoder", v["leg"]), int(v["i"]), int(v["k"]), str(v["summary"]),
                           str(v["facing"]).encode(), str(v["bind"]) if v.get("bind") else None)
               for n, v in (data.get("via") or {}).items()}
        egress, address = data.get("egress") or (None, None)
        return ManagedCall(call_id, system, str(data["referrer"]), cn, members, Plan.from_dict(data["plan"]),
                           int(data["sess_id"]), replaced=Replaces.parse(replaced) if replaced else None,
                           gone=gone, via=via, egress=str(egress) if egress else None,
                           egress_address=str(address) if address else None)


def _sleep(reactor: Any, seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


def _bound(lines: list[str], address: str | None) -> list[str]:
    """An m-section of "SDP A + SDP B" asking the transcoder to bind that side to `address`."""
    return [*lines, f"a=x-bind:{address}"] if address else lines


def _endpoint(sdp: SessionDescription, index: int) -> tuple[str, int]:
    connection = sdp.connection_for(index)
    return (connection.host if connection is not None else "", sdp.media[index].port)


def request_uri_of(incoming: IncomingCall) -> URI:
    """Who the MN's side of an MNC-mode call is: the From of its INVITE."""
    return incoming.request.from_.uri


def _cancel_fields(response: Response) -> dict[str, Any]:
    """What a CANCEL of the INVITE that `response` answers must repeat (RFC 3261 §9.1): its top
    Via (the branch), From, To without the tag, Call-ID, CSeq number."""
    to = re.sub(r";\s*tag=[^;>\s]*", "", response.headers.get("To") or "", flags=re.I)
    return {"via": response.headers.get("Via"), "from": response.headers.get("From"), "to": to,
            "call_id": response.call_id, "cseq": response.cseq.seq}


def _send_cancel(uri: str, fields: Mapping[str, Any]) -> None:
    """CANCEL an INVITE a previous run of the daemon sent (its transaction died with it): the
    request is built from the saved fields and sent from a socket of its own; the CANCEL's and the
    INVITE's answers go to the Via's address, where the new core drops them as strays. Only a
    member or CN at an IP address (what devices.d and Contacts hold) is reached: no DNS here."""
    target = URI.parse(uri).replace(headers=())
    host = target.host.strip("[]")
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    text = (f"CANCEL {target} SIP/2.0\r\nVia: {fields['via']}\r\nMax-Forwards: 70\r\n"
            f"From: {fields['from']}\r\nTo: {fields['to']}\r\nCall-ID: {fields['call_id']}\r\n"
            f"CSeq: {int(fields['cseq'])} CANCEL\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), (host, target.port or 5060))


def _refer_method(request: Request) -> str | None:
    """The method a REFER's Refer-To asks for (None when it cannot be read: `referred` says why)."""
    values = request.headers.get_lines("Refer-To")
    try:
        uri = NameAddr.parse(values[0].strip()).uri if len(values) == 1 else None
    except SIPParseError:
        return None
    return (uri.param("method") or "INVITE").upper() if uri is not None else None


def _inner_target(what: Referred) -> URI | None:
    for name, value in what.headers:
        if name.lower() == "refer-to":
            return NameAddr.parse(value).uri.replace(headers=())
    return None
