"""Discovery helpers: predicates, short names, lookup by what a person types, presentation, and
`discover` against a fake SLP client."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer

from sipmob.mn.devices import Found, UntrustedDevice, build, discover, predicate, resolve, table, to_json
from sipmob.slp.agent import SLPTimeout
from sipmob.slp.attrs import parse_attr_list
from sipmob.slp.messages import UrlEntry
from sipmob.slp.predicate import Predicate

TV_ATTRS = parse_attr_list("(name=Living room TV),(room=living-room),(media=video-recvonly,audio-recvonly),"
                           "(audio-codecs=PCMU),(video-codecs=H263,H264),(floor=0),trusted")
SPEAKER_ATTRS = parse_attr_list("(room=kitchen),(media=audio-sendrecv),(audio-codecs=opus),trusted")
KITCHEN = parse_attr_list("(name=Kitchen speaker),(media=audio-sendrecv),trusted")
ROGUE = parse_attr_list("(name=Kitchen Speaker),(media=audio-sendrecv)")


def matches(filter_text: str, attrs: str) -> bool:
    return Predicate.parse(filter_text).matches(parse_attr_list(attrs))


def test_no_room_no_media_is_the_empty_predicate() -> None:
    assert predicate() == ""


def test_room_predicate_matches_that_room_only() -> None:
    assert matches(predicate("kitchen"), "(room=kitchen)")
    assert not matches(predicate("kitchen"), "(room=study)")


def test_media_predicate_matches_every_direction() -> None:
    for direction in ("sendrecv", "recvonly", "sendonly"):
        assert matches(predicate(media="video"), f"(media=video-{direction})")
    assert not matches(predicate(media="video"), "(media=audio-sendrecv)")


def test_room_and_media_predicate_needs_both() -> None:
    both = predicate("kitchen", "audio")
    assert matches(both, "(room=kitchen),(media=audio-sendrecv)")
    assert not matches(both, "(room=kitchen),(media=video-sendrecv)")


def test_star_in_a_room_name_is_not_a_wildcard() -> None:
    assert not matches(predicate("k*"), "(room=kitchen)")


def test_reserved_characters_in_a_room_name_are_escaped() -> None:
    Predicate.parse(predicate("a(b)=c"))  # would raise if a bracket leaked into the filter


def test_short_name_from_name_attribute() -> None:
    assert build([("sip:tv@192.0.2.1", TV_ATTRS)])[0].short == "living-room-tv"


def test_short_name_from_uri_user_without_name() -> None:
    assert build([("sip:speaker@192.0.2.2:5070", SPEAKER_ATTRS)])[0].short == "speaker"


def test_short_names_are_made_unique() -> None:
    found = build([("sip:tv@192.0.2.1", TV_ATTRS), ("sip:tv2@192.0.2.3", TV_ATTRS)])
    assert [f.short for f in found] == ["living-room-tv", "living-room-tv-2"]


def test_found_device_carries_media_and_codecs_for_the_planner() -> None:
    device = build([("sip:tv@192.0.2.1", TV_ATTRS)])[0].device()
    assert device.name == "Living room TV"
    assert device.media == frozenset({"video-recvonly", "audio-recvonly"})
    assert device.video_codecs == ("H263", "H264")


def test_resolve_by_short_name_uri_user_and_name() -> None:
    found = build([("sip:tv@192.0.2.1", TV_ATTRS), ("sip:speaker@192.0.2.2", SPEAKER_ATTRS)])
    for typed in ("living-room-tv", "sip:tv@192.0.2.1", "TV", "living room tv"):
        assert resolve(found, typed).uri == "sip:tv@192.0.2.1"


def test_resolve_unknown_lists_the_known() -> None:
    found = build([("sip:speaker@192.0.2.2", SPEAKER_ATTRS)])
    with pytest.raises(LookupError, match=r"no device 'fridge' \(known: speaker\)"):
        resolve(found, "fridge")


def test_resolve_ambiguous_names_the_candidates() -> None:
    found = [Found("a", "sip:x@192.0.2.1", {}), Found("b", "sip:x@192.0.2.2", {})]
    with pytest.raises(LookupError, match="could mean a, b"):
        resolve(found, "x")


def test_table_has_a_row_per_device_under_a_header() -> None:
    text = table(build([("sip:tv@192.0.2.1", TV_ATTRS), ("sip:speaker@192.0.2.2", SPEAKER_ATTRS)]))
    lines = text.splitlines()
    assert lines[0].split() == ["SHORT", "NAME", "ROOM", "MEDIA", "CODECS", "TRUSTED", "URI"]
    assert lines[1].startswith("living-room-tv  Living room TV  living-room")
    assert lines[1].endswith("sip:tv@192.0.2.1")
    assert lines[2].split()[0] == "speaker"


def test_a_rogue_sorting_first_never_takes_a_trusted_devices_short_name() -> None:
    # The captured call: a stranger registered the same name with a URL that sorts first.
    found = build([("sip:aaa@192.168.1.66", ROGUE), ("sip:kitchen@192.168.1.30", KITCHEN)])
    assert [(f.short, f.trusted) for f in found] == [("kitchen-speaker-2", False), ("kitchen-speaker", True)]
    assert resolve(found, "kitchen-speaker").uri == "sip:kitchen@192.168.1.30"
    assert resolve(found, "Kitchen speaker").uri == "sip:kitchen@192.168.1.30"


def test_an_untrusted_device_needs_to_be_allowed_or_named_by_its_uri() -> None:
    found = build([("sip:aaa@192.168.1.66", ROGUE)])
    with pytest.raises(UntrustedDevice, match="--untrusted"):
        resolve(found, "kitchen-speaker")
    assert resolve(found, "kitchen-speaker", allow_untrusted=True).uri == "sip:aaa@192.168.1.66"
    assert resolve(found, "sip:aaa@192.168.1.66").uri == "sip:aaa@192.168.1.66"


def test_table_marks_untrusted_devices_and_shows_no_control_characters() -> None:
    rogue = parse_attr_list("(name=Evil\\01\\7F),(media=audio-sendrecv)")
    text = table(build([("sip:aaa@192.168.1.66", rogue), ("sip:kitchen@192.168.1.30", KITCHEN)]))
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert "  NO  " in rows["evil"] and "  yes  " in rows["kitchen-speaker"]
    assert "\x01" not in text and "\x7f" not in text


def test_empty_table_says_none_found() -> None:
    assert table([]) == "no devices found"


def test_json_keeps_every_attribute() -> None:
    [entry] = to_json(build([("sip:tv@192.0.2.1", TV_ATTRS)]))
    assert entry["attributes"]["floor"] == ["0"]
    assert entry["name"] == "Living room TV"


class FakeClient:
    def __init__(self, services: dict[str, Any]) -> None:
        self.services = services
        self.asked: list[tuple[str, str]] = []

    def find_services(self, service_type: str, predicate: str = "") -> defer.Deferred[Any]:
        self.asked.append((service_type, predicate))
        return defer.succeed([UrlEntry(url, 300) for url in self.services])

    def find_attributes(self, url: str, tags: str = "") -> defer.Deferred[Any]:
        value = self.services[url]
        return defer.fail(value) if isinstance(value, Exception) else defer.succeed(value)


def test_discover_asks_for_sip_devices_then_attributes_of_each() -> None:
    client = FakeClient({"sip:tv@192.0.2.1": TV_ATTRS, "sip:speaker@192.0.2.2": SPEAKER_ATTRS})
    result: list[Any] = []
    discover(client, "kitchen", None).addCallback(result.append)
    assert client.asked == [("service:sip-device", "(room=kitchen)")]
    assert [f.short for f in result[0]] == ["speaker", "living-room-tv"]


def test_device_whose_attributes_fail_is_still_listed() -> None:
    client = FakeClient({"sip:gone@192.0.2.9": SLPTimeout("no answer")})
    result: list[Any] = []
    discover(client).addCallback(result.append)
    assert [(f.short, f.attributes) for f in result[0]] == [("gone", {})]
