"""The configuration of `sipmob-slpda` (``/etc/sipmob/slpda.toml``): its keys, defaults and checks.

Not here: what the keys do (`sipmob.slpda.app`, `sipmob.slp.da`) or loading the file
(`sipmob.service.config`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from sipmob.service.config import (
    Log,
    each,
    ip_address,
    ip_network,
    non_negative,
    one_of,
    port,
    positive,
    setting,
    state_path,
    this_host_address,
)
from sipmob.service.slpkeys import KEY_DIRECTORY, read_key
from sipmob.slp import auth
from sipmob.slp.da import DAConfig
from sipmob.slp.messages import SLP_PORT

DEFAULT_STATE_FILE = "/var/lib/sipmob/slpda.json"
DEFAULT_KEY_DIRECTORY = KEY_DIRECTORY  # the packages put their daemons' keys here at install
MAX_KEYS = 256
# The registrants whose packages make their key at install: the SA proxy, the MDSM, the transcoder.
DAEMON_SPIS = ("saproxy", "mdsm", "transcoder")

# RFC 1918 and RFC 4193 private ranges, link-local and loopback: the home network and the box itself.
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                    "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"]


def _scope(value: str) -> str | None:
    # RFC 2608 §6.4.1: scope names are non-empty and cannot contain list or reserved characters.
    if not value or any(c in value for c in ',()\\!<=>~;*+') or value.strip() != value:
        return f"must be a scope name without spaces at its ends or any of , ( ) \\ ! < = > ~ ; * +, " \
               f"got {value!r}"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    address: str = setting("0.0.0.0", check=ip_address,
                           help="address to receive unicast UDP and TCP on (0.0.0.0: every IPv4 address)")
    port: int = setting(SLP_PORT, check=port, help="UDP and TCP port; RFC 2608 uses 427")


@dataclasses.dataclass(frozen=True, slots=True)
class Multicast:
    enabled: bool = setting(True, help="join 239.255.255.253 to answer multicast requests and send "
                                       "DAAdverts there; always off when listening on loopback")
    interface: str = setting("0.0.0.0", check=ip_address,
                             help="address of the interface to join the group on (0.0.0.0: the default)")


@dataclasses.dataclass(frozen=True, slots=True)
class DA:
    scopes: list[str] = setting(default_factory=lambda: ["DEFAULT"], check=each(_scope),
                                help="the scopes this DA serves")
    heartbeat: float = setting(10800.0, check=non_negative,
                               help="seconds between unsolicited DAAdverts (RFC 2608 CONFIG_DA_BEAT); "
                                    "0 sends only the one at start")
    advertise_address: str = setting("", check=lambda v: ip_address(v) if v else None,
                                     help="address put in the DA's URL; empty: the listen address, "
                                          "or this host's address when listening on 0.0.0.0")
    attributes: str = setting("", help="attribute list sent in DAAdverts, such as (min-refresh-interval=0)")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if not self.scopes:
            problems.append(("scopes", "must list at least one scope"))
        return problems


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    udp_reply_limit: int = setting(1400, check=lambda v: None if 100 <= v <= 65000 else
                                   f"must be 100-65000 bytes, got {v}",
                                   help="largest UDP reply; longer ones are truncated with OVERFLOW set")
    max_registrations: int = setting(5000, check=positive, help="registrations kept at most")
    max_attr_list: int = setting(4096, check=positive, help="largest attribute list of one registration, "
                                                              "in bytes")
    rate: float = setting(200.0, check=non_negative,
                          help="requests per second accepted from one source address; 0: no limit")
    burst: int = setting(400, check=non_negative, help="requests one source may send at once above the "
                                                         "rate (token bucket size)")
    over_rate: str = setting("busy", check=one_of("busy", "drop"),
                             help="'busy': answer DA_BUSY_NOW (at most once a second per source); "
                                  "'drop': stay silent")
    tcp_idle_timeout: float = setting(30.0, check=positive,
                                      help="seconds before an idle TCP connection is closed")
    max_lifetime: int = setting(10800, check=lambda v: None if 1 <= v <= 65535 else
                                f"must be 1-65535 seconds, got {v}",
                                help="longest lifetime kept; a longer registration is shortened to it")
    max_store_bytes: int = setting(32_000_000, check=positive,
                                   help="memory the registrations may take, in bytes as the DA "
                                        "accounts them; beyond that new ones get DA_BUSY_NOW")
    max_predicate: int = setting(2048, check=positive, help="longest predicate, in bytes")
    max_predicate_items: int = setting(64, check=positive,
                                       help="comparisons one predicate may hold")
    request_work: int = setting(25_000, check=positive,
                                help="work one request may cost (about a microsecond each); a reply "
                                     "cut there is flagged OVERFLOW")
    subnet_rate: float = setting(400.0, check=non_negative,
                                 help="requests per second from one /24 (IPv4) or /64 (IPv6) of "
                                      "unregistered sources; 0: no limit")
    subnet_burst: int = setting(800, check=non_negative, help="token bucket size of subnet_rate")
    stranger_rate: float = setting(1000.0, check=non_negative,
                                   help="requests per second from all sources that are neither trusted "
                                        "nor registered, together, and (a pool of its own) from all "
                                        "registered ones together; 0: no limit")
    stranger_burst: int = setting(2000, check=non_negative, help="token bucket size of stranger_rate")
    rate_sources: int = setting(4096, check=positive,
                                help="sources (and subnets) whose buckets are remembered; the least "
                                     "recently seen is forgotten first")
    tcp_connections: int = setting(256, check=positive, help="TCP connections open at once")
    tcp_per_source: int = setting(8, check=positive,
                                  help="TCP connections open at once from one source address")
    tcp_request_timeout: float = setting(5.0, check=positive,
                                         help="seconds to receive a whole request once its first byte "
                                              "arrived; slower senders are disconnected")


@dataclasses.dataclass(frozen=True, slots=True)
class RegistrantKey:
    spi: str = setting(check=auth.check_spi, help="the registrant's name (SLP SPI) in its "
                                                  "authentication blocks")
    file: str = setting(help="file holding its secret key, mode 0600, at least 16 bytes; read at "
                             "start and on reload")

    def validate(self) -> list[tuple[str, str]]:
        try:
            read_key(self.file)
        except ValueError as exc:
            return [("file", str(exc))]
        return []


@dataclasses.dataclass(frozen=True, slots=True)
class Registration:
    allowed_networks: list[str] = setting(default_factory=lambda: list(PRIVATE_NETWORKS),
                                          check=each(ip_network),
                                          help="networks whose hosts may register and deregister; "
                                               "others get AUTHENTICATION_ABSENT")
    trusted: list[str] = setting(default_factory=lambda: ["127.0.0.0/8", "::1/128"],
                                 check=each(ip_network),
                                 help="trusted registrants (the SA proxy on this box; devices): their "
                                      "registrations get the `trusted` attribute, their names cannot be "
                                      "taken by others, and the rate limits do not apply to them")
    key_directory: str = setting(DEFAULT_KEY_DIRECTORY,
                                 help="directory of registrants' secrets: each SPI.key file in it is the "
                                      "key of registrant SPI (mode 0600, at least 16 bytes); read at "
                                      "start and on reload; a missing directory means no keys")
    keys: list[RegistrantKey] = setting(
        default_factory=list,
        help="more registrants' secrets, as [[registration.keys]] tables of spi and file. A URL "
             "registered with a valid authentication block can then be changed or deregistered "
             "only with the same registrant's key, from any address")
    trusted_spis: list[str] = setting(default_factory=lambda: list(DAEMON_SPIS), check=each(auth.check_spi),
                                      help="registrants trusted by their key as the trusted networks are "
                                           "by address, whatever address they register from")
    auth_window: float = setting(300.0, check=lambda v: None if 1 <= v <= 86400 else
                                 f"must be 1-86400 seconds, got {v}",
                                 help="seconds an authentication block's timestamp may differ from "
                                      "this box's clock")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        spis = [k.spi for k in self.keys]
        for spi in sorted({s for s in spis if spis.count(s) > 1}):
            problems.append(("keys", f"SPI {spi!r} is given more than once"))
        try:
            self.read_keys()
        except ValueError as exc:
            problems.append(("key_directory", str(exc)))
        return problems

    def read_keys(self) -> tuple[tuple[str, bytes], ...]:
        """Every registrant's (SPI, key): the key directory's, then the `keys` tables' (which win).
        Raises ValueError naming the file that cannot be used."""
        keys: dict[str, bytes] = {}
        directory = Path(self.key_directory) if self.key_directory else None
        if directory is not None and directory.exists():
            try:
                files = sorted(directory.glob("*.key"))
            except OSError as exc:
                raise ValueError(f"cannot list {directory}: {exc.strerror}") from None
            if len(files) > MAX_KEYS:
                raise ValueError(f"{directory} holds more than {MAX_KEYS} keys")
            for path in files:
                problem = auth.check_spi(path.stem)
                if problem:
                    raise ValueError(f"{path}: the name before .key is the SPI, which {problem}")
                keys[path.stem] = read_key(str(path))
        for k in self.keys:
            keys[k.spi] = read_key(k.file)
        return tuple(sorted(keys.items()))


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    file: str = setting("", help="where registrations are kept across restarts; empty: "
                                 "$STATE_DIRECTORY/slpda.json under systemd, else " + DEFAULT_STATE_FILE)


@dataclasses.dataclass(frozen=True, slots=True)
class SlpdaConfig:
    listen: Listen = setting(default_factory=Listen)
    multicast: Multicast = setting(default_factory=Multicast)
    da: DA = setting(default_factory=DA)
    limits: Limits = setting(default_factory=Limits)
    registration: Registration = setting(default_factory=Registration)
    state: State = setting(default_factory=State)
    log: Log = setting(default_factory=Log)

    @property
    def multicast_enabled(self) -> bool:
        """Multicast needs a real interface: never on a daemon bound to loopback."""
        return self.multicast.enabled and not ipaddress.ip_address(self.listen.address).is_loopback

    @property
    def state_file(self) -> Path:
        return state_path(self.state.file, "slpda.json", DEFAULT_STATE_FILE)

    def advertised_address(self) -> str:
        if self.da.advertise_address:
            return self.da.advertise_address
        if not ipaddress.ip_address(self.listen.address).is_unspecified:
            return self.listen.address
        if self.multicast.interface != "0.0.0.0":
            return self.multicast.interface
        return this_host_address()

    def da_config(self) -> DAConfig:
        address = self.advertised_address()
        host = f"[{address}]" if ":" in address else address
        return DAConfig(
            url=f"service:directory-agent://{host}",
            scopes=tuple(self.da.scopes),
            addresses=frozenset({address, self.listen.address}),
            attr_list=self.da.attributes,
            heartbeat=self.da.heartbeat,
            udp_reply_limit=self.limits.udp_reply_limit,
            max_registrations=self.limits.max_registrations,
            max_attr_list=self.limits.max_attr_list,
            rate=self.limits.rate,
            burst=self.limits.burst,
            over_rate="drop" if self.limits.over_rate == "drop" else "busy",
            allowed_networks=tuple(self.registration.allowed_networks),
            trusted_networks=tuple(self.registration.trusted),
            max_lifetime=self.limits.max_lifetime,
            max_store_bytes=self.limits.max_store_bytes,
            max_predicate=self.limits.max_predicate,
            max_predicate_items=self.limits.max_predicate_items,
            request_work=self.limits.request_work,
            subnet_rate=self.limits.subnet_rate,
            subnet_burst=self.limits.subnet_burst,
            stranger_rate=self.limits.stranger_rate,
            stranger_burst=self.limits.stranger_burst,
            rate_sources=self.limits.rate_sources,
            keys=self.registration.read_keys(),
            trusted_spis=tuple(self.registration.trusted_spis),
            auth_window=self.registration.auth_window,
        )
