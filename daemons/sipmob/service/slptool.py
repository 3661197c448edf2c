"""``python -m sipmob.service.slptool``: ask a Directory Agent from the shell, like OpenSLP's slptool.

    findsrvs TYPE [PREDICATE]        the URLs of matching services, one "url,lifetime" a line
    findattrs URL [TAGS]             the attribute list of a service URL or service type
    findsrvtypes [NA]                the service types (NA: a naming authority; "*" means all)
    register URL TYPE ATTRS          one registration, not refreshed (--lifetime, default 10800 s)
    deregister URL
    findda                           the DAs that answer

Options: ``--da HOST[:PORT]`` (repeatable), ``--scope a,b``, ``--json``, ``--multicast`` to ask the
SLP multicast group when no DA is given, ``--bind ADDR``, ``--timeout SECONDS``, ``--spi NAME
--key-file PATH`` to sign register and deregister (a registrant's key, `sipmob.service.slpkeys`;
such a run first waits for the next whole second, so that it never reuses the last run's timestamp).
Exit status: 0 success, 1 the request failed (the DA's error or no answer, one line on stderr), 2
usage.

It drives the sans-I/O `UserAgent` with one blocking UDP socket and a short TCP connection when a
reply overflowed; it keeps no state and does not read any daemon's configuration.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import select
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from sipmob.service import slpkeys
from sipmob.service.config import split_host_port
from sipmob.slp import auth, wire
from sipmob.slp.agent import Address, AgentConfig, Outgoing, Query, Registration, SLPError, UserAgent
from sipmob.slp.attrs import Attribute, AttrParseError, Opaque, format_attr_list, parse_attr_list
from sipmob.slp.messages import SLP_PORT
from sipmob.slp.names import SLPValueError, split_list

PROG = "sipmob-slptool"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# Wall-clock time: an authentication block's timestamp is compared with the DA's own clock, and
# a run lasts seconds, so a clock step hardly matters.
_clock = time.time


class UsageError(Exception):
    pass


def _signing(args: argparse.Namespace) -> tuple[str, bytes]:
    """The SPI and key to sign with (``--spi``, ``--key-file``), or ("", b"")."""
    if bool(args.spi) != bool(args.key_file):
        raise UsageError("--spi and --key-file go together")
    if not args.spi:
        return "", b""
    problem = auth.check_spi(args.spi)
    if problem:
        raise UsageError(f"--spi {problem}")
    try:
        return args.spi, slpkeys.read_key(args.key_file)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_hostport(text: str, default_port: int = SLP_PORT) -> Address:
    """"HOST", "HOST:PORT" or "[V6]:PORT" to an (IP literal, port); raises UsageError."""
    try:
        host, port = split_host_port(text, default_port, ip_literal=False)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if port == 0:
        raise UsageError(f"not a HOST[:PORT]: {text!r} (port 0)")
    try:
        ipaddress.ip_address(host)
        return (host, port)
    except ValueError:
        pass
    try:
        return (str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]), port)
    except OSError as exc:
        raise UsageError(f"cannot resolve {host!r}: {exc}") from None


class _Runner:
    """Runs one query of a `UserAgent` to its end over real sockets, bounded by the agent's deadlines."""

    def __init__(self, agent: UserAgent, bind: str) -> None:
        self.agent = agent
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        if agent.config.multicast:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)

    def run(self, query: Query[Any], out: list[Outgoing]) -> Any:
        # the agent's deadlines end every query; the count and the wall-clock bound are a safety net
        limit = _clock() + 2 * (self.agent.config.retry_max + self.agent.config.mc_max)
        for _ in range(10000):
            self._send(out)
            out = []
            if query.done or _clock() > limit:
                break
            due = self.agent.get_timer()
            wait = 1.0 if due is None else max(0.0, due - _clock())
            readable, _, _ = select.select([self.sock], [], [], wait)
            now = _clock()
            if readable:
                try:
                    data, source = self.sock.recvfrom(65535)
                except OSError:  # an ICMP error from an earlier send: the timers decide
                    continue
                out = self.agent.receive(data, (source[0], source[1]), now)
            else:
                out = self.agent.handle_timer(now)
        if not query.done:
            raise SLPError("no answer")
        if query.error is not None:
            raise query.error
        return query.result

    def _send(self, out: list[Outgoing]) -> None:
        for o in out:
            if o.via == "tcp":
                self._tcp(o)
            else:
                try:
                    self.sock.sendto(o.data, o.dest)
                except OSError:
                    pass  # the agent retransmits, then reports no answer

    def _tcp(self, o: Outgoing) -> None:
        """§12.3: the overflowed request again over TCP; the reply is fed to the agent."""
        try:
            with socket.create_connection(o.dest, timeout=self.agent.config.retry_max) as conn:
                conn.sendall(o.data)
                buf = b""
                while True:
                    length = wire.peek_length(buf)
                    if length is not None and len(buf) >= length:
                        break
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
        except OSError:
            return
        self._send(self.agent.receive(buf[:length], o.dest, _clock()))

    def close(self) -> None:
        self.sock.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Opaque):
        return "\\FF" + "".join(f"\\{b:02X}" for b in value.data)
    return value


