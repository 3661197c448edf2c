"""SIP messages: parsing, validation, serialisation and framing (RFC 3261 §7, §8.2.6, §18.3, §20).

Responsible for: turning the bytes of one datagram (or one framed stream message) into a
`Request` or `Response`, rejecting what the grammar or §8.2 forbids with a `SIPParseError` that
says what to answer, keeping every header (known or not) in order and verbatim, turning a message
back into bytes, building a response to a request (§8.2.6), and cutting a TCP/TLS byte stream
into messages (`StreamFramer`).

Not here: transactions, retransmissions and transport choice (`sipmob.sip.transaction`,
`sipmob.sip.transport`), dialogs, or what a TU does with a method or a scheme it does not support.
Structured header values are parsed on first access and cached, so a proxy that only reads Via and
CSeq does not pay for the rest. From, To and Contact must still be valid for the message to parse
(a 400 is due otherwise): their common shapes are recognised by one regular expression each, and
only what it cannot vouch for is parsed at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from sipmob.sip.headers import (
    CSeq,
    Via,
    canonical_name,
    header_key,
    is_list_header,
    parse_name_addr_list,
    split_commas,
)
from sipmob.sip.uri import URI, NameAddr, SIPGarbage, SIPParseError, parse_header_params

__all__ = [
    "MAX_MESSAGE_SIZE",
    "REASON_PHRASES",
    "Headers",
    "Request",
    "Response",
    "SIPGarbage",
    "SIPParseError",
    "StreamFramer",
    "make_response",
    "parse_message",
]

MAX_MESSAGE_SIZE = 65536
SIP_VERSION = "SIP/2.0"
_ENCODING = "utf-8"
_ERRORS = "surrogateescape"  # header bytes that are not UTF-8 still round-trip

T = TypeVar("T")

REASON_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    199: "Early Dialog Terminated",
    200: "OK",
    202: "Accepted",
    204: "No Notification",
    300: "Multiple Choices",
    301: "Moved Permanently",
    302: "Moved Temporarily",
    305: "Use Proxy",
    380: "Alternative Service",
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    410: "Gone",
    412: "Conditional Request Failed",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority",
    420: "Bad Extension",
    421: "Extension Required",
    422: "Session Interval Too Small",
    423: "Interval Too Brief",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity-Info",
    437: "Unsupported Certificate",
    438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support",
    470: "Consent Needed",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    485: "Ambiguous",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    489: "Bad Event",
    491: "Request Pending",
    493: "Undecipherable",
    494: "Security Agreement Required",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    580: "Precondition Failure",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
}


def reason_phrase(status: int) -> str:
    """The default reason phrase for a status code (the class's generic one if unknown)."""
    return REASON_PHRASES.get(status) or REASON_PHRASES.get(status // 100 * 100, "Unknown")


class Headers:
    """The header fields of a message, in order, each kept as one (name, value) line.

    Names are matched case-insensitively with compact forms mapped to full ones; known names are
    stored in their canonical casing, unknown ones as received. Values are kept verbatim (after
    unfolding), so unknown headers round-trip. Structured values are parsed on demand and cached
    until the next change (`parsed`).
    """

    __slots__ = ("_cache", "_lines")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # (key, name, value): key is the lower-case full name
        self._lines: list[tuple[str, str, str]] = [
            (header_key(n), canonical_name(n), v) for n, v in items
        ]
        self._cache: dict[str, object] = {}

    @classmethod
    def _from_lines(cls, lines: list[tuple[str, str, str]]) -> Headers:
        h = cls.__new__(cls)
        h._lines = lines
        h._cache = {}
        return h

    # reading --------------------------------------------------------------------------------

    def _index(self) -> dict[str, list[str]]:
        """Values by key, built once per version of the headers: most readers ask for several."""
        cached = self._cache.get(_INDEX)
        if cached is not None:
            return cached  # type: ignore[return-value]
        index: dict[str, list[str]] = {}
        for k, _, v in self._lines:
            values = index.get(k)
            if values is None:
                index[k] = [v]
            else:
                values.append(v)
        self._cache[_INDEX] = index
        return index

    def get(self, name: str) -> str | None:
        """The first value of ``name`` (the first element when the header is a list), or None."""
        key = header_key(name)
        values = self._index().get(key)
        if values is None:
            return None
        if key not in _SPLIT_KEYS:
            return values[0]
        for v in values:
            parts = split_commas(v)
            if parts:
                return parts[0]
        return None

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order, splitting comma lists where §7.3.1 allows it."""
        key = header_key(name)
        if key in _SPLIT_KEYS:
            out: list[str] = []
            for k, _, v in self._lines:
                if k == key:
                    out.extend(split_commas(v))
            return out
        return [v for k, _, v in self._lines if k == key]

    def get_lines(self, name: str) -> list[str]:
        """The values of ``name`` as they appear line by line, without splitting commas."""
        return list(self._index().get(header_key(name), ()))

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return header_key(name) in self._index()

    def items(self) -> list[tuple[str, str]]:
        """All header lines as (name, value) in order."""
        return [(n, v) for _, n, v in self._lines]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._lines)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._lines] == [(k, v) for k, _, v in other._lines]

    def __repr__(self) -> str:
        return f"Headers({self.items()!r})"

    def copy(self) -> Headers:
        h = Headers._from_lines(list(self._lines))
        h._cache = dict(self._cache)  # cached values are immutable
        return h

    def parsed(self, key: str, parse: Callable[[Headers], T]) -> T:
        """``parse(self)``, cached under ``key`` until the headers change.

        ``key`` is the lower-case full name of the one header ``parse`` reads (`replace_top` keeps
        what was parsed of the headers it does not touch)."""
        try:
            return self._cache[key]  # type: ignore[return-value]
        except KeyError:
            value = parse(self)
            self._cache[key] = value
            return value

    # changing -------------------------------------------------------------------------------

    def add(self, name: str, value: str, *, first: bool = False) -> None:
        """Append a header line (or put it before all others, as a proxy does with its Via)."""
        line = (header_key(name), canonical_name(name), str(value))
        if first:
            self._lines.insert(0, line)
        else:
            self._lines.append(line)
        self._cache.clear()

    def set(self, name: str, value: str) -> None:
        """Replace every line of ``name`` with one, where the first was (appended if absent)."""
        key = header_key(name)
        line = (key, canonical_name(name), str(value))
        out: list[tuple[str, str, str]] = []
        placed = False
        for item in self._lines:
            if item[0] == key:
                if not placed:
                    out.append(line)
                    placed = True
            else:
                out.append(item)
        if not placed:
            out.append(line)
        self._lines = out
        self._cache.clear()

    def remove(self, name: str) -> None:
        """Remove every line of ``name`` (nothing happens if there is none)."""
        key = header_key(name)
        self._lines = [item for item in self._lines if item[0] != key]
        self._cache.clear()

    def replace_top(self, name: str, value: str, parsed: object | None = None) -> None:
        """Replace the first value of ``name`` and put it above every other header line (a Via
        noted with received/rport), keeping what was parsed of the other headers. ``parsed``, if
        given, is what parsing the new lines of ``name`` would give."""
        key = header_key(name)
        kept = {k: v for k, v in self._cache.items() if k != key and k != _INDEX}
        self.remove_first(name)
        self.add(name, value, first=True)
        self._cache.update(kept)
        if parsed is not None:
            self._cache[key] = parsed

    def remove_first(self, name: str) -> str | None:
        """Remove the first value of ``name`` (the first list element if the line holds several)."""
        key = header_key(name)
        for i, (k, n, v) in enumerate(self._lines):
            if k == key:
                parts = split_commas(v) if key in _SPLIT_KEYS else [v]
                if len(parts) > 1:
                    self._lines[i] = (k, n, ", ".join(parts[1:]))
                else:
                    del self._lines[i]
                self._cache.clear()
                return parts[0] if parts else ""
        return None

    # serialising ----------------------------------------------------------------------------

    def to_str(self) -> str:
        return "".join(f"{n}: {v}\r\n" for _, n, v in self._lines)


_INDEX = "\0index"  # the `Headers._index` entry of the cache; no header key starts with NUL

_SPLIT_KEYS = frozenset(
    k for k in ("via", "contact", "route", "record-route", "allow", "supported", "require",
                "proxy-require", "unsupported", "accept", "accept-encoding", "accept-language",
                "content-encoding", "content-language", "alert-info", "call-info", "error-info",
                "in-reply-to", "warning", "allow-events", "path", "service-route", "reason",
                "accept-contact", "reject-contact", "request-disposition")
    if is_list_header(k)
)  # fmt: skip


# Structured accessors (shared by Request and Response) ---------------------------------------


def _vias(h: Headers) -> list[Via]:
    out: list[Via] = []
    for line in h.get_lines("via"):
        out.extend(Via.parse_list(line))
    return out


def _one(h: Headers, name: str) -> str:
    values = h.get_lines(name)
    if not values:
        raise SIPParseError(f"Missing {canonical_name(name)}")
    if len(values) > 1:
        raise SIPParseError(f"Multiple {canonical_name(name)} values")
    return values[0]


def _name_addr(h: Headers, name: str) -> NameAddr:
    addrs = parse_name_addr_list(_one(h, name))
    if len(addrs) != 1:
        raise SIPParseError(f"Multiple {canonical_name(name)} values")
    return addrs[0]


def _addr_list(h: Headers, name: str) -> list[NameAddr]:
    out: list[NameAddr] = []
    for line in h.get_lines(name):
        out.extend(parse_name_addr_list(line))
    return out


def _contacts(h: Headers) -> list[NameAddr]:
    lines = h.get_lines("contact")
    if len(lines) == 1 and lines[0].strip() == "*":
        return []
    return _addr_list(h, "contact")


class _MessageBase:
    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        return self.headers.parsed("call-id", lambda h: _one(h, "call-id").strip())

    @property
    def cseq(self) -> CSeq:
        return self.headers.parsed("cseq", lambda h: CSeq.parse(_one(h, "cseq")))

    @property
    def vias(self) -> list[Via]:
        return list(self.headers.parsed("via", _vias))

    @property
    def top_via(self) -> Via:
        vias = self.headers.parsed("via", _vias)
        if not vias:
            raise SIPParseError("Missing Via")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        return self.headers.parsed("from", lambda h: _name_addr(h, "from"))

    @property
    def to(self) -> NameAddr:
        return self.headers.parsed("to", lambda h: _name_addr(h, "to"))

    @property
    def contact(self) -> list[NameAddr]:
        """Contact addresses; empty for none and for the REGISTER wildcard ``*`` (see `contact_is_star`)."""
        return list(self.headers.parsed("contact", _contacts))

    @property
    def contact_is_star(self) -> bool:
        return [v.strip() for v in self.headers.get_lines("contact")] == ["*"]

    @property
    def record_route(self) -> list[NameAddr]:
        return list(self.headers.parsed("record-route", lambda h: _addr_list(h, "record-route")))

    @property
    def route(self) -> list[NameAddr]:
        return list(self.headers.parsed("route", lambda h: _addr_list(h, "route")))

    @property
    def max_forwards(self) -> int | None:
        return self.headers.parsed("max-forwards", _max_forwards)

    @property
    def content_type(self) -> str | None:
        """The media type in lower case without parameters (``application/sdp``), or None."""
        value = self.headers.get("content-type")
        if value is None:
            return None
        return value.split(";", 1)[0].strip().lower()

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return _content_length(value) if value is not None else None

    def _body_and_headers(self) -> tuple[str, bytes]:
        """Header block with Content-Length set to the body's length."""
        lines = self.headers._lines
        clen = str(len(self.body))
        out: list[str] = []
        seen = False
        for k, n, v in lines:
            if k == "content-length":
                if seen:
                    continue
                seen = True
                v = clen
            out.append(f"{n}: {v}\r\n")
        if not seen:
            out.append(f"Content-Length: {clen}\r\n")
        return "".join(out), self.body


def _max_forwards(h: Headers) -> int | None:
    values = h.get_lines("max-forwards")
    if not values:
        return None
    if len(values) > 1:
        raise SIPParseError("Multiple Max-Forwards values")
    v = values[0].strip()
    if not v.isdigit() or not v.isascii() or int(v) > 255:
        raise SIPParseError("Bad Max-Forwards")
    return int(v)


def _content_length(value: str) -> int:
    v = value.strip()
    if not v.isdigit() or not v.isascii() or len(v) > 10:
        raise SIPParseError("Bad Content-Length")
    return int(v)


@dataclasses.dataclass(eq=False)
class Request(_MessageBase):
    """A SIP request; headers are kept as lines, typed accessors parse (and cache) on demand."""

    method: str
    uri: URI
    headers: Headers
    body: bytes = b""

    def to_bytes(self) -> bytes:
        """The message on the wire, with Content-Length set to the length of ``body``."""
        head, body = self._body_and_headers()
        start = f"{self.method} {self.uri} {SIP_VERSION}\r\n"
        return (start + head + "\r\n").encode(_ENCODING, _ERRORS) + body

    def replace(self, **changes: Any) -> Request:
        """A shallow copy with fields changed: ``msg.replace(headers=new_headers)``."""
        return dataclasses.replace(self, **changes)

    def copy(self) -> Request:
        return Request(self.method, self.uri, self.headers.copy(), self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return (self.method, self.uri, self.headers, self.body) == (
            other.method,
            other.uri,
            other.headers,
            other.body,
        )


@dataclasses.dataclass(eq=False)
class Response(_MessageBase):
    """A SIP response; see `Request` for how headers are kept."""

    status: int
    reason: str
    headers: Headers
    body: bytes = b""

    def to_bytes(self) -> bytes:
        head, body = self._body_and_headers()
        start = f"{SIP_VERSION} {self.status} {self.reason}\r\n"
        return (start + head + "\r\n").encode(_ENCODING, _ERRORS) + body

    def replace(self, **changes: Any) -> Response:
        """A shallow copy with fields changed: ``msg.replace(headers=new_headers)``."""
        return dataclasses.replace(self, **changes)

    def copy(self) -> Response:
        return Response(self.status, self.reason, self.headers.copy(), self.body)

    @property
    def is_provisional(self) -> bool:
        return self.status < 200

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.status, self.reason, self.headers, self.body) == (
            other.status,
            other.reason,
            other.headers,
            other.body,
        )


# Parsing ------------------------------------------------------------------------------------

_TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)\Z", re.IGNORECASE)
_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
    r"[0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT\Z"
)
_HEADER_NAME_RE = re.compile(r"([A-Za-z0-9\-.!%*_+`'~]+)[ \t]*:[ \t]*")
_HEADER_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
# headers kept in a partial-parse error so that a 400 can still be built
_RESPONSE_KEYS = ("via", "from", "to", "call-id", "cseq")
_MANDATORY = ("to", "from", "call-id", "cseq", "via")
_SINGLE = ("to", "from", "call-id", "cseq", "max-forwards", "content-length")


