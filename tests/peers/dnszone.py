"""An authoritative DNS server for tests: `twisted.names` serving zones given as JSON, over UDP.

Run as a program (in a namespace, or on a free loopback port):
``python -m tests.peers.dnszone ADDRESS PORT ZONES.json`` prints ``ready`` once it listens, and
answers until SIGTERM. ``ZONES.json`` is ``{"origin": [[name, type, data, ttl], ...]}`` with
type NAPTR (data ``[order, preference, flags, service, regexp, replacement]``), SRV
(``[priority, weight, port, target]``), A or AAAA (the address). Each zone gets an SOA, so names
that are not there are NXDOMAIN, as from a real server. Every query is logged on stderr
(``query NAME TYPE``), so tests can tell what was asked and how often.

`DnsZoneServer` starts and stops that program from a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _authority(origin: str, entries: list[list[Any]]) -> Any:
    from twisted.names import authority, dns

    class ZoneAuthority(authority.FileAuthority):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(origin)

        def loadFile(self, filename: str) -> None:
            soa = dns.Record_SOA(mname=f"ns.{origin}", rname=f"root.{origin}", serial=1, refresh=60,
                                 retry=60, expire=600, minimum=5, ttl=5)
            self.soa = (dns.domainString(origin), soa)
            self.records: dict[bytes, list[Any]] = {dns.domainString(origin).lower(): [soa]}
            for name, rtype, data, *rest in entries:
                ttl = int(rest[0]) if rest else 60
                if rtype == "NAPTR":
                    order, preference, flags, service, regexp, replacement = data
                    record = dns.Record_NAPTR(order, preference, flags.encode(), service.encode(),
                                              regexp.encode(), replacement, ttl=ttl)
                elif rtype == "SRV":
                    record = dns.Record_SRV(*data, ttl=ttl)
                elif rtype == "A":
                    record = dns.Record_A(data, ttl=ttl)
                elif rtype == "AAAA":
                    record = dns.Record_AAAA(data, ttl=ttl)
                else:
                    raise ValueError(f"record type {rtype} is not supported here")
                self.records.setdefault(dns.domainString(name).lower(), []).append(record)

    return ZoneAuthority()


def serve(address: str, port: int, zones: dict[str, list[list[Any]]]) -> None:
    from twisted.internet import reactor
    from twisted.names import dns, server

    class LoggingFactory(server.DNSServerFactory):  # type: ignore[misc]
        def handleQuery(self, message: Any, protocol: Any, address: Any) -> Any:
            for q in message.queries:
                print(f"query {q.name.name.decode()} {dns.QUERY_TYPES.get(q.type, q.type)}",
                      file=sys.stderr, flush=True)
            return super().handleQuery(message, protocol, address)

    factory = LoggingFactory(authorities=[_authority(origin, entries) for origin, entries in zones.items()])
    reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface=address)  # type: ignore[attr-defined]
    print("ready", flush=True)
    reactor.run()  # type: ignore[attr-defined]


class DnsZoneServer:
    """The program above as a child process; `wrap` prefixes it (``ip netns exec NAME``)."""

    def __init__(self, address: str, port: int, zones: dict[str, list[list[Any]]], workdir: Path,
                 wrap: list[str] | None = None, timeout: float = 10.0) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        zone_file = workdir / "zones.json"
        zone_file.write_text(json.dumps(zones))
        self.log_path = workdir / "dns.log"
        env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([*(wrap or []), sys.executable, "-m", "tests.peers.dnszone", address,
                                          str(port), str(zone_file)],
                                         stdout=subprocess.PIPE, stderr=log, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        os.set_blocking(self.proc.stdout.fileno(), False)
        while time.monotonic() < deadline and self.proc.poll() is None:
            line += self.proc.stdout.read() or b""
            if b"ready" in line:
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"the DNS server did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def queries(self) -> list[str]:
        """``NAME TYPE`` of every query answered so far."""
        return [line[6:] for line in self.log().splitlines() if line.startswith("query ")]

    def stop(self) -> None:
        from tests.peers.process import terminate

        terminate(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()))
