"""SLPv2 messages as values (RFC 2608 §8-§10): what each message carries, not how it is encoded.

Every message is a small frozen dataclass with the fields the RFC names, in the RFC's order. The
common header (§8) is `Header`; a message value carries it as ``header`` so that a reply can copy the
XID and language tag of its request. Strings are Python ``str``: the wire codec (`sipmob.slp.wire`)
does the UTF-8 and the length prefixes; list-valued fields that the RFC transmits as one
comma-separated string (scope lists, tag lists, previous-responder lists, service-type lists,
attribute lists) are kept as that string here, in wire form with RFC 2608 escapes intact, because
their meaning depends on the message (see `sipmob.slp.attrs` for attribute lists).

Not here: encoding and decoding (`wire`), attribute and predicate semantics (`attrs`, `predicate`),
what a Directory Agent does with a message (`da`).
"""

from __future__ import annotations

import dataclasses
import enum

SLP_VERSION = 2
SLP_PORT = 427
SLP_MCAST_V4 = "239.255.255.253"


class FunctionId(enum.IntEnum):
    """§8: the message types."""

    SrvRqst = 1
    SrvRply = 2
    SrvReg = 3
    SrvDeReg = 4
    SrvAck = 5
    AttrRqst = 6
    AttrRply = 7
    DAAdvert = 8
    SrvTypeRqst = 9
    SrvTypeRply = 10
    SAAdvert = 11


class ErrorCode(enum.IntEnum):
    """§7: error codes carried in replies."""

    OK = 0
    LANGUAGE_NOT_SUPPORTED = 1
    PARSE_ERROR = 2
    INVALID_REGISTRATION = 3
    SCOPE_NOT_SUPPORTED = 4
    AUTHENTICATION_UNKNOWN = 5
    AUTHENTICATION_ABSENT = 6
    AUTHENTICATION_FAILED = 7
    VER_NOT_SUPPORTED = 9
    INTERNAL_ERROR = 10
    DA_BUSY_NOW = 11
    OPTION_NOT_UNDERSTOOD = 12
    INVALID_UPDATE = 13
    MSG_NOT_SUPPORTED = 14
    REFRESH_REJECTED = 15


class Flags(enum.IntFlag):
    """§8: header flags; the remaining 13 bits are reserved and MUST be zero."""

    OVERFLOW = 0x8000
    FRESH = 0x4000
    REQUEST_MCAST = 0x2000


RESERVED_FLAG_BITS = 0x1FFF
NO_FLAGS = Flags(0)


@dataclasses.dataclass(frozen=True, slots=True)
class Extension:
    """§9.1: an extension in the chain after the message body.

    IDs 0x4000-0x7FFF are mandatory: a receiver that does not understand one answers
    OPTION_NOT_UNDERSTOOD. Others are optional and skipped when unknown.
    """

    ext_id: int
    data: bytes

    @property
    def mandatory(self) -> bool:
        return 0x4000 <= self.ext_id <= 0x7FFF


@dataclasses.dataclass(frozen=True, slots=True)
class Header:
    """§8: the header common to every message (version and length are the codec's business)."""

    function_id: FunctionId
    xid: int = 0
    lang: str = "en"
    flags: Flags = NO_FLAGS
    extensions: tuple[Extension, ...] = ()

    @property
    def overflow(self) -> bool:
        return bool(self.flags & Flags.OVERFLOW)

    @property
    def fresh(self) -> bool:
        return bool(self.flags & Flags.FRESH)

    @property
    def request_mcast(self) -> bool:
        return bool(self.flags & Flags.REQUEST_MCAST)


@dataclasses.dataclass(frozen=True, slots=True)
class AuthBlock:
    """§9.2: an authentication block, kept as received (verification is the caller's policy)."""

    bsd: int  # Block Structure Descriptor; 0x0002 is DSA with SHA-1
    timestamp: int
    spi: str
    structured_auth: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class UrlEntry:
    """§4.3: a URL with its lifetime in seconds (0-65535) and any URL authentication blocks."""

    url: str
    lifetime: int
    auths: tuple[AuthBlock, ...] = ()
    reserved: int = 0  # MUST be 0 on send; kept so a decoder can report a non-zero value


# Requests and replies (§8.1-§10.3). Field names follow the RFC's figures. ---------------------


@dataclasses.dataclass(frozen=True, slots=True)
class SrvRqst:
    header: Header
    prlist: str  # previous responder list: comma-separated addresses
    service_type: str
    scope_list: str
    predicate: str
    spi: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class SrvRply:
    header: Header
    error: ErrorCode
    urls: tuple[UrlEntry, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SrvReg:
    header: Header
    url_entry: UrlEntry
    service_type: str
    scope_list: str
    attr_list: str
    attr_auths: tuple[AuthBlock, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SrvDeReg:
    header: Header
    scope_list: str
    url_entry: UrlEntry
    tag_list: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class SrvAck:
    header: Header
    error: ErrorCode


@dataclasses.dataclass(frozen=True, slots=True)
class AttrRqst:
    header: Header
    prlist: str
    url: str  # a URL or a service type (§10.3)
    scope_list: str
    tag_list: str = ""
    spi: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class AttrRply:
    header: Header
    error: ErrorCode
    attr_list: str = ""
    attr_auths: tuple[AuthBlock, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class DAAdvert:
    header: Header
    error: ErrorCode
    boot_timestamp: int  # seconds since 1970 UTC when the DA last booted; 0 means going down
    url: str  # service:directory-agent://<addr>
    scope_list: str
    attr_list: str = ""
    spi_list: str = ""
    auths: tuple[AuthBlock, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class SrvTypeRqst:
    header: Header
    prlist: str
    # None means "all naming authorities" (length 0xFFFF on the wire); "" means IANA only.
    naming_authority: str | None
    scope_list: str


@dataclasses.dataclass(frozen=True, slots=True)
class SrvTypeRply:
    header: Header
    error: ErrorCode
    srvtype_list: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class SAAdvert:
    header: Header
    url: str  # service:service-agent://<addr>
    scope_list: str
    attr_list: str = ""
    auths: tuple[AuthBlock, ...] = ()


Message = (SrvRqst | SrvRply | SrvReg | SrvDeReg | SrvAck | AttrRqst | AttrRply | DAAdvert
           | SrvTypeRqst | SrvTypeRply | SAAdvert)

REQUESTS = (SrvRqst, SrvReg, SrvDeReg, AttrRqst, SrvTypeRqst)

# The reply type for each request type, and its function id.
REPLY_FOR: dict[FunctionId, FunctionId] = {
    FunctionId.SrvRqst: FunctionId.SrvRply,
    FunctionId.SrvReg: FunctionId.SrvAck,
    FunctionId.SrvDeReg: FunctionId.SrvAck,
    FunctionId.AttrRqst: FunctionId.AttrRply,
    FunctionId.SrvTypeRqst: FunctionId.SrvTypeRply,
}


class SLPParseError(Exception):
    """Raised by the decoder for any malformed message: the only exception it may raise.

    ``error`` is the code to answer with when a reply is possible (PARSE_ERROR, VER_NOT_SUPPORTED,
    OPTION_NOT_UNDERSTOOD, MSG_NOT_SUPPORTED...). ``header`` is set when the header itself could be
    read, so that the reply can carry the request's XID, language tag and function id; without it
    the packet is garbage and is dropped.
    """

    def __init__(self, reason: str, error: ErrorCode = ErrorCode.PARSE_ERROR,
                 header: Header | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.header = header