def _token(s: str) -> bool:
    return bool(s) and all(c in _TOKEN_CHARS for c in s)


def _check_version(version: str) -> None:
    m = _VERSION_RE.match(version)
    if m is None:
        raise SIPParseError("Bad SIP version")
    if (m.group(1), m.group(2)) != ("2", "0"):
        raise SIPParseError("Version Not Supported", 505)


def _looks_like_start_line(line: str) -> bool:
    if line[:4].upper() == "SIP/":
        return True
    parts = line.rstrip(" \t").rsplit(" ", 1)
    return len(parts) == 2 and parts[1][:4].upper() == "SIP/" and _token(line.split(" ", 1)[0])


def parse_message(data: bytes, *, max_size: int = MAX_MESSAGE_SIZE) -> Request | Response:
    """Parse one SIP message from a datagram (or a message framed by `StreamFramer`).

    The body is cut to Content-Length (octets after it are ignored, §18.3); a body shorter than
    Content-Length, a missing mandatory header, a repeated single-valued header, a CSeq method that
    differs from the request's, or anything the grammar rejects raises `SIPParseError` (status 400,
    505 for another SIP version, 513 for an oversized message). Bytes that are not SIP at all
    raise `SIPGarbage`.
    """
    if len(data) > max_size:
        raise SIPParseError("Message Too Large", 513)
    start = 0
    n = len(data)
    while start + 1 < n and data[start : start + 2] == b"\r\n":  # §7.5: ignore leading CRLFs
        start += 2
    end = data.find(b"\r\n\r\n", start)
    first_end = data.find(b"\r\n", start)
    if first_end == -1:
        raise SIPGarbage("No start line")
    try:
        first = data[start:first_end].decode(_ENCODING)
    except UnicodeDecodeError:
        raise SIPGarbage("Start line is not text") from None
    if not _looks_like_start_line(first):
        raise SIPGarbage("Not a SIP message")
    if end == -1:
        raise SIPParseError("Missing end of headers")
    head = data[first_end + 2 : end + 2].decode(_ENCODING, _ERRORS)
    body = data[end + 4 :]

    err: SIPParseError | None = None
    msg: Request | Response | None = None
    try:
        msg = _parse_start_line(first)
    except SIPParseError as e:
        err = e
    try:
        headers = _parse_headers(head)
    except SIPParseError as e:
        raise _with_partial(err or e, None, msg is not None) from None
    if err is not None:
        raise _with_partial(err, headers, False)
    assert msg is not None
    msg.headers = headers
    try:
        _validate(msg)
        clen_s = headers.get("content-length")
        if clen_s is not None:
            clen = _content_length(clen_s)
            if clen > len(body):
                raise SIPParseError("Content-Length larger than body")
            body = body[:clen]
    except SIPParseError as e:
        raise _with_partial(e, headers, True) from None
    msg.body = bytes(body)
    return msg


