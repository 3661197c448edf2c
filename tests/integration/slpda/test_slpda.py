"""`sipmob-slpda` as a real process on loopback: the DA's behaviour over real UDP and TCP sockets."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from slpda_process import ROOT, Client, Slpda

from sipmob.service.config import parse_config
from sipmob.slp import wire
from sipmob.slp.attrs import parse_attr_list
from sipmob.slp.messages import (
    AttrRply,
    AttrRqst,
    ErrorCode,
    FunctionId,
    Header,
    SrvRply,
    SrvTypeRply,
    SrvTypeRqst,
)
from sipmob.slpda.config import SlpdaConfig


@pytest.fixture
def slpda(tmp_path: Path) -> Iterator[Slpda]:
    daemon = Slpda(tmp_path)
    yield daemon
    daemon.stop()


@pytest.fixture
def client(slpda: Slpda) -> Iterator[Client]:
    slpda.start()
    c = slpda.client()
    yield c
    c.close()


def urls(reply: object) -> list[str]:
    assert isinstance(reply, SrvRply) and reply.error == ErrorCode.OK, reply
    return sorted(u.url for u in reply.urls)


def wait_until(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_registered_devices_are_found_by_predicate(client: Client) -> None:
    client.register("sip:tv@192.168.1.20", "(room=kitchen),(media=audio-sendrecv,video-recvonly)")
    client.register("sip:phone@192.168.1.21", "(room=kitchen),(media=audio-sendrecv)")
    found = client.udp(client.srv_rqst(predicate="(&(room=kitchen)(media=video-recvonly))"))
    assert urls(found) == ["sip:tv@192.168.1.20"]


def test_attributes_and_service_types_are_served(client: Client) -> None:
    client.register("sip:tv@192.168.1.20", "(room=kitchen),(video-codecs=H264,H263),(vendor=acme)")
    client.register("sip:mdsm@192.168.1.1", "(members=2)", service_type="service:sip-mdsm")
    reply = client.udp(AttrRqst(Header(FunctionId.AttrRqst, 77), "", "sip:tv@192.168.1.20", "DEFAULT",
                                "video-*"))
    assert isinstance(reply, AttrRply)
    assert parse_attr_list(reply.attr_list) == parse_attr_list("(video-codecs=H264,H263)")
    types = client.udp(SrvTypeRqst(Header(FunctionId.SrvTypeRqst, 78), "", "", "DEFAULT"))
    assert isinstance(types, SrvTypeRply)
    assert types.srvtype_list == "service:sip-device,service:sip-mdsm"


def test_deregistered_device_is_no_longer_found(client: Client) -> None:
    client.register("sip:tv@192.168.1.20", "(room=kitchen)")
    assert client.deregister("sip:tv@192.168.1.20").error == ErrorCode.OK
    assert urls(client.udp(client.srv_rqst())) == []


def test_registration_disappears_when_its_lifetime_runs_out(client: Client, slpda: Slpda) -> None:
    client.register("sip:brief@192.168.1.30", lifetime=1)
    client.register("sip:lasting@192.168.1.31", lifetime=300)
    assert wait_until(lambda: urls(client.udp(client.srv_rqst())) == ["sip:lasting@192.168.1.31"])
    assert "expired sip:brief@192.168.1.30" in slpda.output()


def test_reply_that_overflows_udp_is_complete_over_tcp(client: Client) -> None:
    names = [f"sip:device-with-a-rather-long-name-{i:03}@192.168.1.{i + 2}" for i in range(60)]
    for name in names:
        client.register(name, "(room=hall)")
    udp = client.udp(client.srv_rqst(predicate="(room=hall)"))
    assert isinstance(udp, SrvRply) and udp.header.overflow and len(udp.urls) < len(names)
    tcp = client.tcp(client.srv_rqst(predicate="(room=hall)"))
    assert isinstance(tcp, SrvRply) and not tcp.header.overflow
    assert urls(tcp) == names


def test_restart_keeps_registrations_and_changes_the_boot_timestamp(slpda: Slpda) -> None:
    slpda.start()
    with slpda.client() as client:
        client.register("sip:tv@192.168.1.20", "(room=kitchen)", lifetime=600)
        before = client.discover().boot_timestamp
    assert slpda.stop() == 0
    slpda.start()
    with slpda.client() as client:
        assert urls(client.udp(client.srv_rqst(predicate="(room=kitchen)"))) == ["sip:tv@192.168.1.20"]
        assert client.discover().boot_timestamp > before


def test_check_config_names_the_file_and_the_key_of_a_mistake(slpda: Slpda) -> None:
    slpda.write_config("[limits]\nudp_reply_limit = \"big\"\n")
    result = subprocess.run(slpda.command("--check-config"), env=slpda.environment, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"sipmob-slpda: {slpda.config_path}: limits.udp_reply_limit: must be an integer, got 'big'"]


def test_check_config_accepts_the_shipped_file() -> None:
    shipped = ROOT / "etc/sipmob/slpda.toml"
    result = subprocess.run([sys.executable, "-m", "sipmob.slpda", "--config", str(shipped),
                             "--check-config"], env={**os.environ, "PYTHONPATH": str(ROOT / "daemons")},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_shipped_config_shows_every_key_with_its_default() -> None:
    text = (ROOT / "etc/sipmob/slpda.toml").read_text()
    # Uncomment the "#key = value" lines (and their continuations) and nothing else.
    active = "\n".join(line[1:] if re.match(r"#(\w|  )", line) else line for line in text.splitlines())
    assert parse_config(SlpdaConfig, tomllib.loads(active)) == parse_config(SlpdaConfig, {})


def test_sighup_applies_a_good_file_and_keeps_the_running_config_on_a_broken_one(client: Client,
                                                                               slpda: Slpda) -> None:
    client.register("sip:tv@192.168.1.20", "(room=kitchen)")
    assert client.udp(client.srv_rqst(scopes="home")).error == ErrorCode.SCOPE_NOT_SUPPORTED  # type: ignore[union-attr]
    slpda.write_config('[da]\nscopes = ["DEFAULT", "home"]\n')
    slpda.signal(signal.SIGHUP)
    assert wait_until(lambda: client.udp(client.srv_rqst(scopes="home")).error == ErrorCode.OK)  # type: ignore[union-attr]
    assert urls(client.udp(client.srv_rqst())) == ["sip:tv@192.168.1.20"]
    slpda.write_config('[da]\nscopes = "nope"\n')
    slpda.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in slpda.output())
    assert "da.scopes: must be a list of strings" in slpda.output()
    assert client.udp(client.srv_rqst(scopes="home")).error == ErrorCode.OK  # type: ignore[union-attr]


def test_flood_of_garbage_leaves_it_answering(client: Client, slpda: Slpda) -> None:
    rng = random.Random(2608)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
        flood.bind(("127.0.0.2", 0))
        for i in range(3000):
            size = rng.randrange(0, 200)
            packet = bytes(rng.getrandbits(8) for _ in range(size))
            if i % 3 == 0 and size > 14:
                packet = b"\x02\x01" + packet[2:]  # a SrvRqst header, then noise
            flood.sendto(packet, ("127.0.0.1", slpda.port))
    client.register("sip:tv@192.168.1.20", "(room=kitchen)")
    assert urls(client.udp(client.srv_rqst())) == ["sip:tv@192.168.1.20"]
    assert slpda.proc is not None and slpda.proc.poll() is None


def test_ready_and_status_reach_the_notify_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(10)
        daemon = Slpda(tmp_path, env={"NOTIFY_SOCKET": path})
        try:
            daemon.start()
            assert notify.recv(4096).decode() == "READY=1\nSTATUS=0 services registered in 1 scope"
            with daemon.client() as client:
                client.register("sip:tv@192.168.1.20", "(room=kitchen)")
            assert notify.recv(4096).decode() == "STATUS=1 service registered in 1 scope"
        finally:
            assert daemon.stop() == 0
        assert notify.recv(4096).decode() == "STOPPING=1"


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
def test_real_replies_decode_cleanly_in_wireshark(slpda: Slpda, tmp_path: Path) -> None:
    capture = tmp_path / "slp.pcapng"
    tshark = subprocess.Popen(["tshark", "-i", "lo", "-f", f"udp port {slpda.port} or tcp port {slpda.port}",
                               "-w", str(capture)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert tshark.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "Capturing on" not in tshark.stderr.readline():
            pass
        slpda.start()
        with slpda.client() as client:
            for i in range(30):
                client.register(f"sip:device-{i:02}-with-a-long-name@192.168.1.{i + 2}",
                                f"(room=room{i % 3}),(media=audio-sendrecv,video-recvonly),(floor={i % 2})")
            client.udp(client.srv_rqst(predicate="(room=room1)"))
            client.udp(client.srv_rqst())  # overflows: truncated with OVERFLOW
            client.tcp(client.srv_rqst())
            client.udp(AttrRqst(Header(FunctionId.AttrRqst, 9), "", "service:sip-device", "DEFAULT", ""))
            client.udp(SrvTypeRqst(Header(FunctionId.SrvTypeRqst, 10), "", None, "DEFAULT"))
            client.udp(client.srv_rqst(predicate="(room=", scopes="DEFAULT"))  # PARSE_ERROR
            client.deregister("sip:device-00-with-a-long-name@192.168.1.2")
        time.sleep(0.5)  # let the capture catch up before stopping it
    finally:
        os.kill(tshark.pid, signal.SIGINT)
        tshark.wait(timeout=20)
    decode = ["tshark", "-r", str(capture), "-d", f"udp.port=={slpda.port},srvloc",
              "-d", f"tcp.port=={slpda.port},srvloc"]
    counted = subprocess.run([*decode, "-Y", "srvloc"], capture_output=True, text=True, timeout=60)
    assert len(counted.stdout.splitlines()) >= 70, counted.stdout
    malformed = subprocess.run([*decode, "-Y", "srvloc && _ws.malformed"], capture_output=True, text=True,
                               timeout=60)
    assert malformed.returncode == 0, malformed.stderr
    assert malformed.stdout == ""


MULTICAST_CLIENT = """
import json, socket, sys
from sipmob.slp import wire
from sipmob.slp.messages import Flags, FunctionId, Header, SrvRqst
group, port, me, da = "239.255.255.253", int(sys.argv[1]), "10.99.0.2", "10.99.0.1"
out = {}
heard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
heard.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
heard.bind((group, port))
heard.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group) + socket.inet_aton(me))
heard.settimeout(10)
out["heartbeat"] = wire.decode(heard.recv(2000)).boot_timestamp
ask = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
ask.bind((me, 0))
ask.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(me))
ask.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
ask.settimeout(1.0)
def replies(service_type, prlist="", to=group):
    flags = Flags.REQUEST_MCAST if to == group else Flags(0)
    ask.sendto(wire.encode(SrvRqst(Header(FunctionId.SrvRqst, 5, "en", flags), prlist, service_type, "", "")),
               (to, port))
    got = []
    try:
        for _ in range(5):
            got.append(type(wire.decode(ask.recv(2000))).__name__)
    except socket.timeout:
        pass
    return got
