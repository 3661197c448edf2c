"""The SLPv2 wire format (RFC 2608 §8-§10): message values to bytes and back.

Responsible for: the common header (§8), every message body, URL entries (§4.3), authentication
blocks (§9.2) as opaque values, the extension chain (§9.1), framing on a TCP stream
(`peek_length`), the error reply to a request that could not be served (`error_reply`) and
truncating a reply to fit a datagram with the OVERFLOW flag (`encode_within`, §6.1, §8.2).

Not responsible for: what the strings mean (scope lists, attribute lists and predicates stay
strings in wire form, escapes intact; see `attrs` and `predicate`), verifying or computing
signatures, language-tag grammar, or which errors a Directory Agent answers with beyond those
that come from the syntax. No I/O: bytes in, values out.

Choices where RFC 2608 leaves room, in one place:

- Reserved header flag bits. §8 says only "Reserved bits MUST be 0"; it gives receivers no
  "ignore on receipt" rule, and §7 defines PARSE_ERROR as a message that "fails to obey SLP
  syntax". `decode` therefore rejects a header with reserved bits set as PARSE_ERROR (with the
  header, so a unicast request is answered), as OpenSLP's slpd does. `encode` refuses to send them.
- The URL entry's reserved byte (§4.3) carries no rule at all, so `decode` accepts any value and
  reports it in `UrlEntry.reserved`; `encode` always writes 0, so a DA that echoes a registered
  entry never sends a non-zero value.
- Replies with a non-zero error code "MAY be truncated" after the error code (§7): when the rest of
  such a reply does not parse, `decode` returns the reply with only its error code.
- Every byte inside the length must be accounted for: the body must end where the first extension
  starts (or at the end of the message), and extensions must follow each other strictly forwards,
  which also rules out loops in the chain.
- An unknown error code (8, or 16 and above) in a reply cannot be represented and is PARSE_ERROR.
"""

from __future__ import annotations

import bisect
import re
import struct
from collections.abc import Callable, Collection

from sipmob.slp.messages import (
    REPLY_FOR,
    RESERVED_FLAG_BITS,
    SLP_VERSION,
    AttrRply,
    AttrRqst,
    AuthBlock,
    DAAdvert,
    ErrorCode,
    Extension,
    Flags,
    FunctionId,
    Header,
    Message,
    SAAdvert,
    SLPParseError,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)

__all__ = [
    "DEFAULT_UDP_LIMIT",
    "HEADER_FIXED_LEN",
    "decode",
    "encode",
    "encode_within",
    "error_reply",
    "peek_length",
    "srv_rply_frame",
    "url_entry_tail",
]

HEADER_FIXED_LEN = 14  # §8: the header up to and including the language tag length
DEFAULT_UDP_LIMIT = 1400  # §6.1: default maximum UDP payload
_MAX_LEN = 0xFFFFFF  # 3-byte length and extension offsets
_NA_ALL = 0xFFFF  # §10.1: naming authority length meaning "all naming authorities"

# version, function-id, length (2+1 bytes), flags, next-ext offset (1+2 bytes), XID, lang-tag length
_HEADER = struct.Struct("!BBHBHBHHH")
_EXT = struct.Struct("!HBH")  # extension id, next offset (1+2 bytes)
_AUTH = struct.Struct("!HHIH")  # BSD, block length, timestamp, SPI length
_URL = struct.Struct("!BHH")  # reserved, lifetime, URL length
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U16x2 = struct.Struct("!HH")
_U16_U32 = struct.Struct("!HI")

_FUNCTIONS: dict[int, FunctionId] = {int(f): f for f in FunctionId}
_ERRORS: dict[int, ErrorCode] = {int(e): e for e in ErrorCode}
# Header flags decode to one of eight values; building an IntFlag per message is slow.
_FLAG_VALUES: dict[int, Flags] = {v: Flags(v) for v in range(0, 0x10000, 0x2000)}
_DEFINED_FLAGS = 0xFFFF & ~RESERVED_FLAG_BITS


class _Malformed(Exception):
    """Raised inside the body parsers; `decode` turns it into SLPParseError with the header."""


# Decoding -----------------------------------------------------------------------------------------


def _string(data: bytes, pos: int, end: int) -> tuple[str, int]:
    if pos + 2 > end:
        raise _Malformed("string length truncated")
    (n,) = _U16.unpack_from(data, pos)
    pos += 2
    stop = pos + n
    if stop > end:
        raise _Malformed("string overruns the message")
    return data[pos:stop].decode("utf-8"), stop


