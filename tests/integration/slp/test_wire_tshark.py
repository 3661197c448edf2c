"""What the SLPv2 codec sends, as Wireshark's srvloc dissector reads it.

Every message type, with auth blocks, extensions, error codes and OVERFLOW, is written into a pcap
file (raw IPv4 link type, UDP to or from port 427) and handed to tshark: nothing may be
malformed, each packet must dissect as the function, XID, length and flags we meant, and tshark's
expert analysis may report no errors other than the error codes the replies carry on purpose.
No packet is sent anywhere; the file is read back by tshark only.

Wireshark's srvloc dissector stops reading an SLPv2 authentication block after its SPI: it does not
skip the structured authenticator that §9.2 puts after it (its source says "add code in here to
handle Structured Authentication Block"), and it does not read attribute authentication blocks
at all. Its attribute-list splitter (SrvReg, AttrRply) counts the characters of an ASCII copy
against the bytes on the wire, so any non-ASCII attribute list, valid UTF-8 as §5 allows, reads
as malformed. So the main capture carries auth blocks with empty authenticators, where its reading
and RFC 2608's coincide, and ASCII attribute lists; a separate capture puts blocks with real
authenticators last in their packets, where the dissector's shortcut cannot throw it off.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from tests.unit.slp.strategies import messages

from sipmob.slp.messages import (
    NO_FLAGS,
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
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRply,
    SrvRqst,
    SrvTypeRply,
    SrvTypeRqst,
    UrlEntry,
)
from sipmob.slp.wire import encode, encode_within

TSHARK = shutil.which("tshark")
pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (apt install tshark)"),
]

LINKTYPE_RAW = 101  # raw IPv4/IPv6, no link-layer header
SLP_PORT = 427
CLIENT_PORT = 40427

# The OID of DSA with SHA-1 and an (r, s) signature, as §9.2.2 lays a BSD 2 authenticator out.
SIGNATURE = bytes.fromhex("06072a8648ce380403" "3006020101020102")
SIGNED = AuthBlock(bsd=2, timestamp=1_900_000_000, spi="home-key", structured_auth=SIGNATURE)
DSA = replace(SIGNED, structured_auth=b"")
PRIVATE = AuthBlock(bsd=0x8001, timestamp=1, spi="x", structured_auth=b"")
EXTS = (Extension(0x8001, b"private"), Extension(0x0123, b""), Extension(0x9000, b"\x00\x01\x02"))


def h(function: FunctionId, xid: int, flags: Flags = NO_FLAGS,
      exts: tuple[Extension, ...] = ()) -> Header:
    return Header(function, xid, "en", flags, exts)


def hand_built() -> list[tuple[Message, bytes]]:
    """Several examples of each type, as the daemons will send them."""
    tv = UrlEntry("service:tv:sip://tv@10.0.0.5", 1800, (DSA,))
    cam = UrlEntry("service:camera:sip://cam@10.0.0.6;transport=udp", 65535)
    phone = UrlEntry("service:phone://10.0.0.7", 0, (DSA, PRIVATE))
    many = tuple(UrlEntry(f"service:speaker:sip://speaker{i}@10.0.1.{i}", 600, (DSA,))
                 for i in range(40))
    out: list[Message] = [
        SrvRqst(h(FunctionId.SrvRqst, 1, Flags.REQUEST_MCAST), "10.0.0.1,10.0.0.2",
                "service:directory-agent", "DEFAULT", "", ""),
        SrvRqst(h(FunctionId.SrvRqst, 2), "", "service:tv", "DEFAULT,living room",
                "(&(room=living)(media=video))", "home-key"),
        SrvRqst(h(FunctionId.SrvRqst, 3, exts=EXTS), "", "service:phone", "DEFAULT", "", ""),
        SrvRply(h(FunctionId.SrvRply, 2), ErrorCode.OK, (tv, cam, phone)),
        SrvRply(h(FunctionId.SrvRply, 4), ErrorCode.OK, ()),
        SrvRply(h(FunctionId.SrvRply, 5, exts=EXTS[:1]), ErrorCode.OK, (cam,)),
        SrvReg(h(FunctionId.SrvReg, 6, Flags.FRESH), tv, "service:tv:sip", "DEFAULT",
               "(room=living),(media=audio,video),(display=1920x1080),hd", (DSA,)),
        SrvReg(h(FunctionId.SrvReg, 7), cam, "service:camera", "DEFAULT", "(room=hall)"),
        SrvReg(h(FunctionId.SrvReg, 8, Flags.FRESH, EXTS), phone, "service:phone", "DEFAULT,kids",
               "", (DSA, PRIVATE)),
        SrvDeReg(h(FunctionId.SrvDeReg, 9), "DEFAULT", tv, ""),
        SrvDeReg(h(FunctionId.SrvDeReg, 10), "DEFAULT", cam, "room,media"),
        SrvDeReg(h(FunctionId.SrvDeReg, 11, exts=EXTS), "DEFAULT", phone, ""),
        SrvAck(h(FunctionId.SrvAck, 6), ErrorCode.OK),
        SrvAck(h(FunctionId.SrvAck, 7), ErrorCode.INVALID_UPDATE),
        SrvAck(h(FunctionId.SrvAck, 8, exts=EXTS[:2]), ErrorCode.OK),
        AttrRqst(h(FunctionId.AttrRqst, 12), "", "service:tv:sip://tv@10.0.0.5", "DEFAULT"),
        AttrRqst(h(FunctionId.AttrRqst, 13, Flags.REQUEST_MCAST), "10.0.0.1", "service:tv",
                 "DEFAULT", "room,media*", "home-key"),
        AttrRqst(h(FunctionId.AttrRqst, 14, exts=EXTS), "", "service:camera", "DEFAULT"),
        AttrRply(h(FunctionId.AttrRply, 12), ErrorCode.OK, "(room=living),(media=audio,video)",
                 (DSA,)),
        AttrRply(h(FunctionId.AttrRply, 13), ErrorCode.OK, ""),
        AttrRply(h(FunctionId.AttrRply, 14, exts=EXTS[:1]), ErrorCode.OK, "hd"),
        DAAdvert(h(FunctionId.DAAdvert, 0), ErrorCode.OK, 1_700_000_000,
                 "service:directory-agent://10.0.0.1", "DEFAULT", "(min-refresh-interval=60)",
                 "home-key", (DSA,)),
        DAAdvert(h(FunctionId.DAAdvert, 1), ErrorCode.OK, 0, "service:directory-agent://10.0.0.1",
                 "DEFAULT,kids"),
        DAAdvert(h(FunctionId.DAAdvert, 15, exts=EXTS), ErrorCode.OK, 1,
                 "service:directory-agent://10.0.0.1", "DEFAULT"),
        SrvTypeRqst(h(FunctionId.SrvTypeRqst, 16), "", None, "DEFAULT"),
        SrvTypeRqst(h(FunctionId.SrvTypeRqst, 17), "", "", "DEFAULT"),
        SrvTypeRqst(h(FunctionId.SrvTypeRqst, 18, Flags.REQUEST_MCAST, EXTS), "10.0.0.9",
                    "sipmob", "DEFAULT"),
        SrvTypeRply(h(FunctionId.SrvTypeRply, 16), ErrorCode.OK,
                    "service:tv:sip,service:camera,service:phone"),
        SrvTypeRply(h(FunctionId.SrvTypeRply, 17), ErrorCode.OK, ""),
        SrvTypeRply(h(FunctionId.SrvTypeRply, 18, exts=EXTS[:1]), ErrorCode.OK, "service:x.sipmob"),
        SAAdvert(h(FunctionId.SAAdvert, 19), "service:service-agent://10.0.0.7", "DEFAULT"),
        SAAdvert(h(FunctionId.SAAdvert, 20), "service:service-agent://10.0.0.8", "DEFAULT,kids",
                 "(service-type=tv)", (DSA, PRIVATE)),
        SAAdvert(h(FunctionId.SAAdvert, 21, exts=EXTS), "service:service-agent://10.0.0.9",
                 "DEFAULT"),
        # Error replies, encoded in full.
        SrvRply(h(FunctionId.SrvRply, 22), ErrorCode.SCOPE_NOT_SUPPORTED),
        AttrRply(h(FunctionId.AttrRply, 23), ErrorCode.AUTHENTICATION_UNKNOWN),
        SrvTypeRply(h(FunctionId.SrvTypeRply, 24), ErrorCode.DA_BUSY_NOW),
        DAAdvert(h(FunctionId.DAAdvert, 25), ErrorCode.AUTHENTICATION_UNKNOWN, 1,
                 "service:directory-agent://10.0.0.1", "DEFAULT"),
    ]
    encoded = [(m, encode(m)) for m in out]
    # Truncated to a datagram, with OVERFLOW.
    overflowing: list[SrvRply | AttrRply | SrvTypeRply] = [
        SrvRply(h(FunctionId.SrvRply, 26), ErrorCode.OK, many),
        AttrRply(h(FunctionId.AttrRply, 27), ErrorCode.OK,
                 ",".join(f"(x-attr{i}=value {i},{i})" for i in range(200)), (DSA,)),
        SrvTypeRply(h(FunctionId.SrvTypeRply, 28), ErrorCode.OK,
                    ",".join(f"service:type{i}" for i in range(300))),
    ]
    encoded += [(m, encode_within(m, 1400)) for m in overflowing]
    return encoded


def dissectable(value: Any, name: str = "") -> Any:
    """The value as the dissector can follow it: auth blocks without authenticators, attribute
    lists in printable ASCII (see the module docstring)."""
    if isinstance(value, AuthBlock):
        return replace(value, structured_auth=b"")
    if isinstance(value, str) and name == "attr_list":
        return "".join(c for c in value if c.isascii() and c.isprintable())
    if isinstance(value, tuple):
        return tuple(dissectable(v) for v in value)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: dissectable(getattr(value, f.name), f.name)
                                 for f in fields(value)})
    return value


def drawn() -> list[tuple[Message, bytes]]:
    """Messages from the shared strategies, the same set on every run."""
    found: list[Message] = []

    @settings(max_examples=80, derandomize=True, database=None, deadline=None)
    @given(messages())
    def collect(msg: Message) -> None:
        found.append(dissectable(msg))

    collect()
    return [(m, encode(m)) for m in found]


def signed() -> list[tuple[Message, bytes]]:
    """Auth blocks with real authenticators, each the last thing in its packet."""
    out: list[Message] = [
        SrvRply(h(FunctionId.SrvRply, 40), ErrorCode.OK,
                (UrlEntry("service:tv:sip://tv@10.0.0.5", 1800, (SIGNED,)),)),
        SAAdvert(h(FunctionId.SAAdvert, 41), "service:service-agent://10.0.0.7", "DEFAULT", "",
                 (SIGNED,)),
        DAAdvert(h(FunctionId.DAAdvert, 42), ErrorCode.OK, 1_700_000_000,
                 "service:directory-agent://10.0.0.1", "DEFAULT", "", "home-key", (SIGNED,)),
    ]
    return [(m, encode(m)) for m in out]


def ipv4_udp(payload: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    return header[:10] + struct.pack("!H", checksum) + header[12:] + udp


def write_pcap(path: Path, packets: list[tuple[Message, bytes]]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for n, (msg, data) in enumerate(packets):
            # Requests go to the SLP port, replies and adverts come from it.
            to_slp = isinstance(msg, SrvRqst | SrvReg | SrvDeReg | AttrRqst | SrvTypeRqst)
            ports = (CLIENT_PORT, SLP_PORT) if to_slp else (SLP_PORT, CLIENT_PORT)
            frame = ipv4_udp(data, *ports)
            f.write(struct.pack("<IIII", 1_700_000_000 + n, 0, len(frame), len(frame)) + frame)


def tshark(*args: str) -> str:
    assert TSHARK is not None
    done = subprocess.run([TSHARK, "-n", *args], capture_output=True, text=True, timeout=60,
                          check=True)
    return done.stdout


def fields_of(path: Path, *names: str) -> list[list[str]]:
    args = ["-r", str(path), "-T", "fields", "-E", "separator=/t"]
    for name in names:
        args += ["-e", name]
    # Lines end in "\n" only: splitlines() would also split at U+0085 or U+2028 inside a value.
    return [line.split("\t") for line in tshark(*args).split("\n")[:-1]]


Capture = tuple[Path, list[tuple[Message, bytes]]]


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    packets = hand_built() + drawn()
    path = tmp_path_factory.mktemp("slp") / "slp.pcap"
    write_pcap(path, packets)
    return path, packets


@pytest.fixture(scope="module")
def signed_capture(tmp_path_factory: pytest.TempPathFactory) -> Capture:
    packets = signed()
    path = tmp_path_factory.mktemp("slp") / "signed.pcap"
    write_pcap(path, packets)
    return path, packets


def test_no_packet_is_malformed(capture: Capture, signed_capture: Capture) -> None:
    for path, _ in (capture, signed_capture):
        assert tshark("-r", str(path), "-Y", "srvloc && _ws.malformed") == ""


def test_every_packet_dissects_as_the_function_xid_length_and_flags_sent(capture: Capture) -> None:
    path, packets = capture
    rows = fields_of(path, "srvloc.function", "srvloc.xid", "srvloc.pktlen", "srvloc.flags_v2")
    seen = [(int(f), int(x), int(n), int(fl, 16)) for f, x, n, fl in rows]
    sent = [(data[1], int.from_bytes(data[10:12], "big"), len(data),
             int.from_bytes(data[5:7], "big")) for _, data in packets]
    assert seen == sent
    assert {f for f, _, _, _ in seen} == set(range(1, 12))


def test_url_entries_dissect_as_sent(capture: Capture) -> None:
    path, packets = capture
    rows = fields_of(path, "srvloc.url.url", "srvloc.url.lifetime")
    seen = [tuple(f.split(",") if f else [] for f in [*r, "", ""][:2]) for r in rows]
    sent = []
    for msg, _ in packets:
        entries = (msg.urls if isinstance(msg, SrvRply)
                   else (msg.url_entry,) if isinstance(msg, SrvReg | SrvDeReg) else ())
        sent.append(([e.url for e in entries], [str(e.lifetime) for e in entries]))
    ascii_only = [i for i, (msg, data) in enumerate(packets)
                  if all(u and u.isascii() and u.isprintable() and "," not in u for u in sent[i][0])
                  and data == encode(msg)]  # truncated replies are checked below
    assert [seen[i] for i in ascii_only] == [sent[i] for i in ascii_only]
    assert len(ascii_only) > len(packets) // 2


def test_truncated_replies_carry_overflow_and_fit_a_datagram(capture: Capture) -> None:
    path, packets = capture
    rows = fields_of(path, "srvloc.xid", "srvloc.flags_v2.overflow", "udp.length")
    truncated = [i for i, (msg, data) in enumerate(packets)
                 if isinstance(msg, SrvRply | AttrRply | SrvTypeRply) and data != encode(msg)]
    assert len(truncated) == 3
    for i in truncated:
        xid, overflow, udp_length = rows[i]
        assert int(xid) == packets[i][0].header.xid
        assert overflow in ("1", "True")
        assert int(udp_length) - 8 <= 1400


def test_auth_blocks_with_authenticators_dissect_as_sent(signed_capture: Capture) -> None:
    path, packets = signed_capture
    rows = fields_of(path, "srvloc.authblkv2_bsd", "srvloc.authblkv2_len",
                     "srvloc.authblkv2.slpspi")
    expected_length = 10 + len(SIGNED.spi) + len(SIGNATURE)
    assert rows == [["0x0002", str(expected_length), SIGNED.spi]] * len(packets)


def test_expert_analysis_reports_only_the_error_codes_sent_on_purpose(capture: Capture) -> None:
    path, packets = capture
    report = tshark("-r", str(path), "-q", "-z", "expert,error")
    errors = [line.split() for line in report.splitlines()
              if line.strip() and line.split()[0].isdigit()]
    # The dissector reports a non-zero error code in a reply as an expert error of group
    # "Response"; anything else (Malformed, Protocol...) would be a fault in our encoding.
    assert {row[1] for row in errors} <= {"Response"}
    error_replies = sum(1 for msg, _ in packets
                        if getattr(msg, "error", ErrorCode.OK) != ErrorCode.OK)
    assert sum(int(row[0]) for row in errors) == error_replies
