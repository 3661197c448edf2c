"""The MDSM on a multihomed gateway: each call with an outside CN on an egress, moved when it fails.

Responsible for: the Egress List of ``[egress] file`` (the phone's ``egress.toml``, watched by
`sipmob.service.egress.EgressMonitor`: netlink and probes); telling whether a CN is *outside*
(the kernel would send to it from an egress's address: that is what "reached through an egress"
means on a gateway with source routing, and it needs no privilege to ask); the egress of a call
being set up (`route`: its SIP leaves from that egress's address, Via and Contact name it); the
egress of each call (`placed`, `ended`, `restored`), and the moves: on "egress down" and "address
changed" each call on that egress is handed to `MdsmApp.move_call` with the surviving (or new)
address; `rows` and `status` (calls per egress) for STATUS= and the journal; the read-only
control socket (``[egress] control``) where ``sipmob egress`` asks for the same rows: one command,
``egress``, answered to whoever can open the socket (mode 0600: the daemon's user, and root), the
protocol and its bounds those of the phone's control socket (`sipmob.mn.control`).

Why media anchoring: an MDSM call's media flows between the members in the home and the CN, not
through the MDSM, so moving the MDSM's SIP alone would leave the members' RTP on the dead link.
With ``[egress] anchor`` (the default: what a household wants is a call that survives its link)
every audio stream of a call with an outside CN goes through the transcoder's relay (a plain
relay when the member and the CN share a codec, a conversion otherwise), whose CN-facing side
is bound to the call's egress address (``a=x-bind``, `sipmob.transcoder.invocation`). A move
re-INVITEs the transcoder to put that side on the new address (new port; the member side keeps
its port, so the members notice nothing), then re-INVITEs the CN from the new address with the
new ``c=``/port. The MDSM drives both re-INVITEs rather than the transcoder following the list on
its own: the CN's re-INVITE needs the transcoder's new port, so one daemon must hold both halves
of the move in order.

Not here: the policy (`sipmob.net.egress`), netlink and probes (`sipmob.service.egress`), the
calls and their re-INVITEs (`sipmob.mdsm.app`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.error import CannotListenError

from sipmob.net.egress import AddressChanged, EgressEvent, MoveSession, SessionStranded, State
from sipmob.service.config import load_config
from sipmob.service.egress import EgressMonitor
from sipmob.service.egress_config import EgressConfig
from sipmob.sip.transport import Address

if TYPE_CHECKING:
    from sipmob.mdsm.app import ManagedCall, MdsmApp

log = logging.getLogger("sipmob.mdsm.egress")


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a call being set up goes: its egress and source address, our SIP socket there;
    `token` holds its place in the Egress List until the CN answers."""

    token: str
    egress: str
    address: str
    local: Address