def _execute(args: argparse.Namespace) -> tuple[str, Any]:
    """Run the command; (text output, JSON output)."""
    das = tuple(parse_hostport(d) for d in args.da)
    if not das and not args.multicast and args.command not in ("register", "deregister"):
        raise UsageError("no DA: give --da HOST[:PORT] or --multicast")
    if not das and args.command in ("register", "deregister"):
        raise UsageError(f"{args.command} needs --da HOST[:PORT]")
    try:
        scopes = tuple(split_list(args.scope))
    except SLPValueError as exc:
        raise UsageError(f"--scope: {exc}") from None
    if not scopes:
        raise UsageError("--scope: at least one scope is needed")
    if not 0 < args.timeout <= 600:
        raise UsageError("--timeout must be 0-600 seconds")
    spi, key = _signing(args)
    if spi and args.command in ("register", "deregister"):
        # A block's timestamp counts whole seconds and the DA takes only a later one for a URL:
        # starting in a second of our own, this run's cannot equal the previous run's (which
        # signed in an earlier second), as two runs in one second otherwise would.
        time.sleep(1.01 - _clock() % 1.0)
    # the retransmission schedule is the RFC's; --timeout shortens how long it goes on
    retry = min(2.0, args.timeout)
    config = AgentConfig(scopes=scopes, das=das, multicast=args.multicast and not das, lang=args.lang,
                         retry=retry, retry_max=args.timeout, mc_max=max(retry, args.timeout),
                         auth_spi=spi, auth_key=key)
    agent = UserAgent(config, _clock())
    bind = args.bind or ("::" if das and ":" in das[0][0] else "0.0.0.0")
    runner = _Runner(agent, bind)
    now = _clock()
    try:
        if args.command == "findsrvs":
            urls = runner.run(*agent.find_services(args.type, now, args.predicate))
            return ("\n".join(f"{u.url},{u.lifetime}" for u in urls),
                    [{"url": u.url, "lifetime": u.lifetime} for u in urls])
        if args.command == "findattrs":
            attrs: dict[str, Attribute] = runner.run(*agent.find_attributes(args.url, now, args.tags))
            return (format_attr_list(attrs),
                    {a.tag: [_jsonable(v) for v in a.values] for a in attrs.values()})
        if args.command == "findsrvtypes":
            na = None if args.naming_authority == "*" else args.naming_authority
            types = runner.run(*agent.find_service_types(now, na))
            return "\n".join(types), list(types)
        if args.command == "findda":
            found = runner.run(*agent.discover_das(now))
            return ("\n".join(d.url for d in found),
                    [{"url": d.url, "address": f"{d.address[0]}:{d.address[1]}", "scopes": list(d.scopes),
                      "boot_timestamp": d.boot_timestamp} for d in found])
        if args.command == "register":
            try:
                parse_attr_list(args.attrs)
                reg = Registration(args.url, args.type, scopes, args.attrs, args.lifetime)
            except (AttrParseError, ValueError) as exc:
                raise UsageError(str(exc)) from None
            runner.run(*agent.register_once(reg, now))
            return "", {"registered": args.url}
        runner.run(*agent.deregister_once(args.url, now))
        return "", {"deregistered": args.url}
    finally:
        runner.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Ask an SLPv2 Directory Agent (RFC 2608).")
    parser.add_argument("--da", action="append", default=[], metavar="HOST[:PORT]",
                        help=f"a Directory Agent to ask (default port {SLP_PORT}); may be repeated")
    parser.add_argument("--scope", default="DEFAULT", help="comma-separated scopes (default: %(default)s)")
    parser.add_argument("--multicast", action="store_true",
                        help="without --da, ask the SLP multicast group 239.255.255.253")
    parser.add_argument("--bind", default="", metavar="ADDR", help="local address for the UDP socket")
    parser.add_argument("--lang", default="en", help="language tag (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--spi", default="", metavar="NAME",
                        help="sign register and deregister as this registrant (with --key-file)")
    parser.add_argument("--key-file", default="", metavar="PATH",
                        help="the registrant's secret key (mode 0600), as sipmob keygen makes it")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                        help="give up on a DA after this long (RFC 2608 CONFIG_RETRY_MAX, default "
                             "%(default)s)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("findsrvs", help="find service URLs")
    p.add_argument("type")
    p.add_argument("predicate", nargs="?", default="")
    p = sub.add_parser("findattrs", help="find the attributes of a URL or service type")
    p.add_argument("url")
    p.add_argument("tags", nargs="?", default="")
    p = sub.add_parser("findsrvtypes", help="find service types")
    p.add_argument("naming_authority", nargs="?", default="*", metavar="NA")
    sub.add_parser("findda", help="find Directory Agents")
    p = sub.add_parser("register", help="register a service once (it expires after --lifetime)")
    p.add_argument("url")
    p.add_argument("type")
    p.add_argument("attrs", nargs="?", default="")
    p.add_argument("--lifetime", type=int, default=10800, help="seconds (default: %(default)s)")
    p = sub.add_parser("deregister", help="remove a registration")
    p.add_argument("url")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        text, data = _execute(args)
    except UsageError as exc:
        print(f"{PROG}: {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SLPError as exc:
        print(f"{PROG}: {args.command}: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"{PROG}: {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(data))
    elif text:
        print(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
