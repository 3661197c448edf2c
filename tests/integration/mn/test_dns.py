"""SIP with names (RFC 3263) end to end: a `twisted.names` authoritative server serving NAPTR, SRV
and A records for three domains, kamailio (apt) as the provider's registrar and proxy, baresip as
alice (registered at kamailio), and our side by name only.

- ``home.test`` has SRV records only (no NAPTR): ``sipmob phone`` registers at ``sip:home.test``;
  ``example.test`` has NAPTR → SRV → A: ``sipmob call sip:alice@example.test`` reaches baresip
  through kamailio.
- ``backup.test`` has NAPTR → SRV with two targets, the first (priority 10) down: a
  `LocatingUserAgent` in a process of its own (this file run as a program, with a short T1 so Timer
  F/B run out in 3.2 s instead of 32 s) registers, sends OPTIONS and calls alice, failing over to
  the second target, and the next requests go straight to the one that answered.

A last test runs the failover in a network namespace of its own, with the usual ports (53, 5060) and
the DNS server taken from a resolv.conf file. The others are on 127.0.0.1 with free ports (the SRV
records carry them); everything is bounded by timeouts and
stopped by PID (kamailio by its process group).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]


SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def _client(dns_port: int, local_port: int) -> None:
    """The failover program: prints one JSON line per outcome."""
    from twisted.internet import defer, reactor

    from sipmob.service.nexthop import LocatingUserAgent
    from sipmob.service.resolver import Resolver
    from sipmob.service.sipua import SIPError
    from sipmob.sip.transaction import TimerConfig

    def out(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    @defer.inlineCallbacks
    def run() -> Any:
        resolver = Resolver(reactor, servers=[("127.0.0.1", dns_port)])
        ua = LocatingUserAgent(reactor, resolver=resolver, listen=[("127.0.0.1", local_port, "udp")],
                               user="carol", timers=TimerConfig(t1=0.05, t2=0.4, t4=0.5))
        yield ua.start()
        try:
            t0 = reactor.seconds()
            registration = yield ua.register("sip:backup.test", expires=600)
            hop = ua.next_hop(registration.registrar)
            out(event="registered", port=hop.port, seconds=round(reactor.seconds() - t0, 2))
            t0 = reactor.seconds()
            response = yield ua.options("sip:alice@backup.test")
            out(event="options", status=response.status, port=ua.next_hop(registration.registrar).port,
                seconds=round(reactor.seconds() - t0, 2))
            call = yield ua.invite("sip:alice@backup.test", SDP)
            out(event="call", state=call.state)
            yield call.bye()
            yield registration.unregister()
            out(event="unregistered")
            try:
                yield ua.invite("sip:alice@nowhere.test", b"")
            except SIPError as exc:
                out(event="failed", status=exc.status, reason=exc.reason)
            out(event="cache", hits=resolver.hits, misses=resolver.misses)
        except SIPError as exc:
            out(event="error", status=exc.status, reason=exc.reason)
        finally:
            yield ua.stop()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.callLater(40, reactor.stop)
    reactor.run()


def _client_resolv_conf(resolv_conf: str) -> None:
    """Inside a namespace: the DNS server comes from a resolv.conf file, as on a gateway."""
    from twisted.internet import defer, reactor

    from sipmob.service.nexthop import LocatingUserAgent
    from sipmob.service.resolver import Resolver
    from sipmob.service.sipua import SIPError
    from sipmob.sip.transaction import TimerConfig

    def out(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    @defer.inlineCallbacks
    def run() -> Any:
        resolver = Resolver(reactor, resolv_conf=resolv_conf)
        ua = LocatingUserAgent(reactor, resolver=resolver, listen=[("127.0.0.1", 5090, "udp")],
                               user="carol", timers=TimerConfig(t1=0.05, t2=0.4, t4=0.5))
        yield ua.start()
        try:
            registration = yield ua.register("sip:backup.test", expires=600)
            out(event="registered", port=ua.next_hop(registration.registrar).port)
            response = yield ua.options("sip:carol@backup.test")
            out(event="options", status=response.status)
            yield registration.unregister()
            out(event="unregistered")
        except SIPError as exc:
            out(event="error", status=exc.status, reason=exc.reason)
        finally:
            yield ua.stop()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.callLater(30, reactor.stop)
    reactor.run()


if __name__ == "__main__":
    if sys.argv[1] == "--resolv-conf":
        _client_resolv_conf(sys.argv[2])
    else:
        _client(int(sys.argv[1]), int(sys.argv[2]))
    sys.exit(0)

from tests.integration.mn.phone_process import ENV, until  # noqa: E402
from tests.peers import kamailio as kamailio_peer  # noqa: E402
from tests.peers import netns  # noqa: E402
from tests.peers.baresip import BARESIP, Baresip  # noqa: E402
from tests.peers.dnszone import DnsZoneServer  # noqa: E402
from tests.peers.ports import free_udp_port  # noqa: E402

from sipmob.mn.control import request  # noqa: E402

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not kamailio_peer.installed(), reason="kamailio is not installed"),
    pytest.mark.skipif(BARESIP is None, reason="baresip is not installed"),
]

# A provider: REGISTER saved in memory, everything else relayed to the registered contact.
PROXY_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", 0)
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (method=="REGISTER") {{ if (!save("location")) {{ sl_reply_error(); }} exit; }}
    if (method=="ACK" || method=="CANCEL") {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    if (!lookup("location")) {{ sl_send_reply("404", "Not Found"); exit; }}
    if (!t_relay()) {{ sl_reply_error(); }}
}}
"""


