"""The Egress List and the path-choice policy of a multihomed gateway (SIP-NEMO §3, HMMP §4), sans-I/O.

An *egress* is one way out of the home: an interface (its source address learnt from the kernel) or a
fixed source address, with a name, a priority, a cost and an optional upstream probe target. The
kernel's view (links, addresses) and the probe results come in as calls carrying the current time;
`next_event()` gives what follows from them:

- `EgressUp` / `EgressDown`: an egress became usable or stopped being usable;
- `AddressChanged`: an egress that stays up now has another source address (DHCP renew, PPP
  reconnect): every session on it must be re-INVITEd from the new address (HMMP);
- `MoveSession`: a session should be re-INVITEd over another egress (its egress failed, or, without
  sticky sessions, a better one came back);
- `SessionStranded`: a session whose egress failed and that no other egress can carry;
- `ProbeDue`: the edge should probe an egress now (SIP OPTIONS from its source address).

Each egress's health is a machine of four states (`TRANSITIONS`, one row per arrow): the inputs are
whether the egress is *usable now* (link up, an address, a default route through it in some routing
table once the routes have been read, the probes not failing) and the hold-down timer. A failed
egress is used again only after it has stayed good for ``hold_down`` seconds: a link that flaps
never becomes usable in between, so the sessions do not follow it back and forth (the flap damping
mwan3 and routing protocols do with a hold-down timer). An egress that was only reconfigured (its
address or its default route went and came back: DHCP, PPP) is used again at once.

Sessions are assigned by the policy (``priority``: the usable egress with the lowest priority
number, then the lowest cost; ``least_load``: the one carrying the fewest sessions, then priority).
With ``sticky`` sessions a session stays where it is while its egress is up; without, sessions follow
the policy when an egress comes back (failback).

Not here: netlink and probes (`sipmob.service.egress`), moving a session (the daemon that holds
the dialog re-INVITEs it), routing (the system's `ip rule` or systemd-networkd tables).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
from collections.abc import Iterable, Sequence

LINK_DOWN = "link down"
NO_ADDRESS = "no address"
NO_ROUTE = "no default route"
RECONFIGURED = (NO_ADDRESS, NO_ROUTE)  # reasons that are a reconfiguration (DHCP, PPP), not a failure

PRIORITY = "priority"
LEAST_LOAD = "least_load"
POLICIES = (PRIORITY, LEAST_LOAD)


class LocalError(Exception):
    """Our own misuse of the list: an unknown egress or session, a bad description."""


@dataclasses.dataclass(frozen=True, slots=True)
class EgressSpec:
    """One configured egress: `interface` (its address learnt) or a fixed `address`, or both (the
    address expected on that interface)."""

    name: str
    interface: str | None = None
    address: str | None = None
    priority: int = 100
    cost: int = 0
    probe: str | None = None  # a SIP URI to send OPTIONS to; None: no upstream probing

    def __post_init__(self) -> None:
        if not self.name:
            raise LocalError("an egress needs a name")
        if self.interface is None and self.address is None:
            raise LocalError(f"egress {self.name}: give an interface or an address")


class State(enum.Enum):
    UNKNOWN = "unknown"  # nothing heard yet
    UP = "up"
    DOWN = "down"
    RECOVERING = "recovering"  # good again, waiting for hold_down before it is used


class Input(enum.Enum):
    USABLE = "link up, address present, probes answered"
    UNUSABLE = "link down, no address or probes failing"
    HOLD_DOWN_EXPIRED = "good for hold_down seconds"
    READDRESSED = "usable again after a reconfiguration (address or default route), not a failure"


class Action(enum.Enum):
    ANNOUNCE_UP = "egress up: new sessions may use it; failback"
    ANNOUNCE_DOWN = "egress down: move its sessions"
    START_HOLD_DOWN = "start the hold-down timer"
    STOP_HOLD_DOWN = "stop the hold-down timer; count a flap"
    CANCEL_HOLD_DOWN = "stop the hold-down timer (no flap)"


_S, _I, _A = State, Input, Action
Row = tuple[tuple[Action, ...], State]

# (state, input) -> (actions, next state). A pair missing from the table leaves the state as it is
# (the input says what the state already says). At start an egress that is good is used at once:
# hold-down is for links that failed while we watched them.
TRANSITIONS: dict[State, dict[Input, Row]] = {
    _S.UNKNOWN: {
        _I.USABLE: ((_A.ANNOUNCE_UP,), _S.UP),
        _I.UNUSABLE: ((), _S.DOWN),
    },
    _S.UP: {
        _I.UNUSABLE: ((_A.ANNOUNCE_DOWN,), _S.DOWN),
    },
    _S.DOWN: {
        _I.USABLE: ((_A.START_HOLD_DOWN,), _S.RECOVERING),
        _I.READDRESSED: ((_A.ANNOUNCE_UP,), _S.UP),
    },
    _S.RECOVERING: {
        _I.UNUSABLE: ((_A.STOP_HOLD_DOWN,), _S.DOWN),
        _I.HOLD_DOWN_EXPIRED: ((_A.ANNOUNCE_UP,), _S.UP),
        _I.READDRESSED: ((_A.CANCEL_HOLD_DOWN, _A.ANNOUNCE_UP), _S.UP),
    },
}


# Events ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class EgressUp:
    egress: str
    address: str


@dataclasses.dataclass(frozen=True, slots=True)
class EgressDown:
    egress: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class AddressChanged:
    egress: str
    old: str
    new: str
    sessions: tuple[str, ...]  # to re-INVITE from `new`


@dataclasses.dataclass(frozen=True, slots=True)
class MoveSession:
    session: str
    from_egress: str
    to_egress: str
    address: str  # the source address to re-INVITE from
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStranded:
    session: str
    egress: str
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeDue:
    egress: str
    address: str
    target: str


EgressEvent = EgressUp | EgressDown | AddressChanged | MoveSession | SessionStranded | ProbeDue


@dataclasses.dataclass
class Egress:
    """One row of the Egress List (SIP-NEMO §3.1: interface, contact address, status, load, priority)."""

    spec: EgressSpec
    state: State = State.UNKNOWN
    link_up: bool | None = None  # None: no link to watch (a fixed address)
    addresses: list[str] = dataclasses.field(default_factory=list)
    misses: int = 0
    probe_failed: bool = False
    last_rtt: float | None = None
    hold_down_until: float | None = None
    next_probe: float | None = None
    flaps: int = 0
    since: float = 0.0
    down_reason: str = ""
    default_routes: set[tuple[int, int]] = dataclasses.field(default_factory=set)  # (IP version, table)
    sessions: set[str] = dataclasses.field(default_factory=set)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str | None:
        """The source address sessions on this egress use."""
        if self.spec.address is not None:
            return self.spec.address if self.spec.address in self.addresses else None
        # IPv4 first (what a home's SIP provider and most CNs reach), then in order of arrival
        ordered = sorted(self.addresses, key=lambda a: ":" in a)
        return ordered[0] if ordered else None

    def usable(self, need_route: bool = False) -> tuple[bool, str]:
        if self.link_up is False:
            return False, LINK_DOWN
        address = self.address
        if address is None:
            return False, NO_ADDRESS
        if self.probe_failed:
            return False, f"{self.misses} probes unanswered"
        version = 6 if ":" in address else 4
        if need_route and self.spec.interface is not None and not any(
                v == version for v, _table in self.default_routes):
            return False, NO_ROUTE
        return True, ""

    def row(self) -> dict[str, object]:
        return {"name": self.name, "interface": self.spec.interface, "address": self.address,
                "status": self.state.value, "priority": self.spec.priority, "cost": self.spec.cost,
                "sessions": len(self.sessions), "last_rtt": self.last_rtt, "flaps": self.flaps}


class EgressList:
    """The gateway's egresses, their health and which session uses which."""

    def __init__(self, specs: Sequence[EgressSpec], *, policy: str = PRIORITY, sticky: bool = True,
                 hold_down: float = 30.0, probe_interval: float = 1.0, down_after: int = 3) -> None:
        if policy not in POLICIES:
            raise LocalError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if down_after < 1 or probe_interval <= 0 or hold_down < 0:
            raise LocalError("down_after >= 1, probe_interval > 0 and hold_down >= 0")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise LocalError("two egresses with one name")
        self.policy = policy
        self.sticky = sticky
        self.hold_down = hold_down
        self.probe_interval = probe_interval
        self.down_after = down_after
        self.egresses: dict[str, Egress] = {}
        for spec in specs:
            e = Egress(spec)
            if spec.interface is None:
                e.link_up = None
            self.egresses[spec.name] = e
        self._session_egress: dict[str, str] = {}
        self._need_route = False
        self._stranded: dict[str, str] = {}  # session -> the egress it was on when that failed
        self._events: collections.deque[EgressEvent] = collections.deque()

    # What the kernel says ----------------------------------------------------------------------

    def link(self, interface: str, up: bool, now: float) -> None:
        for e in self._on(interface):
            e.link_up = up
            self._evaluate(e, now)

    def address(self, interface: str, address: str, present: bool, now: float) -> None:
        """An address appeared on or left `interface` (netlink RTM_NEWADDR / RTM_DELADDR)."""
        for e in self.egresses.values():
            if e.spec.interface is not None and e.spec.interface != interface:
                continue
            if e.spec.interface is None and address != e.spec.address:
                continue
            before = e.address
            if present and address not in e.addresses:
                e.addresses.append(address)
            elif not present and address in e.addresses:
                e.addresses.remove(address)
            after = e.address
            if e.state is State.UP and before is not None and after is not None and before != after:
                self._events.append(AddressChanged(e.name, before, after, tuple(sorted(e.sessions))))
            self._evaluate(e, now)

    def default_route(self, interface: str, version: int, table: int, present: bool, now: float) -> None:
        """A default route through `interface` appeared or went (any routing table: the admin's
        source routing puts one per WAN in a table of its own)."""
        for e in self._on(interface):
            if present:
                e.default_routes.add((version, table))
            else:
                e.default_routes.discard((version, table))
            self._evaluate(e, now)

    def routes_known(self, now: float) -> None:
        """The kernel's routes have been read: from now on an egress needs a default route."""
        self._need_route = True
        for e in self.egresses.values():
            self._evaluate(e, now)

    def probe_result(self, egress: str, ok: bool, rtt: float | None, now: float) -> None:
        """The outcome of one upstream probe (an answer of any status counts: the path works)."""
        e = self._egress(egress)
        if ok:
            e.misses = 0
            e.last_rtt = rtt
            e.probe_failed = False
        else:
            e.misses += 1
            if e.misses >= self.down_after:
                e.probe_failed = True
        self._evaluate(e, now)

    # Sessions ---------------------------------------------------------------------------------

    def assign(self, session: str) -> Egress | None:
        """The egress a new session uses (None: no egress is up), counted in its load."""
        if session in self._session_egress:
            return self.egresses[self._session_egress[session]]
        best = self._best()
        if best is not None:
            best.sessions.add(session)
            self._session_egress[session] = best.name
        return best

    def release(self, session: str) -> None:
        self._stranded.pop(session, None)
        name = self._session_egress.pop(session, None)
        if name is not None:
            self.egresses[name].sessions.discard(session)

    def moved(self, session: str, egress: str) -> None:
        """The session runs over `egress` now (the daemon moved it by itself)."""
        self.release(session)
        self._egress(egress).sessions.add(session)
        self._session_egress[session] = egress

    @property
    def stranded(self) -> dict[str, str]:
        """Sessions no egress could carry when theirs failed, with that egress."""
        return dict(self._stranded)

    def best(self) -> Egress | None:
        """The egress the policy would give a new session now (without assigning one)."""
        return self._best()

    def egress_of(self, session: str) -> Egress | None:
        name = self._session_egress.get(session)
        return self.egresses[name] if name is not None else None

    # Timers and output --------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Schedule the first probes (once the initial netlink dump has been fed in)."""
        for e in self.egresses.values():
            if e.spec.probe is not None:
                e.next_probe = now
            if e.spec.interface is None and e.state is State.UNKNOWN:
                self._evaluate(e, now)

    def get_timer(self) -> float | None:
        deadlines = [t for e in self.egresses.values() for t in (e.hold_down_until, e.next_probe)
                     if t is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        for e in self.egresses.values():
            if e.hold_down_until is not None and now >= e.hold_down_until:
                e.hold_down_until = None
                self._step(e, Input.HOLD_DOWN_EXPIRED, now, "")
            if e.next_probe is not None and now >= e.next_probe:
                e.next_probe = now + self.probe_interval
                address = e.address
                if address is not None and e.spec.probe is not None and e.link_up is not False:
                    self._events.append(ProbeDue(e.name, address, e.spec.probe))

    def next_event(self) -> EgressEvent | None:
        return self._events.popleft() if self._events else None

    def rows(self) -> list[dict[str, object]]:
        return [e.row() for e in self.egresses.values()]

    def active(self) -> list[str]:
        return [e.name for e in self.egresses.values() if e.state is State.UP]

    # Internals ----------------------------------------------------------------------------------

    def _on(self, interface: str) -> Iterable[Egress]:
        return [e for e in self.egresses.values() if e.spec.interface == interface]

    def _egress(self, name: str) -> Egress:
        try:
            return self.egresses[name]
        except KeyError:
            raise LocalError(f"no egress {name!r}") from None

    def _evaluate(self, e: Egress, now: float) -> None:
        ok, why = e.usable(self._need_route)
        if ok and e.state in (State.DOWN, State.RECOVERING) and e.down_reason in RECONFIGURED:
            self._step(e, Input.READDRESSED, now, "")
            return
        if not ok and e.state in (State.DOWN, State.RECOVERING) and why not in RECONFIGURED:
            e.down_reason = why  # a failure seen after a reconfiguration: hold-down applies
        self._step(e, Input.USABLE if ok else Input.UNUSABLE, now, why)

    def _step(self, e: Egress, inp: Input, now: float, why: str) -> None:
        row = TRANSITIONS[e.state].get(inp)
        if row is None:
            return
        actions, e.state = row
        e.since = now
        if e.state is State.DOWN:
            e.down_reason = why
        for action in actions:
            if action is Action.START_HOLD_DOWN:
                e.hold_down_until = now + self.hold_down
                if self.hold_down == 0:
                    e.hold_down_until = None
                    self._step(e, Input.HOLD_DOWN_EXPIRED, now, why)
                    return
            elif action is Action.STOP_HOLD_DOWN:
                e.hold_down_until = None
                e.flaps += 1
            elif action is Action.CANCEL_HOLD_DOWN:
                e.hold_down_until = None
            elif action is Action.ANNOUNCE_UP:
                assert e.address is not None
                self._events.append(EgressUp(e.name, e.address))
                self._rescue(e)
                if not self.sticky:
                    self._failback(e)
            elif action is Action.ANNOUNCE_DOWN:
                self._events.append(EgressDown(e.name, why))
                self._evacuate(e, why)

    def _candidates(self, exclude: str | None = None) -> list[Egress]:
        return [e for e in self.egresses.values()
                if e.state is State.UP and e.name != exclude and e.address is not None]

    def _rank(self, e: Egress) -> tuple[int, int, int, str]:
        if self.policy == LEAST_LOAD:
            return (len(e.sessions), e.spec.priority, e.spec.cost, e.name)
        return (e.spec.priority, e.spec.cost, len(e.sessions), e.name)

    def _best(self, exclude: str | None = None) -> Egress | None:
        candidates = self._candidates(exclude)
        return min(candidates, key=self._rank) if candidates else None

    def _evacuate(self, failed: Egress, why: str) -> None:
        for session in sorted(failed.sessions):
            target = self._best(exclude=failed.name)
            if target is None:
                failed.sessions.discard(session)
                self._session_egress.pop(session, None)
                self._stranded[session] = failed.name
                self._events.append(SessionStranded(session, failed.name, why))
                continue
            # counted on the target at once, so that least_load spreads the evacuees
            failed.sessions.discard(session)
            target.sessions.add(session)
            self._session_egress[session] = target.name
            assert target.address is not None
            self._events.append(MoveSession(session, failed.name, target.name, target.address,
                                            f"{failed.name}: {why}"))

    def _rescue(self, up: Egress) -> None:
        """Stranded sessions go over the first egress that comes up (HMMP: the host readdressed)."""
        assert up.address is not None
        for session, old in sorted(self._stranded.items()):
            del self._stranded[session]
            up.sessions.add(session)
            self._session_egress[session] = up.name
            self._events.append(MoveSession(session, old, up.name, up.address, f"{up.name} is up"))

    def _better(self, back: Egress, current: Egress) -> bool:
        if self.policy == LEAST_LOAD:
            return len(back.sessions) + 1 < len(current.sessions)
        return (back.spec.priority, back.spec.cost) < (current.spec.priority, current.spec.cost)

    def _failback(self, back: Egress) -> None:
        """Without sticky sessions, sessions go where the policy would put them now."""
        assert back.address is not None
        movers: list[tuple[str, str]] = []
        for e in self.egresses.values():
            if e is not back:
                movers.extend((session, e.name) for session in e.sessions)
        for session, name in sorted(movers):
            current = self.egresses[name]
            if not self._better(back, current):
                continue
            current.sessions.discard(session)
            back.sessions.add(session)
            self._session_egress[session] = back.name
            self._events.append(MoveSession(session, current.name, back.name, back.address,
                                            f"{back.name} is back"))
