"""The page's actions as control commands, and device diffs."""

from __future__ import annotations

import pytest

from sipmob.web.app import _command, _diff


def test_actions_become_the_phones_commands() -> None:
    assert _command({"action": "transfer", "call": "1", "to": "sip:tv@h", "label": "TV"}) == (
        "transfer", {"call": "1", "to": ["sip:tv@h"], "media": "all"}, "Moving call 1 to TV")
    assert _command({"action": "retrieve", "call": 2})[:2] == ("retrieve", {"call": "2", "media": "all"})
    assert _command({"action": "split", "call": "1", "video_out": "tv", "video_in": "cam"})[1] == {
        "call": "1", "video_out": "tv", "video_in": "cam", "audio": None}
    assert _command({"action": "hangup", "call": "3"})[:2] == ("hangup", {"call": "3"})
    assert _command({"action": "call", "uri": " sip:alice@example.com "})[:2] == (
        "call", {"uri": "sip:alice@example.com"})


@pytest.mark.parametrize("body", [
    {"action": "transfer", "call": "1"},
    {"action": "transfer", "call": "1", "to": "tv", "media": "smell"},
    {"action": "hangup", "call": ""},
    {"action": "hangup", "call": "1" * 17},
    {"action": "hangup", "call": ["1"]},
    {"action": "split", "call": "1", "video_out": "tv"},
    {"action": "call", "uri": "http://evil"},
    {"action": "call", "uri": "sip:a@b\r\nX-Injected: 1"},
    {"action": "call", "uri": "sip:" + "a" * 300},
])
def test_malformed_actions_are_refused(body: dict[str, object]) -> None:
    with pytest.raises((ValueError, KeyError)):
        _command(body)


def test_diff_sends_only_what_changed() -> None:
    a, b, c = {"uri": "a", "up": True}, {"uri": "b", "up": True}, {"uri": "c", "up": True}
    assert _diff(None, [a]) == {"set": [a], "remove": []}
    assert _diff([a, b], [a, dict(b, up=False), c]) == {"set": [dict(b, up=False), c], "remove": []}
    assert _diff([a, b], [b]) == {"set": [], "remove": ["a"]}
