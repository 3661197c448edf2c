"""The `sipmob-saproxy` entry point: the SLP Service Agent for basic SIP devices in a screenful."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from sipmob.saproxy.app import SaproxyApp
from sipmob.saproxy.config import SaproxyConfig, Settings
from sipmob.saproxy.devices import load_devices
from sipmob.service.config import split_host_port
from sipmob.service.daemon import DaemonSpec, Runtime, main_for


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices-dir", metavar="DIR", default=None,
                        help="read device files from DIR instead of [devices] directory")
    parser.add_argument("--da", metavar="HOST[:PORT]", action="append", default=None,
                        help="a Directory Agent (repeatable); replaces [slp] das")
    parser.add_argument("--listen", metavar="HOST:PORT", default=None,
                        help="send OPTIONS from this address instead of [sip] address and port")


def override(config: SaproxyConfig, args: argparse.Namespace) -> Settings:
    """The flags applied, then the device files loaded: a broken one fails --check-config, the
    start and a reload alike (ConfigError names the file and the key)."""
    if args.devices_dir is not None:
        config = dataclasses.replace(config, devices=dataclasses.replace(config.devices,
                                                                          directory=args.devices_dir))
    if args.da is not None:
        for da in args.da:
            split_host_port(da, 427)  # ValueError: reported as a command-line problem
        config = dataclasses.replace(config, slp=dataclasses.replace(config.slp, das=list(args.da)))
    if args.listen is not None:
        if ":" not in args.listen:
            raise ValueError(f"--listen: expected HOST:PORT, got {args.listen!r}")
        host, port = split_host_port(args.listen, 0)
        config = dataclasses.replace(config, sip=dataclasses.replace(config.sip, address=host, port=port))
    devices = load_devices(config.devices.directory, have_outbound_proxy=bool(config.sip.outbound_proxy))
    return Settings(config, devices)


def build(settings: Settings, runtime: Runtime) -> SaproxyApp:
    return SaproxyApp(settings, runtime)


spec = DaemonSpec(name="saproxy", config_type=SaproxyConfig, build=build,  # type: ignore[arg-type]
                  description="SLP Service Agent registering basic SIP devices on their behalf",
                  add_arguments=add_arguments, override=override)  # type: ignore[arg-type]

_run = main_for(spec)


def main() -> None:
    # No TLS is spoken: keep pyOpenSSL and cryptography out of the process (as sipmob-slpda does).
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]
    _run()
