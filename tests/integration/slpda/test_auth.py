"""Per-registrant secrets against the real `sipmob-slpda`: a keyed URL is its registrant's alone.

In the namespace of attack_net.py (127.0.0.1 the box, 127.0.0.66 a rogue on the LAN, 198.51.100.7 a
device, which DHCP later moves to 198.51.100.9). Keys are made in each test's tmp directory and
thrown away with it. Also: OpenSLP's own slptool registering without keys, and what tshark reads of
a signed SrvReg.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from attack_net import DA, ROGUE, VICTIM, NsClient, NsSlpda, needs_netns
from slpda_process import ROOT, Slpda, xid
from tests.peers.tshark import TSHARK, fields, malformed, tshark

from sipmob.slp import auth, wire
from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    AuthBlock,
    ErrorCode,
    Flags,
    FunctionId,
    Header,
    SrvAck,
    SrvDeReg,
    SrvReg,
    UrlEntry,
)

MOVED = "198.51.100.9"  # the device after its DHCP lease changed
URL = "sip:speaker@198.51.100.7"
OPENSLP_SLPTOOL = next((p for p in (os.environ.get("OPENSLP_SLPTOOL", ""),
                                    "/tmp/openslp-build/openslp/slptool/slptool",
                                    shutil.which("slptool") or "") if p and os.access(p, os.X_OK)), None)


def make_key(directory: Path, spi: str) -> bytes:
    directory.mkdir(mode=0o700, exist_ok=True)
    key = os.urandom(32).hex().encode()
    path = directory / f"{spi}.key"
    path.write_bytes(key + b"\n")
    path.chmod(0o600)
    return key


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, bytes]:
    return {spi: make_key(tmp_path / "keys", spi) for spi in ("speaker", "tv")}


@pytest.fixture
def da(tmp_path: Path, keys: dict[str, bytes]) -> Iterator[NsSlpda]:
    daemon = NsSlpda(tmp_path, "".join(f'[[registration.keys]]\nspi = "{spi}"\n'
                                       f'file = "{tmp_path}/keys/{spi}.key"\n' for spi in keys))
    daemon.ns.add_address("lo", f"{MOVED}/32")
    yield daemon
    daemon.delete()


def srvreg(url: str = URL, attrs: str = "(name=Kitchen speaker),(media=audio-sendrecv)",
           fresh: bool = True) -> SrvReg:
    return SrvReg(Header(FunctionId.SrvReg, xid(), "en", Flags.FRESH if fresh else Flags(0)),
                  UrlEntry(url, 300), "service:sip-device", "DEFAULT", attrs)


def srvdereg(url: str = URL) -> SrvDeReg:
    return SrvDeReg(Header(FunctionId.SrvDeReg, xid(), "en"), "DEFAULT", UrlEntry(url, 0))


def send(client: NsClient, msg: SrvReg | SrvDeReg) -> ErrorCode:
    ack = client.udp(msg)
    assert isinstance(ack, SrvAck)
    return ack.error


def attrs_of(client: NsClient, url: str = URL) -> str | None:
    reply = client.udp(AttrRqst(Header(FunctionId.AttrRqst, xid()), "", url, "DEFAULT"))
    assert isinstance(reply, AttrRply)
    return reply.attr_list or None


@needs_netns
def test_a_keyed_url_is_changed_only_with_its_key_from_any_address(da: NsSlpda,
                                                                    keys: dict[str, bytes]) -> None:
    da.start()
    speaker = auth.Signer("speaker", keys["speaker"])
    with (da.client(VICTIM) as device, da.client(ROGUE) as rogue, da.client(MOVED) as moved,
          da.client(DA) as box):
        signed_reg = speaker.sign(srvreg(), time.time())
        assert send(device, signed_reg) == ErrorCode.OK
        # Without the key nobody touches it, not even from the device's own (spoofed) address or
        # from the trusted box itself.
        for client in (rogue, device, box):
            assert send(client, srvreg(attrs="(name=Rogue)")) == ErrorCode.AUTHENTICATION_ABSENT
            assert send(client, srvdereg()) == ErrorCode.AUTHENTICATION_ABSENT
        # A forged block (another key under the owner's SPI), another registrant's valid block.
        forged = auth.sign(srvdereg(), "speaker", os.urandom(32), int(time.time()) + 30)
        assert send(rogue, forged) == ErrorCode.AUTHENTICATION_FAILED
        assert send(rogue, auth.Signer("tv", keys["tv"]).sign(srvdereg(), time.time())) == \
            ErrorCode.AUTHENTICATION_FAILED
        assert send(rogue, auth.sign(srvdereg(), "nobody", os.urandom(32), int(time.time()) + 30)) == \
            ErrorCode.AUTHENTICATION_UNKNOWN
        assert attrs_of(rogue) == "(name=Kitchen speaker),(media=audio-sendrecv)"
        # DHCP moves the device: it refreshes and deregisters its URL from the new address.
        assert send(moved, speaker.sign(srvreg(attrs="(name=Kitchen speaker)"), time.time())) == ErrorCode.OK
        assert attrs_of(rogue) == "(name=Kitchen speaker)"
        assert send(moved, speaker.sign(srvdereg(), time.time())) == ErrorCode.OK
        assert attrs_of(rogue) is None
        # The first SrvReg, captured and replayed later by the rogue: refused, the URL stays gone.
        assert send(rogue, signed_reg) == ErrorCode.AUTHENTICATION_FAILED
        assert attrs_of(rogue) is None
    log = da.output()
    assert (f"refused {URL} from {ROGUE}: AUTHENTICATION_FAILED (bad MAC for SPI speaker (1 refused"
            in log)
    assert "stale" not in log and "replayed timestamp" in log
    assert f"registered {URL} (service:sip-device, en) for 300 s from {VICTIM} as speaker" in log


@needs_netns
def test_a_replayed_block_stays_refused_after_a_kill_9(da: NsSlpda, keys: dict[str, bytes]) -> None:
    da.start()
    speaker = auth.Signer("speaker", keys["speaker"])
    with da.client(VICTIM) as device:
        captured = speaker.sign(srvreg(), time.time())
        assert send(device, captured) == ErrorCode.OK
        assert send(device, speaker.sign(srvdereg(), time.time())) == ErrorCode.OK
    time.sleep(1.0)  # the journal is written within a quarter second
    da.kill()
    da.start()
    with da.client(ROGUE) as rogue:
        assert send(rogue, captured) == ErrorCode.AUTHENTICATION_FAILED
        assert attrs_of(rogue) is None


@needs_netns
def test_registrations_without_keys_work_as_before_including_openslp(da: NsSlpda) -> None:
    da.start()
    with da.client(VICTIM) as device, da.client(ROGUE) as rogue:
        assert device.register("sip:tv@198.51.100.7", "(name=TV)").error == ErrorCode.OK
        assert rogue.deregister("sip:tv@198.51.100.7").error == ErrorCode.AUTHENTICATION_FAILED
        assert device.deregister("sip:tv@198.51.100.7").error == ErrorCode.OK
    if OPENSLP_SLPTOOL is None:
        pytest.skip("OpenSLP's slptool is not built (OPENSLP_SLPTOOL)")
    url = "service:printer:lpr://198.51.100.7/queue"

    def slptool(*args: str) -> str:
        result = da.ns.run([OPENSLP_SLPTOOL, *args], timeout=30)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return str(result.stdout)

    slptool("register", url, "(name=Printer)")
    assert "(name=Printer)" in slptool("findattrs", url)
    with da.client(DA) as box:
        assert attrs_of(box, url) == "(name=Printer),trusted"  # slptool registers from the box
        slptool("deregister", url)
        assert attrs_of(box, url) is None


def test_key_files_must_be_private_long_enough_and_readable(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    make_key(keys, "speaker")
    slpda = Slpda(tmp_path, f'[registration]\nkey_directory = "{keys}"\n')

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(slpda.command("--check-config"), env=slpda.environment,
                              capture_output=True, text=True, timeout=30)

    assert check().returncode == 0
    (keys / "speaker.key").chmod(0o640)
    result = check()
    assert result.returncode == 1 and "mode 0640: others may read it (chmod 600)" in result.stderr
    (keys / "speaker.key").write_bytes(b"short\n")
    (keys / "speaker.key").chmod(0o600)
    result = check()
    assert result.returncode == 1 and "must be at least 16 bytes, got 5" in result.stderr
    (keys / "speaker.key").unlink()
    (keys / "bad spi.key").write_bytes(os.urandom(32).hex().encode())
    (keys / "bad spi.key").chmod(0o600)
    result = check()
    assert result.returncode == 1 and "the name before .key is the SPI" in result.stderr
    slpda.write_config(f'[[registration.keys]]\nspi = "x"\nfile = "{tmp_path}/absent.key"\n')
    result = check()
    assert result.returncode == 1 and "cannot read the key file" in result.stderr


def test_sighup_reads_a_new_key_and_keeps_the_old_ones_on_a_bad_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    slpda = Slpda(tmp_path, f'[registration]\nkey_directory = "{keys}"\n')
    slpda.start()
    try:
        client = slpda.client()
        with client:
            def reg(key: bytes) -> ErrorCode:
                ack = client.udp(auth.sign(srvreg("sip:a@192.168.1.5"), "speaker", key,
                                           int(time.time()) + 30 + reg.n))  # type: ignore[attr-defined]
                reg.n += 1  # type: ignore[attr-defined]
                assert isinstance(ack, SrvAck)
                return ack.error
            reg.n = 0  # type: ignore[attr-defined]
            key = make_key(keys, "speaker")
            assert reg(key) == ErrorCode.AUTHENTICATION_UNKNOWN
            slpda.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while reg(key) != ErrorCode.OK:
                assert time.monotonic() < deadline, slpda.output()
                time.sleep(0.1)
            (keys / "speaker.key").chmod(0o644)
            slpda.signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "reload failed" not in slpda.output() and "keeping" not in slpda.output():
                assert time.monotonic() < deadline, slpda.output()
                time.sleep(0.1)
            assert reg(key) == ErrorCode.OK  # the running keys are kept
    finally:
        slpda.stop()


# tshark -------------------------------------------------------------------------------------------


def pcap(path: Path, *payloads: bytes) -> Path:
    """A capture file of UDP datagrams to port 427 on loopback (raw IPv4 link type), made without
    sending anything."""
    records = []
    for i, payload in enumerate(payloads):
        udp = struct.pack("!HHHH", 40000, 427, 8 + len(payload), 0) + payload
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                             bytes((127, 0, 0, 1)), bytes((127, 0, 0, 1)))
        total = sum(struct.unpack("!10H", header))
        total = (total & 0xFFFF) + (total >> 16)
        header = header[:10] + struct.pack("!H", ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF) + header[12:]
        packet = header + udp
        records.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(packet), len(packet)) + packet)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101) + b"".join(records))
    return path


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_tshark_reads_our_block_as_far_as_it_reads_any_rfc_2608_block(tmp_path: Path) -> None:
    """Wireshark's SLPv2 dissector (packet-srvloc.c, dissect_authblk_v2) stops after the SPI of an
    authentication block whatever its BSD: it never skips the Structured Authenticator, so even
    the DSA block RFC 2608 mandates is "malformed" to it from there on. Ours is read exactly as far
    as a DSA block is; messages without a block, as OpenSLP sends them, are read whole."""
    key = os.urandom(32)
    msg = srvreg()
    ours = auth.sign(msg, "saproxy", key, 1_700_000_030)
    dsa = SrvReg(msg.header, UrlEntry(URL, 300, (AuthBlock(0x0002, 1_700_000_030, "saproxy",
                                                           ours.url_entry.auths[0].structured_auth),)),
                 msg.service_type, msg.scope_list, msg.attr_list)
    ack = SrvAck(Header(FunctionId.SrvAck, msg.header.xid, "en"), ErrorCode.AUTHENTICATION_FAILED)
    capture = pcap(tmp_path / "slp.pcap", wire.encode(ours), wire.encode(dsa), wire.encode(msg),
                   wire.encode(ack), wire.encode(auth.sign(srvdereg(), "saproxy", key, 1_700_000_031)))
    rows = fields(capture, "srvloc", "frame.number", "srvloc.function", "srvloc.url.url",
                  "srvloc.authblkv2_bsd", "srvloc.authblkv2.slpspi", "srvloc.srvreq.attrlist", "srvloc.errv2")
    by_frame = {row[0]: row[1:] for row in rows}
    assert by_frame["1"][:4] == ["3", URL, "0x8256", "saproxy"]
    assert by_frame["2"][:4] == ["3", URL, "0x0002", "saproxy"]
    assert by_frame["3"][:3] == ["3", URL, ""] and "Kitchen speaker" in by_frame["3"][4]
    assert by_frame["4"][0] == "5" and by_frame["4"][5] == "7"
    assert by_frame["5"][:4] == ["4", URL, "0x8256", "saproxy"]
    broken = {line.split()[0] for line in malformed(capture, "srvloc").splitlines()}
    assert {"1", "2"} <= broken and not broken & {"3", "4"}
    detail = tshark("-r", str(capture), "-V", "-Y", "frame.number == 1")
    assert "SLP SPI: saproxy" in detail and "BSD: 0x8256" in detail


def test_signed_registration_from_the_saproxy_client_side_is_accepted(tmp_path: Path) -> None:
    """The SA side through Twisted (`SLPClient` with a key), against the daemon on loopback."""
    keys = tmp_path / "keys"
    key = make_key(keys, "saproxy")
    slpda = Slpda(tmp_path, f'[registration]\nkey_directory = "{keys}"\n')
    slpda.start()
    script = f"""
import sys
from twisted.internet import reactor, defer
from sipmob.service.slp import SLPClient
from sipmob.slp.agent import AgentConfig
client = SLPClient(reactor, da=("127.0.0.1", {slpda.port}),
                   config=AgentConfig(auth_spi="saproxy", auth_key={key!r}))
@defer.inlineCallbacks
def main():
    try:
        yield client.register("sip:tv@192.168.1.20", "service:sip-device", "(name=TV)", 300)
        print("registered")
        yield client.deregister("sip:tv@192.168.1.20")
        print("deregistered")
    finally:
        reactor.stop()
reactor.callWhenRunning(main)
reactor.run()
"""
    try:
        with slpda.client() as plain:
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                    timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "daemons")})
            assert result.stdout.split() == ["registered", "deregistered"], result.stderr
            assert plain.register("sip:tv@192.168.1.20").error == ErrorCode.OK  # gone: free again
        assert "as saproxy" in slpda.output()
    finally:
        slpda.stop()
