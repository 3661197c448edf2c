"""An MDSM call with a CN outside survives a failing WAN link: its audio anchored in the transcoder.

The stage is `twowan.TwoWan`. In `home`: the DA, `sipmob-transcoder`, `sipmob-mdsm` with the
egress list of wan1 and wan2 (``[egress] file``, anchoring on, its default), a baresip speaker as
the living room's only member (on the home's loopback), and ``sipmob phone`` on wan1's address
as the mobile node that hands its call over. baresip is the CN in `internet`. After the handoff
the speaker talks to the transcoder (a plain relay: both speak PCMU) and the transcoder's CN side
is bound to wan1's address; `ip link set down` on wan1 must bring, at the CN, RTP from wan2's
address (the transcoder's side moved and the CN re-INVITEd from wan2), and at the speaker the
CN's audio again, while the speaker's own leg is never re-INVITEd. STATUS= (read from a
NOTIFY_SOCKET of ours) names the call's egress. A second test kills the MDSM with -9 before
pulling the link: the restarted daemon takes the call, its transcoder leg and its egress up
again from its store and still moves it. Needs root (namespaces) and baresip.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    CN,
    HOME1,
    HOME2,
    CaptureAtCN,
    Correspondent,
    HomePhone,
    TwoWan,
    egress_toml,
    until,
)
from tests.peers.baresip import BARESIP, MODULE_PATH
from tests.peers.netns import Namespace, available
from tests.peers.process import terminate

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}
LO = "127.0.0.1"
DA_PORT, TX_PORT, MDSM_PORT, SPEAKER_PORT = 4270, 5080, 5064, 5070
SPEAKER_RTP = (31000, 31019)  # the speaker's RTP ports: what reaches them on lo is what it hears

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]


class Daemon:
    """A process in `ns`, its output in a file, up once `ready` appears in it."""

    def __init__(self, ns: Namespace, argv: list[str], log_path: Path, ready: str,
                 env: dict[str, str] | None = None, timeout: float = 20.0) -> None:
        self.ns, self.argv, self.log_path, self.ready, self.env = ns, argv, log_path, ready, env or ENV
        self.start(timeout)

    def start(self, timeout: float = 20.0) -> None:
        offset = len(self.output())
        self.log = open(self.log_path, "ab")  # closed in stop()/kill9()
        self.proc = self.ns.popen(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if not until(lambda: self.ready in self.output()[offset:] or self.proc.poll() is not None, timeout) \
                or self.proc.poll() is not None:
            raise RuntimeError(f"{self.argv} did not start:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            terminate(self.proc, 10)
        self.log.close()


class Speaker:
    """baresip in `home` on the loopback, answering at once, sending a 1 kHz sine."""

    def __init__(self, net: TwoWan, directory: Path) -> None:
        self.dir = directory / "speaker"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.uri = f"sip:speaker@{LO}:{SPEAKER_PORT}"
        lines = ["poll_method epoll", f"sip_listen {LO}:{SPEAKER_PORT}", "call_local_timeout 120",
                 "audio_player aubridge,nil", "audio_alert aubridge,nil", "audio_source ausine,1000",
                 "ausrc_srate 48000", "ausrc_channels 2", f"net_interface {LO}", f"dns_server {LO}:53",
                 f"rtp_ports {SPEAKER_RTP[0]}-{SPEAKER_RTP[1]}", f"module_path {MODULE_PATH}",
                 *(f"module {m}.so" for m in ("g711", "aufile", "ausine", "aubridge")),
                 "module_tmp account.so", "module_app menu.so"]
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        (self.dir / "accounts").write_text(f"<{self.uri}>;regint=0;answermode=auto;audio_codecs=PCMU\n")
        (self.dir / "contacts").write_text("")
        assert BARESIP is not None
        self.log = open(self.dir / "baresip.log", "wb")  # closed in stop()
        self.proc = net.home.popen([BARESIP, "-f", str(self.dir)], stdin=subprocess.DEVNULL, stdout=self.log,
                                   stderr=subprocess.STDOUT, cwd=self.dir)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError((self.dir / "baresip.log").read_text())

    def output(self) -> str:
        return (self.dir / "baresip.log").read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.proc, 5)
        self.log.close()


class HeardOnLo:
    """Arrival times of RTP on `home`'s loopback to the speaker's RTP ports, and of SIP INVITEs to
    the speaker's SIP port (a re-INVITE of its leg would show here)."""

    def __init__(self, net: TwoWan) -> None:
        self.rtp: list[float] = []
        self.invites: list[float] = []
        self._sock = net.home.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
        self._sock.bind(("lo", 0x0800))
        self._sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data, meta = self._sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            if meta[2] == socket.PACKET_OUTGOING or len(data) < 28 or data[9] != 17:
                continue
            ihl = (data[0] & 0x0F) * 4
            dport = int.from_bytes(data[ihl + 2:ihl + 4], "big")
            if SPEAKER_RTP[0] <= dport <= SPEAKER_RTP[1]:
                self.rtp.append(time.monotonic())
            elif dport == SPEAKER_PORT and data[ihl + 8:ihl + 14] == b"INVITE":
                self.invites.append(time.monotonic())

    def rtp_after(self, t: float) -> int:
        return sum(1 for x in list(self.rtp) if x > t)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self._sock.close()


