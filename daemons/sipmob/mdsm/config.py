"""The configuration of `sipmob-mdsm` (``/etc/sipmob/mdsm.toml``): its keys, defaults and checks.

Responsible for the typed keys, and for turning a system's ``members`` into `Member` values: a
member is named as ``sipmob devices`` shows a device of ``devices.d`` (its file name, or its
``name`` made lower-case with dashes) or given as a SIP URI. A member's ``allow`` list comes from
its ``devices.d`` file: the SA proxy publishes only ``restricted=true`` in SLP, and the MDSM runs on
the same gateway, so it reads the files itself.

Not here: what the keys do (`sipmob.mdsm.app`), loading the file (`sipmob.service.config`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sipmob.mn.devices import slug
from sipmob.saproxy.devices import Device, load_devices
from sipmob.service import slpkeys
from sipmob.service.config import (
    ConfigError,
    ConfigProblem,
    Log,
    each,
    host_port,
    ip_address,
    port,
    positive,
    setting,
    split_host_port,
    state_path,
    this_host_address,
)
from sipmob.sip.uri import URI, SIPParseError
from sipmob.slp.messages import SLP_PORT

DEFAULT_STATE_FILE = "/var/lib/sipmob/mdsm.sqlite"
MDSM_PORT = 5064


def _name(value: str) -> str | None:
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?", value):
        return f"must be lower-case letters, digits and dashes (a SIP user part), got {value!r}"
    return None


def _sip_uri(value: str) -> str | None:
    try:
        uri = URI.parse(value)
    except SIPParseError as exc:
        return f"not a SIP URI: {exc}"
    if uri.scheme not in ("sip", "sips"):
        return f"must be a sip: URI, got {value!r}"
    return None


def _member(value: str) -> str | None:
    if value.startswith(("sip:", "sips:")):
        return _sip_uri(value)
    return None if value.strip() == value and value else f"must be a device name or a SIP URI, got {value!r}"


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    address: str = setting("0.0.0.0", check=ip_address,
                           help="address to receive SIP on (UDP; 0.0.0.0: every IPv4 address)")
    port: int = setting(MDSM_PORT, check=port, help="SIP port of the virtual devices (sip:NAME@GATEWAY:PORT)")
    advertise_address: str = setting("", check=lambda v: ip_address(v) if v else None,
                                     help="the gateway's address in the virtual devices' URIs; empty: the "
                                          "listen address, or this host's when listening on 0.0.0.0")


@dataclasses.dataclass(frozen=True, slots=True)
class Slp:
    da: str = setting("127.0.0.1:427", check=host_port(SLP_PORT),
                      help="the Directory Agent the virtual devices are registered in (HOST[:PORT]); "
                           "empty: found by multicast")
    scopes: list[str] = setting(default_factory=lambda: ["DEFAULT"], help="SLP scopes to register in")
    lifetime: int = setting(300, check=lambda v: None if 10 <= v <= 65535 else
                            f"must be 10-65535 seconds, got {v}",
                            help="registration lifetime in seconds, refreshed before it runs out")
    spi: str = slpkeys.spi_setting("mdsm")
    key_file: str = slpkeys.key_file_setting(slpkeys.key_path("mdsm"))  # made at install

    def validate(self) -> list[tuple[str, str]]:
        return slpkeys.key_problems(self)


@dataclasses.dataclass(frozen=True, slots=True)
class System:
    name: str = setting(check=_name, help="the virtual device's name: its URI is sip:NAME@GATEWAY:PORT")
    members: list[str] = setting(check=each(_member),
                                 help="its devices, the preferred one for each medium first: names as "
                                      "`sipmob devices` shows devices of devices.d, or SIP URIs")
    owners: list[str] = setting(default_factory=list, check=each(_sip_uri),
                                help="users (SIP URIs) who may hand calls to it and take them back, "
                                     "besides the party that handed a call over")
    room: str = setting("", help="its room, published in SLP")
    title: str = setting("", help="a human name published in SLP; empty: the name")

    def validate(self) -> list[tuple[str, str]]:
        if not self.members:
            return [("members", "must list at least one device")]
        if len(self.members) > 8:
            return [("members", f"at most 8 devices, got {len(self.members)}")]
        return []


@dataclasses.dataclass(frozen=True, slots=True)
class Auto:
    per_room: bool = setting(False, help="also make one virtual device per room from the basic devices in "
                                         "the DA: the room's audio and video devices, kept up to date")
    owners: list[str] = setting(default_factory=list, check=each(_sip_uri),
                                help="owners of the virtual devices made per room")
    refresh: float = setting(10.0, check=lambda v: None if 2 <= v <= 3600 else
                             f"must be 2-3600 seconds, got {v}",
                             help="seconds between asking the DA for the rooms' devices again")


def _users_file(value: str) -> str | None:
    if not value:
        return None
    try:
        read_users(value)
    except OSError as exc:
        return f"cannot read {value!r}: {exc.strerror}"
    except ValueError as exc:
        return str(exc)
    return None


def read_users(path: str) -> dict[str, str]:
    """``USER PASSWORD`` per line (``#`` comments, blank lines); the passwords are never logged."""
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            user, _, password = text.partition(" ")
            if not password.strip():
                raise ValueError(f"{path}: line {n}: must be USER PASSWORD")
            users[user] = password.strip()
    return users


@dataclasses.dataclass(frozen=True, slots=True)
class Auth:
    users_file: str = setting("", check=_users_file,
                              help="file of USER PASSWORD lines (mode 0640, group sipmob): an owner whose "
                                   "URI's user part is listed must answer a Digest challenge; empty: owners "
                                   "are recognised by their From alone")
    realm: str = setting("sipmob", help="realm of the Digest challenges")


@dataclasses.dataclass(frozen=True, slots=True)
class Devices:
    directory: str = setting("/etc/sipmob/devices.d",
                             help="the SA proxy's device files: members' names, media and allow lists")


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_calls: int = setting(32, check=positive, help="calls handled at once (set up or established); "
                                                        "more get 503")
    setup_timeout: float = setting(20.0, check=positive,
                                   help="seconds a handoff may take (members and CN answering) before it "
                                        "is abandoned")
    keepalive: float = setting(15.0, check=lambda v: None if v == 0 or 1 <= v <= 3600 else
                               f"must be 0 or 1-3600 seconds, got {v}",
                               help="seconds between OPTIONS to each member of a call; a member that does "
                                    "not answer within keepalive_timeout has its streams removed; 0: never")
    keepalive_timeout: float = setting(4.0, check=positive, help="seconds a member has to answer OPTIONS")


def _egress_file(value: str) -> str | None:
    if not value:
        return None
    from sipmob.service.config import load_config
    from sipmob.service.egress_config import EgressConfig

    try:
        load_config(EgressConfig, value)
    except ConfigError as exc:
        return "; ".join(str(p) for p in exc.problems)
    except OSError as exc:
        return f"no egress list at {value!r}: {exc.strerror}"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Egress:
    file: str = setting("", check=_egress_file,
                        help="an egress.toml (the phone's format): a call whose CN is reached through "
                             "an egress has its SIP on that egress's address, and is re-INVITEd from "
                             "another when it fails or readdresses; empty: no egress list")
    anchor: bool = setting(True, help="with an egress list, put the transcoder's relay between the members "
                                      "and a CN outside, its CN side on the call's egress, so that the "
                                      "audio moves with the call when the link fails (two relay channels "
                                      "a call); false: the members' audio goes to the CN directly and a "
                                      "failed link silences it")
    control: str = setting("", help="a unix socket (mode 0600: the MDSM's user and root only) where "
                                    "`sipmob egress` reads the MDSM's calls per egress; empty: "
                                    "egress.sock in $RUNTIME_DIRECTORY when systemd gives one "
                                    "(/run/sipmob-mdsm), else none")


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    file: str = setting("", help="SQLite database of the calls' dialogs, kept across restarts; empty: "
                                 "$STATE_DIRECTORY/mdsm.sqlite under systemd, else " + DEFAULT_STATE_FILE)


@dataclasses.dataclass(frozen=True, slots=True)
class MdsmConfig:
    listen: Listen = setting(default_factory=Listen)
    slp: Slp = setting(default_factory=Slp)
    system: list[System] = setting(default_factory=list,
                                   help="the virtual devices ([[system]] tables)")
    auto: Auto = setting(default_factory=Auto)
    auth: Auth = setting(default_factory=Auth)
    devices: Devices = setting(default_factory=Devices)
    limits: Limits = setting(default_factory=Limits)
    egress: Egress = setting(default_factory=Egress)
    state: State = setting(default_factory=State)
    log: Log = setting(default_factory=Log)

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        names = [s.name for s in self.system]
        for name in sorted({n for n in names if names.count(n) > 1}):
            problems.append(("system", f"two systems are named {name!r}"))
        return problems

    @property
    def state_file(self) -> Path:
        return state_path(self.state.file, "mdsm.sqlite", DEFAULT_STATE_FILE)

    @property
    def host(self) -> str:
        """The gateway's address in URIs: configured, the listen address, else this host's."""
        if self.listen.advertise_address:
            return self.listen.advertise_address
        if self.listen.address != "0.0.0.0":
            return self.listen.address
        return this_host_address()

    def uri(self, system: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"sip:{system}@{host}:{self.listen.port}"

    @property
    def da_address(self) -> tuple[str, int] | None:
        return split_host_port(self.slp.da, SLP_PORT) if self.slp.da else None


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One device of a virtual device: its short name, SIP URI, media it handles (empty: any) and
    who may use it (empty: anyone the system allows)."""

    name: str
    uri: str
    media: frozenset[str]
    allow: tuple[str, ...]


def _from_file(device: Device) -> Member:
    media = frozenset(m for m, d in (("audio", device.spec.audio), ("video", device.spec.video)) if d)
    return Member(device.id, device.spec.uri, media, tuple(device.spec.allow))


def device_members(config: MdsmConfig) -> dict[str, Member]:
    """Every device of devices.d as a `Member`, by its lower-cased URI (broken files left out)."""
    try:
        devices = load_devices(config.devices.directory)
    except ConfigError:
        return {}
    return {d.spec.uri.lower(): _from_file(d) for d in devices}


def members_of(config: MdsmConfig, file: str = "mdsm.toml") -> dict[str, list[Member]]:
    """Each system's members, resolved against devices.d; raises ConfigError naming what is unknown."""
    try:
        devices = load_devices(config.devices.directory)
    except ConfigError:
        devices = ()  # the SA proxy's own check reports its files; names then do not resolve
    by_key: dict[str, Device] = {}
    for d in devices:
        uri_key = str(d.uri.without_params()).lower()
        for key in (d.id.lower(), slug(d.spec.name) if d.spec.name else "", uri_key):
            if key:
                by_key.setdefault(key, d)
    out: dict[str, list[Member]] = {}
    problems: list[ConfigProblem] = []
    for n, system in enumerate(config.system):
        members: list[Member] = []
        for entry in system.members:
            device = by_key.get(entry.lower()) or by_key.get(str(_uri_key(entry)))
            if device is not None:
                members.append(_from_file(device))
            elif entry.startswith(("sip:", "sips:")):
                members.append(Member(entry, entry, frozenset(), ()))
            else:
                problems.append(ConfigProblem(file, f"system[{n}].members",
                                              f"no device {entry!r} in {config.devices.directory}"))
        out[system.name] = members
    if problems:
        raise ConfigError(problems)
    return out


def _uri_key(entry: str) -> str:
    try:
        return str(URI.parse(entry).without_params()).lower()
    except SIPParseError:
        return entry.lower()
