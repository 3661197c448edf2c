"""Virtual devices per room: which of a room's devices become members, in which order."""

from __future__ import annotations

from sipmob.mdsm.config import Member
from sipmob.mdsm.rooms import per_room
from sipmob.mn.devices import Found


def dev(short: str, room: str, *media: str, **extra: str) -> Found:
    attrs = {"room": (room,), "media": media, **{k: (v,) for k, v in extra.items()}}
    return Found(short, f"sip:{short}@192.0.2.1", attrs)


def names(found: list[Found], known: dict[str, Member] | None = None, taken: set[str] | None = None
          ) -> dict[str, list[str]]:
    return {r.name: [m.name for m in r.members] for r in per_room(found, known or {}, taken or set())}


def test_the_rooms_audio_display_and_camera_in_the_order_the_plan_prefers() -> None:
    found = [dev("tv", "Living room", "video-recvonly", "audio-recvonly"),
             dev("cam", "Living room", "video-sendonly"),
             dev("speaker", "Living room", "audio-sendrecv"),
             dev("radio", "Living room", "audio-recvonly")]
    assert names(found) == {"living-room": ["speaker", "tv", "cam"]}


def test_a_room_of_one_device_phones_and_other_virtual_devices_make_nothing() -> None:
    found = [dev("tv", "hall", "video-recvonly"),
             dev("phone", "kitchen", "audio-sendrecv", mobility="enhanced"),
             dev("lr", "kitchen", "audio-sendrecv", members="a"),
             dev("speaker", "kitchen", "audio-recvonly")]
    assert names(found) == {}


def test_a_restricted_device_only_with_its_allow_list_known() -> None:
    found = [dev("cam", "hall", "video-sendonly", restricted="true"), dev("tv", "hall", "video-recvonly")]
    assert names(found) == {}
    known = {"sip:cam@192.0.2.1": Member("hall-camera", "sip:cam@192.0.2.1", frozenset({"video"}),
                                         ("sip:anna@home.example",))}
    rooms = per_room(found, known, set())
    assert [(m.name, m.allow) for m in rooms[0].members] == [
        ("tv", ()), ("hall-camera", ("sip:anna@home.example",))]


def test_a_configured_system_keeps_its_name() -> None:
    found = [dev("tv", "kitchen", "video-recvonly"), dev("speaker", "kitchen", "audio-sendrecv")]
    assert names(found, taken={"kitchen"}) == {}