class StatusReader:
    """A NOTIFY_SOCKET of ours: the STATUS= lines a daemon sends (sd_notify), in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.lines: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode(errors="replace").splitlines():
                if line.startswith("STATUS="):
                    self.lines.append(line[7:])

    def last(self) -> str:
        return self.lines[-1] if self.lines else ""

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


class Home:
    def __init__(self, net: TwoWan, directory: Path) -> None:
        self.net, self.dir = net, directory
        self.started: list[Any] = []
        home = net.home
        (directory / "da").mkdir()
        (directory / "da" / "slpda.toml").write_text(f'[state]\nfile = "{directory / "da" / "slpda.json"}"\n')
        self.da = Daemon(home, [sys.executable, "-m", "sipmob.slpda", "--config",
                                str(directory / "da" / "slpda.toml"), "--listen", f"{LO}:{DA_PORT}"],
                         directory / "da" / "slpda.log", "listening")
        self.started.append(self.da)
        (directory / "tx").mkdir()
        (directory / "tx" / "transcoder.toml").write_text(
            f'[sip]\naddress = "{LO}"\nport = {TX_PORT}\n[rtp]\naddress = "{LO}"\nport_min = 32000\n'
            f'port_max = 32199\n[media]\nworkers = 1\n[access]\nallowed_networks = ["127.0.0.0/8"]\n'
            f'[slp]\ndas = ["{LO}:{DA_PORT}"]\nupdate_interval = 0.5\n[log]\nlevel = "debug"\n')
        self.transcoder = Daemon(home, [sys.executable, "-m", "sipmob.transcoder", "--config",
                                        str(directory / "tx" / "transcoder.toml")],
                                 directory / "tx" / "transcoder.log", "transcoder at")
        self.started.append(self.transcoder)
        self.speaker = Speaker(net, directory)
        self.started.append(self.speaker)
        (directory / "mdsm" / "devices.d").mkdir(parents=True)
        (directory / "mdsm" / "devices.d" / "speaker.toml").write_text(
            f'uri = "{self.speaker.uri}"\naudio = "sendrecv"\n')
        (directory / "mdsm" / "egress.toml").write_text(egress_toml())
        self.mdsm_config = directory / "mdsm" / "mdsm.toml"
        self.mdsm_config.write_text(
            f'[listen]\naddress = "0.0.0.0"\nport = {MDSM_PORT}\nadvertise_address = "{LO}"\n'
            f'[slp]\nda = "{LO}:{DA_PORT}"\n[devices]\ndirectory = "{directory / "mdsm" / "devices.d"}"\n'
            f'[state]\nfile = "{directory / "mdsm" / "mdsm.sqlite"}"\n'
            f'[egress]\nfile = "{directory / "mdsm" / "egress.toml"}"\n[log]\nlevel = "debug"\n'
            f'[[system]]\nname = "living-room"\nmembers = ["speaker"]\nowners = ["sip:mn@{HOME1}"]\n')
        self.status = StatusReader(directory / "notify.sock")
        self.mdsm = Daemon(home, [sys.executable, "-m", "sipmob.mdsm", "--config", str(self.mdsm_config)],
                           directory / "mdsm" / "mdsm.log", "listening on",
                           env={**ENV, "NOTIFY_SOCKET": str(self.status.path)})
        self.started.append(self.mdsm)
        self.cn = Correspondent(net, directory)
        self.started.append(self.cn)
        self.capture = CaptureAtCN(net)
        self.heard = HeardOnLo(net)
        self.phone = HomePhone(net, directory / "mn", "", da=f"{LO}:{DA_PORT}", address=HOME1)
        self.started.append(self.phone)

    def hand_over(self) -> None:
        done = self.phone.command("call", uri=self.cn.uri)
        assert "established" in done, done
        assert until(lambda: self.phone.received() > 10, 10), self.phone.output()
        [call] = self.phone.command("calls")
        out = self.phone.command("transfer", timeout=30, call=str(call["id"]), to=["living-room"],
                                 mode="handoff")
        assert out, out
        assert until(lambda: "handed to living-room" in self.mdsm.output(), 20), \
            self.mdsm.output() + self.phone.output()
        assert "audio anchored in transcoder" in self.mdsm.output()

    def stop(self) -> None:
        for process in reversed(self.started):
            try:
                process.stop()
            except Exception:
                pass
        self.capture.close()
        self.heard.close()
        self.status.close()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    net = TwoWan()
    h = None
    try:
        # The CN sends from its own address (the one in its SDP), as a host with one address does:
        # the transcoder takes a party's RTP only from the address its description gives.
        for n in (1, 2):
            net.internet.run(["ip", "route", "replace", f"10.200.{n}.0/24", "via", f"10.200.1{n}.1",
                              "src", CN], check=True)
        h = Home(net, tmp_path)
        yield h
    finally:
        if h is not None:
            h.stop()
        net.delete()


def anchored_on_wan1(home: Home) -> float:
    """The call runs: the CN hears the relay from wan1's address, the speaker hears the CN."""
    t = time.monotonic()
    assert until(lambda: len(home.capture.rtp_from(HOME1, t)) > 20, 10), home.mdsm.output()
    assert until(lambda: home.heard.rtp_after(t) > 20, 10), home.transcoder.output()
    assert until(lambda: "wan1 (1 call)" in home.status.last(), 10), home.status.lines
    return t


