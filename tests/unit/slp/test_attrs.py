"""Attribute lists: parsing, typing, escapes, formatting, tag lists, index keys (RFC 2608 §5, §6.4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipmob.slp.attrs import (
    Attribute,
    AttrParseError,
    Opaque,
    escape_tag,
    escape_value,
    format_attr_list,
    index_keys,
    parse_attr_list,
    parse_tag_list,
    remove_tags,
    select,
    unescape,
)
from sipmob.slp.names import SLPValueError

# parsing and typing ---------------------------------------------------------------------------


def test_parse_valued_and_keyword_attributes() -> None:
    attrs = parse_attr_list("(room=Living Room),video,(codecs=PCMU,opus)")
    assert list(attrs.values()) == [
        Attribute("room", ("Living Room",)), Attribute("video"), Attribute("codecs", ("PCMU", "opus"))]


def test_parse_keys_attributes_by_folded_tag() -> None:
    assert list(parse_attr_list("(Screen  Size=55)")) == ["screen size"]


def test_parse_empty_list_is_no_attributes() -> None:
    assert parse_attr_list("") == {}


def test_integer_values_are_typed_as_int() -> None:
    assert parse_attr_list("(x=12,-3,007)")["x"].values == (12, -3, 7)


def test_plus_sign_does_not_make_an_integer() -> None:
    # §5: intval = [-]1*DIGIT
    assert parse_attr_list("(x=+5)")["x"].values == ("+5",)


@pytest.mark.parametrize("spelling", ["TRUE", "true", "True", "FALSE", "false"])
def test_boolean_spellings_are_typed_as_bool(spelling: str) -> None:
    assert parse_attr_list(f"(x={spelling})")["x"].values == (spelling.lower() == "true",)


def test_opaque_value_is_bytes() -> None:
    assert parse_attr_list(r"(key=\FF\00\01\fe)")["key"].values == (Opaque(b"\x00\x01\xfe"),)


def test_string_value_keeps_case_and_inner_white_space() -> None:
    assert parse_attr_list("(name=  Big   Printer  )")["name"].values == ("Big   Printer",)


def test_escaped_reserved_characters_are_unescaped_in_values() -> None:
    assert parse_attr_list(r"(uri=sip:tv\40home\2c1\3d2)")["uri"].values == ("sip:tv@home,1=2",)


def test_escaped_white_space_at_the_ends_of_a_value_is_kept() -> None:
    assert parse_attr_list(r"(x=\20a\20)")["x"].values == (" a ",)


def test_escaped_digits_are_still_an_integer() -> None:
    assert parse_attr_list(r"(x=\31\32)")["x"].values == (12,)


def test_escapes_in_tags_are_unescaped() -> None:
    assert parse_attr_list(r"(a\3db=1)")["a=b"].tag == "a=b"


def test_repeated_tag_merges_values() -> None:
    assert parse_attr_list("(a=1),(A=2)")["a"].values == (1, 2)


def test_white_space_between_attributes_is_ignored() -> None:
    assert set(parse_attr_list(" (a=1) ,\r\n b ")) == {"a", "b"}


@pytest.mark.parametrize(("s", "why"), [
    ("(a=1", "unbalanced"),
    ("a=1)", "stray parenthesis"),
    ("(a=1))", "unbalanced"),
    ("((a=1))", "nested"),
    ("(a=(1))", "nested"),
    ("(a)", "no '='"),
    ("(=1)", "empty tag"),
    ("(a=)", "empty value"),
    ("(a=1,)", "empty value"),
    ("(a=1),", "trailing comma"),
    (",(a=1)", "leading comma"),
    ("(a=1)(b=2)", "missing comma"),
    ("(a=1,x)", "mixed int and string"),
    ("(a=1,true)", "mixed int and boolean"),
    (r"(a=\FF\00,x)", "mixed opaque and string"),
    ("(a=1),a", "keyword and valued"),
    (r"(a=\zz)", "bad escape"),
    (r"(a=x\2)", "truncated escape"),
    (r"(a=\FF)", "empty opaque"),
    (r"(a=\FF00)", "unescaped opaque octets"),
    (r"(a=\FF\0g)", "bad opaque escape"),
    (r"(a=\C3)", "escaped octets not UTF-8"),
    ("(a=x!y)", "unescaped reserved"),
    ("(a=x~y)", "unescaped reserved"),
    ("(a=x\x01y)", "unescaped control character"),
    ("(a_b=1)", "underscore in tag"),
    ("(a*=1)", "star in tag"),
    ("(a\tb=1)", "tab in tag"),
    (r"(a\0Ab=1)", "escaped LF in tag"),
    (r"(a\5fb=1)", "escaped underscore in tag"),
    ("a_b", "underscore in keyword"),
    ("a=b", "'=' outside parentheses"),
])
def test_malformed_attribute_lists_are_rejected(s: str, why: str) -> None:
    with pytest.raises(AttrParseError):
        parse_attr_list(s)


def test_attr_parse_error_is_an_slp_value_error() -> None:
    with pytest.raises(SLPValueError):
        parse_attr_list("(a=1")


# the Attribute constructor ----------------------------------------------------------------


@pytest.mark.parametrize("values", [(1, "x"), (True, 1), ("",), ("12",), ("TRUE",), (1.5,)])
def test_attribute_rejects_values_the_wire_cannot_carry(values: tuple[object, ...]) -> None:
    with pytest.raises(AttrParseError):
        Attribute("a", values)  # type: ignore[arg-type]


@pytest.mark.parametrize("tag", ["", "a_b", "a*", " a", "a\n"])
def test_attribute_rejects_bad_tags(tag: str) -> None:
    with pytest.raises(AttrParseError):
        Attribute(tag)


def test_empty_opaque_is_rejected() -> None:
    with pytest.raises(AttrParseError):
        Opaque(b"")


# escaping and formatting --------------------------------------------------------------------


def test_escape_value_escapes_every_reserved_character() -> None:
    assert escape_value("(),\\!<=>~\x00\x7f") == r"\28\29\2C\5C\21\3C\3D\3E\7E\00\7F"


def test_escape_value_leaves_star_and_inner_spaces() -> None:
    assert escape_value("a * b") == "a * b"


def test_escape_value_escapes_white_space_at_the_ends() -> None:
    assert escape_value(" a b\t") == r"\20a b\09"


def test_escape_tag_rejects_bad_tag_characters() -> None:
    with pytest.raises(AttrParseError):
        escape_tag("a_b")


def test_escape_tag_escapes_reserved_characters() -> None:
    assert escape_tag("a=b") == r"a\3Db"


def test_unescape_reverses_escape_value() -> None:
    assert unescape(escape_value("x,(y)=z\\")) == "x,(y)=z\\"


def test_format_writes_wire_form() -> None:
    attrs = [Attribute("room", ("Hall, upstairs",)), Attribute("video"), Attribute("n", (1, -2)),
             Attribute("ok", (True, False)), Attribute("k", (Opaque(b"\x00\xff"),))]
    assert format_attr_list(attrs) == r"(room=Hall\2C upstairs),video,(n=1,-2),(ok=true,false),(k=\FF\00\FF)"


def test_format_accepts_a_mapping() -> None:
    assert format_attr_list(parse_attr_list("(a=1),b")) == "(a=1),b"


# round trips (hypothesis) -------------------------------------------------------------------

_tag_chars = st.characters(blacklist_characters="\r\n\t_*", blacklist_categories=("Cs",))
_tags = st.text(_tag_chars, min_size=1, max_size=8).filter(
    lambda t: t.strip(" \t\r\n\v\f") == t)


def _plain_string(s: str) -> bool:
    from sipmob.slp.attrs import is_bool_spelling, is_int_spelling
    return bool(s) and not is_int_spelling(s) and not is_bool_spelling(s)


_str_values = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12).filter(
    _plain_string)
_value_tuples = st.one_of(
    st.just(()),
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=4).map(tuple),
    st.lists(st.booleans(), min_size=1, max_size=3).map(tuple),
    st.lists(_str_values, min_size=1, max_size=4).map(tuple),
    st.lists(st.binary(min_size=1, max_size=6).map(Opaque), min_size=1, max_size=3).map(tuple),
)
_attributes = st.builds(Attribute, _tags, _value_tuples)
_attr_dicts = st.lists(_attributes, max_size=6, unique_by=lambda a: a.key).map(
    lambda xs: {a.key: a for a in xs})


@given(_attr_dicts)
@settings(max_examples=100)
def test_format_then_parse_gives_back_the_attributes(attrs: dict[str, Attribute]) -> None:
    assert parse_attr_list(format_attr_list(attrs)) == attrs


@given(_attr_dicts)
@settings(max_examples=40)
def test_parse_then_format_is_stable(attrs: dict[str, Attribute]) -> None:
    wire = format_attr_list(attrs)
    assert format_attr_list(parse_attr_list(wire)) == wire


@given(st.text(max_size=40))
@settings(max_examples=200)
def test_parse_raises_only_attr_parse_error(s: str) -> None:
    try:
        parse_attr_list(s)
    except AttrParseError:
        pass


# tag lists, select, remove_tags --------------------------------------------------------------

_SAMPLE = "(room=hall),(codec=PCMU,opus),(codec-rate=8000),video,(Screen=55)"


def test_parse_tag_list_unescapes_and_keeps_wildcards() -> None:
    assert parse_tag_list(r"room, codec*, a\2cb") == ["room", "codec*", "a,b"]


@pytest.mark.parametrize("s", ["a,,b", r"a\2a", "a_b", "a=b", r"a\zz"])
def test_parse_tag_list_rejects_malformed_lists(s: str) -> None:
    with pytest.raises(AttrParseError):
        parse_tag_list(s)


def test_select_with_empty_tag_list_returns_all() -> None:
    attrs = parse_attr_list(_SAMPLE)
    assert select(attrs, "") == list(attrs.values())


def test_select_matches_tags_case_insensitively() -> None:
    assert [a.tag for a in select(parse_attr_list(_SAMPLE), "SCREEN,room")] == ["room", "Screen"]


def test_select_with_trailing_wildcard() -> None:
    assert [a.tag for a in select(parse_attr_list(_SAMPLE), "codec*")] == ["codec", "codec-rate"]


def test_select_with_leading_wildcard() -> None:
    assert [a.tag for a in select(parse_attr_list(_SAMPLE), "*rate")] == ["codec-rate"]


def test_select_of_unknown_tag_is_empty() -> None:
    assert select(parse_attr_list(_SAMPLE), "audio") == []


def test_remove_tags_drops_matching_attributes() -> None:
    left = remove_tags(parse_attr_list(_SAMPLE), "codec*,video")
    assert list(left) == ["room", "screen"]


def test_remove_tags_with_empty_tag_list_removes_everything() -> None:
    assert remove_tags(parse_attr_list(_SAMPLE), "") == {}


# index keys ---------------------------------------------------------------------------------


def test_index_keys_render_each_type() -> None:
    attrs = parse_attr_list(r"(N=007,-1),(b=TRUE),(S=  Big  TV ),(o=\FF\0A),k")
    assert [index_keys(a) for a in attrs.values()] == [
        [("n", "7"), ("n", "-1")], [("b", "true")], [("s", "big tv")], [("o", r"\ff\0a")], []]
