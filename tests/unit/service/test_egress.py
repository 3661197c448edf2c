"""The egress edge without sockets: netlink messages to link/address news, the monitor's events."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from sipmob.net.egress import MoveSession
from sipmob.service.config import parse_config
from sipmob.service.egress import IFF_RUNNING, IFF_UP, EgressMonitor, NetlinkWatcher
from sipmob.service.egress_config import EgressConfig


class Message(dict[str, Any]):
    """What pyroute2 gives: fields by key, attributes by get_attr."""

    def __init__(self, event: str, attrs: dict[str, str], **fields: Any) -> None:
        super().__init__(event=event, **fields)
        self.attrs = attrs

    def get_attr(self, name: str) -> str | None:
        return self.attrs.get(name)


def watcher() -> tuple[NetlinkWatcher, list[tuple[Any, ...]]]:
    heard: list[tuple[Any, ...]] = []
    w = NetlinkWatcher(Clock(), lambda name, up: heard.append(("link", name, up)),
                       lambda name, addr, present: heard.append(("addr", name, addr, present)),
                       lambda name, version, table, present: heard.append(("route", name, version, table,
                                                                           present)))
    return w, heard


def test_a_link_is_up_only_when_up_and_running() -> None:
    w, heard = watcher()
    w._handle(Message("RTM_NEWLINK", {"IFLA_IFNAME": "eth1"}, index=3, flags=IFF_UP | IFF_RUNNING))
    w._handle(Message("RTM_NEWLINK", {"IFLA_IFNAME": "eth1"}, index=3, flags=IFF_UP))  # no carrier
    w._handle(Message("RTM_DELLINK", {"IFLA_IFNAME": "eth1"}, index=3, flags=0))
    assert heard == [("link", "eth1", True), ("link", "eth1", False), ("link", "eth1", False)]


def test_addresses_are_named_by_their_link_and_link_local_ones_ignored() -> None:
    w, heard = watcher()
    w._handle(Message("RTM_NEWLINK", {"IFLA_IFNAME": "eth1"}, index=3, flags=0))
    w._handle(Message("RTM_NEWADDR", {"IFA_ADDRESS": "2001:db8::1"}, index=3, scope=0))
    w._handle(Message("RTM_NEWADDR", {"IFA_ADDRESS": "fe80::1"}, index=3, scope=253))
    w._handle(Message("RTM_DELADDR", {"IFA_LOCAL": "10.0.0.2", "IFA_ADDRESS": "10.0.0.9"}, index=3, scope=0))
    assert heard[1:] == [("addr", "eth1", "2001:db8::1", True), ("addr", "eth1", "10.0.0.2", False)]


def test_only_default_unicast_routes_are_reported_with_their_table() -> None:
    w, heard = watcher()
    w._handle(Message("RTM_NEWLINK", {"IFLA_IFNAME": "eth1"}, index=3, flags=0))
    w._handle(Message("RTM_NEWROUTE", {"RTA_OIF": 3, "RTA_TABLE": 101}, dst_len=0, type=1, family=2))
    w._handle(Message("RTM_NEWROUTE", {"RTA_OIF": 3, "RTA_TABLE": 254}, dst_len=24, type=1, family=2))
    w._handle(Message("RTM_NEWROUTE", {"RTA_OIF": 3, "RTA_TABLE": 255}, dst_len=0, type=2, family=2))
    w._handle(Message("RTM_DELROUTE", {"RTA_OIF": 3}, dst_len=0, type=1, family=10, table=254))
    assert heard[1:] == [("route", "eth1", 4, 101, True), ("route", "eth1", 6, 254, False)]


def test_the_monitor_turns_kernel_news_into_moves_for_its_listeners() -> None:
    config = parse_config(EgressConfig, {"egress": [{"name": "a", "interface": "eth1", "priority": 1},
                                                    {"name": "b", "interface": "eth2", "priority": 2}]})
    monitor = EgressMonitor(Clock(), config, watch_netlink=False)
    events: list[object] = []
    monitor.on_event(events.append)
    for name, address in (("eth1", "10.1.0.2"), ("eth2", "10.2.0.2")):
        monitor._link(name, True)
        monitor._address(name, address, True)
    monitor.start()
    assert monitor.status() == "egress a, b"
    monitor.egresses.moved("call-1", "a")
    monitor._link("eth1", False)
    assert MoveSession("call-1", "a", "b", "10.2.0.2", "a: link down") in events
    assert monitor.status() == "egress b"
    assert [r["sessions"] for r in monitor.rows()] == [0, 1]
