"""SDP session descriptions (RFC 8866) as values: the model, the parser and the serialiser.

A `SessionDescription` is a frozen value holding every line of an SDP body: the fixed fields the
RFC names (``o=`` as `Origin`, ``c=`` as `Connection`, ``b=`` as `Bandwidth`, ``t=``/``r=`` as
`Timing`), the attribute lines as ordered `Attribute` ``(name, value | None)`` tuples, and the media
descriptions (`MediaDescription`). Third-party call control must not break what it does not
understand, so nothing is normalised away: unknown attributes, unknown bandwidth types, unknown media
and protocols and the order of attribute lines all survive ``parse`` -> ``serialise``. Lines with a
type letter RFC 8866 does not define (``y=``/``f=`` from some cameras) are kept, in order, at the end
of the section they appeared in.

`parse` is strict about structure (RFC 8866 §5: line order, required lines, one value per line, numbers
that are numbers) and raises `SDPParseError` naming the line and what is wrong. It is tolerant where
deployed phones are sloppy, and only there:

- lines may end in LF alone, or CRLF (RFC 8866 §5 asks for CRLF, and also says to accept LF);
- trailing spaces and tabs on a line are ignored, and empty lines are skipped (bodies often end with
  an extra CRLF);
- white space after ``=`` and between the fields of ``o=``, ``c=``, ``m=``, ``b=``, ``t=`` is allowed
  (the session mobility draft's own examples write ``c= IN IP4 host``);
- an empty ``s=`` is accepted (RFC 3264 §5 recommends a single space, which the trailing-space rule
  and many stacks turn into nothing); it is written back as ``s= ``.

Also here: the RFC 3551 static payload types, the direction attributes with the RFC 3264 default
(``sendrecv``) and ``replace``-style helpers that return changed copies.

Not here: what an offer or an answer must contain (`sipmob.sdp.offer_answer`), combining several
devices' descriptions into one (`sipmob.sdp.stitch`).
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import re
from collections.abc import Iterable, Iterator
from typing import NamedTuple


class SDPParseError(ValueError):
    """A session description that is not valid SDP; ``reason`` says what and where."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        self.reason = reason
        self.line = line
        super().__init__(reason if line is None else f"line {line}: {reason}")


class Direction(enum.StrEnum):
    """RFC 8866 §6.7 / RFC 3264 §5.1: the direction attributes, always from the describer's side."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    def reversed(self) -> Direction:
        """The same stream described from the other end (sendonly <-> recvonly)."""
        return Direction.of(sends=self.receives, receives=self.sends)

    def intersect(self, other: Direction) -> Direction:
        return Direction.of(sends=self.sends and other.sends, receives=self.receives and other.receives)

    @staticmethod
    def of(*, sends: bool, receives: bool) -> Direction:
        if sends and receives:
            return Direction.SENDRECV
        if sends:
            return Direction.SENDONLY
        if receives:
            return Direction.RECVONLY
        return Direction.INACTIVE


DEFAULT_DIRECTION = Direction.SENDRECV  # RFC 8866 §6.7.3: sendrecv when none is given
DIRECTION_NAMES = frozenset(d.value for d in Direction)


class Attribute(NamedTuple):
    """One ``a=`` line: ``a=name`` is ``(name, None)``, ``a=name:value`` is ``(name, value)``."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclasses.dataclass(frozen=True, slots=True)
class Origin:
    """``o=``: who made the session and which version of its description this is (RFC 8866 §5.2)."""

    username: str
    sess_id: int
    sess_version: int
    nettype: str
    addrtype: str
    address: str

    def __str__(self) -> str:
        return (f"{self.username} {self.sess_id} {self.sess_version} "
                f"{self.nettype} {self.addrtype} {self.address}")


