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


class FakeSubscription:
    def __init__(self) -> None:
        from twisted.internet import defer

        self.notified: list[tuple[str, bytes, str | None]] = []
        self.terminated: defer.Deferred[str] = defer.Deferred()
        self.refresh_handler: Any = None

    def on_refresh(self, handler: Any) -> None:
        self.refresh_handler = handler

    def notify(self, state: str, body: bytes = b"", content_type: str | None = None) -> Any:
        from twisted.internet import defer

        self.notified.append((state, body, content_type))
        return defer.succeed(type("R", (), {"status": 200})())


class FakeIncoming:
    def __init__(self, raw: str) -> None:
        from sipmob.sip.message import parse_message

        self.request = parse_message(raw.replace("\n", "\r\n").encode())
        self.responses: list[tuple[int, list[tuple[str, str]]]] = []
        self.subscription: FakeSubscription | None = None

    def respond(self, status: int, reason: str | None = None, *, headers: Any = ()) -> None:
        self.responses.append((status, list(headers)))

    def accept_subscription(self, expires: int) -> FakeSubscription:
        self.responses.append((200, [("Expires", str(expires))]))
        self.subscription = FakeSubscription()
        return self.subscription


def subscribe(via: str, event: str = "sip-egress", expires: str = "600") -> FakeIncoming:
    return FakeIncoming(f"SUBSCRIBE sip:mn@10.1.0.2 SIP/2.0\nVia: SIP/2.0/UDP {via};branch=z9hG4bK1\n"
                        "Max-Forwards: 70\nFrom: <sip:gw@h>;tag=1\nTo: <sip:mn@10.1.0.2>\nCall-ID: c\n"
                        "CSeq: 1 SUBSCRIBE\n"
                        f"Contact: <sip:gw@h>\nEvent: {event}\nExpires: {expires}\nContent-Length: 0\n\n")


def publisher(max_subscribers: int = 8) -> Any:
    from sipmob.service.egress import EgressPublisher

    config = parse_config(EgressConfig, {"egress": [{"name": "a", "interface": "eth1"}]})
    monitor = EgressMonitor(Clock(), config, watch_netlink=False)
    ua = type("UA", (), {"contact": "sip:mn@10.1.0.2:5060", "on_request": lambda *a: None})()
    return EgressPublisher(ua, monitor, ["192.168.1.0/24"], max_subscribers=max_subscribers)


def test_a_subscriber_of_an_allowed_network_gets_the_list_at_once() -> None:
    pub = publisher()
    incoming = subscribe("192.168.1.7:5060")
    pub._subscribe(incoming)
    assert incoming.responses[0][0] == 200
    state, body, content_type = incoming.subscription.notified[0]  # type: ignore[union-attr]
    assert state.startswith("active") and content_type == "application/sip-egress+json"
    assert b'"eface":"a"' in body


def test_a_subscriber_from_elsewhere_is_refused_even_if_its_via_names_an_allowed_host() -> None:
    from sipmob.service.sipua import SIPError
    from sipmob.sip.transport import Address, apply_received

    pub = publisher()
    incoming = subscribe("192.168.1.7:5060")
    incoming.request = apply_received(incoming.request, Address("203.0.113.9", 5060, "udp"))
    try:
        pub._subscribe(incoming)
    except SIPError as exc:
        assert exc.status == 403
    else:
        raise AssertionError("accepted")
    assert pub.subscriptions == []


def test_another_event_package_gets_489_naming_ours() -> None:
    incoming = subscribe("192.168.1.7:5060", event="presence")
    publisher()._subscribe(incoming)
    assert incoming.responses == [(489, [("Allow-Events", "sip-egress")])]


def test_subscribers_beyond_the_cap_get_503() -> None:
    pub = publisher(max_subscribers=2)
    statuses = []
    for n in range(3):
        incoming = subscribe(f"192.168.1.{n + 1}:5060")
        pub._subscribe(incoming)
        statuses.append(incoming.responses[0][0])
    assert statuses == [200, 200, 503] and len(pub.subscriptions) == 2


def test_a_fetch_gets_one_notify_and_no_subscription() -> None:
    pub = publisher()
    incoming = subscribe("192.168.1.7:5060", expires="0")
    pub._subscribe(incoming)
    assert incoming.subscription.notified[0][0].startswith("terminated")  # type: ignore[union-attr]
    assert pub.subscriptions == []