def _with_partial(err: SIPParseError, headers: Headers | None, request_line_ok: bool) -> SIPParseError:
    err.request_line_ok = request_line_ok
    if headers is not None:
        keep: list[tuple[str, str, str]] = []
        for key in _RESPONSE_KEYS:
            lines = [line for line in headers._lines if line[0] == key]
            if not lines:
                continue
            try:
                probe = Headers._from_lines(lines)
                if key == "via":
                    _vias(probe)
                elif key == "cseq":
                    CSeq.parse(_one(probe, key))
                elif key in ("from", "to"):
                    _name_addr(probe, key)
                else:
                    _one(probe, key)
            except SIPParseError:
                continue
            keep.extend(lines)
        err.headers = Headers._from_lines(keep)
    return err


def _parse_start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if len(parts) < 2:
            raise SIPParseError("Bad status line")
        _check_version(parts[0])
        code = parts[1]
        if len(code) != 3 or not code.isdigit() or not code.isascii() or code[0] == "0":
            raise SIPParseError("Bad status code")
        reason = parts[2] if len(parts) == 3 else ""
        if any(c in "\r\n" for c in reason):
            raise SIPParseError("Bad reason phrase")
        return Response(int(code), reason, Headers())
    parts = line.split(" ")
    if len(parts) != 3:
        raise SIPParseError("Bad request line")
    method, uri_s, version = parts
    if not _token(method):
        raise SIPParseError("Bad method")
    _check_version(version)
    uri = URI.parse(uri_s)
    if uri.headers:
        raise SIPParseError("Request-URI with headers")  # §19.1.1: not allowed in a Request-URI
    return Request(method, uri, Headers())


