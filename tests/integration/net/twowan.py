"""A home with two WAN links, in network namespaces: the stage of the egress tests and benchmark.

    home (sipmob phone) --h1-- wan1 (ISP router) --w1i-- internet (the CN, baresip, 10.200.100.1)
                        --h2-- wan2 (ISP router) --w2i--

`home` routes by source address, as an admin would with ``ip rule`` (one table per WAN): what
leaves from 10.200.1.0/24 takes wan1, from 10.200.2.0/24 wan2. The ISP routers forward (no NAT),
so the CN sees the home's own addresses. `CaptureAtCN` watches, from inside `internet`, which
home address the RTP reaching the CN comes from, with the time it arrived.

Failures: `link_down` (netlink sees it), `upstream_dead` (the ISP router drops everything it would
forward: the 100 % loss `tc netem` would give, with iptables where the kernel has no netem;
nothing changes on the home's links), `readdress` (a new address on a link, the old one removed).
With ``ipv6=True`` every link is dual-stack: the home has 2001:db8:1::2 on h1 and 2001:db8:2::2 on
h2, routed by source as the IPv4 addresses are (``ip -6 rule``), the CN 2001:db8:100::1 (addresses
of the documentation prefix, RFC 3849, only inside the namespaces).
`TwoGateways` is the other stage: two gateways on one home LAN (192.168.50.0/24), each with its
own WAN (gwA over wan1, gwB over wan2); `Gateways` runs the DA, both phones and the CN on it.
Everything lives in namespaces this module creates and deletes; nothing leaves the machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.peers.baresip import BARESIP, MODULE_PATH
from tests.peers.netns import Namespace
from tests.peers.process import terminate
from tests.peers.sipp import SIPP

from sipmob.mn.control import ControlUnavailable, request

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent"}

CN = "10.200.100.1"
HOME1, HOME2 = "10.200.1.2", "10.200.2.2"
CN6 = "2001:db8:100::1"
HOME1_6, HOME2_6 = "2001:db8:1::2", "2001:db8:2::2"
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD


def until(condition: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


class TwoWan:
    def __init__(self, ipv6: bool = False) -> None:
        self.spaces: list[Namespace] = []
        self.ipv6 = ipv6
        try:
            self._build()
            if ipv6:
                self._build6()
        except BaseException:
            self.delete()
            raise

    def _ns(self, name: str) -> Namespace:
        ns = Namespace(name)
        self.spaces.append(ns)
        return ns

    def _build(self) -> None:
        self.home, self.wan1, self.wan2, self.internet = (
            self._ns("eg-home"), self._ns("eg-wan1"), self._ns("eg-wan2"), self._ns("eg-inet"))
        self.home.veth(self.wan1, f"{HOME1}/24", "10.200.1.1/24", "h1", "w1h")
        self.home.veth(self.wan2, f"{HOME2}/24", "10.200.2.1/24", "h2", "w2h")
        self.wan1.veth(self.internet, "10.200.11.1/24", "10.200.11.2/24", "w1i", "i1")
        self.wan2.veth(self.internet, "10.200.12.1/24", "10.200.12.2/24", "w2i", "i2")
        for wan, upstream in ((self.wan1, "10.200.11.2"), (self.wan2, "10.200.12.2")):
            wan.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            wan.run(["ip", "route", "add", "10.200.100.0/24", "via", upstream], check=True)
        inet = self.internet
        inet.run(["ip", "addr", "add", f"{CN}/32", "dev", "lo"], check=True)
        inet.run(["ip", "route", "add", "10.200.1.0/24", "via", "10.200.11.1"], check=True)
        inet.run(["ip", "route", "add", "10.200.2.0/24", "via", "10.200.12.1"], check=True)
        home = self.home
        for n, (prefix, gateway, dev) in enumerate((("10.200.1.0/24", "10.200.1.1", "h1"),
                                                   ("10.200.2.0/24", "10.200.2.1", "h2")), start=1):
            table = str(100 + n)
            home.run(["ip", "rule", "add", "from", prefix, "table", table, "pref", str(1000 + n)], check=True)
            home.run(["ip", "route", "add", "default", "via", gateway, "dev", dev, "table", table],
                     check=True)
        home.run(["ip", "route", "add", "default", "via", "10.200.1.1", "metric", "100"], check=True)
        # as systemd's sysctl defaults have it: the old address's going does not take the new one with it
        for conf in ("all", "h1", "h2"):
            home.run(["sysctl", "-qw", f"net.ipv4.conf.{conf}.promote_secondaries=1"], check=True)

    def _build6(self) -> None:
        def addr(ns: Namespace, address: str, dev: str) -> None:
            ns.run(["ip", "-6", "addr", "add", address, "dev", dev, "nodad"], check=True)

        addr(self.home, f"{HOME1_6}/64", "h1")
        addr(self.home, f"{HOME2_6}/64", "h2")
        addr(self.wan1, "2001:db8:1::1/64", "w1h")
        addr(self.wan2, "2001:db8:2::1/64", "w2h")
        addr(self.wan1, "2001:db8:11::1/64", "w1i")
        addr(self.internet, "2001:db8:11::2/64", "i1")
        addr(self.wan2, "2001:db8:12::1/64", "w2i")
        addr(self.internet, "2001:db8:12::2/64", "i2")
        for wan, upstream in ((self.wan1, "2001:db8:11::2"), (self.wan2, "2001:db8:12::2")):
            wan.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=True)
            wan.run(["ip", "-6", "route", "add", "2001:db8:100::/64", "via", upstream], check=True)
        inet = self.internet
        inet.run(["ip", "-6", "addr", "add", f"{CN6}/128", "dev", "lo"], check=True)
        inet.run(["ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:11::1"], check=True)
        inet.run(["ip", "-6", "route", "add", "2001:db8:2::/64", "via", "2001:db8:12::1"], check=True)
        home = self.home
        for n, (prefix, gateway, dev) in enumerate((("2001:db8:1::/64", "2001:db8:1::1", "h1"),
                                                   ("2001:db8:2::/64", "2001:db8:2::1", "h2")), start=1):
            table = str(100 + n)
            home.run(["ip", "-6", "rule", "add", "from", prefix, "table", table, "pref", str(1000 + n)],
                     check=True)
            home.run(["ip", "-6", "route", "add", "default", "via", gateway, "dev", dev, "table", table],
                     check=True)
        home.run(["ip", "-6", "route", "add", "default", "via", "2001:db8:1::1", "metric", "100"], check=True)

    # Failures ---------------------------------------------------------------------------------------

    def link_down(self, interface: str = "h1") -> None:
        self.home.set_link(interface, False)

    def link_up(self, interface: str = "h1") -> None:
        """The link back, with the routes the kernel dropped when it went down (what systemd-networkd
        or ifupdown put back)."""
        self.home.set_link(interface, True)
        n = 1 if interface == "h1" else 2
        self.home.run(["ip", "route", "replace", "default", "via", f"10.200.{n}.1", "dev", interface,
                       "table", str(100 + n)])
        if n == 1:
            self.home.run(["ip", "route", "replace", "default", "via", "10.200.1.1", "metric", "100"])

    def flap(self, interface: str = "h1", period: float = 2.0, seconds: float = 20.0) -> int:
        """Down and up every `period` seconds for `seconds`; returns how many times it went down."""
        downs = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.link_down(interface)
            downs += 1
            time.sleep(period / 2)
            self.link_up(interface)
            time.sleep(period / 2)
        return downs

    def upstream_dead(self, wan: Namespace, outbound_only: bool = False) -> str:
        """Drop everything `wan` would forward (with `outbound_only`, only what the home sends: a
        one-way failure); returns how ("netem" or "iptables")."""
        n = 1 if wan is self.wan1 else 2
        if not outbound_only and wan.run(["tc", "qdisc", "add", "dev", f"w{n}i", "root", "netem", "loss",
                                          "100%"]).returncode == 0:
            return "netem"
        wan.run(["iptables", "-I", "FORWARD", *(["-i", f"w{n}h"] if outbound_only else []), "-j", "DROP"],
                check=True)
        return "iptables"

    def readdress(self, interface: str, old: str, new: str) -> None:
        """DHCP gave another address: the new one first, then the old one goes."""
        self.home.run(["ip", "addr", "add", f"{new}/24", "dev", interface], check=True)
        self.home.run(["ip", "addr", "del", f"{old}/24", "dev", interface], check=True)

    def delete(self) -> None:
        for ns in reversed(self.spaces):
            try:
                ns.delete()
            except Exception:
                pass
        self.spaces.clear()


class Correspondent:
    """baresip in `internet`, answering at once, sending a tone (the CN of the tests)."""

    def __init__(self, net: TwoWan, directory: Path, port: int = 5060, host: str = CN, *,
                 video: bool = False, dial: str | None = None) -> None:
        """With `video`, a synthetic camera (fakevideo, VP8) too; with `dial`, it calls that URI
        as soon as it has started."""
        assert BARESIP is not None
        self.dir = directory / f"cn-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        literal = f"[{host}]" if ":" in host else host
        self.uri = f"sip:cn@{literal}:{port}"
        lines = ["poll_method epoll", f"sip_listen {literal}:{port}", "call_local_timeout 120",
                 "call_max_calls 32",
                 "audio_player aubridge,nil", "audio_alert aubridge,nil", "audio_source ausine,440",
                 "ausrc_srate 48000", "ausrc_channels 2", f"net_interface {host}",
                 *(["net_prefer_ipv6 yes"] if ":" in host else []),
                 f"dns_server {literal}:53", f"module_path {MODULE_PATH}",
                 *(f"module {m}.so" for m in ("g711", "aufile", "ausine", "aubridge")),
                 "module_tmp account.so", "module_app menu.so",
                 *(["module vp8.so", "module fakevideo.so", "video_source fakevideo,nil",
                    "video_display fakevideo,nil", "video_size 320x240", "video_fps 10"] if video else [])]
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        (self.dir / "accounts").write_text(f"<{self.uri}>;regint=0;answermode=auto\n")
        (self.dir / "contacts").write_text("")
        self.log = open(self.dir / "baresip.log", "wb")  # closed in stop()
        self.proc = net.internet.popen([BARESIP, *(["-6"] if ":" in host else []), "-f", str(self.dir),
                                        *(["-e", f"/dial {dial}"] if dial else [])],
                                       stdin=subprocess.DEVNULL,
                                       stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError((self.dir / "baresip.log").read_text())

    def stop(self) -> None:
        terminate(self.proc, 5)
        self.log.close()


class CaptureAtCN:
    """Every UDP packet reaching the CN from the home: (arrival time.monotonic(), source, dport,
    the first bytes of the payload)."""

    def __init__(self, net: TwoWan) -> None:
        self.packets: list[tuple[float, str, int, bytes]] = []
        self.tcp: list[tuple[float, str, int, int, bytes]] = []
        self._lock = threading.Lock()
        self._socks = []
        for ifname in ("i1", "i2"):
            for protocol in (ETH_P_IP, ETH_P_IPV6) if net.ipv6 else (ETH_P_IP,):
                sock = net.internet.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
                sock.bind((ifname, protocol))
                sock.settimeout(0.2)
                self._socks.append(sock)
        self._stop = False
        self._threads = [threading.Thread(target=self._read, args=(s,), daemon=True) for s in self._socks]
        for t in self._threads:
            t.start()

    def _read(self, sock: socket.socket) -> None:
        while not self._stop:
            try:
                data, meta = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            if meta[2] == socket.PACKET_OUTGOING:
                continue
            if data[:1] and data[0] >> 4 == 6:
                self._read6(data, now)
                continue
            if len(data) < 28 or data[9] not in (6, 17):
                continue
            ihl = (data[0] & 0x0F) * 4
            dst = socket.inet_ntoa(data[16:20])
            if dst != CN:
                continue
            if data[9] == 6:  # TCP: (time, source, dport, flags, the first bytes of the payload)
                offset = ihl + (data[ihl + 12] >> 4) * 4
                with self._lock:
                    self.tcp.append((now, socket.inet_ntoa(data[12:16]),
                                     int.from_bytes(data[ihl + 2:ihl + 4], "big"), data[ihl + 13],
                                     data[offset:offset + 16]))
                continue
            source = socket.inet_ntoa(data[12:16])
            dport = int.from_bytes(data[ihl + 2:ihl + 4], "big")
            with self._lock:
                self.packets.append((now, source, dport, data[ihl + 8:ihl + 16]))

    def _read6(self, data: bytes, now: float) -> None:
        if len(data) < 48 or data[6] != 17:  # UDP right after the fixed header (no extension headers)
            return
        if socket.inet_ntop(socket.AF_INET6, data[24:40]) != CN6:
            return
        source = socket.inet_ntop(socket.AF_INET6, data[8:24])
        dport = int.from_bytes(data[42:44], "big")
        with self._lock:
            self.packets.append((now, source, dport, data[48:56]))

    def rtp_from(self, source: str, after: float = 0.0) -> list[float]:
        """Arrival times of RTP (anything but SIP's port 5060) from `source` after `after`."""
        with self._lock:
            return [t for t, s, port, _ in self.packets if s == source and port != 5060 and t > after]

    def sip_from(self, source: str, after: float = 0.0, method: str = "", port: int = 5060) -> list[float]:
        """Arrival times of SIP from `source` at `port` (only requests of `method`, if given)."""
        with self._lock:
            return [t for t, s, p, head in self.packets
                    if s == source and p == port and t > after and head.startswith(method.encode())]

    def tcp_from(self, source: str, after: float = 0.0, *, syn: bool = False, start: str = "") -> list[float]:
        """Arrival times of TCP segments from `source` after `after`: connection openings (`syn`), or
        segments whose payload begins with `start` (a SIP request's method)."""
        with self._lock:
            return [t for t, s, _port, flags, head in self.tcp if s == source and t > after
                    and (not syn or flags & 0x12 == 0x02) and head.startswith(start.encode())]

    def close(self) -> None:
        self._stop = True
        for t in self._threads:
            t.join(2)
        for s in self._socks:
            s.close()


class SocketReader:
    """A thread of this process reading `sock` (bound by the caller) until `close`, each datagram
    handed to `received` with its sender and arrival time."""

    def __init__(self, sock: socket.socket, size: int = 2048) -> None:
        self._sock, self._size = sock, size
        self._sock.settimeout(0.2)  # how soon `close` is seen
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data, sender = self._sock.recvfrom(self._size)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received(data, sender, time.monotonic())

    def received(self, data: bytes, sender: Any, now: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self._sock.close()


class PacketTap(SocketReader):
    """What arrives on `ifname` of `ns` (AF_PACKET, IP `protocol`), not what leaves it, each packet
    handed to `packet` with its arrival time."""

    def __init__(self, ns: Namespace, ifname: str, protocol: int = ETH_P_IP, size: int = 2048) -> None:
        sock = ns.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
        sock.bind((ifname, protocol))
        super().__init__(sock, size)

    def received(self, data: bytes, sender: Any, now: float) -> None:
        if sender[2] != socket.PACKET_OUTGOING:
            self.packet(data, now)

    def packet(self, data: bytes, now: float) -> None:
        raise NotImplementedError


class SippInInternet:
    """sipp running a scenario in `internet` on CN:`port` (or in `ns` on `host`, and as a UAC when
    given a `target`; over TCP with `transport` "t1"); `wait()` gives its exit status."""

    def __init__(self, net: TwoWan, scenario: Path, directory: Path, port: int,
                 timeout: float = 30.0, *, ns: Namespace | None = None, host: str = CN,
                 target: str | None = None, transport: str = "u1") -> None:
        assert SIPP is not None
        self.dir = directory / f"sipp-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [SIPP, *([target] if target else []), "-sf", str(scenario), "-i", host, "-p", str(port),
                "-t", transport, "-m", "1", "-timeout",
                f"{round(timeout)}s", "-timeout_error", "-nostdin", "-aa", "-trace_err", "-error_file",
                str(self.dir / "errors.log"), "-trace_msg", "-message_file", str(self.dir / "messages.log")]
        self._out = open(self.dir / "stdout.log", "wb")  # closed in wait()
        self.proc = (ns or net.internet).popen(argv, stdin=subprocess.DEVNULL, stdout=self._out,
                                               stderr=subprocess.STDOUT, cwd=self.dir)
        time.sleep(0.3)

    def wait(self, timeout: float = 40.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = terminate(self.proc, 3)
        self._out.close()
        return code

    def report(self) -> str:
        return "\n".join((self.dir / name).read_text(errors="replace")[-3000:]
                         for name in ("errors.log", "messages.log") if (self.dir / name).exists())


class NetlinkClock(SocketReader):
    """When the kernel of `home` announced link and address changes: (time.monotonic(), type), read
    by a thread of this process on its own rtnetlink socket, as independent of the phone as the
    capture at the CN is."""

    RTM_NEWLINK, RTM_NEWADDR, RTM_DELADDR = 16, 20, 21
    GROUPS = 0x1 | 0x10  # RTMGRP_LINK | RTMGRP_IPV4_IFADDR

    def __init__(self, net: TwoWan) -> None:
        self.news: list[tuple[float, int]] = []
        sock = net.home.socket(socket.AF_NETLINK, socket.SOCK_RAW)  # protocol 0: NETLINK_ROUTE
        sock.bind((0, self.GROUPS))
        super().__init__(sock, 65536)

    def received(self, data: bytes, sender: Any, now: float) -> None:
        offset = 0
        while offset + 16 <= len(data):
            length = int.from_bytes(data[offset:offset + 4], sys.byteorder)
            kind = int.from_bytes(data[offset + 4:offset + 6], sys.byteorder)
            self.news.append((now, kind))
            if length < 16:
                break
            offset += (length + 3) & ~3

    def first(self, kind: int, after: float) -> float | None:
        return next((t for t, k in self.news if k == kind and t > after), None)


class HomePhone:
    """``sipmob phone`` in `home`, its egress list in `egress_toml`; driven over its control socket."""

    def __init__(self, net: TwoWan, directory: Path, egress_toml: str, log_level: str = "info",
                 registrar: str = "", da: str = "127.0.0.1:1", *, ns: Namespace | None = None,
                 address: str = HOME1, slp: str = "", extra: str = "", tcp: bool = False) -> None:
        """`slp` is added to the [slp] table of mn.toml, `extra` (more tables) at its end."""
        directory.mkdir(parents=True, exist_ok=True)
        self.control = directory / "mn.sock"
        self.config = directory / "mn.toml"
        egress = directory / "egress.toml"
        egress.write_text(egress_toml)
        egress_line = f"egress = \"{egress}\"\n" if egress_toml else ""
        self.config.write_text(
            f'[listen]\naddress = "{address}"\nport = 5060\n{egress_line}{"tcp = true" if tcp else ""}\n'
            f'[identity]\nregistrar = "{registrar}"\n'
            f'[calls]\nauto_answer = true\n[slp]\nda = "{da}"\n{slp}[control]\npath = "{self.control}"\n'
            f'[state]\nfile = "{directory / "calls.sqlite"}"\n'  # not the machine's own state file
            f'[log]\nlevel = "{log_level}"\n{extra}')
        self.log_path = directory / "phone.log"
        self.ns = ns or net.home
        self.log = open(self.log_path, "wb")  # closed in stop()
        self._start()

    def _start(self) -> None:
        self.proc = self.ns.popen([sys.executable, "-m", "sipmob.mn.cli", "phone", "--config",
                                   str(self.config)], env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        if not until(self._answers, timeout=15) or self.proc.poll() is not None:
            raise RuntimeError(self.output())

    def kill(self) -> None:
        """kill -9: no BYE, no deregistration; the calls stay in the state file."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)

    def restart(self) -> None:
        """Start again (after `kill`), with the same configuration and state file."""
        self._start()

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            return True
        try:
            request(self.control, "calls", timeout=2)
            return True
        except (ControlUnavailable, OSError):
            return False

    def command(self, name: str, timeout: float = 20, **args: Any) -> Any:
        return request(self.control, name, args, timeout=timeout)

    def received(self) -> int:
        calls = self.command("calls")
        return int(calls[0]["rtp_received"]) if calls else -1

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.log.close()


def egress_toml(*, interval: float = 1.0, down_after: int = 3, hold_down: float = 30.0,
                probe: bool = True, probe_port: int = 5060, share: str = "", policy: str = "priority",
                ipv6: bool = False) -> str:
    """With `ipv6`, each egress is its link's IPv6 address (the IPv4 one is there too)."""
    cn = f"[{CN6}]" if ipv6 else CN
    target = f'target = "sip:probe@{cn}:{probe_port}"\n' if probe else ""
    shared = f'[share]\nallow = ["{share}"]\n' if share else ""
    addresses = (f'address = "{HOME1_6}"\n', f'address = "{HOME2_6}"\n') if ipv6 else ("", "")
    return (f'policy = "{policy}"\n'
            f"hold_down = {hold_down}\n[probe]\ninterval = {interval}\ndown_after = {down_after}\n{target}"
            f"{shared}"
            f'[[egress]]\nname = "wan1"\ninterface = "h1"\n{addresses[0]}priority = 1\n'
            f'[[egress]]\nname = "wan2"\ninterface = "h2"\n{addresses[1]}priority = 2\n')



@contextmanager
def lone_phone(directory: Path, egress: str, **options: Any) -> Iterator[tuple[TwoWan, HomePhone]]:
    """``sipmob phone`` with `egress` (and `HomePhone`'s `options`) on a `TwoWan`, no CN: stopped,
    then the namespaces deleted, whatever fails."""
    net = TwoWan()
    phone = None
    try:
        phone = HomePhone(net, directory, egress, **options)
        yield net, phone
    finally:
        if phone is not None:
            phone.stop()
        net.delete()


@contextmanager
def phone_stage(directory: Path, egress: str, *, calls: int = 0, ipv6: bool = False, tcp: bool = False,
                phone_dir: Path | None = None,
                cn: Callable[[TwoWan], Any] | None = None) -> Iterator[dict[str, Any]]:
    """The one-phone stage: `TwoWan`, the capture at the CN, the CN (baresip, or what `cn` starts
    on the net) and ``sipmob phone`` with `egress` in `phone_dir` (else `directory`), having placed
    `calls` calls to the CN; torn down in the reverse order whatever fails, the namespaces last."""
    net = TwoWan(ipv6=ipv6)
    capture = peer = phone = None
    try:
        capture = CaptureAtCN(net)
        peer = cn(net) if cn is not None else Correspondent(net, directory, host=CN6 if ipv6 else CN)
        phone = HomePhone(net, phone_dir or directory, egress, tcp=tcp)
        place_calls(phone, peer.uri, calls)
        yield {"net": net, "cn": peer, "phone": phone, "capture": capture}
    finally:
        if phone is not None:
            phone.stop()
        if peer is not None:
            peer.stop()
        if capture is not None:
            capture.close()
        net.delete()


def place_calls(phone: HomePhone, uri: str, count: int) -> None:
    for _ in range(count):
        assert "established" in phone.command("call", uri=uri), phone.output()


def calls_on(phone: HomePhone) -> dict[str, list[str]]:
    """Egress name: the ids of the calls on it."""
    return {e["name"]: e["calls"] for e in phone.command("egress")["egresses"]}


def received_by_call(phone: HomePhone) -> dict[str, int]:
    """Call id: the RTP packets the phone has received on it."""
    return {c["id"]: int(c["rtp_received"]) for c in phone.command("calls")}


def every_call_hears_the_cn(phone: HomePhone, more: int, timeout: float = 5.0) -> None:
    """Each call receives `more` RTP packets more than now."""
    before = received_by_call(phone)
    assert until(lambda: all(n > before[cid] + more for cid, n in received_by_call(phone).items()),
                 timeout), f"{before} {received_by_call(phone)}\n{phone.output()[-4000:]}"


# Two gateways ---------------------------------------------------------------------------------------

LAN_A, LAN_B = "192.168.50.1", "192.168.50.2"
HOME3 = "10.200.3.2"  # gwB's second link, with `b_second_link`


class TwoGateways:
    """The stage above; `internet` and `ipv6` as `TwoWan` has them, for the CN and the capture.
    With ``ipv6=True`` the WANs and the CN are dual-stack (the home LAN stays IPv4): gwA has
    2001:db8:1::2 on a1, gwB 2001:db8:2::2 on b2, the CN 2001:db8:100::1."""

    def __init__(self, ipv6: bool = False, b_second_link: bool = False) -> None:
        self.spaces: list[Namespace] = []
        self.ipv6 = ipv6
        try:
            self._build()
            if ipv6:
                self._build6()
            if b_second_link:
                self._build_b1()
        except BaseException:
            self.delete()
            raise

    def _ns(self, name: str) -> Namespace:
        ns = Namespace(name)
        self.spaces.append(ns)
        return ns

    def _build_b1(self) -> None:
        """gwB's second link, b1 (HOME3) through wan1, source-routed as `TwoWan`'s home is."""
        self.gw_b.veth(self.wan1, f"{HOME3}/24", "10.200.3.1/24", "b1", "w1b")
        self.internet.run(["ip", "route", "add", "10.200.3.0/24", "via", "10.200.11.1"], check=True)
        for n, (prefix, gateway, dev) in ((2, ("10.200.2.0/24", "10.200.2.1", "b2")),
                                          (3, ("10.200.3.0/24", "10.200.3.1", "b1"))):
            table, b = str(100 + n), self.gw_b
            b.run(["ip", "rule", "add", "from", prefix, "table", table, "pref", str(1000 + n)], check=True)
            b.run(["ip", "route", "add", "default", "via", gateway, "dev", dev, "table", table], check=True)

    def _build(self) -> None:
        self.gw_a, self.gw_b, self.wan1, self.wan2, self.internet = (
            self._ns(name) for name in ("eg-gwa", "eg-gwb", "eg-wan1", "eg-wan2", "eg-inet"))
        self.gw_a.veth(self.gw_b, f"{LAN_A}/24", f"{LAN_B}/24", "lan0", "lan0")
        self.gw_a.veth(self.wan1, f"{HOME1}/24", "10.200.1.1/24", "a1", "w1h")
        self.gw_b.veth(self.wan2, f"{HOME2}/24", "10.200.2.1/24", "b2", "w2h")
        self.wan1.veth(self.internet, "10.200.11.1/24", "10.200.11.2/24", "w1i", "i1")
        self.wan2.veth(self.internet, "10.200.12.1/24", "10.200.12.2/24", "w2i", "i2")
        for wan, upstream in ((self.wan1, "10.200.11.2"), (self.wan2, "10.200.12.2")):
            wan.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
            wan.run(["ip", "route", "add", "10.200.100.0/24", "via", upstream], check=True)
        inet = self.internet
        inet.run(["ip", "addr", "add", f"{CN}/32", "dev", "lo"], check=True)
        inet.run(["ip", "route", "add", "10.200.1.0/24", "via", "10.200.11.1"], check=True)
        inet.run(["ip", "route", "add", "10.200.2.0/24", "via", "10.200.12.1"], check=True)
        self.gw_a.run(["ip", "route", "add", "default", "via", "10.200.1.1"], check=True)
        self.gw_b.run(["ip", "route", "add", "default", "via", "10.200.2.1"], check=True)

    def _build6(self) -> None:
        def addr(ns: Namespace, address: str, dev: str) -> None:
            ns.run(["ip", "-6", "addr", "add", address, "dev", dev, "nodad"], check=True)

        addr(self.gw_a, f"{HOME1_6}/64", "a1")
        addr(self.gw_b, f"{HOME2_6}/64", "b2")
        addr(self.wan1, "2001:db8:1::1/64", "w1h")
        addr(self.wan2, "2001:db8:2::1/64", "w2h")
        addr(self.wan1, "2001:db8:11::1/64", "w1i")
        addr(self.internet, "2001:db8:11::2/64", "i1")
        addr(self.wan2, "2001:db8:12::1/64", "w2i")
        addr(self.internet, "2001:db8:12::2/64", "i2")
        for wan, upstream in ((self.wan1, "2001:db8:11::2"), (self.wan2, "2001:db8:12::2")):
            wan.run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], check=True)
            wan.run(["ip", "-6", "route", "add", "2001:db8:100::/64", "via", upstream], check=True)
        inet = self.internet
        inet.run(["ip", "-6", "addr", "add", f"{CN6}/128", "dev", "lo"], check=True)
        inet.run(["ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:11::1"], check=True)
        inet.run(["ip", "-6", "route", "add", "2001:db8:2::/64", "via", "2001:db8:12::1"], check=True)
        self.gw_a.run(["ip", "-6", "route", "add", "default", "via", "2001:db8:1::1"], check=True)
        self.gw_b.run(["ip", "-6", "route", "add", "default", "via", "2001:db8:2::1"], check=True)

    def delete(self) -> None:
        for ns in reversed(self.spaces):
            try:
                ns.delete()
            except Exception:
                pass
        self.spaces.clear()


def gateway_egress(name: str, interface: str, share: str, address: str = "") -> str:
    fixed = f'address = "{address}"\n' if address else ""
    return f'hold_down = 1.0\n{share}[[egress]]\nname = "{name}"\ninterface = "{interface}"\n{fixed}'


class Gateways:
    """The two-gateway stage at work: the CN, the DA on B's LAN address, B relaying for the home,
    A (``[share] peers``) following B; the capture at the CN."""

    def __init__(self, directory: Path, ipv6: bool = False, b_second_link: bool = False) -> None:
        self.net = TwoGateways(ipv6, b_second_link)
        self.capture = self.cn = self.a = self.b = self.da = self.log = None
        try:
            self.capture = CaptureAtCN(self.net)  # type: ignore[arg-type]
            self.cn = Correspondent(self.net, directory, host=CN6 if ipv6 else CN)  # type: ignore[arg-type]
            (directory / "slpda.toml").write_text(f'[state]\nfile = "{directory / "slpda.json"}"\n')
            self.log = open(directory / "slpda.log", "wb")  # closed in close()
            self.da = self.net.gw_b.popen([sys.executable, "-m", "sipmob.slpda", "--config",
                                           str(directory / "slpda.toml"), "--listen", f"{LAN_B}:4270"],
                                          env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
            time.sleep(0.5)
            b_egress = gateway_egress("wan2", "b2", '[share]\nallow = ["192.168.50.0/24"]\nrelays = 8\n',
                                      HOME2_6 if ipv6 else "")
            if b_second_link:
                b_egress += 'priority = 1\n[[egress]]\nname = "wan3"\ninterface = "b1"\npriority = 2\n'
            self.b = HomePhone(self.net, directory / "b", b_egress,  # type: ignore[arg-type]
                da=f"{LAN_B}:4270",
                ns=self.net.gw_b, address=LAN_B)
            peers = gateway_egress("wan1", "a1", "[share]\npeers = true\n", HOME1_6 if ipv6 else "")
            self.a = HomePhone(self.net, directory / "a", peers,  # type: ignore[arg-type]
                               da=f"{LAN_B}:4270", ns=self.net.gw_a, address=LAN_A)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for phone in (self.a, self.b):
            if phone is not None:
                phone.stop()
        if self.da is not None:
            terminate(self.da, 5)
        if self.log is not None:
            self.log.close()
        if self.cn is not None:
            self.cn.stop()
        if self.capture is not None:
            self.capture.close()
        self.net.delete()
