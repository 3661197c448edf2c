"""SLPv2 strings that name things: lists, service types, scopes, language tags (RFC 2608 §4, §6.4).

Responsible for: splitting the comma-separated lists SLP carries as one string, the comparison form
of strings (`fold`), RFC 2608 §6.4 escapes (``\\XX``), service types and their matching rules
(RFC 2608 §4.1, RFC 2609 §2.1), scope intersection (§6.4.1) and language tag matching. Everything
here is a pure function of its arguments.

Not here: attribute lists and their value types (`sipmob.slp.attrs`), predicates
(`sipmob.slp.predicate`), what a Directory Agent does with a scope or a type (`sipmob.slp.da`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

DEFAULT_SCOPE = "DEFAULT"

# White space as SLP strings use it: the ASCII blanks. Python's str.split() would also treat
# U+001C..U+001F and Unicode spaces as white space, which would make the folded form of an
# escaped control character depend on the Python version's idea of "space".
WHITESPACE = " \t\r\n\v\f"
_WS_TO_SPACE = str.maketrans({c: " " for c in WHITESPACE[1:]})

_SPACE_RUN = re.compile(" {2,}")
_HEX = "0123456789abcdefABCDEF"


class SLPValueError(ValueError):
    """A string that does not follow RFC 2608's grammar; ``reason`` says which rule it breaks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def fold(s: str) -> str:
    """The comparison form of an SLP string (RFC 2608 §6.4).

    Comparison is case-insensitive (case folding covers all of Unicode, which §6.4 recommends
    beyond ASCII), leading and trailing white space is insignificant, and each internal run of
    white space counts as a single space.
    """
    if s.isascii() and s.isalnum():  # the common case: a bare word needs no white space work
        return s.lower()
    return " ".join(filter(None, s.translate(_WS_TO_SPACE).split(" "))).casefold()


def fold_edges(s: str, *, left: bool, right: bool) -> str:
    """`fold` for a piece of a wildcard pattern: internal runs of white space become one space,
    but the piece's ends are only trimmed where they are the ends of the whole pattern."""
    out = _SPACE_RUN.sub(" ", s.translate(_WS_TO_SPACE))
    if left:
        out = out.lstrip(" ")
    if right:
        out = out.rstrip(" ")
    return out.casefold()


def wildcard_match(pieces: tuple[str, ...], s: str) -> bool:
    """Whether ``s`` matches ``pieces[0] * pieces[1] * ... * pieces[-1]`` (``*`` = any run).

    Both sides must already be in comparison form. Greedy left-to-right search: linear in
    len(s) per piece, no backtracking, so a hostile pattern cannot make it slow.
    """
    if len(pieces) == 1:
        return pieces[0] == s
    first, last = pieces[0], pieces[-1]
    if len(first) + len(last) > len(s) or not s.startswith(first) or not s.endswith(last):
        return False
    pos, end = len(first), len(s) - len(last)
    for piece in pieces[1:-1]:
        if not piece:
            continue
        found = s.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def tag_pattern(pattern: str) -> tuple[str, ...]:
    """Split a folded tag pattern on ``*`` (tags cannot contain a literal ``*``, RFC 2608 §5)."""
    return tuple(pattern.split("*"))


def unescape(s: str) -> str:
    """Replace RFC 2608 §6.4 escapes (``\\`` and two hex digits) by the characters they stand for.

    Escapes are octets: a run of them is decoded as UTF-8, so ``\\C3\\A9`` is "é". A backslash not
    followed by two hex digits, or escaped octets that are not UTF-8, raise `SLPValueError`.
    """
    if "\\" not in s:
        return s
    out: list[str] = []
    octets = bytearray()
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\":
            if i + 2 >= n:
                raise SLPValueError(f"truncated escape at offset {i}")
            h1, h2 = s[i + 1], s[i + 2]
            if h1 not in _HEX or h2 not in _HEX:
                raise SLPValueError(f"bad escape \\{h1}{h2} at offset {i}")
            octets.append(int(h1 + h2, 16))
            i += 3
            continue
        if octets:
            out.append(_decode_octets(octets, i))
            octets.clear()
        out.append(c)
        i += 1
    if octets:
        out.append(_decode_octets(octets, n))
    return "".join(out)


def _decode_octets(octets: bytearray, offset: int) -> str:
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise SLPValueError(f"escaped octets before offset {offset} are not UTF-8") from None


def escape_chars(s: str, reserved: frozenset[str]) -> str:
    """Escape every character of ``s`` in ``reserved`` as ``\\XX`` (all reserved ones are ASCII)."""
    if not any(c in reserved for c in s):
        return s
    return "".join(f"\\{ord(c):02X}" if c in reserved else c for c in s)


def split_list(s: str) -> list[str]:
    """Split an SLP comma-separated list (scopes, tags, previous responders, service types).

    Items are trimmed of white space and keep their escapes. The empty string is the empty list;
    an empty item anywhere ("a,,b", "a,", " , ") is a parse error, because every list grammar
    in RFC 2608 (§6.4.1 scope-list, §5 tag lists, §8.1 PRList, §10.2 srvtype-list) builds a list
    from items of at least one character.
    """
    if not s or not s.strip(WHITESPACE):
        if s:
            raise SLPValueError("list contains only white space")
        return []
    items = [item.strip(WHITESPACE) for item in s.split(",")]
    if not all(items):
        raise SLPValueError(f"empty item in list {s!r}")
    return items


# Service types (RFC 2608 §4.1, RFC 2609 §2.1) ------------------------------------------------

_SERVICE = "service:"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-")
_SCHEME_CHARS = _NAME_CHARS | {"."}


