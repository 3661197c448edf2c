"""The egress configuration (``/etc/sipmob/egress.toml``): the household's ways out and the policy.

Shared by every daemon that holds dialogs with the outside (today ``sipmob phone``); each reads the
same file. Example, two links, DSL preferred, LTE as backup::

    policy = "priority"
    hold_down = 30.0
    [probe]
    interval = 1.0
    down_after = 3
    [[egress]]
    name = "dsl"
    interface = "eth1"
    priority = 1
    probe = "sip:ping@sip.provider.example"
    [[egress]]
    name = "lte"
    interface = "wwan0"
    priority = 2

Not here: what the keys do (`sipmob.net.egress`, `sipmob.service.egress`).
"""

from __future__ import annotations

import dataclasses

from sipmob.net.egress import EgressSpec
from sipmob.service.config import each, ip_address, ip_network, non_negative, one_of, positive, setting

DEFAULT_EGRESS_CONFIG = "/etc/sipmob/egress.toml"


def _probe_uri(value: str) -> str | None:
    if value and not value.startswith("sip:"):
        return f"must be a sip: URI (OPTIONS is sent there), got {value!r}"
    return None


def _interface(value: str) -> str | None:
    if len(value) > 15 or "/" in value or " " in value:
        return f"must be a network interface name, got {value!r}"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class EgressEntry:
    name: str = setting(help="a name for this way out, shown by `sipmob egress` and in the journal")
    interface: str = setting("", check=_interface,
                             help="the interface; its address is learnt from the kernel (DHCP, PPP)")
    address: str = setting("", check=lambda v: ip_address(v) if v else None,
                           help="a fixed source address instead of (or expected on) the interface")
    priority: int = setting(100, help="lower is preferred (policy priority); ties go to the lower cost")
    cost: int = setting(0, check=non_negative, help="a tie-breaker between equal priorities")
    probe: str = setting("", check=_probe_uri,
                         help="SIP URI sent OPTIONS through this egress to notice a dead upstream the "
                              "kernel cannot see; empty: [probe] target, or no probing")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.name:
            problems.append(("name", "is required"))
        if not self.interface and not self.address:
            problems.append(("interface", "give an interface or an address"))
        return problems


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    interval: float = setting(1.0, check=positive, help="seconds between two probes of one egress")
    down_after: int = setting(3, check=lambda v: None if v >= 1 else f"must be 1 or more, got {v}",
                              help="unanswered probes in a row that take an egress down")
    target: str = setting("", check=_probe_uri,
                          help="SIP URI probed through every egress without its own probe; "
                               "empty: none (netlink only)")


@dataclasses.dataclass(frozen=True, slots=True)
class Share:
    allow: list[str] = setting(default_factory=list, check=each(ip_network),
                               help="networks (CIDR) whose gateways may SUBSCRIBE to our Egress List "
                                    "(event sip-egress); empty: nobody")
    max_subscribers: int = setting(8, check=lambda v: None if v >= 1 else f"must be 1 or more, got {v}",
                                   help="subscriptions at once; more get 503")
    max_expires: int = setting(3600, check=positive, help="the longest subscription we grant, in seconds")
    relays: int = setting(0, check=lambda v: None if v >= 0 else f"must be 0 or more, got {v}",
                          help="far ends we relay at once for gateways of the allowed networks whose "
                               "egresses are all down (event sip-egress-relay); 0: none")
    peers: bool = setting(False, help="when all our egresses are down, move calls over another "
                                      "gateway's egress (found by SLP, service:sip-egress)")


@dataclasses.dataclass(frozen=True, slots=True)
class EgressConfig:
    policy: str = setting("priority", check=one_of("priority", "least_load"),
                          help='which egress a new session takes: "priority" or "least_load"')
    sticky: bool = setting(True, help="a session stays on its egress while it is up; false: sessions "
                                      "go back to a better egress once it has been up for hold_down")
    hold_down: float = setting(30.0, check=non_negative,
                               help="seconds a failed egress must stay good before it is used again "
                                    "(flap damping)")
    probe: Probe = setting(default_factory=Probe)
    share: Share = setting(default_factory=Share)
    egress: list[EgressEntry] = setting(default_factory=list,
                                        help="the egresses, one [[egress]] table each")

    def validate(self) -> list[tuple[str, str]]:
        names = [e.name for e in self.egress]
        if len(set(names)) != len(names):
            return [("egress", "two egresses with one name")]
        return []

    def specs(self) -> list[EgressSpec]:
        return [EgressSpec(e.name, interface=e.interface or None, address=e.address or None,
                           priority=e.priority, cost=e.cost, probe=e.probe or self.probe.target or None)
                for e in self.egress]
