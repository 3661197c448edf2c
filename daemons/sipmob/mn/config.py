"""The configuration of the mobile node (``mn.toml``): its keys, defaults and checks.

Read by ``sipmob phone`` (everything) and by the other ``sipmob`` commands (only the control socket
path and the SLP settings, so that ``sipmob devices`` asks the same DA as the phone).

Not here: what the keys do (`sipmob.mn.phone`, `sipmob.mn.devices`) or loading the file
(`sipmob.service.config`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from sipmob.service import slpkeys
from sipmob.service.config import (
    Log,
    each,
    host_port,
    ip_address,
    ip_network,
    non_negative,
    one_of,
    port,
    positive,
    setting,
    split_host_port,
)
from sipmob.slp.messages import SLP_PORT

DEFAULT_CONFIG = "/etc/sipmob/mn.toml"
DEFAULT_STATE_FILE = "/var/lib/sipmob/mn-calls.sqlite"
HOME_NETWORKS = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                 "::1/128", "fc00::/7", "fe80::/10"]


def default_control_path() -> Path:
    """``$XDG_RUNTIME_DIR/sipmob/mn.sock`` for a user session, else ``/run/sipmob/mn.sock``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    return Path(runtime or "/run") / "sipmob" / "mn.sock"


def _user(value: str) -> str | None:
    # RFC 3261 §25.1 user part, without escapes: what a person types as a phone's name.
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()&=+$,;?/")
    if not value or any(c not in allowed for c in value):
        return f"must be a SIP user name (letters, digits, - _ . and the like), got {value!r}"
    return None


def _sip_uri(value: str) -> str | None:
    if value and not value.startswith(("sip:", "sips:")):
        return f"must be a sip: or sips: URI, got {value!r}"
    return None


def _readable(value: str) -> str | None:
    if not value:
        return None
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        return f"cannot read the password file {value!r}: {exc.strerror}"
    return None


def _egress_file(value: str) -> str | None:
    if not value:
        return None
    from sipmob.service.config import ConfigError, load_config
    from sipmob.service.egress_config import EgressConfig

    if not os.path.isfile(value):
        return f"no egress list at {value!r}"
    try:
        load_config(EgressConfig, value)
    except ConfigError as exc:
        return "; ".join(str(p) for p in exc.problems)
    return None


def read_password(path: str) -> str:
    """The password in `path`: its first line, without the line break (never logged)."""
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def _audio_in(value: str) -> str | None:
    if value != "tone" and not value.lower().endswith(".wav"):
        return f'must be "tone" or the path of a .wav file, got {value!r}'
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    address: str = setting("127.0.0.1", check=ip_address, help="address for SIP (UDP) and RTP")
    port: int = setting(5060, check=port, help="SIP UDP port")
    rtp_port: int = setting(0, check=lambda v: None if v == 0 else port(v),
                            help="lowest RTP port (each stream takes the next free even port); "
                                 "0: any free port")
    egress: str = setting("", check=_egress_file,
                          help="an egress.toml: SIP and RTP leave from the chosen egress's address "
                               "instead of the one above, and calls move when it fails; empty: no")
    tcp: bool = setting(False, help="SIP over TCP too, on the same address and port (callees and "
                                    "registrars with ;transport=tcp or TCP in DNS)")


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    user: str = setting("mn", check=_user, help="user part of our SIP URI")
    display_name: str = setting("", help="display name in From")
    registrar: str = setting("", check=_sip_uri, help="registrar URI; empty: do not register")
    auth_user: str = setting("", help="user name for Digest challenges; empty: the user above")
    password_file: str = setting("", check=_readable,
                                 help="file whose first line is the Digest password; empty: no credentials")
    outbound_proxy: str = setting("", check=_sip_uri,
                                  help="SIP URI every request outside a call goes to first (a name is "
                                       "located by RFC 3263); empty: straight to the callee or registrar")
    owners: list[str] = setting(default_factory=list, check=each(_sip_uri),
                                help="SIP URIs of the phone's owners: an INVITE with Replaces referred by "
                                     "one of them (Referred-By) may take over a call (RFC 3891 §6)")


@dataclasses.dataclass(frozen=True, slots=True)
class Media:
    audio_in: str = setting("tone", check=_audio_in,
                            help='what we send: "tone" (a 440 Hz sine) or an 8 kHz mono WAV file')
    record: str = setting("", help="where to record what we receive (a WAV per call); empty: nowhere")
    codecs: list[str] = setting(default_factory=lambda: ["PCMU", "PCMA", "opus"],
                                check=each(one_of("PCMU", "PCMA", "opus")),
                                help="audio codecs we offer, most preferred first (opus only where "
                                     "libopus0 and python3-numpy are installed)")


