"""The stage of the MDSM egress test and benchmark, on `twowan.TwoWan`.

In `home`: the DA, `sipmob-transcoder`, `sipmob-mdsm` with the egress list of wan1 and wan2
(``[egress] file``, anchoring on, its default), a baresip speaker as the living room's only member
(on the home's loopback, RTP ports `SPEAKER_RTP`), and ``sipmob phone`` on wan1's address as the
mobile node that hands its call over; baresip as the CN in `internet`. `HeardOnLo` watches what
reaches the speaker, `StatusReader` the MDSM's STATUS= lines (a NOTIFY_SOCKET of ours),
`twowan.CaptureAtCN` what reaches the CN. Everything is started and stopped by PID.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.integration.net.twowan import (
    CN,
    HOME1,
    CaptureAtCN,
    Correspondent,
    HomePhone,
    PacketTap,
    SocketReader,
    TwoWan,
    egress_toml,
    until,
)
from tests.peers.baresip import BARESIP, MODULE_PATH
from tests.peers.netns import Namespace
from tests.peers.process import terminate

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}
LO = "127.0.0.1"
DA_PORT, TX_PORT, MDSM_PORT, SPEAKER_PORT = 4270, 5080, 5064, 5070
SPEAKER_RTP = (31000, 31019)  # the speaker's RTP ports: what reaches them on lo is what it hears

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


class HeardOnLo(PacketTap):
    """Arrival times of RTP on `home`'s loopback to the speaker's RTP ports, and of SIP INVITEs to
    the speaker's SIP port (a re-INVITE of its leg would show here)."""

    def __init__(self, net: TwoWan) -> None:
        self.rtp: list[float] = []
        self.invites: list[float] = []
        super().__init__(net.home, "lo")

    def packet(self, data: bytes, now: float) -> None:
        if len(data) < 28 or data[9] != 17:
            return
        ihl = (data[0] & 0x0F) * 4
        dport = int.from_bytes(data[ihl + 2:ihl + 4], "big")
        if SPEAKER_RTP[0] <= dport <= SPEAKER_RTP[1]:
            self.rtp.append(now)
        elif dport == SPEAKER_PORT and data[ihl + 8:ihl + 14] == b"INVITE":
            self.invites.append(now)

    def rtp_after(self, t: float) -> int:
        return sum(1 for x in list(self.rtp) if x > t)


class StatusReader(SocketReader):
    """A NOTIFY_SOCKET of ours: the STATUS= lines a daemon sends (sd_notify), in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[str] = []
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        super().__init__(sock, 65536)

    def received(self, data: bytes, sender: Any, now: float) -> None:
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("STATUS="):
                self.lines.append(line[7:])

    def last(self) -> str:
        return self.lines[-1] if self.lines else ""


class Home:
    def __init__(self, net: TwoWan, directory: Path) -> None:
        self.net, self.dir = net, directory
        self.started: list[Any] = []
        home = net.home
        # The CN sends from its own address (the one in its SDP), as a host with one address does:
        # the transcoder takes a party's RTP only from the address its description gives.
        for n in (1, 2):
            net.internet.run(["ip", "route", "replace", f"10.200.{n}.0/24", "via", f"10.200.1{n}.1",
                              "src", CN], check=True)
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
        self.control = directory / "mdsm" / "egress.sock"  # `sipmob egress --mdsm-control`
        self.mdsm_config.write_text(
            f'[listen]\naddress = "0.0.0.0"\nport = {MDSM_PORT}\nadvertise_address = "{LO}"\n'
            f'[slp]\nda = "{LO}:{DA_PORT}"\n[devices]\ndirectory = "{directory / "mdsm" / "devices.d"}"\n'
            f'[state]\nfile = "{directory / "mdsm" / "mdsm.sqlite"}"\n'
            f'[egress]\nfile = "{directory / "mdsm" / "egress.toml"}"\ncontrol = "{self.control}"\n'
            f'[log]\nlevel = "debug"\n'
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

    def hand_over(self, before_transfer: Callable[[], None] | None = None) -> None:
        done = self.phone.command("call", uri=self.cn.uri)
        assert "established" in done, done
        assert until(lambda: self.phone.received() > 10, 10), self.phone.output()
        if before_transfer is not None:
            before_transfer()
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


@contextmanager
def mdsm_stage(directory: Path) -> Iterator[Home]:
    """`Home` on a `TwoWan` of its own: stopped, then the namespaces deleted, whatever fails."""
    net = TwoWan()
    home = None
    try:
        home = Home(net, directory)
        yield home
    finally:
        if home is not None:
            home.stop()
        net.delete()
