"""Lists, folding, escapes, service types, scopes and language tags (RFC 2608 §4.1, §6.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.slp.names import (
    DEFAULT_SCOPE,
    ServiceType,
    SLPValueError,
    fold,
    lang_matches,
    naming_authority,
    scopes_intersect,
    service_type_of_url,
    split_list,
    unescape,
    wildcard_match,
)

# split_list -----------------------------------------------------------------------------------


def test_split_list_trims_white_space_around_items() -> None:
    assert split_list(" DEFAULT , Living Room ,kitchen") == ["DEFAULT", "Living Room", "kitchen"]


def test_split_list_of_empty_string_is_empty() -> None:
    assert split_list("") == []


@pytest.mark.parametrize("s", ["a,,b", "a,", ",a", " , ", "   "])
def test_split_list_rejects_empty_items(s: str) -> None:
    with pytest.raises(SLPValueError):
        split_list(s)


def test_split_list_keeps_escapes() -> None:
    assert split_list(r"a\2cb,c") == [r"a\2cb", "c"]


def test_slp_value_error_is_a_value_error_with_reason() -> None:
    with pytest.raises(ValueError) as info:
        split_list("a,,b")
    assert isinstance(info.value, SLPValueError) and info.value.reason


# fold -----------------------------------------------------------------------------------------


def test_fold_ignores_case() -> None:
    assert fold("Living Room") == fold("LIVING room")


def test_fold_strips_leading_and_trailing_white_space() -> None:
    assert fold("  \tprinter \r\n") == "printer"


def test_fold_collapses_internal_white_space_runs_to_one_space() -> None:
    assert fold("big \t\n  printer") == "big printer"


def test_fold_keeps_a_single_internal_space() -> None:
    assert fold("a b") != fold("ab")


def test_fold_folds_case_beyond_ascii() -> None:
    assert fold("ÉCRAN") == fold("écran")


@given(st.text(max_size=30))
@settings(max_examples=100)
def test_fold_is_idempotent(s: str) -> None:
    assert fold(fold(s)) == fold(s)


# escapes --------------------------------------------------------------------------------------


def test_unescape_decodes_hex_escapes_in_either_case() -> None:
    assert unescape(r"a\2Cb\2cc\5c") == "a,b,c\\"


def test_unescape_decodes_escaped_utf8_sequences() -> None:
    assert unescape(r"caf\C3\A9") == "café"


@pytest.mark.parametrize("s", ["\\", "a\\2", r"\zz", r"\2g", r"\FF"])
def test_unescape_rejects_bad_escapes(s: str) -> None:
    with pytest.raises(SLPValueError):
        unescape(s)


# wildcard_match -------------------------------------------------------------------------------


@pytest.mark.parametrize(("pieces", "s", "expected"), [
    (("ab",), "ab", True),
    (("ab",), "abc", False),
    (("ab", ""), "abc", True),
    (("", "bc"), "abc", True),
    (("a", "c"), "abc", True),
    (("a", "b", "c"), "abc", True),
    (("a", "b", "c"), "acb", False),
    (("ab", "bc"), "abc", False),  # the two ends may not share the "b"
    (("", "x", ""), "abc", False),
    (("", ""), "", True),
])
def test_wildcard_match(pieces: tuple[str, ...], s: str, expected: bool) -> None:
    assert wildcard_match(pieces, s) is expected


# service types --------------------------------------------------------------------------------


def test_parse_concrete_type_under_abstract_type() -> None:
    t = ServiceType.parse("service:printer:lpr")
    assert (t.abstract, t.concrete, t.naming_authority, t.is_service_url) == ("printer", "lpr", "", True)


def test_parse_single_name_service_type() -> None:
    t = ServiceType.parse("service:directory-agent")
    assert (t.abstract, t.concrete) == (None, "directory-agent")


def test_parse_naming_authority_of_abstract_type() -> None:
    t = ServiceType.parse("service:printer.acme:lpr")
    assert (t.abstract, t.naming_authority, t.concrete) == ("printer", "acme", "lpr")


def test_parse_naming_authority_of_single_name() -> None:
    assert ServiceType.parse("service:x-display.sipmob").naming_authority == "sipmob"


def test_parse_other_url_scheme() -> None:
    t = ServiceType.parse("http")
    assert (t.is_service_url, t.concrete, t.naming_authority) == (False, "http", "")


def test_service_prefix_is_case_insensitive() -> None:
    assert ServiceType.parse("SERVICE:Printer:LPR").is_service_url


@pytest.mark.parametrize("s", [
    "", "service:", "service:a:b:c", "service::lpr", "service:printer:", "service:1printer",
    "service:pr_inter", "service:printer.:lpr", "http:x", "service:printer lpr",
])
def test_parse_rejects_malformed_service_types(s: str) -> None:
    with pytest.raises(SLPValueError):
        ServiceType.parse(s)


@pytest.mark.parametrize("s", [
    "service:printer:lpr", "service:printer", "service:printer.acme:lpr", "service:x.acme", "http",
])
def test_str_gives_back_the_type(s: str) -> None:
    assert str(ServiceType.parse(s)) == s


def test_str_lowercases_only_the_service_prefix() -> None:
    assert str(ServiceType.parse("Service:Printer:LPR")) == "service:Printer:LPR"


@pytest.mark.parametrize(("request_type", "registered", "expected"), [
    ("service:printer", "service:printer:lpr", True),       # abstract request, concrete reg
    ("service:printer", "service:printer:ipp", True),
    ("service:printer", "service:printer", True),
    ("service:printer:lpr", "service:printer:lpr", True),
    ("service:Printer:LPR", "service:printer:lpr", True),     # names are case-insensitive
    ("service:printer:lpr", "service:printer:ipp", False),
    ("service:printer:lpr", "service:printer", False),        # a full type needs that type
    ("service:printer:lpr", "service:lpr", False),
    ("service:lpr", "service:printer:lpr", False),
    ("service:printer", "service:printer.acme:lpr", False),  # naming authorities differ
    ("service:printer.acme", "service:printer.acme:lpr", True),
    ("service:printer", "service:printers:lpr", False),
    ("http", "http", True),
    ("http", "service:http", False),
])
def test_service_type_matching(request_type: str, registered: str, expected: bool) -> None:
    assert ServiceType.parse(request_type).matches(ServiceType.parse(registered)) is expected


def test_key_is_the_folded_abstract_type() -> None:
    assert ServiceType.parse("service:Printer.ACME:lpr").key == "service:printer.acme"


_names = st.sampled_from(["printer", "Printer", "lpr", "ipp", "display", "x-cam"])
_types = st.builds(
    lambda a, c, na, abstract: f"service:{a}{na}:{c}" if abstract else f"service:{a}{na}",
    _names, _names, st.sampled_from(["", ".acme", ".ACME", ".other"]), st.booleans())


@given(_types, _types)
@settings(max_examples=100)
def test_matching_types_share_an_index_key(request_type: str, registered: str) -> None:
    r, g = ServiceType.parse(request_type), ServiceType.parse(registered)
    if r.matches(g):
        assert r.key == g.key


def test_service_type_of_service_url() -> None:
    assert service_type_of_url("service:printer:lpr://host:515/queue") == "service:printer:lpr"


def test_service_type_of_other_url_is_none() -> None:
    assert service_type_of_url("sip:tv@192.0.2.1") is None


def test_service_type_of_service_url_without_address_part_is_an_error() -> None:
    with pytest.raises(SLPValueError):
        service_type_of_url("service:printer:lpr")


def test_naming_authority_of_iana_type_is_empty() -> None:
    assert naming_authority("service:printer:lpr") == ""


def test_naming_authority_of_private_type() -> None:
    assert naming_authority("service:printer.acme:lpr") == "acme"


# scopes ---------------------------------------------------------------------------------------


def test_scopes_intersect_folds_case_and_white_space() -> None:
    assert scopes_intersect(["Living  Room"], ["kitchen", " living room "])


def test_scopes_without_common_member_do_not_intersect() -> None:
    assert not scopes_intersect([DEFAULT_SCOPE], ["kitchen"])


def test_scopes_intersect_compares_unescaped_scopes() -> None:
    assert scopes_intersect([r"a\2Cb"], [r"a\2cb"])


def test_empty_scope_list_intersects_nothing() -> None:
    assert not scopes_intersect([], [DEFAULT_SCOPE])


# language tags --------------------------------------------------------------------------------


def test_lang_match_is_case_insensitive() -> None:
    assert lang_matches("en-US", "EN-us")


def test_language_does_not_match_its_dialect() -> None:
    assert not lang_matches("en", "en-US")


def test_dialect_does_not_match_its_language() -> None:
    assert not lang_matches("en-US", "en")


def test_different_languages_do_not_match() -> None:
    assert not lang_matches("de", "en")
