"""Structured SIP header values and the header-level grammar (RFC 3261 §7.3, §20, §25; RFC 3581, 3891).

Responsible for: header names (compact forms, canonical casing, which headers are comma-separated
lists), splitting a value on commas that are separators, generic parameters and quoted strings,
and the typed values the transaction and dialog layers read: `Via`, `CSeq`, `Replaces`, name-addr
lists (`parse_name_addr_list`; From, To, Contact, Route, Record-Route, Refer-To and Referred-By are
all `NameAddr`).

Not here: whole messages and their mandatory-header rules (`sipmob.sip.message`), URIs
(`sipmob.sip.uri`), Digest credentials (`sipmob.sip.auth`).
"""

from __future__ import annotations

import dataclasses
import functools
import re

from sipmob.sip.uri import (
    NameAddr,
    SIPParseError,
    format_header_params,
    parse_header_params,
    parse_name_addrs,
    parse_quoted,
    quote,
    unquote,
)

__all__ = [
    "COMPACT_FORMS",
    "CSeq",
    "ReferredBy",
    "Replaces",
    "Via",
    "canonical_name",
    "is_list_header",
    "parse_name_addr_list",
    "parse_params",
    "quote",
    "split_commas",
    "unquote",
]

# §7.3.3 and the extensions that define one (RFC 3515 r, RFC 3892 b, RFC 3265 o/u, RFC 3841 a/j/d,
# RFC 4028 x, RFC 4474 y/n).
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "b": "Referred-By",
    "u": "Allow-Events",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "x": "Session-Expires",
    "y": "Identity",
    "n": "Identity-Info",
}

_KNOWN = [
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length", "Content-Type",
    "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity", "Identity-Info",
    "In-Reply-To", "Max-Forwards", "Min-Expires", "Min-SE", "MIME-Version", "Organization", "Path",
    "Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-Sub", "Refer-To", "Referred-By", "Reject-Contact", "Replaces", "Reply-To",
    "Request-Disposition", "Require", "Retry-After", "Route", "RSeq", "Server", "Service-Route",
    "Session-Expires", "SIP-ETag", "SIP-If-Match", "Subject", "Subscription-State", "Supported",
    "Target-Dialog", "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning",
    "WWW-Authenticate",
]  # fmt: skip
_CANONICAL: dict[str, str] = {n.lower(): n for n in _KNOWN}
_CANONICAL.update((k, v) for k, v in COMPACT_FORMS.items())

# Headers whose grammar is a comma-separated list (§7.3.1). Not the Digest challenge and credential
# headers (their parameters are comma-separated), not Date, nor anything we do not know.
_LIST_HEADERS = frozenset(
    n.lower()
    for n in (
        "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
        "Allow-Events", "Call-Info", "Contact", "Content-Encoding", "Content-Language", "Error-Info",
        "In-Reply-To", "Path", "Proxy-Require", "Reason", "Record-Route", "Reject-Contact",
        "Request-Disposition", "Require", "Route", "Service-Route", "Supported", "Unsupported",
        "Via", "Warning",
    )
)  # fmt: skip


@functools.lru_cache(maxsize=1024)
def canonical_name(name: str) -> str:
    """The full, conventionally cased name of a header (``i`` -> ``Call-ID``, ``cseq`` -> ``CSeq``).

    Unknown names are returned unchanged so that they round-trip as received.
    """
    return _CANONICAL.get(name.lower(), name)


@functools.lru_cache(maxsize=1024)
def header_key(name: str) -> str:
    """The lookup key of a header name: its full name in lower case."""
    low = name.lower()
    full = COMPACT_FORMS.get(low)
    return full.lower() if full is not None else low


def is_list_header(name: str) -> bool:
    return header_key(name) in _LIST_HEADERS


def split_commas(value: str) -> list[str]:
    """Split a header value on the commas that separate values (not inside quotes or ``<>``)."""
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    out: list[str] = []
    start = 0
    i = 0
    n = len(value)
    depth = 0
    while i < n:
        c = value[i]
        if c == '"':
            _, i = parse_quoted(value, i)
            continue
        if c == "<":
            depth += 1
        elif c == ">" and depth:
            depth -= 1
        elif c == "," and not depth:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


def parse_params(s: str) -> tuple[tuple[str, str | None], ...]:
    """Parse ``;name=value;flag`` generic parameters (§25.1 generic-param); quoted values stay quoted."""
    params, end = parse_header_params(s, 0)
    if end != len(s):
        raise SIPParseError("Bad parameters")
    return params


def parse_name_addr_list(value: str) -> list[NameAddr]:
    """From/To/Contact/Route-style values: one or more name-addrs or addr-specs with parameters."""
    return parse_name_addrs(value)


ReferredBy = NameAddr  # RFC 3892: Referred-By is a name-addr with generic parameters


def _get(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    for n, v in params:
        if n.lower() == name:
            return "" if v is None else v
    return None


# Via (§20.42, §25.1 via-parm) ---------------------------------------------------------------

_TOKEN_RE = r"[A-Za-z0-9\-.!%*_+`'~]+"
_VIA_RE = re.compile(
    rf"[ \t]*({_TOKEN_RE})[ \t]*/[ \t]*({_TOKEN_RE})[ \t]*/[ \t]*({_TOKEN_RE})[ \t]+"
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9.])?)"
    r"(?:[ \t]*:[ \t]*([0-9]{1,5}))?"
)