def source_towards(host: str) -> str | None:
    """The source address the kernel picks to reach `host` (a connected UDP socket sends nothing);
    None for a name or an unreachable host."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host.strip("[]")).version == 6 else socket.AF_INET
    except ValueError:
        return None
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host.strip("[]"), 9))
            return str(s.getsockname()[0])
    except OSError:
        return None


class MdsmEgress:
    def __init__(self, app: MdsmApp, config: EgressConfig, anchor: bool, control: str = "") -> None:
        self.app = app
        self.config = config
        self.anchor = anchor
        self.monitor = EgressMonitor(app.reactor, config)
        self.monitor.on_event(self._event)
        self._placing = 0
        self.moves: list[dict[str, Any]] = []  # the last ten moves
        path = control or (
            os.path.join(os.environ["RUNTIME_DIRECTORY"].split(":")[0], "egress.sock")
            if os.environ.get("RUNTIME_DIRECTORY") else "")
        self.control: Any = None
        if path:
            from sipmob.mn.control import ControlServer

            self.control = ControlServer(app.reactor, path, self.handle)

    @classmethod
    def from_file(cls, app: MdsmApp, path: str, anchor: bool, control: str = "") -> MdsmEgress:
        return cls(app, load_config(EgressConfig, path), anchor, control)

    def start(self) -> None:
        self.monitor.start()
        if self.control is not None:
            try:
                self.control.start()
                log.info("egress control socket %s", self.control.path)
            except OSError as exc:  # the calls matter more than their listing
                log.warning("no egress control socket at %s: %s", self.control.path, exc)
                self.control = None

    def stop(self) -> Any:
        if self.control is not None:
            self.control.stop()
        return self.monitor.stop()

    def handle(self, command: str, args: Mapping[str, Any]) -> Any:
        """The control socket's one command: read only, nothing in `args` is used."""
        from sipmob.mn.control import CommandError

        if command != "egress":
            raise CommandError(f"unknown command {command!r}: the MDSM answers only 'egress'")
        return {"egresses": self.rows(), "moves": list(self.moves)}

    # Calls ------------------------------------------------------------------------------------------

    def _addresses(self) -> set[str]:
        out: set[str] = set()
        for e in self.monitor.egresses.egresses.values():
            out.update(e.addresses)
            if e.spec.address:
                out.add(e.spec.address)
        return out

    def outside(self, host: str) -> bool:
        """Whether the CN at `host` is reached through an egress: the kernel would send to it from
        an egress's address. A name is taken as outside (providers are)."""
        source = source_towards(host)
        if source is None:
            return not _is_ip(host)
        return source in self._addresses()

    def route(self, host: str) -> Route | None:
        """The egress of a call being set up to the CN at `host`; None when the CN is inside the
        home, or no egress is up (the call then goes as the kernel routes it)."""
        if not self.outside(host):
            return None
        self._placing += 1
        token = f"placing-{self._placing}"
        e = self.monitor.egresses.assign(token)
        if e is None or e.address is None:
            self.monitor.egresses.release(token)
            log.warning("CN %s is outside but no egress is up: the call goes as the kernel routes it", host)
            return None
        try:
            local = self.app.ua.local_address(e.address)
        except CannotListenError as exc:
            self.monitor.egresses.release(token)
            log.warning("egress %s: no SIP socket on %s (%s)", e.name, e.address, exc)
            return None
        return Route(token, e.name, e.address, local)

    def done(self, route: Route) -> None:
        self.monitor.egresses.release(route.token)

    def placed(self, mc: ManagedCall, route: Route) -> None:
        """The CN answered: the call counts on its egress from now on."""
        self.monitor.egresses.release(route.token)
        self.monitor.egresses.moved(mc.id, route.egress)
        log.info("call %s on egress %s (%s)%s", mc.id, route.egress, route.address,
                 "; its audio anchored in the transcoder" if any(v.bind for v in mc.via.values()) else "")

    def restored(self, mc: ManagedCall) -> None:
        """A call taken up after a restart: its SIP back on its egress's address, or moved at once
        when that egress failed or readdressed while we were away (the kernel's state was read
        when the monitor started)."""
        if mc.egress is None or mc.egress_address is None:
            return
        egresses = self.monitor.egresses
        e = egresses.egresses.get(mc.egress)
        try:
            self.app.ua.bind_call(mc.cn.call.call_id, self.app.ua.local_address(mc.egress_address))
        except CannotListenError as exc:  # the address is gone: the move below takes it elsewhere
            log.info("call %s: its address %s is gone (%s)", mc.id, mc.egress_address, exc)
        if e is not None and e.state is State.UP and e.address == mc.egress_address:
            egresses.moved(mc.id, e.name)
            return
        target = e if e is not None and e.state is State.UP and e.address else egresses.best()
        if target is None or target.address is None:
            log.warning("call %s: its egress %s (%s) is not usable and no other is up: it stays "
                        "where it was", mc.id, mc.egress, mc.egress_address)
            if e is not None:
                egresses.moved(mc.id, e.name)
            return
        egresses.moved(mc.id, target.name)
        self.app.move_call(mc, target.name, target.address,
                           f"{mc.egress} ({mc.egress_address}) changed while the MDSM was down",
                           time.monotonic())

    def ended(self, mc: ManagedCall) -> None:
        self.monitor.egresses.release(mc.id)

    def bind(self, mc: ManagedCall, address: str) -> bool:
        try:
            local = self.app.ua.local_address(address)
        except CannotListenError as exc:
            log.warning("call %s: no SIP socket on %s (%s)", mc.id, address, exc)
            return False
        self.app.ua.bind_call(mc.cn.call.call_id, local)
        return True

    # Events -----------------------------------------------------------------------------------------

    def _event(self, event: EgressEvent) -> None:
        started = time.monotonic()
        if isinstance(event, MoveSession):
            mc = self.app.calls.get(event.session)
            if mc is not None:
                self.app.move_call(mc, event.to_egress, event.address, event.reason, started)
        elif isinstance(event, AddressChanged):
            reason = f"{event.egress}: address {event.old} -> {event.new}"
            for session in event.sessions:
                mc = self.app.calls.get(session)
                if mc is not None:
                    self.app.move_call(mc, event.egress, event.new, reason, started)
        elif isinstance(event, SessionStranded):
            log.warning("call %s cannot be moved now: %s is down (%s) and no egress is up; it moves "
                        "as soon as one is", event.session, event.egress, event.reason)
        self.app.runtime.status_changed(self.app)

    def moved(self, mc: ManagedCall, address: str, reason: str, seconds: float) -> None:
        self.moves = [*self.moves[-9:], {"call": mc.id, "to": address, "reason": reason,
                                         "seconds": round(seconds, 3)}]

    # Observation ------------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, object]]:
        rows = self.monitor.rows()
        for row in rows:
            e = self.monitor.egresses.egresses[str(row["name"])]
            row["calls"] = sorted(s for s in e.sessions if s in self.app.calls)
        return rows

    def status(self) -> str:
        """The active egresses and the calls on each: "egress wan1 (1 call), wan2 (0 calls)"."""
        parts = []
        for row in self.rows():
            n = len(row["calls"])  # type: ignore[arg-type]
            state = "" if row["status"] == "up" else f" {row['status']}"
            parts.append(f"{row['name']}{state} ({n} call{'' if n == 1 else 's'})")
        return "egress " + ", ".join(parts) if parts else "no egress"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True
