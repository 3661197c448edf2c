"""SLPv2 attribute lists (RFC 2608 §5, escapes §6.4): parse, format, select by tag, index keys.

An attribute list is ``(tag=v1,v2),keyword,(tag2=v)``. Values are typed by their spelling (§5):
``true``/``false`` (any case) are booleans, ``[-]1*DIGIT`` is an integer, a value written as
``\\FF`` followed by escaped octets is opaque, anything else is a string; all values of one
attribute have the same type. Tags and string values keep their original case and inner white
space; comparisons use `sipmob.slp.names.fold`. White space around a tag or a value on the wire is
insignificant and dropped (escape it as ``\\20`` to keep it).

Responsible for: the value model (`Attribute`, `Opaque`), wire form in both directions, tag
lists with ``*`` wildcards (AttrRqst §10.3, SrvDeReg §9.3), and `index_keys`, the rendering of
values that `sipmob.slp.predicate.Predicate.index_terms` relies on.

Not here: predicate evaluation (`sipmob.slp.predicate`), the per-message meaning of an attribute
list, service templates (RFC 2609) and their attribute typing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from sipmob.slp.names import (
    WHITESPACE,
    SLPValueError,
    escape_chars,
    fold,
    split_list,
    tag_pattern,
    unescape,
    wildcard_match,
)

__all__ = [
    "AttrParseError", "AttrValue", "Attribute", "Attributes", "Opaque", "attr_value_key",
    "escape_tag", "escape_value", "format_attr_list", "format_attribute", "index_keys", "parse_attr_list",
    "parse_tag_list", "remove_tags", "select", "unescape",
]

# §5: reserved = "(" / ")" / "," / "\" / "!" / "<" / "=" / ">" / "~" / CTL
RESERVED = frozenset("(),\\!<=>~") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}
# §5: bad-tag = CR / LF / HTAB / "_"; and "*" is not a safe-tag character either (it is the
# wildcard of tag lists). These cannot appear in a tag even escaped.
BAD_TAG = frozenset("\r\n\t_*")
# Escaping white space at the ends of a value keeps it through a round trip (it is otherwise
# insignificant, see the module docstring).
_EDGE_WS = frozenset(WHITESPACE)


class AttrParseError(SLPValueError):
    """A malformed attribute list, tag list or attribute (answered with PARSE_ERROR)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Opaque:
    """An opaque value: octets, written on the wire as ``\\FF`` then each octet escaped."""

    data: bytes

    def __post_init__(self) -> None:
        if not self.data:
            raise AttrParseError("an opaque value has at least one octet (§5: 1*escape-val)")

    def wire(self) -> str:
        return "\\FF" + "".join(f"\\{b:02X}" for b in self.data)


AttrValue = int | bool | str | Opaque


def _value_kind(v: AttrValue) -> type:
    # bool is a subclass of int: test it first.
    if isinstance(v, bool):
        return bool
    return type(v)


def is_int_spelling(s: str) -> bool:
    digits = s[1:] if s[:1] == "-" else s
    return bool(digits) and digits.isascii() and digits.isdigit()


def is_bool_spelling(s: str) -> bool:
    return s.lower() in ("true", "false")


@dataclasses.dataclass(frozen=True, slots=True)
class Attribute:
    """One attribute: a tag and its values (none for a keyword attribute).

    The constructor enforces what the wire form can carry: a non-empty tag without bad-tag
    characters or white space at its ends, values all of one type, and no string value spelled
    like an integer or a boolean (on the wire it would be one: §5 types values by spelling).
    """

    tag: str
    values: tuple[AttrValue, ...] = ()
    # The values in comparison form, computed once: predicates compare against them many times.
    folded: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_tag(self.tag)
        if not isinstance(self.values, tuple):
            raise AttrParseError("values must be a tuple")
        if self.values:
            kind = _value_kind(self.values[0])
            if kind not in (int, bool, str, Opaque):
                raise AttrParseError(f"unsupported value type {kind.__name__}")
            for v in self.values:
                if _value_kind(v) is not kind:
                    raise AttrParseError(f"attribute {self.tag!r} mixes value types (§5)")
                if kind is str:
                    assert isinstance(v, str)
                    if not v:
                        raise AttrParseError(f"attribute {self.tag!r} has an empty string value")
                    if is_int_spelling(v) or is_bool_spelling(v):
                        raise AttrParseError(
                            f"string value {v!r} of {self.tag!r} is spelled as an integer or boolean")
        object.__setattr__(self, "folded", tuple(attr_value_key(v) for v in self.values))

    @property
    def is_keyword(self) -> bool:
        return not self.values

    @property
    def key(self) -> str:
        """The folded tag: the key of this attribute in an `Attributes` mapping."""
        return fold(self.tag)


Attributes = dict[str, Attribute]


