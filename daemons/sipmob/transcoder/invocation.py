"""The transcoder's SDP convention for third-party call control (RFC 4117 §§3-4), sans-I/O.

RFC 4117 §3.2: the controller C knows both parties' session descriptions, SDP A and SDP B, and
sends the transcoder T one INVITE whose body is "SDP A + SDP B"; T answers "SDP TA + SDP TB" and C
then gives TA to A and TB to B (re-INVITEs or the answers it still owes them). Concretely, here:

**The INVITE's SDP** has exactly two ``m=audio`` lines, both RTP/AVP (or RTP/AVPF):

- line 1 is party A's description as A sent it: A's connection address and port (where T sends to
  A), A's payload types, rtpmaps and fmtps (what A can receive and will send);
- line 2 is party B's, the same way.

A side whose address is not known yet (C invokes T before it has asked B, §3.3) is written with
port 0 or ``c=IN IP4 0.0.0.0`` and its codec list; T answers it and starts sending to it once a
re-INVITE with the same two lines gives its address. Each line is checked alone: at least one codec
we convert, an address that is an IP address (no names: nothing to resolve), a ptime we can frame.

A line may carry ``a=x-bind:ADDRESS``: T's side for that party (its RTP and RTCP sockets, the
address in its answer) is bound to ADDRESS, one of T's own addresses, rather than ``[rtp]
address``. A controller on a multihomed gateway puts the CN-facing side on the source address
of the call's egress, so the admin's source routing sends it out of that link; a re-INVITE naming
another ADDRESS moves that side there (new sockets, a new port in the answer; the other side keeps
its port and sockets, so its party notices nothing). A line without it stays where it is.

**The 200's SDP** has the same two lines in the same order: line 1 is TA, T's own receive address
and port for A with the one codec chosen for A (plus telephone-event if A offered it) in A's
payload-type numbers, ``a=ptime`` A's and ``a=sendrecv``; line 2 is TB for B likewise. RTCP is on
port + 1 (RFC 3550 §11), so no ``a=rtcp``.

**The codec of each side**: if relay is allowed and the two lists share a codec (name, clock,
channels), the first of A's that B also has is used on both sides and T relays without decoding;
otherwise each side gets the first codec of its own list that T converts. A re-INVITE may change
either side; the output streams carry on (`sipmob.media.transcode.Channel.set_formats`).

**DTMF in the dialog** (RFC 4117 keeps the parties' INFO at the controller): an INFO from C with
an ``application/dtmf-relay`` body (``Signal=5``, ``Duration=160`` in ms) or ``application/dtmf``
(``5``) and one more line, ``Side=A`` or ``Side=B``, says party A (or B) sent that digit; T plays it
as RFC 4733 events on the other side's stream (200), or answers 488 when that side has no
telephone-event (C then passes the INFO to that party itself). T sends C the same kind of INFO
(``application/dtmf-relay`` with ``Side=``) for each digit a party sends as events that the other
side cannot take; C passes it, without the ``Side=`` line, to the other party.

A wrong body gets `InvocationError` with the SIP status to answer: 488 Not Acceptable Here (RFC 3261
§21.4.26) with a Warning-style reason for a description we cannot serve, 400 for one that is not SDP.

**Why 3PCC and not RFC 5369 §5's B2BUA** (``INVITE sip:transcoder@GW;target=...``, the transcoder
calling the target itself): in Mobile Node Control mode the MN is already the controller of both
legs (it re-INVITEs the CN and INVITEs the device), so the transcoder is one more leg it controls,
the CN's dialog stays the MN's, and a failed transcoder leg is undone like any other step of the
plan. The B2BUA model would put a second dialog between the CN and the device, owned by the
transcoder, which the MN could then no longer move. Only the 3PCC model is implemented.

Not here: ports, sockets and SIP (the app), the media engine (`sipmob.media.transcode`).
"""

from __future__ import annotations

import dataclasses
import ipaddress

from sipmob.media.audioformat import AudioFormat, UnsupportedFormat
from sipmob.sdp.session import MediaDescription, SDPParseError, SessionDescription, parse

SIDES = ("A", "B")