def moves_to_wan2(home: Home) -> None:
    invites_before = len(home.heard.invites)
    t0 = time.monotonic()
    home.net.link_down("h1")
    assert until(lambda: len(home.capture.rtp_from(HOME2, t0)) > 20, 15), \
        home.mdsm.output() + home.transcoder.output()
    first = home.capture.rtp_from(HOME2, t0)[0]
    # the CN's audio reaches the speaker again: the CN took the re-INVITE with the new port
    assert until(lambda: home.heard.rtp_after(first + 0.3) > 20, 10), \
        home.mdsm.output() + home.transcoder.output()
    assert until(lambda: "wan2 (1 call)" in home.status.last(), 10), home.status.lines
    assert f"moved to {HOME2}" in home.mdsm.output()
    assert len(home.heard.invites) == invites_before, "the speaker's leg was re-INVITEd"
    assert "side A moved from" in home.transcoder.output()
    print(f"link down -> CN hears {HOME2}: {(first - t0) * 1000:.1f} ms")


def test_link_down_moves_an_anchored_mdsm_call_and_the_speaker_keeps_hearing_the_cn(home: Home) -> None:
    home.hand_over()
    anchored_on_wan1(home)
    assert "relay PCMU" in home.mdsm.output()
    moves_to_wan2(home)


def test_a_restarted_mdsm_keeps_the_anchored_call_and_its_egress_and_still_moves_it(home: Home) -> None:
    home.hand_over()
    anchored_on_wan1(home)
    home.mdsm.kill9()
    home.mdsm.start()
    assert until(lambda: "on egress wan1 (10.200.1.2)" in home.mdsm.output(), 10), home.mdsm.output()
    t = time.monotonic()
    assert until(lambda: len(home.capture.rtp_from(HOME1, t)) > 20, 10)  # media never went through it
    moves_to_wan2(home)


def test_an_address_change_on_the_calls_egress_moves_it_to_the_new_address(home: Home) -> None:
    """DHCP gave wan1 another address (HMMP): the relay's CN side and the CN's re-INVITE follow."""
    home.hand_over()
    anchored_on_wan1(home)
    new = "10.200.1.3"
    t0 = time.monotonic()
    home.net.readdress("h1", HOME1, new)
    assert until(lambda: len(home.capture.rtp_from(new, t0)) > 20, 15), \
        home.mdsm.output() + home.transcoder.output()
    first = home.capture.rtp_from(new, t0)[0]
    assert until(lambda: home.heard.rtp_after(first + 0.3) > 20, 10), home.mdsm.output()
    assert f"moved to {new}" in home.mdsm.output()
    assert "wan1 (1 call)" in home.status.last(), home.status.lines
