"""The `sipmob-web` entry point: the gateway's web page (`sipmob.web.app`) in a screenful."""

from __future__ import annotations

import argparse
import dataclasses

from sipmob.service.config import split_host_port
from sipmob.service.daemon import DaemonSpec, Runtime, main_for
from sipmob.web.app import WebApp
from sipmob.web.config import WebConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="HOST:PORT", action="append", default=None,
                        help="serve here instead of the configured [listen] (repeatable)")


def override(config: WebConfig, args: argparse.Namespace) -> WebConfig:
    if not args.listen:
        return config
    pairs = []
    for text in args.listen:
        try:
            pairs.append(split_host_port(text))
        except ValueError as exc:
            raise ValueError(f"--listen {exc}") from None
    if len({p for _, p in pairs}) != 1:
        raise ValueError("--listen: every address takes the same port")
    listen = dataclasses.replace(config.listen, addresses=[h for h, _ in pairs], port=pairs[0][1])
    return dataclasses.replace(config, listen=listen)


def build(config: WebConfig, runtime: Runtime) -> WebApp:
    return WebApp(config, runtime)


spec = DaemonSpec(name="web", config_type=WebConfig, build=build,
                  description="the sipmob web page: rooms, devices, calls and health of the home gateway",
                  add_arguments=add_arguments, override=override)

main = main_for(spec)

if __name__ == "__main__":
    import sys

    sys.exit(main())