@dataclasses.dataclass(frozen=True, slots=True)
class Connection:
    """``c=``: where media goes (RFC 8866 §5.7). ``address`` may carry ``/ttl/count`` for multicast."""

    nettype: str
    addrtype: str
    address: str

    @staticmethod
    def for_address(address: str) -> Connection:
        """``IN IP6`` for an address with a colon, else ``IN IP4``."""
        return Connection("IN", "IP6" if ":" in address else "IP4", address)

    @property
    def host(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def is_null(self) -> bool:
        """0.0.0.0 (or ::): the RFC 2543 way of putting a stream on hold (RFC 3264 §8.4)."""
        return self.host in ("0.0.0.0", "::")

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclasses.dataclass(frozen=True, slots=True)
class Bandwidth:
    """``b=<bwtype>:<bandwidth>``; unknown types (RFC 8866 §5.8) are kept as they are."""

    bwtype: str
    bandwidth: int

    def __str__(self) -> str:
        return f"{self.bwtype}:{self.bandwidth}"


@dataclasses.dataclass(frozen=True, slots=True)
class Timing:
    """One time description: ``t=`` and the ``r=`` lines after it, kept as text (RFC 8866 §5.9-5.10)."""

    start: int = 0
    stop: int = 0
    repeats: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap`` (RFC 8866 §6.6), or the RFC 3551 static assignment for a payload type."""

    encoding: str
    clock_rate: int
    channels: int = 1

    def __str__(self) -> str:
        text = f"{self.encoding}/{self.clock_rate}"
        return text if self.channels == 1 else f"{text}/{self.channels}"


@dataclasses.dataclass(frozen=True, slots=True)
class Rtcp:
    """``a=rtcp`` (RFC 3605): where RTCP goes when it is not port + 1 at the media address."""

    port: int
    connection: Connection | None = None


# RFC 3551 Tables 4 and 5: payload types that need no rtpmap.
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap("PCMU", 8000), 3: RtpMap("GSM", 8000), 4: RtpMap("G723", 8000),
    5: RtpMap("DVI4", 8000), 6: RtpMap("DVI4", 16000), 7: RtpMap("LPC", 8000),
    8: RtpMap("PCMA", 8000), 9: RtpMap("G722", 8000), 10: RtpMap("L16", 44100, 2),
    11: RtpMap("L16", 44100), 12: RtpMap("QCELP", 8000), 13: RtpMap("CN", 8000),
    14: RtpMap("MPA", 90000), 15: RtpMap("G728", 8000), 16: RtpMap("DVI4", 11025),
    17: RtpMap("DVI4", 22050), 18: RtpMap("G729", 8000),
    25: RtpMap("CelB", 90000), 26: RtpMap("JPEG", 90000), 28: RtpMap("nv", 90000),
    31: RtpMap("H261", 90000), 32: RtpMap("MPV", 90000), 33: RtpMap("MP2T", 90000),
    34: RtpMap("H263", 90000),
}


def _attr_value(attributes: tuple[Attribute, ...], name: str) -> str | None:
    for attr in attributes:
        if attr.name == name:
            return attr.value
    return None


def _direction_of(attributes: tuple[Attribute, ...]) -> Direction | None:
    for attr in attributes:
        if attr.name in DIRECTION_NAMES:
            return Direction(attr.name)
    return None


def _without_direction(attributes: Iterable[Attribute]) -> tuple[Attribute, ...]:
    return tuple(a for a in attributes if a.name not in DIRECTION_NAMES)


def _set_direction(attributes: tuple[Attribute, ...], direction: Direction | None) -> tuple[Attribute, ...]:
    """Replace the direction attribute in place (keeping line order), or append one."""
    if direction is None:
        return _without_direction(attributes)
    out: list[Attribute] = []
    placed = False
    for attr in attributes:
        if attr.name in DIRECTION_NAMES:
            if not placed:
                out.append(Attribute(direction.value))
                placed = True
        else:
            out.append(attr)
    if not placed:
        out.append(Attribute(direction.value))
    return tuple(out)


@dataclasses.dataclass(frozen=True, slots=True)
class MediaDescription:
    """One ``m=`` section and the lines under it (RFC 8866 §5.14)."""

    media: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None
    information: str | None = None
    connection: Connection | None = None
    bandwidths: tuple[Bandwidth, ...] = ()
    key: str | None = None
    attributes: tuple[Attribute, ...] = ()
    unknown_lines: tuple[tuple[str, str], ...] = ()

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto

    @property
    def payload_types(self) -> tuple[int, ...]:
        return tuple(int(f) for f in self.formats) if self.is_rtp else ()

    @property
    def rejected(self) -> bool:
        """Port 0: a rejected or disabled stream (RFC 3264 §6, §8.2)."""
        return self.port == 0

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=name`` (None if absent or valueless; see `has_attribute`)."""
        return _attr_value(self.attributes, name)

    def attributes_named(self, name: str) -> tuple[str | None, ...]:
        return tuple(a.value for a in self.attributes if a.name == name)

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        """The encoding of a payload type: its ``a=rtpmap``, else the RFC 3551 static one."""
        prefix = f"{payload_type} "
        for value in self.attributes_named("rtpmap"):
            if value is not None and value.startswith(prefix):
                return _parse_rtpmap_encoding(value[len(prefix):].strip())
        return STATIC_PAYLOAD_TYPES.get(payload_type)

    def fmtp(self, payload_type: int) -> str | None:
        prefix = f"{payload_type} "
        for value in self.attributes_named("fmtp"):
            if value is not None and value.startswith(prefix):
                return value[len(prefix):].strip()
        return None

    @property
    def direction_attribute(self) -> Direction | None:
        """The media-level direction attribute, if any (the session level may still set one)."""
        return _direction_of(self.attributes)

    @property
    def direction(self) -> Direction:
        """Media-level direction with the RFC default; `SessionDescription.direction` also looks up."""
        return self.direction_attribute or DEFAULT_DIRECTION

    @property
    def rtcp(self) -> Rtcp | None:
        value = self.attribute("rtcp")
        return None if value is None else _parse_rtcp(value)

    @property
    def ptime(self) -> float | None:
        value = self.attribute("ptime")
        return None if value is None else float(value)

    @property
    def mid(self) -> str | None:
        return self.attribute("mid")

    def with_port(self, port: int) -> MediaDescription:
        return dataclasses.replace(self, port=port)

    def with_connection(self, address: str | Connection | None) -> MediaDescription:
        conn = Connection.for_address(address) if isinstance(address, str) else address
        return dataclasses.replace(self, connection=conn)

    def with_direction(self, direction: Direction | None) -> MediaDescription:
        """Set the media-level direction attribute (None removes it, leaving the default)."""
        return dataclasses.replace(self, attributes=_set_direction(self.attributes, direction))

    def with_attributes(self, attributes: Iterable[Attribute]) -> MediaDescription:
        return dataclasses.replace(self, attributes=tuple(attributes))

    def lines(self) -> Iterator[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        yield " ".join(["m=" + self.media, port, self.proto, *self.formats])
        if self.information is not None:
            yield "i=" + self.information
        if self.connection is not None:
            yield f"c={self.connection}"
        for bw in self.bandwidths:
            yield f"b={bw}"
        if self.key is not None:
            yield "k=" + self.key
        for attr in self.attributes:
            yield f"a={attr}"
        for letter, value in self.unknown_lines:
            yield f"{letter}={value}"


@dataclasses.dataclass(frozen=True, slots=True)
class SessionDescription:
    """A whole SDP body (RFC 8866 §5), session-level fields first, then the media descriptions."""

    origin: Origin
    session_name: str = " "
    timings: tuple[Timing, ...] = (Timing(),)
    connection: Connection | None = None
    media: tuple[MediaDescription, ...] = ()
    attributes: tuple[Attribute, ...] = ()
    version: int = 0
    information: str | None = None
    uri: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    bandwidths: tuple[Bandwidth, ...] = ()
    zone_adjustments: str | None = None
    key: str | None = None
    unknown_lines: tuple[tuple[str, str], ...] = ()

    def attribute(self, name: str) -> str | None:
        return _attr_value(self.attributes, name)

    def has_attribute(self, name: str) -> bool:
        return any(a.name == name for a in self.attributes)

    @property
    def direction_attribute(self) -> Direction | None:
        return _direction_of(self.attributes)

    def direction(self, index: int) -> Direction:
        """The effective direction of m-line ``index``: media level, else session level, else sendrecv."""
        return (self.media[index].direction_attribute or self.direction_attribute
                or DEFAULT_DIRECTION)

    def connection_for(self, index: int) -> Connection | None:
        """The effective ``c=`` of m-line ``index`` (media level overrides session level)."""
        return self.media[index].connection or self.connection

    def bump_version(self) -> SessionDescription:
        """RFC 3264 §8: a changed description carries the previous ``o=`` version plus one."""
        origin = dataclasses.replace(self.origin, sess_version=self.origin.sess_version + 1)
        return dataclasses.replace(self, origin=origin)

    def with_origin(self, origin: Origin) -> SessionDescription:
        return dataclasses.replace(self, origin=origin)

    def with_connection(self, address: str | Connection) -> SessionDescription:
        """Send every stream to ``address``: session-level ``c=``, media-level ones removed."""
        conn = Connection.for_address(address) if isinstance(address, str) else address
        media = tuple(m.with_connection(None) for m in self.media)
        return dataclasses.replace(self, connection=conn, media=media)

    def with_media(self, index: int, media: MediaDescription) -> SessionDescription:
        return dataclasses.replace(self, media=(*self.media[:index], media, *self.media[index + 1:]))

    def with_port(self, index: int, port: int) -> SessionDescription:
        return self.with_media(index, self.media[index].with_port(port))

    def with_direction(self, direction: Direction, index: int | None = None) -> SessionDescription:
        """Set the direction of one m-line, or of all when ``index`` is None.

        A session-level direction attribute is first copied down to every m-line that has none,
        so that changing one stream does not change the others.
        """
        sdp = self.materialise_directions()
        if index is None:
            return dataclasses.replace(sdp, media=tuple(m.with_direction(direction) for m in sdp.media))
        return sdp.with_media(index, sdp.media[index].with_direction(direction))

    def materialise_directions(self) -> SessionDescription:
        """The same session with any session-level direction moved onto each m-line without one."""
        session_dir = self.direction_attribute
        if session_dir is None:
            return self
        media = tuple(m if m.direction_attribute is not None else m.with_direction(session_dir)
                      for m in self.media)
        return dataclasses.replace(self, attributes=_without_direction(self.attributes), media=media)

    def lines(self) -> Iterator[str]:
        yield f"v={self.version}"
        yield f"o={self.origin}"
        yield "s=" + (self.session_name or " ")
        if self.information is not None:
            yield "i=" + self.information
        if self.uri is not None:
            yield "u=" + self.uri
        for email in self.emails:
            yield "e=" + email
        for phone in self.phones:
            yield "p=" + phone
        if self.connection is not None:
            yield f"c={self.connection}"
        for bw in self.bandwidths:
            yield f"b={bw}"
        for timing in self.timings:
            yield f"t={timing.start} {timing.stop}"
            for repeat in timing.repeats:
                yield "r=" + repeat
        if self.zone_adjustments is not None:
            yield "z=" + self.zone_adjustments
        if self.key is not None:
            yield "k=" + self.key
        for attr in self.attributes:
            yield f"a={attr}"
        for letter, value in self.unknown_lines:
            yield f"{letter}={value}"
        for media in self.media:
            yield from media.lines()

    def serialise(self) -> str:
        """The description as SDP text, every line ended by CRLF (RFC 8866 §5)."""
        return "".join(line + "\r\n" for line in self.lines())

    def to_bytes(self) -> bytes:
        return self.serialise().encode("utf-8")

    def __str__(self) -> str:
        return self.serialise()


# --- parsing ---------------------------------------------------------------------------------------

_KNOWN_TYPES = frozenset("vosiuepcbtrzkam")
# RFC 8866 §5: the order of lines within the session section and within a media section.
_SESSION_RANK = {"v": 0, "o": 1, "s": 2, "i": 3, "u": 4, "e": 5, "p": 6, "c": 7, "b": 8,
                 "t": 9, "r": 9, "z": 10, "k": 11, "a": 12}
_MEDIA_RANK = {"m": 0, "i": 1, "c": 2, "b": 3, "k": 4, "a": 5}
_REPEATABLE = frozenset("epbtra")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+\Z")
_HOSTNAME = re.compile(r"[A-Za-z0-9_\-.]+\Z")
_LINE_TYPE_NAMES = {"v": "version", "o": "origin", "s": "session name", "t": "timing"}


def _int(text: str, what: str, lo: int = 0, hi: int | None = None) -> int:
    if not text.isascii() or not text.isdigit():
        raise SDPParseError(f"{what} {text!r} is not a number")
    value = int(text)
    if value < lo or (hi is not None and value > hi):
        raise SDPParseError(f"{what} {value} is out of range")
    return value


def _token(text: str, what: str) -> str:
    if not _TOKEN.match(text):
        raise SDPParseError(f"{what} {text!r} is not a valid token")
    return text


def _parse_origin(value: str) -> Origin:
    fields = value.split()
    if len(fields) != 6:
        raise SDPParseError(f"o= needs 6 fields (username sess-id sess-version nettype addrtype "
                            f"address), got {len(fields)}")
    username, sess_id, sess_version, nettype, addrtype, address = fields
    # RFC 3264 §5: both numbers fit a signed 64-bit integer.
    return Origin(username, _int(sess_id, "o= sess-id", hi=2**63 - 1),
                  _int(sess_version, "o= sess-version", hi=2**63 - 1),
                  _token(nettype, "o= nettype"), _token(addrtype, "o= addrtype"), address)


def _check_address(addrtype: str, address: str) -> None:
    host = address.split("/", 1)[0]
    try:
        if addrtype == "IP4" and re.fullmatch(r"[0-9.]+", host):
            ipaddress.IPv4Address(host)
            return
        if addrtype == "IP6" and ":" in host:
            ipaddress.IPv6Address(host)
            return
    except ValueError:
        raise SDPParseError(f"c= {host!r} is not a valid {addrtype} address") from None
    if not _HOSTNAME.match(host):
        raise SDPParseError(f"c= {host!r} is not an address or host name")
    for part in address.split("/")[1:]:
        _int(part, "c= multicast ttl/count")


def _parse_connection(value: str) -> Connection:
    fields = value.split()
    if len(fields) != 3:
        raise SDPParseError(f"c= needs 3 fields (nettype addrtype address), got {len(fields)}")
    nettype, addrtype, address = fields
    _token(nettype, "c= nettype")
    _token(addrtype, "c= addrtype")
    _check_address(addrtype, address)
    return Connection(nettype, addrtype, address)


def _parse_bandwidth(value: str) -> Bandwidth:
    bwtype, sep, amount = value.strip().partition(":")
    if not sep:
        raise SDPParseError(f"b= {value!r} is not <bwtype>:<bandwidth>")
    return Bandwidth(_token(bwtype, "b= bwtype"), _int(amount, "b= bandwidth"))


def _parse_timing(value: str) -> Timing:
    fields = value.split()
    if len(fields) != 2:
        raise SDPParseError(f"t= needs 2 fields (start stop), got {len(fields)}")
    return Timing(_int(fields[0], "t= start"), _int(fields[1], "t= stop"))


def _parse_media_line(value: str) -> MediaDescription:
    fields = value.split()
    if len(fields) < 4:
        raise SDPParseError("m= needs <media> <port> <proto> and at least one format")
    media, port_text, proto, *formats = fields
    _token(media, "m= media")
    port_part, slash, count_part = port_text.partition("/")
    port = _int(port_part, "m= port", hi=65535)
    count = _int(count_part, "m= port count", lo=1) if slash else None
    if not all(_TOKEN.match(p) for p in proto.split("/")):
        raise SDPParseError(f"m= proto {proto!r} is not valid")
    for fmt in formats:
        if "RTP/" in proto:
            _int(fmt, "m= RTP payload type", hi=127)
        else:
            _token(fmt, "m= format")
    return MediaDescription(media, port, proto, tuple(formats), port_count=count)


def _parse_rtpmap_encoding(text: str) -> RtpMap:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not parts[0]:
        raise SDPParseError(f"rtpmap {text!r} is not <encoding>/<clock rate>[/<channels>]")
    channels = _int(parts[2], "rtpmap channels", lo=1) if len(parts) == 3 else 1
    return RtpMap(parts[0], _int(parts[1], "rtpmap clock rate", lo=1), channels)


def _parse_rtcp(value: str) -> Rtcp:
    fields = value.split()
    port = _int(fields[0] if fields else "", "rtcp port", hi=65535)
    if len(fields) == 1:
        return Rtcp(port)
    if len(fields) != 4:
        raise SDPParseError(f"rtcp {value!r} is not <port> [<nettype> <addrtype> <address>]")
    return Rtcp(port, _parse_connection(" ".join(fields[1:])))


def _parse_attribute(value: str) -> Attribute:
    name, sep, rest = value.partition(":")
    _token(name, "attribute name")
    attr = Attribute(name, rest if sep else None)
    # The attributes the library interprets are checked here, so that their helpers cannot fail later.
    if name in DIRECTION_NAMES and sep:
        raise SDPParseError(f"a={name} takes no value")
    if name in ("rtpmap", "fmtp"):
        pt, _, params = rest.strip().partition(" ")
        _int(pt, f"{name} payload type", hi=127)
        if name == "rtpmap":
            _parse_rtpmap_encoding(params.strip())
        elif not params.strip():
            raise SDPParseError(f"a=fmtp:{pt} has no parameters")
    elif name == "rtcp":
        _parse_rtcp(rest)
    elif name == "ptime":
        try:
            if float(rest) <= 0:
                raise ValueError
        except ValueError:
            raise SDPParseError(f"ptime {rest!r} is not a positive number") from None
    return attr


def _split_lines(text: str | bytes) -> Iterator[tuple[int, str, str]]:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SDPParseError(f"not UTF-8 text (byte {exc.start})") from None
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip(" \t\r")
        if not line:
            continue
        if "\r" in line or "\x00" in line:
            raise SDPParseError("stray CR or NUL inside the line", number)
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SDPParseError(f"expected <type>=<value>, got {line[:40]!r}", number)
        yield number, line[0], line[2:]


@dataclasses.dataclass(slots=True)
class _Section:
    """The lines of one section (session or media) while it is being read."""

    single: dict[str, str] = dataclasses.field(default_factory=dict)
    connection: Connection | None = None
    bandwidths: list[Bandwidth] = dataclasses.field(default_factory=list)
    attributes: list[Attribute] = dataclasses.field(default_factory=list)
    unknown: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    lists: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {"e": [], "p": []})
    media_line: MediaDescription | None = None
    rank: int = -1
    seen: set[str] = dataclasses.field(default_factory=set)

    def take(self, letter: str, value: str, timings: list[Timing]) -> None:
        table = _SESSION_RANK if self.media_line is None else _MEDIA_RANK
        if letter not in table:
            where = "the session section" if self.media_line is None else "a media description"
            raise SDPParseError(f"{letter}= is not allowed in {where}")
        if table[letter] < self.rank:
            raise SDPParseError(f"{letter}= is out of order (RFC 8866 §5)")
        if letter in self.seen and letter not in _REPEATABLE:
            raise SDPParseError(f"more than one {letter}= line in this section")
        if letter == "r" and not timings:
            raise SDPParseError("r= without a preceding t=")
        self.rank = table[letter]
        self.seen.add(letter)
        if letter == "a":
            self.attributes.append(_parse_attribute(value))
        elif letter == "b":
            self.bandwidths.append(_parse_bandwidth(value))
        elif letter == "c":
            self.connection = _parse_connection(value)
        elif letter == "v":
            if value.strip() != "0":
                raise SDPParseError(f"unsupported SDP version {value!r} (only v=0 exists)")
            self.single["v"] = "0"
        elif letter == "o":
            self.single["o"] = value
            _parse_origin(value)
        elif letter == "s":
            self.single["s"] = value.strip()
        elif letter in ("e", "p"):
            self.lists[letter].append(value)
        elif letter == "t":
            timings.append(_parse_timing(value))
        elif letter == "r":
            if not value.split():
                raise SDPParseError("empty r= line")
            timings[-1] = dataclasses.replace(timings[-1], repeats=(*timings[-1].repeats, value))
        else:  # i u z k: kept as text
            self.single[letter] = value

    def build_media(self) -> MediaDescription:
        assert self.media_line is not None
        return dataclasses.replace(
            self.media_line, information=self.single.get("i"), connection=self.connection,
            bandwidths=tuple(self.bandwidths), key=self.single.get("k"),
            attributes=tuple(self.attributes), unknown_lines=tuple(self.unknown))


def parse(text: str | bytes) -> SessionDescription:
    """Parse one SDP body; raise `SDPParseError` (with the line number) for anything malformed."""
    session = _Section()
    timings: list[Timing] = []
    sections: list[_Section] = []
    first = True
    for number, letter, value in _split_lines(text):
        try:
            if first and letter != "v":
                raise SDPParseError("the first line must be v=")
            first = False
            current = sections[-1] if sections else session
            if letter not in _KNOWN_TYPES:
                current.unknown.append((letter, value))  # not ours to understand: keep it
            elif letter == "m":
                if not timings:
                    raise SDPParseError("m= before the required t= line")
                sections.append(_Section(media_line=_parse_media_line(value), rank=0, seen={"m"}))
            else:
                current.take(letter, value, timings)
        except SDPParseError as exc:
            raise SDPParseError(exc.reason, exc.line or number) from None
    for letter in ("v", "o", "s"):
        if letter not in session.single:
            raise SDPParseError(f"missing the required {letter}= ({_LINE_TYPE_NAMES[letter]}) line")
    if not timings:
        raise SDPParseError("missing the required t= (timing) line")
    media = tuple(s.build_media() for s in sections)
    if session.connection is None:
        for index, m in enumerate(media):
            if m.connection is None:
                raise SDPParseError(f"m-line {index + 1} ({m.media}) has no c= and there is no "
                                    "session-level c= (RFC 8866 §5.7)")
    return SessionDescription(
        origin=_parse_origin(session.single["o"]),
        session_name=session.single["s"],
        information=session.single.get("i"),
        uri=session.single.get("u"),
        emails=tuple(session.lists["e"]),
        phones=tuple(session.lists["p"]),
        connection=session.connection,
        bandwidths=tuple(session.bandwidths),
        timings=tuple(timings),
        zone_adjustments=session.single.get("z"),
        key=session.single.get("k"),
        attributes=tuple(session.attributes),
        unknown_lines=tuple(session.unknown),
        media=media,
    )