@dataclasses.dataclass(frozen=True, slots=True)
class Via:
    """One via-parm: ``SIP/2.0/<transport> <host>[:<port>] *(;param)``; host without IPv6 brackets."""

    transport: str
    host: str
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()

    @property
    def branch(self) -> str | None:
        return _get(self.params, "branch")

    @property
    def received(self) -> str | None:
        return _get(self.params, "received")

    @property
    def maddr(self) -> str | None:
        return _get(self.params, "maddr")

    @property
    def ttl(self) -> int | None:
        value = _get(self.params, "ttl")
        return int(value) if value and value.isdigit() else None

    @property
    def rport(self) -> int | str | None:
        """RFC 3581: None when absent, "" when present without a value, the port when filled in."""
        value = _get(self.params, "rport")
        if value is None or value == "":
            return value
        return int(value) if value.isdigit() else None

    @property
    def sent_by(self) -> tuple[str, int | None]:
        return self.host, self.port

    def param(self, name: str) -> str | None:
        return _get(self.params, name.lower())

    def with_params(self, **params: str | int | None) -> Via:
        """A copy with parameters set in place or appended.

        ``via.with_params(received="192.0.2.1", rport=5060)``
        """
        new = list(self.params)
        for key, value in params.items():
            sval = None if value is None else str(value)
            for i, (n, _) in enumerate(new):
                if n.lower() == key:
                    new[i] = (n, sval)
                    break
            else:
                new.append((key, sval))
        return dataclasses.replace(self, params=tuple(new))

    @classmethod
    def parse(cls, value: str) -> Via:
        """Parse exactly one via-parm."""
        via, end = cls.parse_at(value, 0)
        if end != len(value):
            raise SIPParseError("Bad Via")
        return via

    @classmethod
    def parse_at(cls, s: str, i: int) -> tuple[Via, int]:
        m = _VIA_RE.match(s, i)
        if m is None:
            raise SIPParseError("Bad Via")
        name, version, transport, host, port = m.groups()
        if name.upper() != "SIP" or version != "2.0":
            raise SIPParseError("Bad Via protocol")
        if host[0] == "[":
            host = host[1:-1]
        port_n = int(port) if port else None
        if port_n is not None and port_n > 65535:
            raise SIPParseError("Bad Via port")
        params, end = parse_header_params(s, m.end())
        for n, v in params:
            if n.lower() in ("branch", "received", "maddr", "ttl") and v is None:
                raise SIPParseError(f"Via {n} without value")
        return cls(transport.upper(), host.lower() if ":" not in host else host, port_n, params), end

    @classmethod
    def parse_list(cls, value: str) -> list[Via]:
        out: list[Via] = []
        i = 0
        n = len(value)
        while True:
            via, i = cls.parse_at(value, i)
            out.append(via)
            while i < n and value[i] in " \t":
                i += 1
            if i >= n:
                return out
            if value[i] != ",":
                raise SIPParseError("Bad Via")
            i += 1

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"SIP/2.0/{self.transport} {host}{port}{format_header_params(self.params)}"


# CSeq (§20.16) ------------------------------------------------------------------------------

_CSEQ_RE = re.compile(rf"[ \t]*([0-9]{{1,10}})[ \t]+({_TOKEN_RE})[ \t]*\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class CSeq:
    """``CSeq: <seq> <method>``; the sequence number is below 2**31 (§8.1.1.5)."""

    seq: int
    method: str

    def __post_init__(self) -> None:
        if not 0 <= self.seq < 2**31:
            raise SIPParseError("CSeq number out of range")

    @classmethod
    def parse(cls, value: str) -> CSeq:
        m = _CSEQ_RE.match(value)
        if m is None:
            raise SIPParseError("Bad CSeq")
        return cls(int(m.group(1)), m.group(2))

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


# Replaces (RFC 3891 §6.1) -------------------------------------------------------------------

_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"  # §25.1 word
_CALLID_RE = re.compile(rf"{_WORD}(?:@{_WORD})?\Z")


@dataclasses.dataclass(frozen=True, slots=True)
class Replaces:
    """The dialog a new INVITE replaces: ``call-id;to-tag=..;from-tag=..[;early-only]``."""

    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False

    @classmethod
    def parse(cls, value: str) -> Replaces:
        call_id, _, rest = value.strip().partition(";")
        call_id = call_id.strip()
        if not _CALLID_RE.match(call_id):
            raise SIPParseError("Bad Replaces call-id")
        params = parse_params(";" + rest) if rest else ()
        to_tag = _get(params, "to-tag")
        from_tag = _get(params, "from-tag")
        if not to_tag or not from_tag:
            raise SIPParseError("Replaces without to-tag and from-tag")
        return cls(call_id, to_tag, from_tag, _get(params, "early-only") is not None)

    def __str__(self) -> str:
        early = ";early-only" if self.early_only else ""
        return f"{self.call_id};to-tag={self.to_tag};from-tag={self.from_tag}{early}"