@dataclasses.dataclass(frozen=True, slots=True)
class Calls:
    auto_answer: bool = setting(False, help="answer incoming calls at once (only from answer_from)")
    answer_from: list[str] = setting(default_factory=lambda: list(HOME_NETWORKS), check=each(ip_network),
                                     help="networks whose callers may be answered; others get 403 "
                                          "(default: loopback, private and link-local ranges)")
    max_calls: int = setting(4, check=positive,
                             help="calls at once (up or being answered); more get 486 Busy Here")
    max_calls_per_source: int = setting(2, check=positive,
                                        help="calls at once from one source address; more get 486")
    setups_per_minute: float = setting(10.0, check=positive,
                                       help="new INVITEs admitted per source address and minute "
                                            "(bursts of up to 5), and four times that per /24 "
                                            "(/64); more get 503 with Retry-After")
    media_timeout: float = setting(30.0, check=non_negative,
                                   help="seconds without RTP from the other party, while it should "
                                        "send and this phone plays the call, before the call is "
                                        "ended with BYE; 0: never")
    grace_period: float = setting(1.0, check=non_negative,
                                  help="seconds we keep sending our own media after a transfer "
                                       "(draft §7.1: the CN may not hear the devices yet)")
    device_timeout: float = setting(8.0, check=positive,
                                    help="seconds a device has to answer our INVITE before the "
                                         "transfer is rolled back")
    options_timeout: float = setting(2.0, check=positive,
                                     help="seconds the CN has to answer OPTIONS (capability check); "
                                          "without an answer its current description is used")
    ring_timeout: float = setting(60.0, check=positive,
                                  help="seconds an incoming call rings (without auto_answer) before "
                                       "it is answered 480")
    mode: str = setting("auto", check=one_of("auto", "mnc", "handoff"),
                        help="how calls move: mnc (we keep the call and move its media, draft §5.2), "
                             "handoff (REFER the device to take the call over, draft §5.3), or auto: "
                             "handoff for devices registered with mobility=enhanced, else mnc")


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRole:
    enabled: bool = setting(False, help="also be a mobility-enhanced device of the home (draft Figs. 4-5): "
                                        "register in SLP with mobility=enhanced and take calls handed off "
                                        "by REFER")
    name: str = setting("", help="the device's name in SLP; empty: the SIP user")
    room: str = setting("", help="the room the device is in")
    owners: list[str] = setting(default_factory=list, check=each(_sip_uri),
                                help="SIP URIs whose REFERs the device acts on (besides the party that "
                                     "handed it a call); anyone else gets 403")
    lifetime: int = setting(300, check=positive, help="seconds of each SLP registration (refreshed)")


@dataclasses.dataclass(frozen=True, slots=True)
class Slp:
    da: str = setting("127.0.0.1:427", check=host_port(SLP_PORT),
                      help="the Directory Agent, HOST[:PORT]; empty: ask by multicast")
    scopes: list[str] = setting(default_factory=lambda: ["DEFAULT"], help="SLP scopes to search")
    timeout: float = setting(3.0, check=positive, help="seconds to wait for the DA")
    # No key is made for a phone: `sipmob keygen NAME` makes one where the DA reads it.
    spi: str = slpkeys.spi_setting("")
    key_file: str = slpkeys.key_file_setting("")

    def validate(self) -> list[tuple[str, str]]:
        return slpkeys.key_problems(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Control:
    path: str = setting("", help="the control socket; empty: $XDG_RUNTIME_DIR/sipmob/mn.sock, "
                                 "else /run/sipmob/mn.sock")


def _dns_servers(value: list[str]) -> str | None:
    for server in value:
        try:
            split_host_port(server, 53)
        except ValueError as exc:
            return str(exc)
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Dns:
    servers: list[str] = setting(default_factory=list, check=_dns_servers,
                                 help="DNS servers for SIP names, IP[:PORT]; empty: from /etc/resolv.conf")


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    file: str = setting("", help="SQLite file of the calls in progress, so a restarted phone takes them "
                                 "back (or ends them); empty: $STATE_DIRECTORY/mn-calls.sqlite under "
                                 "systemd, else "
                                 "$XDG_STATE_HOME (for a user: ~/.local/state)/sipmob/mn-calls.sqlite, "
                                 "else " + DEFAULT_STATE_FILE)


@dataclasses.dataclass(frozen=True, slots=True)
class MnConfig:
    listen: Listen = setting(default_factory=Listen)
    identity: Identity = setting(default_factory=Identity)
    media: Media = setting(default_factory=Media)
    calls: Calls = setting(default_factory=Calls)
    slp: Slp = setting(default_factory=Slp)
    device: DeviceRole = setting(default_factory=DeviceRole)
    control: Control = setting(default_factory=Control)
    state: State = setting(default_factory=State)
    log: Log = setting(default_factory=Log)
    dns: Dns = setting(default_factory=Dns)

    @property
    def state_file(self) -> Path:
        if self.state.file:
            return Path(self.state.file)
        directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if directory:
            return Path(directory) / "mn-calls.sqlite"
        xdg = os.environ.get("XDG_STATE_HOME", "")
        if not xdg and os.geteuid() != 0 and os.environ.get("HOME"):
            xdg = str(Path(os.environ["HOME"]) / ".local" / "state")  # the XDG default, for a user's phone
        return Path(xdg) / "sipmob" / "mn-calls.sqlite" if xdg else Path(DEFAULT_STATE_FILE)

    @property
    def control_path(self) -> Path:
        return Path(self.control.path) if self.control.path else default_control_path()

    @property
    def da_address(self) -> tuple[str, int] | None:
        if not self.slp.da:
            return None
        return split_host_port(self.slp.da, SLP_PORT)

    @property
    def dns_servers(self) -> list[tuple[str, int]]:
        return [split_host_port(server, 53) for server in self.dns.servers]
