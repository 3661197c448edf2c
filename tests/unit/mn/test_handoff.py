"""Session Handoff's rules as pure functions: the mode of a transfer, the RFC 3891 §6 rule for an
INVITE with Replaces to the phone, and whose REFER the device role acts on."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sipmob.mn.devices import Found
from sipmob.mn.handoff import Mode, choose_mode, replaces_allowed, same_party
from sipmob.sip.headers import Replaces
from sipmob.sip.ua import Referred
from sipmob.sip.uri import URI, NameAddr

MN = URI.parse("sip:mn@127.0.0.1")
CN = URI.parse("sip:cn@127.0.0.1:5080")


def found(mobility: str | None) -> Found:
    attrs = {"name": ("TV",)}
    if mobility is not None:
        attrs["mobility"] = (mobility,)
    return Found("tv", "sip:tv@127.0.0.1:5090", attrs)


@pytest.mark.parametrize(("requested", "configured", "mobility", "mode"), [
    (None, "auto", "enhanced", Mode.HANDOFF),
    (None, "auto", "basic", Mode.MNC),
    (None, "auto", None, Mode.MNC),
    ("auto", "mnc", "Enhanced", Mode.HANDOFF),
    (None, "mnc", "enhanced", Mode.MNC),
    ("handoff", "auto", "basic", Mode.HANDOFF),
    ("mnc", "handoff", "enhanced", Mode.MNC),
])
def test_the_mode_of_a_transfer(requested: str | None, configured: str, mobility: str | None,
                                mode: Mode) -> None:
    assert choose_mode(requested, configured, found(mobility)) is mode


def test_same_party_ignores_port_and_parameters_but_not_user_or_host() -> None:
    assert same_party(URI.parse("sip:mn@127.0.0.1:5070;transport=udp"), MN)
    assert not same_party(URI.parse("sip:eve@127.0.0.1"), MN)
    assert not same_party(URI.parse("sip:mn@127.0.0.2"), MN)


def incoming(sender: URI, referred_by: URI | None, peer: URI | None) -> Any:
    replaced = None
    if peer is not None:
        replaced = SimpleNamespace(dialog=SimpleNamespace(remote_uri=NameAddr(None, peer)))
    return SimpleNamespace(request=SimpleNamespace(from_=NameAddr(None, sender)),
                           referred_by=NameAddr(None, referred_by) if referred_by else None,
                           replaced=replaced, replaces=Replaces("c", "t", "f") if peer else None)


def test_an_invite_without_replaces_is_not_this_rules_business() -> None:
    assert replaces_allowed(incoming(URI.parse("sip:eve@h"), None, None))


def test_replaces_from_the_replaced_calls_party_or_referred_by_it_is_allowed() -> None:
    assert replaces_allowed(incoming(CN, None, CN))  # the peer replacing its own dialog
    assert replaces_allowed(incoming(URI.parse("sip:tv@127.0.0.1"), CN, CN))  # CN referred the TV


def test_replaces_from_anyone_else_is_refused() -> None:
    assert not replaces_allowed(incoming(URI.parse("sip:eve@127.0.0.1"), None, CN))
    assert not replaces_allowed(incoming(URI.parse("sip:eve@127.0.0.1"), URI.parse("sip:eve@127.0.0.1"), CN))
    assert not replaces_allowed(incoming(URI.parse("sip:tv@127.0.0.1"), MN, CN))  # MN is not the party


def device_role(owners: list[str], taken: dict[str, Any] | None = None, calls: tuple[str, ...] = ()) -> Any:
    from sipmob.mn.device import DeviceRole

    role = DeviceRole.__new__(DeviceRole)
    role.owners = [URI.parse(o) for o in owners]
    role.taken = taken or {}
    role.phone = SimpleNamespace(calls={c: object() for c in calls})
    return role


def referred(method: str, inner: URI | None = None) -> Referred:
    headers = (("Refer-To", f"<{inner}>"),) if inner is not None else ()
    return Referred(method, MN if method == "REFER" else CN, headers, None, None)


def test_the_device_acts_for_its_owners_only_on_a_handoff() -> None:
    role = device_role(["sip:mn@127.0.0.1"])
    assert role.allowed(URI.parse("sip:mn@127.0.0.1:5070"), referred("INVITE"))
    assert not role.allowed(URI.parse("sip:eve@127.0.0.1"), referred("INVITE"))
    assert not device_role([]).allowed(MN, referred("INVITE"))


def test_a_nested_refer_is_for_the_party_that_handed_the_call_over() -> None:
    from sipmob.mn.device import TakenOver

    bob = URI.parse("sip:bob@127.0.0.1")
    role = device_role([], {"1": TakenOver("1", CN, bob)}, calls=("1",))
    assert role.allowed(bob, referred("REFER", CN))
    assert not role.allowed(URI.parse("sip:eve@127.0.0.1"), referred("REFER", CN))
    assert not role.allowed(bob, referred("REFER", URI.parse("sip:other@127.0.0.1")))
    gone = device_role([], {"1": TakenOver("1", CN, bob)}, calls=())
    assert not gone.allowed(bob, referred("REFER", CN))  # that call has ended


def test_target_dialog_names_a_dialog_by_call_id_and_both_tags_either_way_round() -> None:
    from sipmob.mn.handoff import names_dialog

    assert names_dialog("abc@h;local-tag=1;remote-tag=2", "abc@h", {"1", "2"})
    assert names_dialog("abc@h; remote-tag=1 ;local-tag=2", "abc@h", {"1", "2"})
    assert not names_dialog("abc@h;local-tag=1;remote-tag=3", "abc@h", {"1", "2"})
    assert not names_dialog("other@h;local-tag=1;remote-tag=2", "abc@h", {"1", "2"})
    assert not names_dialog("abc@h;local-tag=1", "abc@h", {"1", "2"})