def _parse_headers(head: str) -> Headers:
    if "\r\n " in head or "\r\n\t" in head or head[:1] in (" ", "\t"):
        return _parse_folded_headers(head)
    lines: list[tuple[str, str, str]] = []
    index: dict[str, list[str]] = {}  # `Headers._index`, built in the same pass
    raw = head.split("\r\n")
    if raw and raw[-1] == "":
        raw.pop()
    known = _NAMES.get
    for line in raw:
        name, colon, value = line.partition(":")
        names = known(name)
        if names is None:
            if not colon:
                raise SIPParseError("Bad header line")
            names = _header_names(name)
        key = names[0]
        value = value.strip(" \t")
        lines.append((key, names[1], value))
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
    headers = Headers._from_lines(lines)
    headers._cache[_INDEX] = index
    return headers


# (key, canonical name) by header name as received (with any blanks before the colon); bounded,
# as a peer can send any number of different names
_NAMES: dict[str, tuple[str, str]] = {}


def _header_names(raw: str) -> tuple[str, str]:
    name = raw.rstrip(" \t")
    if _HEADER_TOKEN_RE.match(name) is None:
        raise SIPParseError("Bad header line")
    names = (header_key(name), canonical_name(name))
    if len(_NAMES) >= 1024:
        _NAMES.clear()
    _NAMES[raw] = names
    return names


