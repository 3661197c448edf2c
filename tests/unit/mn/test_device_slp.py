"""Where the phone's ``service:sip-device`` registration is, and how it follows the phone's contact
(HMMP): under the home (LAN) address when the phone listens there apart from its egresses (it stays
when an egress fails), else under the contact, moved (new URL registered, then the old one
deregistered) when the contact moves."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sipmob.mn.device import DeviceRole
from sipmob.mn.devices import SERVICE_TYPE
from sipmob.sip.uri import URI


class Agent:
    """Records what the role asks of its SLP service agent, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def register(self, url: str, service_type: str, attrs: Any, lifetime: int) -> None:
        assert service_type == SERVICE_TYPE
        self.calls.append(("register", url))

    def deregister(self, url: str) -> None:
        self.calls.append(("deregister", url))


def role(contact: str, listen: str, home_apart: bool | None) -> DeviceRole:
    r = DeviceRole.__new__(DeviceRole)
    r.apart = bool(home_apart)  # as start() found it
    r.phone = SimpleNamespace(ua=SimpleNamespace(contact=URI.parse(contact)),
                              config=SimpleNamespace(listen=SimpleNamespace(address=listen, port=5060)),
                              codecs=[])
    r.config = SimpleNamespace(lifetime=300, name="Hall", room="")
    r.sa = Agent()  # type: ignore[assignment]
    return r


def test_without_an_egress_list_the_device_is_the_contact() -> None:
    assert role("sip:mn@192.168.1.30:5060", "192.168.1.30", None).url() == "sip:mn@192.168.1.30:5060"


def test_a_phone_with_a_lan_side_is_registered_there_not_under_its_wan_contact() -> None:
    r = role("sip:mn@10.200.1.2:5060", "192.168.50.1", True)
    assert r.url() == "sip:mn@192.168.50.1:5060"
    r.registered = r.url()
    r.phone.ua.contact = URI.parse("sip:mn@10.200.2.2:5060")  # wan1 failed: the contact moved
    r.follow()
    assert r.sa.calls == [], "the LAN address stays: nothing to move"  # type: ignore[union-attr]


def test_a_phone_on_an_egress_moves_its_device_registration_with_its_contact() -> None:
    r = role("sip:mn@10.200.1.2:5060", "10.200.1.2", False)
    r.registered = r.url()
    r.follow()
    assert r.sa.calls == []  # type: ignore[union-attr]
    r.phone.ua.contact = URI.parse("sip:mn@10.200.2.2:5060")
    r.follow()
    # the new one first (no moment without a device), then only the device's old URL goes
    assert r.sa.calls == [("register", "sip:mn@10.200.2.2:5060"),  # type: ignore[union-attr]
                          ("deregister", "sip:mn@10.200.1.2:5060")]
    assert r.registered == "sip:mn@10.200.2.2:5060"


def test_before_the_device_started_a_move_registers_nothing() -> None:
    r = role("sip:mn@10.200.1.2:5060", "10.200.1.2", False)
    r.sa, r.registered = None, None
    r.phone.ua.contact = URI.parse("sip:mn@10.200.2.2:5060")
    r.follow()  # start() registers under the contact of then
