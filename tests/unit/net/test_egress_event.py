"""The sip-egress event body: what a NOTIFY carries, and what a bad one is."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipmob.net.egress import EgressList, EgressSpec
from sipmob.net.egress_event import (
    MAX_BODY,
    MAX_ENTRIES,
    EgressEventError,
    EgressListBody,
    Entry,
    decode,
    encode,
    from_rows,
)


def test_the_list_of_an_egress_list_round_trips() -> None:
    egresses = EgressList([EgressSpec("wan1", interface="eth1", priority=1),
                           EgressSpec("wan2", interface="eth2", priority=2)])
    egresses.link("eth1", True, 0.0)
    egresses.address("eth1", "10.1.0.2", True, 0.0)
    egresses.moved("call-1", "wan1")
    body = from_rows("sip:mn@10.1.0.2:5060", egresses.rows())
    assert body.entries == (Entry("wan1", "10.1.0.2", True, 1, 1, 0, None),
                            Entry("wan2", None, False, 0, 2, 0, None))
    assert decode(encode(body)) == body


def test_the_wire_form_names_the_drafts_fields() -> None:
    wire = json.loads(encode(EgressListBody("sip:gw@h", (Entry("dsl", "192.0.2.1", False, 3, rtt_ms=2.5),))))
    assert wire == {"host": "sip:gw@h", "egresses": [{"eface": "dsl", "contact": "192.0.2.1", "status": "OFF",
                                                      "load": 3, "priority": 100, "cost": 0, "rtt_ms": 2.5}]}


@pytest.mark.parametrize("data", [
    b"\xff", b"[]", b'{"egresses": []}', b'{"host": "h", "egresses": {}}',
    b'{"host": "h", "egresses": [1]}', b'{"host": "h", "egresses": [{"eface": "", "status": "ON"}]}',
    b'{"host": "h", "egresses": [{"eface": "a", "status": "on"}]}',
    b'{"host": "h", "egresses": [{"eface": "a", "status": "ON", "load": -1}]}',
    b'{"host": "h", "egresses": [{"eface": "a", "status": "ON", "load": true}]}',
    b'{"host": "h", "egresses": [{"eface": "a", "status": "ON", "contact": 5}]}',
    b'{"host": "h", "egresses": [{"eface": "a", "status": "ON", "rtt_ms": "x"}]}',
    b'{"host": "h", "egresses": [' + b",".join([b'{"eface": "a", "status": "ON"}'] * (MAX_ENTRIES + 1))
    + b"]}",
    b" " * (MAX_BODY + 1),
    b"[" * 5000,  # deep enough to exhaust the parser's recursion
])
def test_a_bad_body_is_an_error_naming_what_is_wrong(data: bytes) -> None:
    with pytest.raises(EgressEventError):
        decode(data)


@given(st.binary(max_size=300))
def test_any_bytes_decode_or_fail_cleanly(data: bytes) -> None:
    try:
        decode(data)
    except EgressEventError:
        pass
