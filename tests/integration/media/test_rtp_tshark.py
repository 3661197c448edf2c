"""What the RTP and RTCP builders send, as Wireshark's rtp and rtcp dissectors read it.

A G.711 stream from `RtpSender` (wrapping its sequence number, one packet missing, one with CSRCs,
one with a header extension, one padded) and a compound SR + SDES + BYE are written into a pcap
file (raw IPv4, UDP on fixed ports decoded as RTP and RTCP) and handed to tshark: nothing may be
malformed, the fields must read back as built, and tshark's stream analysis must count the one
lost packet. No packet is sent anywhere; the file is read back by tshark only.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sipmob.media.codecs import PCMU
from sipmob.media.rtcp import (
    Bye,
    ReportBlock,
    SdesChunk,
    SenderReport,
    SourceDescription,
    build_compound,
    ntp_timestamp,
)
from sipmob.media.rtp import RtpExtension, RtpPacket, RtpSender
from sipmob.media.sources import ToneSource

pytestmark = pytest.mark.peer
TSHARK = shutil.which("tshark")
RTP_PORT, RTCP_PORT, PEER_PORT = 40000, 40001, 40002
SSRC = 0x5EED1234
MISSING = 20
LINKTYPE_RAW = 101


def ipv4_udp(payload: bytes, sport: int, dport: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
    total = sum(struct.unpack("!10H", header))
    total = (total & 0xFFFF) + (total >> 16)
    checksum = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    return header[:10] + struct.pack("!H", checksum) + header[12:] + udp


def stream() -> list[RtpPacket]:
    sender = RtpSender(SSRC, 0, 160, 0.02, initial_sequence=65530, initial_timestamp=0)
    sender.start(0.0)
    tone = ToneSource(440)
    packets = []
    for _ in range(50):
        frame = tone.read(160)
        assert frame is not None
        packets.append(sender.packet(PCMU.encode(frame)))
    packets[5] = RtpPacket(0, packets[5].sequence, packets[5].timestamp, SSRC, packets[5].payload,
                           csrcs=(7, 8))
    packets[6] = RtpPacket(0, packets[6].sequence, packets[6].timestamp, SSRC, packets[6].payload,
                           extension=RtpExtension(0xBEDE, b"abcd"))
    packets[7] = RtpPacket(0, packets[7].sequence, packets[7].timestamp, SSRC, packets[7].payload, padding=4)
    del packets[MISSING]
    return packets


RTCP = build_compound([
    SenderReport(SSRC, ntp_timestamp(1_700_000_000.5), 8000, 49, 7840,
                 (ReportBlock(0x99, 64, -3, 70000, 5, 6, 7),)),
    SourceDescription((SdesChunk.with_cname(SSRC, "phone@127.0.0.1"),)),
    Bye((SSRC,), "moved"),
])


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if TSHARK is None:
        pytest.skip("tshark is not installed")
    path = tmp_path_factory.mktemp("rtp") / "rtp.pcap"
    frames = [(packet.sequence, ipv4_udp(packet.to_bytes(), RTP_PORT, PEER_PORT)) for packet in stream()]
    frames.append((0, ipv4_udp(RTCP, RTCP_PORT, PEER_PORT + 1)))
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for n, (_, frame) in enumerate(frames):
            usec = n * 20000 if n < MISSING else (n + 1) * 20000
            f.write(struct.pack("<IIII", 1_700_000_000 + usec // 1_000_000, usec % 1_000_000,
                                len(frame), len(frame)) + frame)
    return path


def tshark(path: Path, *args: str) -> str:
    assert TSHARK is not None
    return subprocess.run([TSHARK, "-n", "-r", str(path), "-d", f"udp.port=={RTP_PORT},rtp",
                           "-d", f"udp.port=={RTCP_PORT},rtcp", *args],
                          capture_output=True, text=True, timeout=60, check=True).stdout


def fields(path: Path, display_filter: str, *names: str) -> list[list[str]]:
    args = ["-Y", display_filter, "-T", "fields", "-E", "separator=/t"]
    for name in names:
        args += ["-e", name]
    return [line.split("\t") for line in tshark(path, *args).split("\n")[:-1]]


def test_nothing_is_malformed_or_an_error(capture: Path) -> None:
    assert tshark(capture, "-Y", "_ws.malformed || _ws.expert.severity >= 8388608") == ""


def test_rtp_headers_dissect_as_built(capture: Path) -> None:
    rows = fields(capture, "rtp", "rtp.seq", "rtp.timestamp", "rtp.ssrc", "rtp.p_type", "rtp.marker")
    expected = [[str(p.sequence), str(p.timestamp), f"0x{SSRC:08x}", "0", "1" if p.marker else "0"]
                for p in stream()]
    assert rows == expected


def test_csrcs_extension_and_padding_dissect_as_built(capture: Path) -> None:
    rows = fields(capture, "rtp.csrc.item || rtp.ext.profile || rtp.padding.count", "rtp.csrc.item",
                  "rtp.ext.profile", "rtp.ext.len", "rtp.padding.count")
    assert rows == [["0x00000007,0x00000008", "", "", ""], ["", "0xbede", "1", ""], ["", "", "", "4"]]


def test_stream_analysis_finds_one_packet_lost(capture: Path) -> None:
    out = tshark(capture, "-q", "-z", "rtp,streams")
    line = next(line for line in out.splitlines() if f"0x{SSRC:08X}".lower() in line.lower())
    assert " 49 " in line
    assert "1 (2.0%)" in line


def test_rtcp_compound_dissects_as_built(capture: Path) -> None:
    rows = fields(capture, "rtcp", "rtcp.pt", "rtcp.senderssrc", "rtcp.ssrc.fraction", "rtcp.ssrc.cum_nr",
                  "rtcp.ssrc.ext_high", "rtcp.sdes.text", "rtcp.sender.packetcount", "rtcp.sender.octetcount")
    assert rows == [["200,202,203", f"0x{SSRC:08x}", "64", "-3", "70000", "phone@127.0.0.1,moved", "49",
                     "7840"]]