out["discovery"] = replies("service:directory-agent")
out["discovery_listing_us"] = replies("service:directory-agent", prlist=da)
out["no_result"] = replies("service:sip-device")
out["unicast_no_result"] = replies("service:sip-device", to=da)
print(json.dumps(out), flush=True)
heard.settimeout(10)
while True:
    advert = wire.decode(heard.recv(2000))
    if getattr(advert, "boot_timestamp", None) == 0:
        print(json.dumps({"goodbye": True}), flush=True)
        break
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="needs root and iproute2 for network namespaces")
def test_multicast_discovery_heartbeat_and_goodbye_between_namespaces(tmp_path: Path) -> None:
    da_ns, ua_ns = f"slpda-da-{os.getpid()}", f"slpda-ua-{os.getpid()}"
    setup = [
        ["ip", "netns", "add", da_ns], ["ip", "netns", "add", ua_ns],
        ["ip", "-n", da_ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", ua_ns],
        ["ip", "-n", da_ns, "addr", "add", "10.99.0.1/24", "dev", "v0"],
        ["ip", "-n", ua_ns, "addr", "add", "10.99.0.2/24", "dev", "v1"],
        ["ip", "-n", da_ns, "link", "set", "v0", "up"], ["ip", "-n", ua_ns, "link", "set", "v1", "up"],
        ["ip", "-n", da_ns, "link", "set", "lo", "up"], ["ip", "-n", ua_ns, "link", "set", "lo", "up"],
    ]
    daemon = Slpda(tmp_path, '[multicast]\ninterface = "10.99.0.1"\n[da]\nheartbeat = 0.5\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT / "daemons")}
    client = None
    try:
        for command in setup:
            subprocess.run(command, check=True, capture_output=True, timeout=10)
        client = subprocess.Popen(["ip", "netns", "exec", ua_ns, sys.executable, "-c", MULTICAST_CLIENT,
                                   str(daemon.port)], env=env, stdout=subprocess.PIPE, text=True)
        command = ["ip", "netns", "exec", da_ns, *daemon.command()]
        command[command.index("--listen") + 1] = f"0.0.0.0:{daemon.port}"
        with open(daemon.log_path, "ab") as log:
            daemon_proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert client.stdout is not None
            seen = json.loads(client.stdout.readline())
        finally:
            os.kill(daemon_proc.pid, signal.SIGTERM)
            assert daemon_proc.wait(timeout=10) == 0
        assert seen["heartbeat"] > 0
        assert seen["discovery"] == ["DAAdvert"]
        assert seen["discovery_listing_us"] == []
        assert seen["no_result"] == []
        assert seen["unicast_no_result"] == ["SrvRply"]
        assert json.loads(client.stdout.readline()) == {"goodbye": True}
    finally:
        if client is not None and client.poll() is None:
            os.kill(client.pid, signal.SIGKILL)
            client.wait(timeout=10)
        for ns in (da_ns, ua_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_tcp_stream_carrying_two_requests_gets_two_replies(client: Client, slpda: Slpda) -> None:
    client.register("sip:tv@192.168.1.20", "(room=kitchen)")
    first, second = client.srv_rqst(), client.srv_rqst(predicate="(room=hall)")
    with socket.create_connection(("127.0.0.1", slpda.port), timeout=5) as conn:
        data = wire.encode(first) + wire.encode(second)
        for i in range(0, len(data), 7):  # in small pieces, split anywhere
            conn.sendall(data[i:i + 7])
        buf = b""
        replies = []
        while len(replies) < 2:
            chunk = conn.recv(65535)
            assert chunk, "connection closed early"
            buf += chunk
            while (length := wire.peek_length(buf)) is not None and len(buf) >= length:
                replies.append(wire.decode(buf[:length]))
                buf = buf[length:]
    assert [r.header.xid for r in replies] == [first.header.xid, second.header.xid]
    assert [urls(r) for r in replies] == [["sip:tv@192.168.1.20"], []]


def test_idle_tcp_connection_is_closed(slpda: Slpda) -> None:
    slpda.write_config("[limits]\ntcp_idle_timeout = 0.3\n")
    slpda.start()
    with socket.create_connection(("127.0.0.1", slpda.port), timeout=10) as conn:
        assert conn.recv(1) == b""


def test_state_file_defaults_to_the_systemd_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/private/sipmob")
    assert SlpdaConfig().state_file == Path("/var/lib/private/sipmob/slpda.json")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert SlpdaConfig().state_file == Path("/var/lib/sipmob/slpda.json")
