"""The `sipmob-mdsm` entry point: the Multi-Device System Manager daemon in a screenful."""

from __future__ import annotations

import argparse
import dataclasses

from sipmob.mdsm.app import MdsmApp
from sipmob.mdsm.config import MdsmConfig, members_of
from sipmob.service.config import split_host_port
from sipmob.service.daemon import DaemonSpec, Runtime, main_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help="listen here instead of the configured [listen] address and port")


def override(config: MdsmConfig, args: argparse.Namespace) -> MdsmConfig:
    if args.listen is not None:
        try:
            host, port = split_host_port(args.listen)
        except ValueError as exc:
            raise ValueError(f"--listen {exc}") from None
        listen = dataclasses.replace(config.listen, address=host, port=port)
        config = dataclasses.replace(config, listen=listen)
    members_of(config, args.config)  # a member naming no device: a configuration error, --check-config too
    return config


def build(config: MdsmConfig, runtime: Runtime) -> MdsmApp:
    return MdsmApp(config, runtime)


spec = DaemonSpec(name="mdsm", config_type=MdsmConfig, build=build,
                  description="Multi-Device System Manager: virtual devices made of a home's devices",
                  add_arguments=add_arguments, override=override)

main = main_for(spec)
