"""What the mDNS-SD advertisement of a device says (no packet is sent here)."""

from __future__ import annotations

from sipmob.saproxy.devices import Device, DeviceFile, configured_attributes
from sipmob.saproxy.mdns import SERVICE_TYPE, instance_label, service_info, txt_properties
from sipmob.sip.uri import URI


def device(uri: str = "sip:tv@192.0.2.20:5062", **keys: object) -> Device:
    spec = DeviceFile(uri=uri, **keys)  # type: ignore[arg-type]
    return Device("tv", "/x/tv.toml", spec, URI.parse(uri))


def test_txt_carries_room_and_capabilities() -> None:
    d = device(room="kitchen", video="recvonly", audio="sendrecv")
    props = txt_properties(d, configured_attributes(d))
    assert props["room"] == "kitchen"
    assert props["capabilities"] == "audio-sendrecv,video-recvonly"
    assert props["uri"] == "sip:tv@192.0.2.20:5062"


def test_the_service_points_at_the_device_itself() -> None:
    d = device(name="Kitchen TV")
    info = service_info(d, configured_attributes(d))
    assert info.type == SERVICE_TYPE
    assert info.name == f"Kitchen TV.{SERVICE_TYPE}"
    assert info.port == 5062
    assert info.parsed_addresses() == ["192.0.2.20"]


def test_a_device_known_by_an_aor_is_not_advertised() -> None:
    d = device(uri="sip:tv@home.example")
    assert service_info(d, configured_attributes(d)) is None


def test_an_instance_name_fits_in_63_bytes() -> None:
    assert len(instance_label(device(name="é" * 40)).encode()) <= 63


def test_dots_in_a_name_do_not_split_the_instance_label() -> None:
    assert "." not in instance_label(device(name="TV 2.0"))