def _check_tag(tag: str) -> None:
    if not tag:
        raise AttrParseError("empty attribute tag")
    bad = BAD_TAG.intersection(tag)
    if bad:
        raise AttrParseError(f"tag {tag!r} contains {sorted(bad)!r} (§5 bad-tag characters)")
    if tag[0] in _EDGE_WS or tag[-1] in _EDGE_WS:
        raise AttrParseError(f"tag {tag!r} begins or ends with white space")


# Escaping (§6.4) --------------------------------------------------------------------------------


def escape_value(s: str) -> str:
    """The wire form of a string value: reserved characters, and white space at either end, as ``\\XX``."""
    out = escape_chars(s, RESERVED)
    if out and (out[0] in _EDGE_WS or out[-1] in _EDGE_WS):
        head = len(out) - len(out.lstrip(WHITESPACE))
        tail = len(out) - len(out.rstrip(WHITESPACE))
        if head == len(out):
            return "".join(f"\\{ord(c):02X}" for c in out)
        lead = "".join(f"\\{ord(c):02X}" for c in out[:head])
        trail = "".join(f"\\{ord(c):02X}" for c in out[len(out) - tail:])
        out = lead + out[head:len(out) - tail] + trail
    return out


def escape_tag(s: str) -> str:
    """The wire form of a tag; raises `AttrParseError` for a tag no escaping can carry (§5)."""
    _check_tag(s)
    return escape_chars(s, RESERVED)


# Values and keys -----------------------------------------------------------------------------


def attr_value_key(v: AttrValue) -> str:
    """The folded text of a value, shared with `sipmob.slp.predicate` for index terms.

    Integers in canonical decimal ("-12", never "012" or "+12"), booleans as "true"/"false",
    strings folded (`fold`), opaque values as their escaped wire form in lower case.
    """
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Opaque):
        return v.wire().lower()
    return fold(v)


def index_keys(attr: Attribute) -> list[tuple[str, str]]:
    """``(fold(tag), attr_value_key(value))`` for each value; none for a keyword attribute."""
    tag = attr.key
    return [(tag, k) for k in attr.folded]


def _parse_value(raw: str) -> AttrValue:
    """Type one value from its wire spelling (already stripped of surrounding white space)."""
    if raw[:3].upper() == "\\FF":
        return Opaque(parse_opaque(raw))
    if any(c in RESERVED for c in raw.replace("\\", "")):
        bad = sorted({c for c in raw if c in RESERVED and c != "\\"})
        raise AttrParseError(f"value {raw!r} contains unescaped reserved characters {bad!r}")
    try:
        text = unescape(raw)
    except SLPValueError as e:
        raise AttrParseError(e.reason) from None
    if is_bool_spelling(text):
        return text.lower() == "true"
    if is_int_spelling(text):
        try:
            return int(text)
        except ValueError:  # longer than Python's int-from-str limit
            raise AttrParseError(f"integer value of {len(text)} digits is too long") from None
    return text


def parse_opaque(raw: str) -> bytes:
    # §5: opaque = "\FF" 1*escape-val: after the marker, every octet is escaped.
    body = raw[3:]
    if not body or len(body) % 3:
        raise AttrParseError(f"opaque value {raw!r} is not a sequence of \\XX escapes")
    out = bytearray()
    for i in range(0, len(body), 3):
        esc = body[i:i + 3]
        if esc[0] != "\\":
            raise AttrParseError(f"opaque value {raw!r} has an unescaped character")
        if not all(c in "0123456789abcdefABCDEF" for c in esc[1:]):
            raise AttrParseError(f"bad escape {esc!r} in opaque value")
        out.append(int(esc[1:], 16))
    return bytes(out)


def _parse_tag(raw: str) -> str:
    tag = raw.strip(WHITESPACE)
    if any(c in RESERVED for c in tag.replace("\\", "")) or "*" in tag:
        raise AttrParseError(f"tag {tag!r} contains an unescaped reserved character")
    try:
        tag = unescape(tag)
    except SLPValueError as e:
        raise AttrParseError(e.reason) from None
    _check_tag(tag)
    return tag


# Attribute lists --------------------------------------------------------------------------------


