"""Call setup by name (RFC 3263 through a real DNS server) against the same call by IP literal.

Run: ``.venv/bin/python tests/bench/bench_dns_call.py [--calls N]``.
A `twisted.names` zone server, kamailio as the provider and baresip as alice (registered at
kamailio), all on 127.0.0.1 with free ports, as in tests/integration/mn/test_dns.py. Two figures:

1. The UA: a `LocatingUserAgent` in a process of its own sends N INVITEs (each hung up with BYE
   before the next) to ``sip:alice@cached.test`` (records with a TTL of 300 s: resolved once, then
   from the cache), to ``sip:alice@uncached.test`` (TTL 0: NAPTR, SRV and A asked for every call)
   and to ``sip:alice@127.0.0.1:PORT`` (no DNS). Setup time is from `invite` to the 2xx.
2. What a user waits for: ``sipmob call URI`` (the whole command, its start included) against
   ``sipmob phone``, a few calls each way (baresip holds at most 8 calls and the phone does not
   hang up yet, so the count is small).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons")]

SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


def client(dns_port: int, proxy_port: int, calls: int) -> None:
    from tests.peers.ports import free_udp_port
    from twisted.internet import defer, reactor

    from sipmob.service.nexthop import LocatingUserAgent
    from sipmob.service.resolver import Resolver

    @defer.inlineCallbacks
    def run() -> Any:
        resolver = Resolver(reactor, servers=[("127.0.0.1", dns_port)])
        ua = LocatingUserAgent(reactor, resolver=resolver, listen=[("127.0.0.1", free_udp_port(), "udp")],
                               user="bench")
        yield ua.start()
        results: dict[str, list[float]] = {}
        try:
            for label, uri in (("ip literal", f"sip:alice@127.0.0.1:{proxy_port}"),
                               ("name, cached (TTL 300)", "sip:alice@cached.test"),
                               ("name, uncached (TTL 0)", "sip:alice@uncached.test")):
                times = results.setdefault(label, [])
                for _ in range(calls):
                    t0 = time.perf_counter()
                    call = yield ua.invite(uri, SDP)
                    times.append((time.perf_counter() - t0) * 1000)
                    yield call.bye()
            stats = {"hits": resolver.hits, "misses": resolver.misses}
            # RFC 3263 location alone (NAPTR, SRV, A over loopback UDP), from the cache and not
            from sipmob.sip.uri import URI

            for label, uri in (("locate, cached", "sip:alice@cached.test"),
                               ("locate, uncached", "sip:alice@uncached.test")):
                times = results.setdefault(label, [])
                for _ in range(calls * 5):
                    t0 = time.perf_counter()
                    yield resolver.locate(URI.parse(uri))
                    times.append((time.perf_counter() - t0) * 1000)
            print(json.dumps({"results": results, **stats}), flush=True)
        finally:
            yield ua.stop()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.callLater(120, reactor.stop)
    reactor.run()


def _zones(proxy_port: int) -> dict[str, list[list[Any]]]:
    zones: dict[str, list[list[Any]]] = {}
    for domain, ttl in (("cached.test", 300), ("uncached.test", 0)):
        zones[domain] = [
            [domain, "NAPTR", [10, 10, "s", "SIP+D2U", "", f"_sip._udp.{domain}"], ttl],
            [f"_sip._udp.{domain}", "SRV", [10, 0, proxy_port, f"sip.{domain}"], ttl],
            [f"sip.{domain}", "A", "127.0.0.1", ttl],
        ]
    return zones


def _summary(label: str, times: list[float]) -> str:
    if len(times) < 5:
        return f"  {label:28s} " + ", ".join(f"{t:.1f} ms" for t in times)
    times = sorted(times)
    return (f"  {label:28s} n={len(times):3d} median={statistics.median(times):7.1f} ms "
            f"p90={times[int(0.9 * (len(times) - 1))]:7.1f} ms min={times[0]:6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20, help="INVITEs per series for the UA figure")
    ap.add_argument("--client", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client(*args.client)
        return

    from tests.integration.mn.phone_process import until
    from tests.integration.mn.test_dns import PROXY_CFG, NamedPhone, _register_contact
    from tests.peers import kamailio as kamailio_peer
    from tests.peers.baresip import Baresip
    from tests.peers.dnszone import DnsZoneServer
    from tests.peers.ports import free_udp_port

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        proxy_port, dns_port = free_udp_port(), free_udp_port()
        stack: list[Any] = []
        try:
            config = PROXY_CFG.format(port=proxy_port, modules=kamailio_peer.MODULES)
            stack.append(kamailio_peer.Kamailio(config, tmp / "kamailio", [proxy_port]))
            dns = DnsZoneServer("127.0.0.1", dns_port, _zones(proxy_port), tmp / "dns")
            stack.append(dns)
            alice = Baresip(tmp, user="alice")
            stack.append(alice)
            _register_contact(proxy_port, "alice", alice.uri)

            env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemons'}{os.pathsep}{ROOT}"}
            proc = subprocess.run([sys.executable, __file__, "--client", str(dns_port), str(proxy_port),
                                   str(args.calls)], capture_output=True, text=True, timeout=150, env=env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            if not lines:
                raise SystemExit(f"the UA client failed:\n{proc.stderr}")
            ua = json.loads(lines[-1])
            print("INVITE to 2xx through kamailio, LocatingUserAgent (no process start), and location alone:")
            for label, times in ua["results"].items():
                print(_summary(label, times))
            print(f"  resolver cache during the calls: {ua['hits']} hits, {ua['misses']} misses")

            phone = NamedPhone(tmp, f"sip:127.0.0.1:{proxy_port}", dns_port)
            stack.append(phone)
            if not until(lambda: "registered sip:bob@" in phone.output(), timeout=15):
                raise SystemExit(phone.output())
            command: dict[str, list[float]] = {}
            for _ in range(2):
                for label, uri in (("ip literal", f"sip:alice@127.0.0.1:{proxy_port}"),
                                   ("name, cached (TTL 300)", "sip:alice@cached.test"),
                                   ("name, uncached (TTL 0)", "sip:alice@uncached.test")):
                    t0 = time.perf_counter()
                    done = phone.sipmob("--timeout", "20", "call", uri)
                    command.setdefault(label, []).append((time.perf_counter() - t0) * 1000)
                    if done.returncode != 0:
                        raise SystemExit(done.stderr + phone.output())
            print("`sipmob call URI` wall clock (command start to 'established'):")
            for label, times in command.items():
                print(_summary(label, times))
        finally:
            for item in reversed(stack):
                item.stop()


if __name__ == "__main__":
    main()