def _parse_folded_headers(head: str) -> Headers:
    lines: list[tuple[str, str, str]] = []
    raw = head.split("\r\n")
    if raw and raw[-1] == "":
        raw.pop()
    for line in raw:
        if line[:1] in (" ", "\t"):
            # folded continuation (§7.3.1): LWS including the CRLF counts as one SP
            if not lines:
                raise SIPParseError("Continuation line before the first header")
            k, name, value = lines[-1]
            more = line.strip(" \t")
            lines[-1] = (k, name, f"{value} {more}" if value and more else value + more)
            continue
        m = _HEADER_NAME_RE.match(line)
        if m is None:
            raise SIPParseError("Bad header line")
        name = m.group(1)
        value = line[m.end() :].rstrip(" \t")
        lines.append((header_key(name), canonical_name(name), value))
    return Headers._from_lines(lines)


# The common shapes of name-addr and addr-spec (§20.10, §25.1): plain sip/sips URIs without
# escapes, passwords or headers. Everything these accept, `NameAddr.parse_at` accepts too, so a
# value that matches is left to be parsed when someone reads it; one that does not is parsed at
# once, which either accepts it after all or says why not.
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_HOSTPORT = (r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?)"
             r"(?::(?:[0-9]{1,4}|[1-5][0-9]{4}))?")  # ports above 59999 take the careful path
