"""SIP, SIPS and tel URIs and name-addr values (RFC 3261 §19.1, §20.10, §25; RFC 3966).

Responsible for: parsing a URI string into a `URI` value, serialising it back with the escapes the
grammar needs, the §19.1.4 equivalence rules, and the ``name-addr`` / ``addr-spec`` forms that
From, To, Contact, Route, Refer-To and friends carry (`NameAddr`). Also home of `SIPParseError`,
the exception every parser in this package raises (it lives here because this is the lowest
module; `sipmob.sip.message` re-exports it).

Not here: header-specific parameter meaning (``tag`` is the one exception, as it is on every
From/To), DNS resolution of a URI (RFC 3263), or which schemes a UA accepts (416 is the TU's call).
URIs of other schemes (``http:``, ``urn:``...) are kept opaque so a message carrying them parses.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

__all__ = [
    "URI",
    "NameAddr",
    "SIPGarbage",
    "SIPParseError",
    "escape",
    "unescape",
]


class SIPParseError(ValueError):
    """A message (or part of one) that the grammar rejects.

    ``reason`` is meant for the reason phrase of the ``400`` we answer with; ``status`` is the code
    to answer (513 for an oversized message). Parsers of whole messages fill ``headers`` with the
    Via, From, To, Call-ID and CSeq headers they could read, so a response can still be built.
    """

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.headers: object | None = None  # a sipmob.sip.message.Headers when known
        self.request_line_ok = False

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class SIPGarbage(SIPParseError):
    """Bytes that are not a SIP message at all (no request or status line): drop, do not answer."""


# Character classes from RFC 3261 §25.1 -------------------------------------------------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_MARK = "-_.!~*'()"
_UNRESERVED = frozenset(_ALNUM + _MARK)
_USER_SAFE = _UNRESERVED | frozenset("&=+$,;?/")  # user-unreserved
_PASSWORD_SAFE = _UNRESERVED | frozenset("&=+$,")
_PARAM_SAFE = _UNRESERVED | frozenset("[]/:&+$")  # param-unreserved
_HEADER_SAFE = _UNRESERVED | frozenset("[]/?:+$")  # hnv-unreserved
_TOKEN = frozenset(_ALNUM + "-.!%*_+`'~")
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")
_TEL_SAFE = _UNRESERVED | frozenset("&=+$,;?/:@")  # tel subscriber: keep visual separators as-is


def unescape(s: str) -> str:
    """Decode ``%HH`` escapes (as UTF-8, invalid bytes kept via surrogateescape).

    A ``%`` not followed by two hex digits is an error: §25.1 allows it only as an escape.
    """
    if "%" not in s:
        return s
    out = bytearray()
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "%":
            h = s[i + 1 : i + 3]
            if len(h) != 2 or h[0] not in _HEXDIGITS or h[1] not in _HEXDIGITS:
                raise SIPParseError("Bad escape in URI")
            out.append(int(h, 16))
            i += 3
        else:
            out += c.encode("utf-8", "surrogateescape")
            i += 1
    return out.decode("utf-8", "surrogateescape")


def escape(s: str, safe: frozenset[str]) -> str:
    """Escape every character of ``s`` not in ``safe`` as ``%HH`` of its UTF-8 bytes."""
    if all(c in safe for c in s):
        return s
    parts: list[str] = []
    for c in s:
        if c in safe:
            parts.append(c)
        else:
            parts.extend(f"%{b:02X}" for b in c.encode("utf-8", "surrogateescape"))
    return "".join(parts)


_Params = tuple[tuple[str, str | None], ...]
_HostRe = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?|[0-9.]+))"
    r"(?::(?P<port>[0-9]{1,5}))?\Z"
)
_NOT_IN_URI = re.compile(r'[ \t\r\n<>"]')
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+\Z")
_PARAMS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$%;=]*\Z")
_SchemeRe = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*):")


def _parse_uri_params(s: str) -> _Params:
    if not s:
        return ()
    if not _PARAMS_RE.match(s):
        raise SIPParseError("Bad URI parameter")
    out: list[tuple[str, str | None]] = []
    for part in s.split(";"):
        if not part:
            raise SIPParseError("Empty URI parameter")
        name, eq, value = part.partition("=")
        if not name or "=" in value:
            raise SIPParseError("Bad URI parameter")
        if eq:
            out.append((unescape(name), unescape(value)))
        else:
            out.append((unescape(name), None))
    return tuple(out)


def _parse_uri_headers(s: str) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for part in s.split("&"):
        name, eq, value = part.partition("=")
        if not name or not eq:
            raise SIPParseError("Bad URI header")
        if not all(c in _HEADER_SAFE or c == "%" for c in name + value):
            raise SIPParseError("Bad URI header")
        out.append((unescape(name), unescape(value)))
    return tuple(out)


def _format_params(params: _Params) -> str:
    return "".join(
        f";{escape(n, _PARAM_SAFE)}" if v is None else f";{escape(n, _PARAM_SAFE)}={escape(v, _PARAM_SAFE)}"
        for n, v in params
    )


_PARSED: dict[str, URI] = {}
_PARSED_MAX = 2048
_PARSED_MAX_LEN = 256

# Parameters that, when present in only one URI, make two SIP URIs differ (§19.1.4).
_SIGNIFICANT_PARAMS = ("user", "ttl", "method", "maddr")


@dataclasses.dataclass(frozen=True, slots=True)
class URI:
    """A URI as in §19.1.1: ``sip:user:password@host:port;uri-parameters?headers``.

    ``user``, ``password``, parameter and header values are unescaped; ``str()`` escapes them
    again. For ``tel:`` URIs the telephone-subscriber is in ``user`` and ``host`` is empty; for
    other schemes everything after the colon is in ``opaque``.
    """

    scheme: str
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: _Params = ()
    headers: tuple[tuple[str, str], ...] = ()
    opaque: str | None = None

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise SIPParseError("Bad port in URI")

    # parsing --------------------------------------------------------------------------------

    @classmethod
    def parse(cls, s: str) -> URI:
        """Parse a URI in its bare form (no ``<>``, no surrounding whitespace)."""
        if cls is URI:
            # The same few URIs (ours, our peers') come back in every message; values are frozen,
            # so one parse can be shared. Long ones are not kept, so the cache stays small.
            uri = _PARSED.get(s)
            if uri is None:
                uri = cls._parse(s)
                if len(s) <= _PARSED_MAX_LEN:
                    if len(_PARSED) >= _PARSED_MAX:
                        _PARSED.clear()
                    _PARSED[s] = uri
            return uri
        return cls._parse(s)

    @classmethod
    def _parse(cls, s: str) -> URI:
        m = _SchemeRe.match(s)
        if m is None:
            raise SIPParseError("Bad URI: no scheme")
        scheme = m.group(1).lower()
        rest = s[m.end() :]
        if not rest or _NOT_IN_URI.search(rest):
            raise SIPParseError("Bad URI")
        if scheme in ("sip", "sips"):
            return cls._parse_sip(scheme, rest)
        if scheme == "tel":
            number, _, params = rest.partition(";")
            if not number or not all(c in _TEL_SAFE or c == "%" for c in number):
                raise SIPParseError("Bad tel URI")
            return cls(scheme="tel", user=unescape(number), params=_parse_uri_params(params))
        return cls(scheme=scheme, opaque=rest)

    @classmethod
    def _parse_sip(cls, scheme: str, rest: str) -> URI:
        user: str | None = None
        password: str | None = None
        # a raw '@' is legal nowhere but between userinfo and host (§25.1), so the last one splits
        at = rest.rfind("@")
        if at != -1:
            userinfo = rest[:at]
            rest = rest[at + 1 :]
            u, colon, pw = userinfo.partition(":")
            if not _USER_RE.match(u):
                raise SIPParseError("Bad user part in URI")
            user = unescape(u)
            if colon:
                if not all(c in _PASSWORD_SAFE or c == "%" for c in pw):
                    raise SIPParseError("Bad password in URI")
                password = unescape(pw)
        hostport, _, hdrs = rest.partition("?")
        hostport, _, params = hostport.partition(";")
        hm = _HostRe.match(hostport)
        if hm is None:
            raise SIPParseError("Bad host in URI")
        v6 = hm.group("v6")
        host = v6 if v6 is not None else hm.group("name")
        port_s = hm.group("port")
        port = int(port_s) if port_s else None
        if port is not None and port > 65535:
            raise SIPParseError("Bad port in URI")
        return cls(
            scheme=scheme,
            user=user,
            password=password,
            host=host.lower() if v6 is None else host,
            port=port,
            params=_parse_uri_params(params),
            headers=_parse_uri_headers(hdrs) if hdrs else (),
        )

    # serialising ----------------------------------------------------------------------------

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{escape(self.user or '', _TEL_SAFE)}{_format_params(self.params)}"
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(escape(self.user, _USER_SAFE))
            if self.password is not None:
                parts += [":", escape(self.password, _PASSWORD_SAFE)]
            parts.append("@")
        parts.append(f"[{self.host}]" if ":" in self.host else self.host)
        if self.port is not None:
            parts.append(f":{self.port}")
        parts.append(_format_params(self.params))
        if self.headers:
            parts.append("?")
            parts.append(
                "&".join(f"{escape(n, _HEADER_SAFE)}={escape(v, _HEADER_SAFE)}" for n, v in self.headers)
            )
        return "".join(parts)

    # access ---------------------------------------------------------------------------------

    def param(self, name: str) -> str | None:
        """The value of a URI parameter ("" for one present without a value), or None."""
        name = name.lower()
        for n, v in self.params:
            if n.lower() == name:
                return "" if v is None else v
        return None

    def has_param(self, name: str) -> bool:
        name = name.lower()
        return any(n.lower() == name for n, _ in self.params)

    def header(self, name: str) -> str | None:
        """The value of an embedded header (``?Replaces=...``), matched case-insensitively."""
        name = name.lower()
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None

    @property
    def host_port(self) -> tuple[str, int | None]:
        return self.host, self.port

    @property
    def is_secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def transport(self) -> str | None:
        t = self.param("transport")
        return t.lower() if t else None

    def with_params(self, **params: str | None) -> URI:
        """A copy with the given parameters set (replacing, keeping order); ``lr=None`` adds a bare ``lr``.

        Parameter names with dashes can be given with underscores.
        """
        new = list(self.params)
        for key, value in params.items():
            name = key.replace("_", "-")
            for i, (n, _) in enumerate(new):
                if n.lower() == name.lower():
                    new[i] = (n, value)
                    break
            else:
                new.append((name, value))
        return dataclasses.replace(self, params=tuple(new))

    def without_params(self, *names: str) -> URI:
        drop = {n.lower() for n in names}
        return dataclasses.replace(self, params=tuple(p for p in self.params if p[0].lower() not in drop))

    def replace(self, **changes: object) -> URI:
        """`dataclasses.replace` as a method: ``uri.replace(port=5070, headers=())``."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # §19.1.4 comparison ---------------------------------------------------------------------

    def equivalent(self, other: URI) -> bool:
        """RFC 3261 §19.1.4 URI comparison (and RFC 3966 §4 for tel)."""
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if self.scheme == "tel":
            return _tel_digits(self.user) == _tel_digits(other.user) and _param_map(
                self.params
            ) == _param_map(other.params)
        # userinfo is case-sensitive, the rest is not; escapes are already decoded
        if self.user != other.user or self.password != other.password:
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        mine, theirs = _param_map(self.params), _param_map(other.params)
        for name in set(mine) & set(theirs):
            if mine[name] != theirs[name]:
                return False
        for name in (*_SIGNIFICANT_PARAMS, "transport"):
            if (name in mine) != (name in theirs):
                return False
        hm = {n.lower(): v for n, v in self.headers}
        ho = {n.lower(): v for n, v in other.headers}
        return hm == ho


