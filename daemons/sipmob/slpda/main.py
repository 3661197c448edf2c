"""The `sipmob-slpda` entry point: the SLPv2 Directory Agent daemon in a screenful."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from sipmob.service.config import split_host_port
from sipmob.service.daemon import DaemonSpec, Runtime, keep_tls_out, run
from sipmob.slpda.app import SlpdaApp
from sipmob.slpda.config import SlpdaConfig


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, with [HOST]:PORT for IPv6; raises ValueError naming the problem."""
    try:
        return split_host_port(value)
    except ValueError as exc:
        raise ValueError(f"--listen {exc}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help="listen here instead of the configured [listen] address and port")


def override(config: SlpdaConfig, args: argparse.Namespace) -> SlpdaConfig:
    if args.listen is None:
        return config
    host, port = parse_listen(args.listen)
    return dataclasses.replace(config, listen=dataclasses.replace(config.listen, address=host, port=port))


def build(config: SlpdaConfig, runtime: Runtime) -> SlpdaApp:
    return SlpdaApp(config, runtime)


spec = DaemonSpec(name="slpda", config_type=SlpdaConfig, build=build,
                  description="SLPv2 Directory Agent for the devices of a home (RFC 2608)",
                  add_arguments=add_arguments, override=override)


def main() -> None:
    keep_tls_out()  # before the reactor module loads
    from sipmob.service import direct_reactor

    # Each SrvRqst is a wake-up of its own: its datagram goes from epoll to the DA directly.
    direct_reactor.install()
    sys.exit(run(spec))