_URI_PARAM = r"[A-Za-z0-9\-_.!~*'()\[\]/:&+$]+"
_IN_BRACKETS = (rf"[sS][iI][pP][sS]?:(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]+@)?{_HOSTPORT}"
                rf"(?:;{_URI_PARAM}(?:={_URI_PARAM})?)*")
_ADDR_SPEC = rf"[sS][iI][pP][sS]?:(?:[A-Za-z0-9\-_.!~*'()&=+$/]+@)?{_HOSTPORT}(?=[ \t;,]|\Z)"
_GENERIC_PARAM = (rf"[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:[A-Za-z0-9\-.!%*_+`'~\[\]:]+"
                  r"|\"(?:[^\"\\]|\\[\s\S])*\"))?(?=[ \t;,]|\Z)")
_NAME_ADDR = (rf"[ \t]*(?:(?:\"[^\"\\\r\n]*\"|{_TOKEN}(?:[ \t]+{_TOKEN})*)?[ \t]*<{_IN_BRACKETS}>"
              rf"|{_ADDR_SPEC})(?P<params>(?:{_GENERIC_PARAM})*)[ \t]*")
_ONE_ADDR_RE = re.compile(rf"{_NAME_ADDR}\Z")
_ADDR_LIST_RE = re.compile(rf"{_NAME_ADDR}(?:,{_NAME_ADDR.replace('?P<params>', '')})*\Z")


def _validate(msg: Request | Response) -> None:
    h = msg.headers
    keys = h._index()
    for key in _MANDATORY:
        if key not in keys:
            raise SIPParseError(f"Missing {canonical_name(key)}")
    for key in _SINGLE:
        if len(keys.get(key, ())) > 1:
            raise SIPParseError(f"Multiple {canonical_name(key)} values")
    if isinstance(msg, Request) and "max-forwards" not in keys:
        # §8.1.1.6 makes it a MUST for a UAC; RFC 2543 peers omit it, and we do not serve them
        raise SIPParseError("Missing Max-Forwards")
    cseq = msg.cseq
    if isinstance(msg, Request) and cseq.method != msg.method:
        raise SIPParseError("CSeq method does not match request method")
    if not msg.vias:
        raise SIPParseError("Missing Via")
    # a 400 is due now if they are malformed, so what the quick check cannot vouch for is parsed
    if _ONE_ADDR_RE.match(keys["from"][0]) is None:
        msg.from_  # noqa: B018
    if _ONE_ADDR_RE.match(keys["to"][0]) is None:
        msg.to  # noqa: B018
    msg.max_forwards  # noqa: B018
    contacts = keys.get("contact")
    if contacts is not None and not all(_ADDR_LIST_RE.match(v) for v in contacts):
        msg.contact  # noqa: B018
    call_id = msg.call_id
    if not call_id or " " in call_id or "\t" in call_id:
        raise SIPParseError("Bad Call-ID")
    date = h.get("date")
    if date is not None and not _DATE_RE.match(date):
        raise SIPParseError("Bad Date")  # §20.17: rfc1123-date, and only in GMT