def _error_code(data: bytes, pos: int, end: int) -> ErrorCode:
    if pos + 2 > end:
        raise _Malformed("error code truncated")
    (code,) = _U16.unpack_from(data, pos)
    error = _ERRORS.get(code)
    if error is None:
        raise _Malformed(f"unknown error code {code}")
    return error


def _auth_blocks(data: bytes, pos: int, end: int) -> tuple[tuple[AuthBlock, ...], int]:
    if pos >= end:
        raise _Malformed("auth block count truncated")
    count = data[pos]
    pos += 1
    if not count:
        return (), pos
    blocks = []
    for _ in range(count):
        if pos + 10 > end:
            raise _Malformed("auth block truncated")
        bsd, length, timestamp, spi_len = _AUTH.unpack_from(data, pos)
        spi_end = pos + 10 + spi_len
        block_end = pos + length  # §9.2: the length covers the whole block from the BSD on
        if length < 10 + spi_len or block_end > end:
            raise _Malformed("auth block length inconsistent")
        spi = data[pos + 10:spi_end].decode("utf-8")
        blocks.append(AuthBlock(bsd, timestamp, spi, data[spi_end:block_end]))
        pos = block_end
    return tuple(blocks), pos


def _url_entry(data: bytes, pos: int, end: int) -> tuple[UrlEntry, int]:
    if pos + 5 > end:
        raise _Malformed("URL entry truncated")
    reserved, lifetime, n = _URL.unpack_from(data, pos)
    pos += 5
    stop = pos + n
    if stop > end:
        raise _Malformed("URL overruns the message")
    url = data[pos:stop].decode("utf-8")
    auths, pos = _auth_blocks(data, stop, end)
    return UrlEntry(url, lifetime, auths, reserved), pos


