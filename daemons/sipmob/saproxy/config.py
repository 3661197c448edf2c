"""The configuration of `sipmob-saproxy` (``/etc/sipmob/saproxy.toml``): its keys, defaults and checks.

Not here: the device files of ``devices.d/`` (`sipmob.saproxy.devices`), what the keys do
(`sipmob.saproxy.app`, `sipmob.saproxy.probe`) or loading the file (`sipmob.service.config`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sipmob.saproxy.devices import Device
from sipmob.service import slpkeys
from sipmob.service.config import (
    Log,
    each,
    host_port,
    ip_address,
    non_negative,
    port,
    positive,
    setting,
    state_path,
)

DEFAULT_DEVICES_DIR = "/etc/sipmob/devices.d"
DEFAULT_STATE_FILE = "/var/lib/sipmob/saproxy.json"
DEFAULT_KEY_FILE = slpkeys.key_path("saproxy")  # made at install, read by sipmob-slpda too


# The daemon does no DNS: addresses are IP literals, a port may follow.
_hostport = host_port(0)


def _scope(value: str) -> str | None:
    # RFC 2608 §6.4.1: scope names are non-empty and carry no list or reserved characters.
    if not value or any(c in value for c in ',()\\!<=>~;*+') or value.strip() != value:
        return (f"must be a scope name without spaces at its ends or any of "
                f", ( ) \\ ! < = > ~ ; * +, got {value!r}")
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Devices:
    directory: str = setting(DEFAULT_DEVICES_DIR,
                             help="directory of device files: every *.toml file in it is one device")


@dataclasses.dataclass(frozen=True, slots=True)
class Sip:
    address: str = setting("0.0.0.0", check=ip_address, help="address to send OPTIONS from")
    port: int = setting(5070, check=port, help="UDP port to send OPTIONS from and hear answers on")
    outbound_proxy: str = setting("", check=lambda v: _hostport(v) if v else None,
                                  help="HOST[:PORT] where OPTIONS for devices known by an AOR (a URI "
                                       "whose host is a domain name) are sent")
    from_uri: str = setting("sip:saproxy@localhost", help="From of the OPTIONS requests")


@dataclasses.dataclass(frozen=True, slots=True)
class Probe:
    interval: float = setting(15.0, check=positive, help="seconds between OPTIONS to a device that is up")
    timeout: float = setting(4.0, check=lambda v: None if 0.1 <= v <= 32 else
                             f"must be 0.1-32 seconds, got {v}",
                             help="seconds without an answer before one probe counts as failed")
    retry: float = setting(1.0, check=positive,
                           help="seconds before probing again a device that was up and just failed")
    down_after: int = setting(2, check=lambda v: None if 1 <= v <= 10 else f"must be 1-10, got {v}",
                              help="consecutive failed probes before a device counts as down")
    backoff_max: float = setting(60.0, check=positive,
                                 help="longest wait between probes of a device that is down")

    def validate(self) -> list[tuple[str, str]]:
        if self.backoff_max < self.interval:
            return [("backoff_max", f"must be at least interval ({self.interval}), got {self.backoff_max}")]
        return []


@dataclasses.dataclass(frozen=True, slots=True)
class Slp:
    das: list[str] = setting(default_factory=lambda: ["127.0.0.1"], check=each(_hostport),
                             help="Directory Agents, HOST[:PORT] (port 427 when absent)")
    scopes: list[str] = setting(default_factory=lambda: ["DEFAULT"], check=each(_scope),
                                help="scopes every device is registered in")
    multicast: bool = setting(False, help="also look for DAs by multicast (never on loopback)")
    lifetime: int = setting(300, check=lambda v: None if 60 <= v <= 65535 else
                            f"must be 60-65535 seconds, got {v}",
                            help="registration lifetime, refreshed before it ends")
    da_find: float = setting(900.0, check=positive,
                             help="seconds between asking the DAs for their DAAdvert again (RFC 2608 "
                                  "CONFIG_DA_FIND): how a restarted DA is noticed without multicast")
    da_watch: float = setting(1.0, check=non_negative,
                              help="with multicast off, seconds between DAAdvert requests to the DAs "
                                   "instead of da_find, so a restarted DA (new boot timestamp) gets "
                                   "every device again within seconds; 0: every da_find")

    spi: str = slpkeys.spi_setting("saproxy")
    key_file: str = slpkeys.key_file_setting(DEFAULT_KEY_FILE)

    @property
    def da_interval(self) -> float:
        return self.da_watch if self.da_watch > 0 and not self.multicast else self.da_find

    def validate(self) -> list[tuple[str, str]]:
        problems = slpkeys.key_problems(self)
        if not self.scopes:
            problems.append(("scopes", "must list at least one scope"))
        if not self.das and not self.multicast:
            problems.append(("das", "must list a DA when multicast is off"))
        return problems


@dataclasses.dataclass(frozen=True, slots=True)
class Mdns:
    enabled: bool = setting(False, help="advertise devices as _sip._udp.local. with mDNS-SD too")
    interfaces: list[str] = setting(default_factory=list, check=each(ip_address),
                                    help="addresses of the interfaces to advertise on; empty: all")


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    file: str = setting("", help="where the URLs registered in SLP are kept, so that after a crash a "
                                 "device removed meanwhile is deregistered at start; empty: "
                                 "$STATE_DIRECTORY/saproxy.json under systemd, else " + DEFAULT_STATE_FILE)


@dataclasses.dataclass(frozen=True, slots=True)
class SaproxyConfig:
    devices: Devices = setting(default_factory=Devices)
    sip: Sip = setting(default_factory=Sip)
    probe: Probe = setting(default_factory=Probe)
    slp: Slp = setting(default_factory=Slp)
    mdns: Mdns = setting(default_factory=Mdns)
    state: State = setting(default_factory=State)
    log: Log = setting(default_factory=Log)

    @property
    def state_file(self) -> Path:
        return state_path(self.state.file, "saproxy.json", DEFAULT_STATE_FILE)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """The daemon's file and its device files, loaded and checked together (see `main.override`)."""

    config: SaproxyConfig
    devices: tuple[Device, ...]