def _zones(proxy_port: int, dead_port: int) -> dict[str, list[list[Any]]]:
    return {
        "backup.test": [
            ["backup.test", "NAPTR", [10, 10, "s", "SIP+D2U", "", "_sip._udp.backup.test"]],
            ["backup.test", "NAPTR", [20, 10, "s", "SIP+D2T", "", "_sip._tcp.backup.test"]],
            ["_sip._udp.backup.test", "SRV", [10, 0, dead_port, "down.backup.test"]],
            ["_sip._udp.backup.test", "SRV", [20, 0, proxy_port, "up.backup.test"]],
            ["down.backup.test", "A", "127.0.0.1"],
            ["up.backup.test", "A", "127.0.0.1"],
        ],
        "example.test": [
            ["example.test", "NAPTR", [10, 10, "s", "SIP+D2U", "", "_sip._udp.example.test"]],
            ["_sip._udp.example.test", "SRV", [10, 0, proxy_port, "sip.example.test"]],
            ["sip.example.test", "A", "127.0.0.1"],
        ],
        "home.test": [
            ["_sip._udp.home.test", "SRV", [0, 0, proxy_port, "sip.home.test"]],
            ["sip.home.test", "A", "127.0.0.1"],
        ],
    }


def _register_contact(proxy_port: int, user: str, contact: str) -> None:
    """REGISTER `contact` for `user` at kamailio from this process, and wait for its 200."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        port = s.getsockname()[1]
        s.sendto((f"REGISTER sip:127.0.0.1:{proxy_port} SIP/2.0\r\n"
                  f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{user}-reg;rport\r\n"
                  "Max-Forwards: 70\r\n"
                  f"From: <sip:{user}@home.test>;tag=reg1\r\nTo: <sip:{user}@home.test>\r\n"
                  f"Call-ID: reg-{user}@127.0.0.1\r\nCSeq: 1 REGISTER\r\n"
                  f"Contact: <{contact}>\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n").encode(),
                 ("127.0.0.1", proxy_port))
        reply = s.recv(65536).decode(errors="replace")
    assert reply.startswith("SIP/2.0 200"), reply


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[dict[str, Any]]:
    proxy_port = free_udp_port()
    # The first SRV target of backup.test is down: a socket that reads and never answers, so the
    # test can see what was sent there.
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead.setblocking(False)
    dead_port = dead.getsockname()[1]
    dns_port = free_udp_port()
    kamailio = kamailio_peer.Kamailio(PROXY_CFG.format(port=proxy_port, modules=kamailio_peer.MODULES),
                                      tmp_path / "kamailio", [proxy_port])
    stack: list[Any] = [kamailio]
    try:
        dns = DnsZoneServer("127.0.0.1", dns_port, _zones(proxy_port, dead_port), tmp_path / "dns")
        stack.append(dns)
        alice = Baresip(tmp_path, user="alice")
        stack.append(alice)
        _register_contact(proxy_port, "alice", alice.uri)
        yield {"proxy": proxy_port, "dead": dead, "dns": dns, "dns_port": dns_port, "alice": alice,
               "kamailio": kamailio}
    finally:
        for item in reversed(stack):
            item.stop()
        dead.close()


class NamedPhone:
    """`sipmob phone` with a registrar and DNS servers of our choosing."""

    def __init__(self, directory: Path, registrar: str, dns_port: int, proxy: str = "") -> None:
        self.port = free_udp_port()
        self.control = directory / "mn.sock"
        self.config = directory / "mn.toml"
        self.config.write_text(
            f'[listen]\naddress = "127.0.0.1"\nport = {self.port}\n'
            f'[identity]\nuser = "bob"\nregistrar = "{registrar}"\noutbound_proxy = "{proxy}"\n'
            f'[dns]\nservers = ["127.0.0.1:{dns_port}"]\n'
            f'[slp]\nda = "127.0.0.1:{free_udp_port()}"\ntimeout = 0.5\n[control]\npath = "{self.control}"\n')
        self.log_path = directory / "phone.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sipmob.mn.cli", "phone", "--config",
                                          str(self.config)], env=ENV, stdout=log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def sipmob(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sipmob.mn.cli", "--config", str(self.config), *args],
                              env=ENV, capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self) -> None:
        from tests.peers.process import terminate

        terminate(self.proc)


def test_phone_registers_and_calls_by_name(provider: dict[str, Any], tmp_path: Path) -> None:
    phone = NamedPhone(tmp_path, "sip:home.test", provider["dns_port"])
    try:
        assert until(lambda: "registered sip:bob@home.test" in phone.output(), timeout=15), phone.output()
        done = phone.sipmob("--timeout", "20", "call", "sip:alice@example.test")
        assert done.returncode == 0, done.stderr + phone.output()
        assert "established" in done.stdout
        calls = request(phone.control, "calls", timeout=5)
        assert calls and calls[0]["peer"] == "sip:alice@example.test"
        assert calls[0]["state"] == "confirmed"
        assert until(lambda: provider["alice"].calls(), timeout=5)  # baresip has the call
        queries = provider["dns"].queries()
        # home.test has no NAPTR: NAPTR (empty), then SRV, then the SRV target's A
        assert "home.test NAPTR" in queries and "_sip._udp.home.test SRV" in queries
        assert "sip.home.test A" in queries
        # example.test: NAPTR leads to the SRV name, which leads to the A record
        assert "example.test NAPTR" in queries and "_sip._udp.example.test SRV" in queries
        assert "sip.example.test A" in queries
    finally:
        phone.stop()
    assert "unregistered sip:bob@home.test" in phone.output()


def test_failover_to_the_second_srv_target_when_the_first_is_down(provider: dict[str, Any]) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemons'}{os.pathsep}{ROOT}"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, str(provider["dns_port"]), str(free_udp_port())],
                          capture_output=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    events = {line["event"]: line for line in lines}
    assert "error" not in events, lines
    # REGISTER: Timer F (64 * T1 = 3.2 s) at the dead target, then the second one answers
    assert events["registered"]["port"] == provider["proxy"]
    assert events["registered"]["seconds"] >= 3.0
    # the next requests go straight to the target that answered: the dead one saw only the REGISTER
    # (and its retransmissions)
    assert events["options"]["status"] == 200
    methods = []
    while True:
        try:
            methods.append(provider["dead"].recv(65536).split(b" ", 1)[0].decode())
        except BlockingIOError:
            break
    assert methods and set(methods) == {"REGISTER"}
    assert events["call"]["state"] == "confirmed"
    assert "unregistered" in events
    assert events["failed"]["status"] == 503 and "nowhere.test" in events["failed"]["reason"]
    # NAPTR, SRV and the A records were asked once; the later requests were answered from the cache
    queries = provider["dns"].queries()
    assert queries.count("backup.test NAPTR") == 1 and queries.count("_sip._udp.backup.test SRV") == 1
    assert events["cache"]["hits"] > 0
    assert time.monotonic() - t0 < 50


def test_everything_through_an_outbound_proxy_given_by_name(provider: dict[str, Any], tmp_path: Path) -> None:
    # Neither the registrar's domain nor the callee's is in DNS: only the proxy is located.
    phone = NamedPhone(tmp_path, "sip:provider.invalid", provider["dns_port"], proxy="sip:home.test")
    try:
        assert until(lambda: "registered sip:bob@provider.invalid" in phone.output(), timeout=15), \
            phone.output()
        done = phone.sipmob("--timeout", "20", "call", "sip:alice@elsewhere.invalid")
        assert done.returncode == 0, done.stderr + phone.output()
        assert until(lambda: provider["alice"].calls(), timeout=5)
        assert request(phone.control, "calls", timeout=5)[0]["peer"] == "sip:alice@elsewhere.invalid"
        queries = provider["dns"].queries()
        assert "_sip._udp.home.test SRV" in queries
        assert not [q for q in queries if "invalid" in q]
    finally:
        phone.stop()


@pytest.mark.skipif(not netns.available(), reason="cannot create network namespaces")
def test_in_a_namespace_with_the_server_from_resolv_conf(tmp_path: Path) -> None:
    # The usual ports (53, 5060) in a namespace of the test's own, and the resolver configured the
    # way a gateway's is: from a resolv.conf file.
    ns = netns.Namespace("sipmob-dns")
    stack: list[Any] = []
    try:
        wrap = ns.command([])
        stack.append(kamailio_peer.Kamailio(PROXY_CFG.format(port=5060, modules=kamailio_peer.MODULES),
                                            tmp_path / "kamailio", [5060], wrap=wrap))
        dns = DnsZoneServer("127.0.0.1", 53, _zones(5060, 5070), tmp_path / "dns", wrap=wrap)
        stack.append(dns)
        resolv_conf = tmp_path / "resolv.conf"
        resolv_conf.write_text("nameserver 127.0.0.1\n")
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemons'}{os.pathsep}{ROOT}"}
        proc = subprocess.run([*wrap, sys.executable, __file__, "--resolv-conf", str(resolv_conf)],
                              capture_output=True, timeout=60, env=env)
        assert proc.returncode == 0, proc.stderr.decode()
        lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
        # The OPTIONS to our own address of record goes to kamailio, which relays it to the contact
        # just registered: us, and we answer 200.
        assert lines == [{"event": "registered", "port": 5060}, {"event": "options", "status": 200},
                         {"event": "unregistered"}], proc.stderr.decode()
        assert "backup.test NAPTR" in dns.queries()
    finally:
        for item in reversed(stack):
            item.stop()
        ns.delete()