class InvocationError(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Side:
    """One party as the controller describes it: where it receives, and what it can take."""

    address: str | None  # None: not known yet (port 0 or a null connection)
    port: int
    formats: tuple[AudioFormat, ...]  # the ones we convert, in the party's order of preference
    bind: str | None = None  # our address for this side (a=x-bind); None: where it is, or [rtp] address

    @property
    def destination(self) -> tuple[str, int] | None:
        return None if self.address is None else (self.address, self.port)


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What to do: the format on each side (relay when they are the same payload)."""

    a: Side
    b: Side
    format_a: AudioFormat
    format_b: AudioFormat

    @property
    def relay(self) -> bool:
        return self.format_a.same_payload(self.format_b)

    @property
    def summary(self) -> str:
        if self.relay:
            return f"relay {self.format_a.sdp_name}"
        return f"{self.format_a.sdp_name} <-> {self.format_b.sdp_name}"


def _side(media: MediaDescription, session: SessionDescription, index: int, enabled: set[str]) -> Side:
    label = SIDES[index]
    if media.media != "audio" or not media.is_rtp:
        raise InvocationError(488, f"media line {index + 1} ({label}) is not RTP audio")
    connection = media.connection or session.connection
    address: str | None = None
    if media.port and connection is not None and not connection.is_null:
        try:
            address = str(ipaddress.ip_address(connection.host))
        except ValueError:
            raise InvocationError(488, f"side {label}: {connection.host!r} is not an IP address") from None
    try:
        ptime = round(media.ptime) if media.ptime else 20
    except (ValueError, OverflowError):
        raise InvocationError(488, f"side {label}: a=ptime is not a number") from None
    dtmf: dict[int, int] = {}
    for pt in media.payload_types:
        rtpmap = media.rtpmap(pt)
        if rtpmap is not None and rtpmap.encoding.lower() == "telephone-event":
            dtmf.setdefault(rtpmap.clock_rate, pt)
    formats = []
    for pt in media.payload_types:
        rtpmap = media.rtpmap(pt)
        if rtpmap is None or rtpmap.encoding.upper() not in enabled:
            continue
        event_pt = dtmf.get(rtpmap.clock_rate)
        channels = rtpmap.channels if rtpmap.encoding.upper() == "L16" else 1
        event_clock = rtpmap.clock_rate if event_pt is not None else None
        try:
            formats.append(AudioFormat.of(rtpmap.encoding, pt, rtpmap.clock_rate, ptime_ms=ptime,
                                          channels=channels, fmtp=media.fmtp(pt), dtmf_payload_type=event_pt,
                                          dtmf_clock_rate=event_clock))
        except UnsupportedFormat:
            continue
    if not formats:
        raise InvocationError(488, f"side {label}: none of its codecs is converted here")
    bind = media.attribute("x-bind")
    if bind is not None:
        try:
            bind = str(ipaddress.ip_address(bind.strip()))
        except ValueError:
            raise InvocationError(488, f"side {label}: a=x-bind {bind!r} is not an IP address") from None
    return Side(address, media.port, tuple(formats), bind)


def parse_invocation(body: bytes, enabled: set[str], relay: bool = True) -> Plan:
    """The plan for an INVITE's or re-INVITE's "SDP A + SDP B"; `enabled` are upper-case codec names."""
    try:
        session = parse(body)
    except SDPParseError as exc:
        raise InvocationError(400, f"the body is not SDP: {exc}") from None
    if len(session.media) != 2:
        raise InvocationError(488, f"expected two media lines (party A, party B), got {len(session.media)}")
    a = _side(session.media[0], session, 0, enabled)
    b = _side(session.media[1], session, 1, enabled)
    if relay:
        for fa in a.formats:
            for fb in b.formats:
                if fa.same_payload(fb):
                    return Plan(a, b, fa, fb)
    return Plan(a, b, a.formats[0], b.formats[0])


def _media_lines(fmt: AudioFormat, address: str, port: int) -> list[str]:
    family = "IP6" if ":" in address else "IP4"
    pts = [str(fmt.payload_type)]
    if fmt.dtmf_payload_type is not None:
        pts.append(str(fmt.dtmf_payload_type))
    channels = f"/{fmt.channels}" if fmt.channels != 1 else ""
    lines = [f"m=audio {port} RTP/AVP {' '.join(pts)}", f"c=IN {family} {address}",
             f"a=rtpmap:{fmt.payload_type} {fmt.sdp_name}/{fmt.clock_rate}"
             f"{'/2' if fmt.name == 'OPUS' else channels}"]
    if fmt.name == "OPUS":
        lines.append(f"a=fmtp:{fmt.payload_type} useinbandfec=1")
    if fmt.dtmf_payload_type is not None:
        lines.append(f"a=rtpmap:{fmt.dtmf_payload_type} telephone-event/{fmt.dtmf_clock_rate}")
        lines.append(f"a=fmtp:{fmt.dtmf_payload_type} 0-16")
    lines += [f"a=ptime:{fmt.ptime_ms}", "a=sendrecv"]
    return lines


def answer(plan: Plan, address: str, port_a: int, port_b: int, session_id: int, version: int = 1, *,
           address_a: str | None = None, address_b: str | None = None) -> bytes:
    """"SDP TA + SDP TB": our receive address and port for each side, with its codec (a side
    bound elsewhere, `address_a`/`address_b`, names its own address)."""
    family = "IP6" if ":" in address else "IP4"
    lines = ["v=0", f"o=sipmob-transcoder {session_id} {version} IN {family} {address}", "s=transcoder",
             "t=0 0", *_media_lines(plan.format_a, address_a or address, port_a),
             *_media_lines(plan.format_b, address_b or address, port_b)]
    return ("\r\n".join(lines) + "\r\n").encode()