def parse_attr_list(s: str) -> dict[str, Attribute]:
    """Parse an attribute list into `Attributes` keyed by folded tag (§5).

    The same tag may appear more than once ("(a=1),(A=2)"): the values are merged in order,
    provided they have the same type and neither occurrence is a keyword.
    """
    out: dict[str, Attribute] = {}
    i, n = 0, len(s)
    expect_item = False
    while True:
        while i < n and s[i] in WHITESPACE:
            i += 1
        if i == n:
            if expect_item:
                raise AttrParseError("attribute list ends with a comma")
            return out
        if s[i] == "(":
            close = s.find(")", i + 1)
            nxt = s.find("(", i + 1)
            if close < 0 or (0 <= nxt < close):
                raise AttrParseError(f"unbalanced parenthesis at offset {i}")
            attr = _parse_valued(s[i + 1:close])
            i = close + 1
        elif s[i] in ")=,":
            raise AttrParseError(f"unexpected {s[i]!r} at offset {i}")
        else:
            end = s.find(",", i)
            end = n if end < 0 else end
            attr = Attribute(_parse_tag(_reject_in_keyword(s[i:end], i)))
            i = end
        _merge(out, attr)
        while i < n and s[i] in WHITESPACE:
            i += 1
        if i == n:
            return out
        if s[i] != ",":
            raise AttrParseError(f"expected ',' at offset {i}")
        i += 1
        expect_item = True


def _reject_in_keyword(raw: str, offset: int) -> str:
    for c in "()=":
        if c in raw:
            raise AttrParseError(f"unexpected {c!r} in keyword at offset {offset + raw.index(c)}")
    return raw


def _parse_valued(body: str) -> Attribute:
    tag_raw, eq, vals_raw = body.partition("=")
    if not eq:
        raise AttrParseError(f"parenthesised attribute {body!r} has no '='")
    tag = _parse_tag(tag_raw)
    values = []
    for item in vals_raw.split(","):
        raw = item.strip(WHITESPACE)
        if not raw:
            raise AttrParseError(f"attribute {tag!r} has an empty value")
        values.append(_parse_value(raw))
    try:
        return Attribute(tag, tuple(values))
    except AttrParseError:
        raise
    except SLPValueError as e:
        raise AttrParseError(e.reason) from None


def _merge(out: dict[str, Attribute], attr: Attribute) -> None:
    key = attr.key
    prev = out.get(key)
    if prev is None:
        out[key] = attr
        return
    if prev.is_keyword or attr.is_keyword:
        raise AttrParseError(f"tag {attr.tag!r} appears both as a keyword and with values")
    out[key] = Attribute(prev.tag, prev.values + attr.values)


def _format_value(v: AttrValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Opaque):
        return v.wire()
    return escape_value(v)


def format_attribute(attr: Attribute) -> str:
    tag = escape_chars(attr.tag, RESERVED)
    if attr.is_keyword:
        return tag
    return f"({tag}={','.join(_format_value(v) for v in attr.values)})"


def format_attr_list(attrs: Mapping[str, Attribute] | Iterable[Attribute]) -> str:
    """The wire form of attributes, in the order given; `parse_attr_list` reverses it exactly."""
    items = attrs.values() if isinstance(attrs, Mapping) else attrs
    return ",".join(format_attribute(a) for a in items)


# Tag lists (§9.3 SrvDeReg, §10.3 AttrRqst) ---------------------------------------------------


def parse_tag_list(s: str) -> list[str]:
    """The tags of a tag list, unescaped; ``*`` in a tag is a wildcard (§10.3)."""
    out = []
    try:
        items = split_list(s)
    except SLPValueError as e:
        raise AttrParseError(e.reason) from None
    for item in items:
        if any(c in RESERVED for c in item.replace("\\", "")):
            raise AttrParseError(f"tag {item!r} contains an unescaped reserved character")
        try:
            tag = unescape(item)
        except SLPValueError as e:
            raise AttrParseError(e.reason) from None
        # Only a literal "*" is a wildcard; an escaped one (\2A) would be a tag character,
        # which §5 forbids.
        if tag.count("*") != item.count("*") or BAD_TAG.difference("*").intersection(tag):
            raise AttrParseError(f"tag {item!r} contains a bad-tag character (§5)")
        out.append(tag)
    return out


def tag_patterns(tag_list: str) -> list[tuple[str, ...]]:
    """The folded patterns of a tag list, for `sipmob.slp.names.wildcard_match`; raises AttrParseError."""
    return [tag_pattern(fold(t)) for t in parse_tag_list(tag_list)]


_tag_matcher = tag_patterns


def select(attrs: Mapping[str, Attribute], tag_list: str) -> list[Attribute]:
    """The attributes whose tag matches a pattern of ``tag_list``; all of them for an empty list."""
    patterns = _tag_matcher(tag_list)
    if not patterns:
        return list(attrs.values())
    return [a for key, a in attrs.items() if any(wildcard_match(p, key) for p in patterns)]


def remove_tags(attrs: Mapping[str, Attribute], tag_list: str) -> dict[str, Attribute]:
    """The attributes left after a tag-based SrvDeReg (§9.3); an empty tag list removes all."""
    patterns = _tag_matcher(tag_list)
    if not patterns:
        return {}
    return {key: a for key, a in attrs.items() if not any(wildcard_match(p, key) for p in patterns)}