def _param_map(params: _Params) -> dict[str, str | None]:
    return {n.lower(): (v.lower() if v is not None else None) for n, v in params}


def _tel_digits(number: str | None) -> str:
    return "".join(c for c in (number or "") if c not in "-.()").lower()


# name-addr / addr-spec (§20.10, §25.1) -------------------------------------------------------


def _is_token(s: str) -> bool:
    return bool(s) and all(c in _TOKEN for c in s)


def parse_quoted(s: str, i: int) -> tuple[str, int]:
    """Parse a quoted-string starting at ``s[i] == '"'``; returns (unquoted value, index after it)."""
    assert s[i] == '"'
    out: list[str] = []
    j = i + 1
    n = len(s)
    while j < n:
        c = s[j]
        if c == "\\":
            if j + 1 >= n:
                break
            out.append(s[j + 1])
            j += 2
        elif c == '"':
            return "".join(out), j + 1
        else:
            out.append(c)
            j += 1
    raise SIPParseError("Unterminated quoted string")


def quote(s: str) -> str:
    """A quoted-string for ``s``, escaping backslash and double quote (§25.1 quoted-pair)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


_WS = " \t"


# One generic-param, as `_parse_header_params_slow` reads it; the lookahead leaves anything else to
# the slow path, which knows what to complain about.
_GENERIC_PARAM_RE = re.compile(
    r"[ \t]*;[ \t]*([A-Za-z0-9\-.!%*_+`'~]+)"
    r"(?:[ \t]*=[ \t]*([A-Za-z0-9\-.!%*_+`'~\[\]:]+|\"(?:[^\"\\]|\\[\s\S])*\"))?"
    r"(?=[ \t;,]|\Z)"
)


def parse_header_params(s: str, i: int) -> tuple[_Params, int]:
    """Parse ``*( SEMI generic-param )`` from ``s[i:]``; stops at a comma or the end.

    Values may be tokens, hosts or quoted strings; quoted values are returned with their quotes so
    that serialisation is exact (use `unquote` to read one).
    """
    out: list[tuple[str, str | None]] = []
    match = _GENERIC_PARAM_RE.match
    j = i
    while (m := match(s, j)) is not None:
        out.append((m.group(1), m.group(2)))
        j = m.end()
    n = len(s)
    while j < n and s[j] in _WS:
        j += 1
    if j >= n or s[j] == ",":
        return tuple(out), j
    return _parse_header_params_slow(s, i)  # malformed: let the careful parser say how


def _parse_header_params_slow(s: str, i: int) -> tuple[_Params, int]:
    out: list[tuple[str, str | None]] = []
    n = len(s)
    while True:
        while i < n and s[i] in _WS:
            i += 1
        if i >= n or s[i] == ",":
            return tuple(out), i
        if s[i] != ";":
            raise SIPParseError("Bad header parameters")
        i += 1
        while i < n and s[i] in _WS:
            i += 1
        j = i
        while j < n and s[j] in _TOKEN:
            j += 1
        name = s[i:j]
        if not name:
            raise SIPParseError("Empty header parameter")
        i = j
        while i < n and s[i] in _WS:
            i += 1
        if i < n and s[i] == "=":
            i += 1
            while i < n and s[i] in _WS:
                i += 1
            if i < n and s[i] == '"':
                _, k = parse_quoted(s, i)
                value = s[i:k]
                i = k
            else:
                j = i
                while j < n and s[j] not in " \t;,":
                    j += 1
                value = s[i:j]
                if not value or not all(c in _TOKEN or c in "[]:" for c in value):
                    raise SIPParseError("Bad header parameter value")
                i = j
            out.append((name, value))
        else:
            out.append((name, None))


def unquote(s: str) -> str:
    """The content of a quoted-string (with quoted-pairs resolved), or ``s`` itself if unquoted."""
    if len(s) >= 2 and s[0] == '"':
        value, end = parse_quoted(s, 0)
        if end != len(s):
            raise SIPParseError("Trailing characters after quoted string")
        return value
    return s


def format_header_params(params: _Params) -> str:
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _get_param(params: _Params, name: str) -> str | None:
    name = name.lower()
    for n, v in params:
        if n.lower() == name:
            return "" if v is None else v
    return None


def _set_param(params: _Params, name: str, value: str | None) -> _Params:
    out = list(params)
    for i, (n, _) in enumerate(out):
        if n.lower() == name.lower():
            out[i] = (n, value)
            return tuple(out)
    out.append((name, value))
    return tuple(out)


@dataclasses.dataclass(frozen=True, slots=True)
class NameAddr:
    """``[display-name] <uri> *(;param)`` or ``addr-spec *(;param)`` (§20.10).

    ``display_name`` is unquoted (None when absent); ``params`` are the header's parameters
    (``tag``, ``expires``, ``q``...), with quoted values kept quoted.
    """

    display_name: str | None
    uri: URI
    params: _Params = ()

    @property
    def tag(self) -> str | None:
        return _get_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return _get_param(self.params, name)

    def with_tag(self, tag: str) -> NameAddr:
        return dataclasses.replace(self, params=_set_param(self.params, "tag", tag))

    def with_params(self, **params: str | None) -> NameAddr:
        new = self.params
        for key, value in params.items():
            new = _set_param(new, key.replace("_", "-"), value)
        return dataclasses.replace(self, params=new)

    @classmethod
    def parse(cls, s: str) -> NameAddr:
        value, end = cls.parse_at(s, 0)
        if end != len(s):
            raise SIPParseError("Trailing characters after address")
        return value

    @classmethod
    def parse_at(cls, s: str, i: int) -> tuple[NameAddr, int]:
        """Parse one name-addr/addr-spec with params from ``s[i:]``; stops before a comma or the end."""
        n = len(s)
        while i < n and s[i] in _WS:
            i += 1
        display: str | None = None
        if i < n and s[i] == '"':
            display, i = parse_quoted(s, i)
            while i < n and s[i] in _WS:
                i += 1
            if i >= n or s[i] != "<":
                raise SIPParseError("Quoted display name without <URI>")
        else:
            lt = s.find("<", i)
            if lt != -1:
                text = s[i:lt]
                if "," in text or ";" in text:
                    lt = -1  # addr-spec form: that '<' belongs to a later value or a quoted param
                else:
                    words = text.split()
                    if not all(_is_token(w) for w in words):
                        raise SIPParseError("Bad display name")
                    display = " ".join(words) if words else None
                    i = lt
        if i < n and s[i] == "<":
            gt = s.find(">", i + 1)
            if gt == -1:
                raise SIPParseError("Missing '>' in address")
            uri = URI.parse(s[i + 1 : gt])
            i = gt + 1
        else:
            # addr-spec: the URI ends at the first ';', ',' or whitespace; what follows are the
            # header's parameters, never the URI's (§20.10)
            j = i
            while j < n and s[j] not in " \t;,":
                j += 1
            spec = s[i:j]
            if not spec:
                raise SIPParseError("Missing address")
            uri = URI.parse(spec)
            if uri.headers:
                raise SIPParseError("URI with headers must be in <>")
            i = j
        params, i = parse_header_params(s, i)
        return cls(display, uri, params), i

    def __str__(self) -> str:
        uri = str(self.uri)
        if self.display_name is not None:
            name = self.display_name
            plain = name and all(_is_token(w) for w in name.split(" "))
            s = f"{name if plain else quote(name)} <{uri}>"
        elif self.uri.params or self.uri.headers or self.uri.opaque is not None or "," in uri:
            s = f"<{uri}>"
        else:
            s = uri
        return s + format_header_params(self.params)


def parse_name_addrs(s: str) -> list[NameAddr]:
    """A comma-separated list of name-addrs (Contact, Route, Record-Route...)."""
    out: list[NameAddr] = []
    i = 0
    n = len(s)
    while True:
        value, i = NameAddr.parse_at(s, i)
        out.append(value)
        while i < n and s[i] in _WS:
            i += 1
        if i >= n:
            return out
        if s[i] != ",":
            raise SIPParseError("Bad address list")
        i += 1


def params_from(items: Iterable[tuple[str, str | None]]) -> _Params:
    return tuple(items)