# Responses (§8.2.6) -------------------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to ``request`` per §8.2.6.2: Via, From, Call-ID, CSeq copied, To with our tag.

    ``to_tag`` is added only when the request's To has no tag (an in-dialog request keeps its
    own); a 100 also copies Timestamp (§8.2.6.1). ``headers`` are appended in order.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status {status} out of range")
    src = request.headers
    groups: dict[str, list[tuple[str, str, str]]] = {group: [] for group in _COPIED.values()}
    for line in src._lines:
        name = _COPIED.get(line[0])
        if name is not None:
            groups[name].append(line)
    if to_tag is not None and groups["to"]:
        groups["to"] = [("to", "To", _with_to_tag(request, to_tag))]
    out = [*groups["via"], *groups["from"], *groups["to"], *groups["call-id"]]
    if status == 100:
        out += groups["timestamp"]
    extra = [(header_key(name), canonical_name(name), str(value)) for name, value in headers]
    resp_headers = Headers._from_lines(out + extra)
    # the copied lines read as they did in the request: share what was parsed of them
    changed = {line[0] for line in extra}
    for key in ("via", "from", "call-id", "cseq"):
        if key in src._cache and key not in changed:
            resp_headers._cache[key] = src._cache[key]
    return Response(status, reason if reason is not None else reason_phrase(status), resp_headers, body)


# what `make_response` copies; Call-ID and CSeq keep their relative order
_COPIED = {"via": "via", "from": "from", "to": "to", "call-id": "call-id", "cseq": "call-id",
           "timestamp": "timestamp"}


def _with_to_tag(request: Request, to_tag: str) -> str:
    """The request's To with ``to_tag`` added, unless it has a tag already (an in-dialog request)."""
    value = request.headers._index()["to"][0]
    m = _ONE_ADDR_RE.match(value)
    if m is not None:
        # a shape `_validate` vouches for: the header's own parameters follow the address, and
        # the value is kept as the peer wrote it (§8.2.6.2 copies To)
        params = parse_header_params(m.group("params"), 0)[0]
        if any(name.lower() == "tag" for name, _ in params):
            return value
        return f"{value};tag={to_tag}"
    to = request.to
    return value if to.tag is not None else str(to.with_tag(to_tag))


# Stream framing (§18.3) ---------------------------------------------------------------------

_CLEN_RE = re.compile(rb"\r\n(?:content-length|l)[ \t]*:[ \t]*([0-9]+)[ \t]*\r\n", re.IGNORECASE)


class StreamFramer:
    """Cuts a reliable byte stream into SIP messages using Content-Length (§18.3).

    CRLFs between messages (RFC 5626 keep-alives) are skipped. A message without Content-Length,
    or one larger than ``max_size``, raises `SIPParseError`; after that the stream cannot be
    resynchronised and the connection should be closed.
    """

    def __init__(self, max_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every message they complete, in order."""
        self._buf += data
        out: list[bytes] = []
        while True:
            buf = self._buf
            i = 0
            while buf[i : i + 2] == b"\r\n":
                i += 2
            if i:
                del buf[:i]
            if len(buf) == 1 and buf[0:1] == b"\r":
                return out
            end = buf.find(b"\r\n\r\n")
            if end == -1:
                if len(buf) > self.max_size:
                    raise SIPParseError("Message Too Large", 513)
                return out
            m = _CLEN_RE.search(buf, 0, end + 4)
            if m is None:
                raise SIPParseError("Missing Content-Length")
            total = end + 4 + int(m.group(1))
            if total > self.max_size:
                raise SIPParseError("Message Too Large", 513)
            if len(buf) < total:
                return out
            out.append(bytes(buf[:total]))
            del buf[:total]

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf)
