"""The `sipmob-slpda` entry point: the SLPv2 Directory Agent daemon in a screenful."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress

from sipmob.service.daemon import DaemonSpec, Runtime, main_for
from sipmob.slpda.app import SlpdaApp
from sipmob.slpda.config import SlpdaConfig


def parse_listen(value: str) -> tuple[str, int]:
    """HOST:PORT, with [HOST]:PORT for IPv6; raises ValueError naming the problem."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen: expected HOST:PORT, got {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"--listen: {host!r} is not an IP address") from None
    return host, int(port_text)


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

main = main_for(spec)
