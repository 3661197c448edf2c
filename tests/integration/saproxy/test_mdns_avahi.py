"""mDNS-SD advertisement of the devices, seen by avahi-browse (an independent mDNS stack).

Everything runs in a network namespace this test creates: a veth pair (md0 10.200.9.1 for the daemon
and avahi, md1 10.200.9.2 for the device), a private D-Bus bus for avahi, avahi-daemon restricted
to md0, `sipmob-saproxy` with [mdns] on, and a device answering OPTIONS. Multicast never leaves
the namespace. Skipped, with the reason, without root, `ip netns`, avahi-daemon/avahi-browse
(apt avahi-daemon avahi-utils) or dbus-daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers import netns

ROOT = Path(__file__).resolve().parents[3]
TOOLS = ("avahi-daemon", "avahi-browse", "dbus-daemon")

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a network namespace"),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS),
                       reason="needs avahi-daemon, avahi-browse and dbus-daemon "
                              "(apt avahi-daemon avahi-utils)"),
]

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={bus}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""
AVAHI_CONF = """[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces=md0
[wide-area]
enable-wide-area=no
[publish]
publish-addresses=no
publish-hinfo=no
publish-workstation=no
"""
DEVICE = """import socket, sys
from sipmob.sip.message import make_response, parse_message
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(60)
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(make_response(parse_message(data), 200, to_tag="t").to_bytes(), addr)
"""


class World:
    def __init__(self, tmp: Path) -> None:
        if not netns.available():
            pytest.skip("network namespaces are not available here")
        self.tmp = tmp
        self.bus = tmp / "bus"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "daemons"),
                    "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus}"}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ns = netns.Namespace("saproxy-mdns")
        try:
            self.ns.run(["ip", "link", "add", "md0", "type", "veth", "peer", "name", "md1"], check=True)
            for interface, address in (("md0", "10.200.9.1/24"), ("md1", "10.200.9.2/24")):
                self.ns.run(["ip", "link", "set", interface, "multicast", "on", "up"], check=True)
                self.ns.add_address(interface, address)
            (tmp / "bus.conf").write_text(BUS_CONF.format(bus=self.bus))
            (tmp / "avahi.conf").write_text(AVAHI_CONF)
            (tmp / "device.py").write_text(DEVICE)
            self.start("dbus", ["dbus-daemon", f"--config-file={tmp / 'bus.conf'}", "--nofork",
                                "--nopidfile"])
            self.wait(lambda: self.bus.exists(), "the D-Bus socket")
            self.start("avahi", ["avahi-daemon", "-f", str(tmp / "avahi.conf"), "--no-drop-root",
                                 "--no-chroot", "--no-rlimits", "--no-proc-title"])
            self.wait(lambda: "Server startup complete" in (tmp / "avahi.log").read_text(), "avahi-daemon")
            self.device = self.start("device", [sys.executable, str(tmp / "device.py"), "10.200.9.2", "5062"])
        except BaseException:
            self.close()
            raise

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # the child keeps its own descriptor
        proc = self.ns.popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def wait(self, condition: object, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():  # type: ignore[operator]
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{what} did not come up: {self.logs()}")

    def browse(self) -> list[str]:
        """Resolved _sip._udp services, avahi-browse's parsable lines starting with "="."""
        result = self.ns.run(["avahi-browse", "-r", "-t", "-p", "_sip._udp"], env=self.env, timeout=20)
        return [line for line in result.stdout.splitlines() if line.startswith("=")]

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in self.tmp.glob("*.log"))

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        self.ns.delete()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.close()


def test_a_device_up_is_seen_by_avahi_with_room_and_capabilities_and_withdrawn_when_down(
        world: World, tmp_path: Path) -> None:
    devices = tmp_path / "devices.d"
    devices.mkdir()
    (devices / "tv.toml").write_text('uri = "sip:tv@10.200.9.2:5062"\nname = "Kitchen TV"\nroom = "kitchen"\n'
                                     'audio = "recvonly"\nvideo = "recvonly"\n')
    (tmp_path / "saproxy.toml").write_text(
        f'[devices]\ndirectory = "{devices}"\n[sip]\naddress = "10.200.9.1"\nport = 5070\n'
        f'[slp]\ndas = ["127.0.0.1:9"]\n[mdns]\nenabled = true\ninterfaces = ["10.200.9.1"]\n'
        f'[state]\nfile = "{tmp_path / "saproxy.json"}"\n'
        '[probe]\ninterval = 0.5\ntimeout = 0.5\nretry = 0.2\ndown_after = 2\nbackoff_max = 1.0\n')
    proxy = world.start("saproxy", [sys.executable, "-m", "sipmob.saproxy",
                                    "--config", str(tmp_path / "saproxy.toml")])
    log = tmp_path / "saproxy.log"
    world.wait(lambda: "advertising sip:tv@10.200.9.2:5062" in log.read_text(), "saproxy")
    lines: list[str] = []
    deadline = time.monotonic() + 15
    while not lines and time.monotonic() < deadline:
        lines = world.browse()
    assert len(lines) == 1, world.logs()
    fields = lines[0].split(";")
    assert fields[3] == "Kitchen\\032TV" and fields[7] == "10.200.9.2" and fields[8] == "5062"
    assert '"room=kitchen"' in fields[9] and '"capabilities=audio-recvonly,video-recvonly"' in fields[9]

    world.device.kill()  # the device goes silent: withdrawn with a goodbye
    world.wait(lambda: "device tv is down" in log.read_text(), "the device going down")
    deadline = time.monotonic() + 15
    while lines and time.monotonic() < deadline:
        lines = world.browse()
    assert lines == [], world.logs()
    os.kill(proxy.pid, signal.SIGTERM)
    assert proxy.wait(30) == 0