def _check_name(name: str, what: str, chars: frozenset[str] = _NAME_CHARS) -> None:
    # RFC 2609 §2.1: resname = ALPHA [ 1*(ALPHA / DIGIT / "+" / "-") ]; a URL scheme may also
    # contain "." (RFC 2396 §3.1).
    if not name or not name[0].isascii() or not name[0].isalpha():
        raise SLPValueError(f"{what} {name!r} must start with a letter")
    if not all(c in chars for c in name):
        raise SLPValueError(f"{what} {name!r} contains a character outside letters, digits, + and -")


def _split_authority(name: str, what: str) -> tuple[str, str]:
    base, dot, authority = name.partition(".")
    _check_name(base, what)
    if dot:
        _check_name(authority, "naming authority")
    return base, authority


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceType:
    """A service type string: ``service:printer:lpr``, ``service:printer``, ``service:x.acme``, ``http``.

    ``abstract`` is the abstract type of a ``service:abstract:concrete`` type, else None; then
    ``concrete`` is the one remaining name (for ``service:printer`` that is "printer", which a
    request uses as an abstract type: see `matches`). The naming authority (RFC 2609 §2.1) is
    attached to the abstract type when there is one, else to the single name; "" means IANA.
    Types of other URL schemes (``http``) have ``is_service_url`` False and no naming authority.
    """

    abstract: str | None
    concrete: str
    naming_authority: str = ""
    is_service_url: bool = True
    key: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = self.abstract if self.abstract is not None else self.concrete
        na = f".{self.naming_authority}" if self.naming_authority else ""
        key = f"{_SERVICE}{head}{na}" if self.is_service_url else head
        object.__setattr__(self, "key", key.lower())

    @classmethod
    def parse(cls, s: str) -> ServiceType:
        text = s.strip(WHITESPACE)
        if not text:
            raise SLPValueError("empty service type")
        if text[: len(_SERVICE)].lower() != _SERVICE:
            if ":" in text:
                raise SLPValueError(f"service type {s!r} is neither service: nor a bare URL scheme")
            _check_name(text, "URL scheme", _SCHEME_CHARS)
            return cls(None, text, "", is_service_url=False)
        parts = text[len(_SERVICE):].split(":")
        if len(parts) == 1:
            name, authority = _split_authority(parts[0], "service type")
            return cls(None, name, authority)
        if len(parts) == 2:
            abstract, authority = _split_authority(parts[0], "abstract type")
            _check_name(parts[1], "concrete type", _SCHEME_CHARS)
            return cls(abstract, parts[1], authority)
        raise SLPValueError(f"service type {s!r} has more than two names after service:")

    def matches(self, other: ServiceType) -> bool:
        """Whether a request for ``self`` is answered by a registration of ``other``.

        RFC 2608 §4.1 / RFC 2609 §2.1: a request for an abstract type alone
        (``service:printer``) matches every concrete type under it (``service:printer:lpr``,
        ``service:printer:ipp``) and a registration of that same single name; a request for a
        full ``abstract:concrete`` type matches only that type (not ``service:lpr``, not a bare
        ``service:printer`` registration). Naming authorities must be equal: ``service:printer``
        and ``service:printer.acme`` are different types. All names compare case-insensitively.
        """
        if self.key != other.key:
            return False
        if self.abstract is None:
            return True
        return (other.abstract is not None and self.abstract.lower() == other.abstract.lower()
                and self.concrete.lower() == other.concrete.lower())

    def __str__(self) -> str:
        na = f".{self.naming_authority}" if self.naming_authority else ""
        if not self.is_service_url:
            return self.concrete
        if self.abstract is None:
            return f"{_SERVICE}{self.concrete}{na}"
        return f"{_SERVICE}{self.abstract}{na}:{self.concrete}"


def service_type_of_url(url: str) -> str | None:
    """The service type of a ``service:`` URL (``service:printer:lpr://h`` -> ``service:printer:lpr``).

    None for a URL of another scheme. A ``service:`` URL without ``://`` or with a malformed type
    raises `SLPValueError` (RFC 2609 §2.1: ``"service:" srvtype "://" addrspec``).
    """
    text = url.strip(WHITESPACE)
    if text[: len(_SERVICE)].lower() != _SERVICE:
        return None
    srvtype, sep, _ = text.partition("://")
    if not sep:
        raise SLPValueError(f"service URL {url!r} has no '://'")
    return str(ServiceType.parse(srvtype))


def naming_authority(service_type: str) -> str:
    """The naming authority of a service type string ("" for IANA and for other URL schemes)."""
    return ServiceType.parse(service_type).naming_authority


def scopes_intersect(a: Iterable[str], b: Iterable[str]) -> bool:
    """Whether two scope lists share a scope (RFC 2608 §6.4.1: scopes compare as folded strings)."""
    folded = {fold(_unescape_lenient(x)) for x in a}
    return any(fold(_unescape_lenient(y)) in folded for y in b)


def _unescape_lenient(s: str) -> str:
    # A malformed escape in a scope makes it equal to nothing else but its own spelling.
    try:
        return unescape(s)
    except SLPValueError:
        return s


def lang_matches(request_lang: str, registered_lang: str) -> bool:
    """Whether a registration in ``registered_lang`` answers a request in ``request_lang``.

    RFC 2608 §3 and §8.1: a request is answered with the services registered in the language of
    the request; language tags (RFC 1766 §2) compare case-insensitively. RFC 2608 defines no
    fallback from a dialect to its language or back ("en-US" does not match "en"), so this is
    an exact, case-insensitive comparison.
    """
    return request_lang.strip(WHITESPACE).lower() == registered_lang.strip(WHITESPACE).lower()
