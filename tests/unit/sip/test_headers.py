"""Tests for sipmob.sip.headers: Via, CSeq, Replaces, parameters, names and comma splitting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.sip.headers import (
    CSeq,
    Replaces,
    Via,
    canonical_name,
    parse_name_addr_list,
    parse_params,
    quote,
    split_commas,
    unquote,
)
from sipmob.sip.uri import SIPParseError


def test_via_fields_are_parsed() -> None:
    via = Via.parse("SIP/2.0/udp pc33.Atlanta.com:5066;branch=z9hG4bK776asdhds;received=192.0.2.1")
    assert (via.transport, via.host, via.port) == ("UDP", "pc33.atlanta.com", 5066)
    assert (via.branch, via.received) == ("z9hG4bK776asdhds", "192.0.2.1")


def test_via_rport_without_value_is_empty_string() -> None:
    assert Via.parse("SIP/2.0/UDP h;rport;branch=z9hG4bK1").rport == ""


def test_via_rport_with_value_is_int() -> None:
    assert Via.parse("SIP/2.0/UDP h;branch=z9hG4bK1;rport=5070").rport == 5070


def test_via_without_rport_is_none() -> None:
    assert Via.parse("SIP/2.0/UDP h;branch=z9hG4bK1").rport is None


def test_via_with_params_fills_in_rport_in_place() -> None:
    via = Via.parse("SIP/2.0/UDP h;rport;branch=z9hG4bK1").with_params(received="192.0.2.9", rport=5090)
    assert str(via) == "SIP/2.0/UDP h;rport=5090;branch=z9hG4bK1;received=192.0.2.9"


def test_via_ipv6_sent_by() -> None:
    via = Via.parse("SIP/2.0/TCP [2001:db8::9]:5060;branch=z9hG4bKa")
    assert via.sent_by == ("2001:db8::9", 5060) and str(via).startswith("SIP/2.0/TCP [2001:db8::9]:5060")


BAD_VIAS = ["SIP/2.0 h", "SIP/2.0/UDP", "SIP/3.0/UDP h", "SIP/2.0/UDP h;;", "SIP/2.0/UDP h;branch"]


@pytest.mark.parametrize("bad", BAD_VIAS)
def test_malformed_via_is_rejected(bad: str) -> None:
    with pytest.raises(SIPParseError):
        Via.parse(bad)


def test_via_list_is_split() -> None:
    vias = Via.parse_list("SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/TCP b:5070")
    assert [(v.host, v.port) for v in vias] == [("a", None), ("b", 5070)]


def test_cseq_parses_leading_zeros_and_method() -> None:
    assert CSeq.parse("0009 INVITE") == CSeq(9, "INVITE")


@pytest.mark.parametrize("bad", ["INVITE", "1", "2147483648 INVITE", "-1 INVITE", "1 INVITE x"])
def test_malformed_cseq_is_rejected(bad: str) -> None:
    with pytest.raises(SIPParseError):
        CSeq.parse(bad)


def test_replaces_parses_rfc3891_example() -> None:
    r = Replaces.parse("425928@bobster.example.org;to-tag=7743;from-tag=6472;early-only")
    assert r == Replaces("425928@bobster.example.org", "7743", "6472", early_only=True)
    assert Replaces.parse(str(r)) == r


def test_replaces_without_tags_is_rejected() -> None:
    with pytest.raises(SIPParseError):
        Replaces.parse("425928@bobster.example.org;to-tag=7743")


def test_params_with_and_without_values() -> None:
    assert parse_params(';q=0.7; expires = 3600;lr;x="a;b"') == (
        ("q", "0.7"), ("expires", "3600"), ("lr", None), ("x", '"a;b"'))  # fmt: skip


def test_split_commas_respects_quotes_and_brackets() -> None:
    value = '"Doe, John" <sip:j@x;a=b,c>, <sip:k@y>'
    assert split_commas(value) == ['"Doe, John" <sip:j@x;a=b,c>', "<sip:k@y>"]


def test_name_addr_list_parses_mixed_forms() -> None:
    addrs = parse_name_addr_list('sip:a@x;expires=60, "B" <sip:b@y>;q=0.5')
    assert [(a.display_name, a.uri.user, a.params) for a in addrs] == [
        (None, "a", (("expires", "60"),)), ("B", "b", (("q", "0.5"),))]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("i", "Call-ID"), ("call-id", "Call-ID"), ("CSEQ", "CSeq"), ("www-authenticate", "WWW-Authenticate"),
     ("r", "Refer-To"), ("b", "Referred-By"), ("X-Mine", "X-Mine")],
)  # fmt: skip
def test_canonical_names(name: str, canonical: str) -> None:
    assert canonical_name(name) == canonical


@settings(max_examples=150)
@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20))
def test_quote_unquote_round_trip(s: str) -> None:
    assert unquote(quote(s)) == s