def _d_srvrqst(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    prlist, pos = _string(data, pos, end)
    service_type, pos = _string(data, pos, end)
    scopes, pos = _string(data, pos, end)
    predicate, pos = _string(data, pos, end)
    spi, pos = _string(data, pos, end)
    return SrvRqst(h, prlist, service_type, scopes, predicate, spi), pos


def _d_srvrply(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    error = _error_code(data, pos, end)
    if pos + 4 > end:
        raise _Malformed("URL entry count truncated")
    (count,) = _U16.unpack_from(data, pos + 2)
    pos += 4
    urls = []
    for _ in range(count):
        entry, pos = _url_entry(data, pos, end)
        urls.append(entry)
    return SrvRply(h, error, tuple(urls)), pos


def _d_srvreg(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    entry, pos = _url_entry(data, pos, end)
    service_type, pos = _string(data, pos, end)
    scopes, pos = _string(data, pos, end)
    attrs, pos = _string(data, pos, end)
    auths, pos = _auth_blocks(data, pos, end)
    return SrvReg(h, entry, service_type, scopes, attrs, auths), pos


def _d_srvdereg(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    scopes, pos = _string(data, pos, end)
    entry, pos = _url_entry(data, pos, end)
    tags, pos = _string(data, pos, end)
    return SrvDeReg(h, scopes, entry, tags), pos


def _d_srvack(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    return SrvAck(h, _error_code(data, pos, end)), pos + 2


def _d_attrrqst(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    prlist, pos = _string(data, pos, end)
    url, pos = _string(data, pos, end)
    scopes, pos = _string(data, pos, end)
    tags, pos = _string(data, pos, end)
    spi, pos = _string(data, pos, end)
    return AttrRqst(h, prlist, url, scopes, tags, spi), pos


def _d_attrrply(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    error = _error_code(data, pos, end)
    attrs, pos = _string(data, pos + 2, end)
    auths, pos = _auth_blocks(data, pos, end)
    return AttrRply(h, error, attrs, auths), pos


def _d_daadvert(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    error = _error_code(data, pos, end)
    if pos + 6 > end:
        raise _Malformed("boot timestamp truncated")
    (boot,) = struct.unpack_from("!I", data, pos + 2)
    url, pos = _string(data, pos + 6, end)
    scopes, pos = _string(data, pos, end)
    attrs, pos = _string(data, pos, end)
    spis, pos = _string(data, pos, end)
    auths, pos = _auth_blocks(data, pos, end)
    return DAAdvert(h, error, boot, url, scopes, attrs, spis, auths), pos


def _d_srvtyperqst(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    prlist, pos = _string(data, pos, end)
    if pos + 2 > end:
        raise _Malformed("naming authority length truncated")
    authority: str | None
    if _U16.unpack_from(data, pos)[0] == _NA_ALL:
        authority, pos = None, pos + 2
    else:
        authority, pos = _string(data, pos, end)
    scopes, pos = _string(data, pos, end)
    return SrvTypeRqst(h, prlist, authority, scopes), pos


def _d_srvtyperply(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    error = _error_code(data, pos, end)
    types, pos = _string(data, pos + 2, end)
    return SrvTypeRply(h, error, types), pos


def _d_saadvert(h: Header, data: bytes, pos: int, end: int) -> tuple[Message, int]:
    url, pos = _string(data, pos, end)
    scopes, pos = _string(data, pos, end)
    attrs, pos = _string(data, pos, end)
    auths, pos = _auth_blocks(data, pos, end)
    return SAAdvert(h, url, scopes, attrs, auths), pos


_Decoder = Callable[[Header, bytes, int, int], tuple[Message, int]]
_DECODERS: dict[FunctionId, _Decoder] = {
    FunctionId.SrvRqst: _d_srvrqst,
    FunctionId.SrvRply: _d_srvrply,
    FunctionId.SrvReg: _d_srvreg,
    FunctionId.SrvDeReg: _d_srvdereg,
    FunctionId.SrvAck: _d_srvack,
    FunctionId.AttrRqst: _d_attrrqst,
    FunctionId.AttrRply: _d_attrrply,
    FunctionId.DAAdvert: _d_daadvert,
    FunctionId.SrvTypeRqst: _d_srvtyperqst,
    FunctionId.SrvTypeRply: _d_srvtyperply,
    FunctionId.SAAdvert: _d_saadvert,
}

# §7: what is left of a reply whose body stops after a non-zero error code.
_ERROR_ONLY: dict[FunctionId, Callable[[Header, ErrorCode], Message]] = {
    FunctionId.SrvRply: lambda h, e: SrvRply(h, e),
    FunctionId.AttrRply: lambda h, e: AttrRply(h, e),
    FunctionId.DAAdvert: lambda h, e: DAAdvert(h, e, 0, "", ""),
    FunctionId.SrvTypeRply: lambda h, e: SrvTypeRply(h, e),
}


def _extensions(data: bytes, offset: int, body_start: int,
                length: int) -> tuple[int, tuple[Extension, ...]]:
    """Walk the §9.1 chain from the header's offset; returns where the body ends and the chain."""
    if offset == 0:
        return length, ()
    if offset < body_start:
        raise _Malformed("extension offset points into the header")
    body_end = offset
    chain = []
    while offset:
        if offset + 5 > length:
            raise _Malformed("extension outside the message")
        ext_id, hi, lo = _EXT.unpack_from(data, offset)
        following = hi << 16 | lo
        if following and following < offset + 5:
            # Strictly forwards: a chain cannot point back into itself, so it cannot loop.
            raise _Malformed("extension offset points backwards")
        stop = following or length
        chain.append(Extension(ext_id, data[offset + 5:stop]))
        offset = following
    return body_end, tuple(chain)


def decode(data: bytes, understood_extensions: Collection[int] = ()) -> Message:
    """Decode one complete SLPv2 message (a datagram, or a frame cut with `peek_length`).

    Raises only `SLPParseError`. Its ``header`` is set once the header up to the language tag
    was read, so that a request can be answered with `error_reply`. Extensions in the mandatory
    range (0x4000-0x7FFF) whose IDs are not in ``understood_extensions`` raise
    OPTION_NOT_UNDERSTOOD (§9.1); other unknown extensions are returned in
    ``header.extensions`` for the caller to use or ignore.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    size = len(data)
    if size and data[0] != SLP_VERSION:
        # Without version 2 there is no known layout to read an XID or language tag from.
        raise SLPParseError(f"SLP version {data[0]} not supported", ErrorCode.VER_NOT_SUPPORTED)
    if size < HEADER_FIXED_LEN:
        raise SLPParseError("shorter than an SLPv2 header")
    _, fid, len_hi, len_lo, flags, ext_hi, ext_lo, xid, lang_len = _HEADER.unpack_from(data)
    function = _FUNCTIONS.get(fid)
    if function is None:
        raise SLPParseError(f"unknown function id {fid}", ErrorCode.MSG_NOT_SUPPORTED)
    body_start = HEADER_FIXED_LEN + lang_len
    if body_start > size:
        raise SLPParseError("language tag overruns the message")
    try:
        lang = data[HEADER_FIXED_LEN:body_start].decode("utf-8")
    except UnicodeDecodeError:
        raise SLPParseError("language tag is not UTF-8") from None
    header = Header(function, xid, lang, _FLAG_VALUES[flags & _DEFINED_FLAGS])
    try:
        length = len_hi << 8 | len_lo
        if length != size:
            raise _Malformed(f"length field {length} does not match the {size} bytes received")
        if flags & RESERVED_FLAG_BITS:
            raise _Malformed("reserved header flag bits set")  # §8, see the module docstring
        body_end, chain = _extensions(data, ext_hi << 16 | ext_lo, body_start, length)
        if chain:
            header = Header(function, xid, lang, header.flags, chain)
        try:
            msg, stop = _DECODERS[function](header, data, body_start, body_end)
            if stop != body_end:
                raise _Malformed("bytes left over after the message body")
        except (_Malformed, struct.error, ValueError):
            error_only = _ERROR_ONLY.get(function)
            if error_only is None or body_end - body_start < 2:
                raise
            error = _error_code(data, body_start, body_end)
            if error is ErrorCode.OK:
                raise
            msg = error_only(header, error)
        for ext in chain:
            if ext.mandatory and ext.ext_id not in understood_extensions:
                raise SLPParseError(f"mandatory extension 0x{ext.ext_id:04x} not understood",
                                    ErrorCode.OPTION_NOT_UNDERSTOOD, Header(function, xid, lang,
                                                                            header.flags))
        return msg
    except (_Malformed, struct.error, ValueError) as exc:
        # ValueError includes UnicodeDecodeError from the strings in the body.
        reason = str(exc) if isinstance(exc, _Malformed) else f"malformed body: {exc}"
        raise SLPParseError(reason, ErrorCode.PARSE_ERROR,
                            Header(function, xid, lang, header.flags)) from None


def srv_rqst_fields(data: bytes) -> tuple[int, str, str, str, str, str] | None:
    """``(xid, lang, prlist, service type, scope list, predicate)`` of a SrvRqst without
    extensions, reserved flags or an SPI, read straight from its bytes; None for anything else
    (another message, or anything `decode` would object to), which `decode` then reads."""
    size = len(data)
    if size < HEADER_FIXED_LEN:
        return None
    version, fid, len_hi, len_lo, flags, ext_hi, ext_lo, xid, lang_len = _HEADER.unpack_from(data)
    if (version != SLP_VERSION or fid != FunctionId.SrvRqst or len_hi << 8 | len_lo != size
            or flags & RESERVED_FLAG_BITS or ext_hi or ext_lo):
        return None
    # Four strings, then an empty SPI: each a 2-byte length and its bytes, ending with the data
    # (unrolled: the decoder of every plain SrvRqst, where a loop and its list cost a fifth).
    a = HEADER_FIXED_LEN + lang_len
    if a + 2 > size:
        return None
    b = a + 2 + (data[a] << 8 | data[a + 1])
    if b + 2 > size:
        return None
    c = b + 2 + (data[b] << 8 | data[b + 1])
    if c + 2 > size:
        return None
    d = c + 2 + (data[c] << 8 | data[c + 1])
    if d + 2 > size:
        return None
    e = d + 2 + (data[d] << 8 | data[d + 1])
    if e + 2 != size or data[e] or data[e + 1]:
        return None
    try:
        return (xid, data[HEADER_FIXED_LEN:a].decode(), data[a + 2:b].decode(),
                data[b + 2:c].decode(), data[c + 2:d].decode(), data[d + 2:e].decode())
    except UnicodeDecodeError:
        return None


def peek_length(buf: bytes) -> int | None:
    """The length of the message at the start of a TCP stream buffer, once enough is there.

    Returns None until the version, function id and length fields (5 bytes) have arrived.
    Raises SLPParseError for a header no message can have (not version 2, or a length shorter
    than the fixed header), after which the stream cannot be resynchronised.
    """
    if not buf:
        return None
    if buf[0] != SLP_VERSION:
        raise SLPParseError(f"SLP version {buf[0]} not supported", ErrorCode.VER_NOT_SUPPORTED)
    if len(buf) < 5:
        return None
    length = int.from_bytes(buf[2:5], "big")
    if length < HEADER_FIXED_LEN:
        raise SLPParseError(f"length field {length} shorter than an SLPv2 header")
    return length


# Encoding -----------------------------------------------------------------------------------------


def _e_string(s: str) -> bytes:
    b = s.encode("utf-8")
    if len(b) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return _U16.pack(len(b)) + b


def _e_auths(blocks: tuple[AuthBlock, ...]) -> bytes:
    if len(blocks) > 0xFF:
        raise ValueError("more than 255 authentication blocks")
    parts = [_U8.pack(len(blocks))]
    for a in blocks:
        spi = a.spi.encode("utf-8")
        length = 10 + len(spi) + len(a.structured_auth)
        if length > 0xFFFF:
            raise ValueError("authentication block longer than 65535 bytes")
        parts.append(_AUTH.pack(a.bsd, length, a.timestamp, len(spi)))
        parts.append(spi)
        parts.append(a.structured_auth)
    return b"".join(parts)


def _e_url_entry(e: UrlEntry) -> bytes:
    url = e.url.encode("utf-8")
    if len(url) > 0xFFFF:
        raise ValueError("URL longer than 65535 bytes")
    # The reserved byte is always sent as 0, whatever was received (see the module docstring).
    head = _URL.pack(0, e.lifetime, len(url))
    if not e.auths:
        return head + url + b"\x00"
    return head + url + _e_auths(e.auths)


def url_entry_tail(url: str) -> bytes:
    """A URL entry without authenticators, from its URL length on: what follows the reserved
    byte and the lifetime. A server encodes it once and sends it with the current lifetime."""
    return _e_url_entry(UrlEntry(url, 0))[3:]


def srv_rply_frame(xid: int, lang: bytes, entries: list[bytes], overflow: bool = False) -> bytes:
    """A successful SrvRply carrying already encoded URL `entries` (reserved byte, lifetime and
    `url_entry_tail` each), with no extensions: `encode` without building the messages."""
    length = HEADER_FIXED_LEN + len(lang) + 4 + sum(map(len, entries))
    if length > _MAX_LEN or len(entries) > 0xFFFF:
        raise ValueError("SrvRply longer than its length fields allow")
    return b"".join((_HEADER.pack(SLP_VERSION, FunctionId.SrvRply, length >> 8, length & 0xFF,
                                  Flags.OVERFLOW if overflow else 0, 0, 0, xid, len(lang)),
                     lang, _U16x2.pack(0, len(entries)), *entries))


def _e_error(error: ErrorCode) -> bytes:
    return _U16.pack(error)


def _e_srvrqst(m: SrvRqst) -> bytes:
    return b"".join((_e_string(m.prlist), _e_string(m.service_type), _e_string(m.scope_list),
                     _e_string(m.predicate), _e_string(m.spi)))


def _e_srvrply(m: SrvRply) -> bytes:
    if len(m.urls) > 0xFFFF:
        raise ValueError("more than 65535 URL entries")
    return b"".join([_U16x2.pack(m.error, len(m.urls)), *map(_e_url_entry, m.urls)])


def _e_srvreg(m: SrvReg) -> bytes:
    return b"".join((_e_url_entry(m.url_entry), _e_string(m.service_type), _e_string(m.scope_list),
                     _e_string(m.attr_list), _e_auths(m.attr_auths)))


def _e_srvdereg(m: SrvDeReg) -> bytes:
    return _e_string(m.scope_list) + _e_url_entry(m.url_entry) + _e_string(m.tag_list)


def _e_srvack(m: SrvAck) -> bytes:
    return _e_error(m.error)


def _e_attrrqst(m: AttrRqst) -> bytes:
    return b"".join((_e_string(m.prlist), _e_string(m.url), _e_string(m.scope_list),
                     _e_string(m.tag_list), _e_string(m.spi)))


def _e_attrrply(m: AttrRply) -> bytes:
    return _e_error(m.error) + _e_string(m.attr_list) + _e_auths(m.attr_auths)


def _e_daadvert(m: DAAdvert) -> bytes:
    return b"".join((_U16_U32.pack(m.error, m.boot_timestamp), _e_string(m.url),
                     _e_string(m.scope_list), _e_string(m.attr_list), _e_string(m.spi_list),
                     _e_auths(m.auths)))


def _e_srvtyperqst(m: SrvTypeRqst) -> bytes:
    if m.naming_authority is None:
        authority = _U16.pack(_NA_ALL)
    else:
        authority = _e_string(m.naming_authority)
        if len(authority) - 2 == _NA_ALL:
            raise ValueError("a naming authority of 65535 bytes reads as 'all' (§10.1)")
    return _e_string(m.prlist) + authority + _e_string(m.scope_list)


def _e_srvtyperply(m: SrvTypeRply) -> bytes:
    return _e_error(m.error) + _e_string(m.srvtype_list)


def _e_saadvert(m: SAAdvert) -> bytes:
    return b"".join((_e_string(m.url), _e_string(m.scope_list), _e_string(m.attr_list),
                     _e_auths(m.auths)))


_ENCODERS: dict[type, tuple[FunctionId, Callable[..., bytes]]] = {
    SrvRqst: (FunctionId.SrvRqst, _e_srvrqst),
    SrvRply: (FunctionId.SrvRply, _e_srvrply),
    SrvReg: (FunctionId.SrvReg, _e_srvreg),
    SrvDeReg: (FunctionId.SrvDeReg, _e_srvdereg),
    SrvAck: (FunctionId.SrvAck, _e_srvack),
    AttrRqst: (FunctionId.AttrRqst, _e_attrrqst),
    AttrRply: (FunctionId.AttrRply, _e_attrrply),
    DAAdvert: (FunctionId.DAAdvert, _e_daadvert),
    SrvTypeRqst: (FunctionId.SrvTypeRqst, _e_srvtyperqst),
    SrvTypeRply: (FunctionId.SrvTypeRply, _e_srvtyperply),
    SAAdvert: (FunctionId.SAAdvert, _e_saadvert),
}


def _frame(header: Header, function: FunctionId, body: bytes,
           flags: int | None = None, extensions: tuple[Extension, ...] | None = None) -> bytes:
    """Header + body + extension chain, with the length and offsets filled in."""
    if header.function_id is not function:
        raise ValueError(f"header says {header.function_id.name}, message is {function.name}")
    if flags is None:
        flags = int(header.flags)
    if flags & RESERVED_FLAG_BITS:
        raise ValueError("reserved header flag bits must not be sent (§8)")
    if not 0 <= header.xid <= 0xFFFF:
        raise ValueError("XID out of range")
    lang = header.lang.encode("utf-8")
    if len(lang) > 0xFFFF:
        raise ValueError("language tag longer than 65535 bytes")
    exts = header.extensions if extensions is None else extensions
    offset = HEADER_FIXED_LEN + len(lang) + len(body)
    length = offset + sum(5 + len(e.data) for e in exts)
    if length > _MAX_LEN:
        raise ValueError("message longer than the 3-byte length field allows")
    parts = [_HEADER.pack(SLP_VERSION, function, length >> 8, length & 0xFF, flags,
                          offset >> 16 if exts else 0, offset & 0xFFFF if exts else 0,
                          header.xid, len(lang)), lang, body]
    for i, ext in enumerate(exts):
        following = offset + 5 + len(ext.data) if i + 1 < len(exts) else 0
        parts.append(_EXT.pack(ext.ext_id, following >> 16, following & 0xFFFF))
        parts.append(ext.data)
        offset = following
    return b"".join(parts)


def encode(msg: Message) -> bytes:
    """Encode a message. Raises ValueError for values the wire cannot carry (our own misuse).

    ``header.function_id`` must match the message type; lengths, the extension offsets and the
    version are computed here. URL entries are sent with their reserved byte 0.
    """
    function, body = _ENCODERS[type(msg)]
    try:
        return _frame(msg.header, function, body(msg))
    except struct.error as exc:  # a number too large for its field
        raise ValueError(str(exc)) from None


def error_reply(header: Header, error: ErrorCode) -> bytes | None:
    """The reply carrying ``error`` to the request whose header is ``header``, or None.

    None when the message is not a request (replies and adverts get no answer) and when it was
    multicast: §7, "Errors are only returned for unicast requests". The reply has the request's
    XID and language tag (§8), no flags and no extensions.
    """
    reply = REPLY_FOR.get(header.function_id)
    if reply is None or header.request_mcast:
        return None
    h = Header(reply, header.xid, header.lang)
    msg: Message
    if reply is FunctionId.SrvRply:
        msg = SrvRply(h, error)
    elif reply is FunctionId.SrvAck:
        msg = SrvAck(h, error)
    elif reply is FunctionId.AttrRply:
        msg = AttrRply(h, error)
    else:
        msg = SrvTypeRply(h, error)
    return encode(msg)


# Truncation to a datagram (§6.1, §8.2) --------------------------------------------------------------

# Cut points in a list string, as byte offsets of its top-level commas. Attribute values keep
# their commas inside "(tag=v1,v2)"; parentheses inside values are escaped (§5), so a
# parenthesised group never contains another.
_ATTR_CUTS = re.compile(rb"\([^)]*\)|,")
_PLAIN_CUTS = re.compile(rb",")


def _list_prefix(value: str, budget: int, cuts: re.Pattern[bytes]) -> str:
    """The longest prefix of a comma-separated list, whole items only, in ``budget`` bytes."""
    raw = value.encode("utf-8")
    commas = [m.start() for m in cuts.finditer(raw) if m.group() == b","]
    i = bisect.bisect_right(commas, budget)
    return raw[:commas[i - 1]].decode("utf-8") if i else ""


def _fits_u16_lists(msg: SrvRply | AttrRply | SrvTypeRply) -> bool:
    if isinstance(msg, SrvRply):
        return len(msg.urls) <= 0xFFFF and all(len(u.url) <= 0x3FFF for u in msg.urls)
    text = msg.attr_list if isinstance(msg, AttrRply) else msg.srvtype_list
    return len(text) <= 0x3FFF or len(text.encode("utf-8")) <= 0xFFFF


def encode_within(msg: SrvRply | AttrRply | SrvTypeRply, limit: int = DEFAULT_UDP_LIMIT) -> bytes:
    """Encode a reply for a datagram of at most ``limit`` bytes, truncating it if it is larger.

    A reply that fits is returned as `encode` would. Otherwise OVERFLOW is set (§6.1), so the
    client can repeat the request over TCP, and the reply keeps what fits: whole URL entries of a
    SrvRply, each with its authenticators (§8.2: "a URL Entry MUST NOT be included unless it fits
    entirely"); the whole leading items of an AttrRply's attribute list or a SrvTypeRply's
    service-type list. A truncated AttrRply drops its attribute authenticators, which sign the
    full list and would not verify against a part. Extensions are kept if there is room for them
    with an empty list, dropped otherwise. If not even the empty reply fits, it is returned as it
    is, with OVERFLOW: nothing smaller exists to send.
    """
    if _fits_u16_lists(msg):
        full = encode(msg)
        if len(full) <= limit:
            return full
    # A list longer than its 2-byte length field cannot be encoded whole: it is cut like one that
    # is merely longer than the datagram, never raised as our own misuse.
    function, _ = _ENCODERS[type(msg)]
    flags = int(msg.header.flags | Flags.OVERFLOW)
    exts = msg.header.extensions
    fixed = HEADER_FIXED_LEN + len(msg.header.lang.encode("utf-8"))
    ext_len = sum(5 + len(e.data) for e in exts)
    base = 5 if isinstance(msg, AttrRply) else 4  # the reply's fields with an empty list
    if fixed + ext_len + base > limit:
        exts = ()
    else:
        fixed += ext_len
    budget = min(limit - fixed - base, 0xFFFF)
    body: bytes
    if isinstance(msg, SrvRply):
        entries: list[bytes] = []
        for url in msg.urls:
            if len(entries) == 0xFFFF or len(url.url) > budget:
                break
            entry = _e_url_entry(url)
            if len(entry) > budget:
                break
            budget -= len(entry)
            entries.append(entry)
        body = b"".join([_U16x2.pack(msg.error, len(entries)), *entries])
    elif isinstance(msg, AttrRply):
        attrs = msg.attr_list
        if len(attrs.encode("utf-8")) > budget:
            attrs = _list_prefix(attrs, budget, _ATTR_CUTS)
        body = _e_attrrply(AttrRply(msg.header, msg.error, attrs))
    else:
        types = _list_prefix(msg.srvtype_list, budget, _PLAIN_CUTS)
        body = _e_srvtyperply(SrvTypeRply(msg.header, msg.error, types))
    return _frame(msg.header, function, body, flags, exts)
