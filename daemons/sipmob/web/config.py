"""The configuration of `sipmob-web` (``/etc/sipmob/web.toml``): its keys, defaults and checks.

Not here: what the keys do (`sipmob.web.app`) or loading the file (`sipmob.service.config`).
"""

from __future__ import annotations

import dataclasses

from sipmob.service.config import Log, each, host_port, ip_address, port, positive, setting
from sipmob.slp.messages import SLP_PORT

DEFAULT_PASSWORD_FILE = "/var/lib/sipmob/web-password"


def _interval(value: float) -> str | None:
    # Below this the page would make the DA do the work of a flood; above it a new device takes
    # longer than a person waits for.
    return None if 0.2 <= value <= 60 else "must be between 0.2 and 60 seconds"


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    addresses: list[str] = setting(default_factory=list, check=each(ip_address),
                                   help="addresses to serve on; empty: 127.0.0.1 and every address of "
                                        "this host in a private network (RFC 1918, RFC 4193) found at start; "
                                        "never 0.0.0.0 unless listed")
    port: int = setting(8080, check=port, help="TCP port")


@dataclasses.dataclass(frozen=True, slots=True)
class Auth:
    password_file: str = setting(DEFAULT_PASSWORD_FILE,
                                 help="the hashed password (sipmob web-password writes it, mode 0600)")
    session_lifetime: float = setting(43200.0, check=positive, help="seconds a login lasts")
    max_failures: int = setting(5, check=lambda v: None if v >= 1 else "must be at least 1",
                                help="failed logins a source address may make per minute")
    max_failures_total: int = setting(30, check=lambda v: None if v >= 1 else "must be at least 1",
                                      help="failed logins from all sources together per minute")


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = setting(16384, check=lambda v: None if 256 <= v <= 1048576 else "must be 256..1048576",
                            help="largest request body in bytes (413 above)")
    request_timeout: float = setting(10.0, check=positive,
                                     help="seconds a client has to send a whole request")
    max_streams: int = setting(32, check=lambda v: None if v >= 1 else "must be at least 1",
                               help="live pages (event streams) at once")


@dataclasses.dataclass(frozen=True, slots=True)
class Sources:
    da: str = setting("127.0.0.1:427", check=host_port(SLP_PORT),
                      help="the SLP Directory Agent, HOST[:PORT]")
    scopes: list[str] = setting(default_factory=lambda: ["DEFAULT"], help="SLP scopes to show")
    poll_interval: float = setting(0.5, check=_interval,
                                   help="seconds between two questions to the DA while a page is open")
    phone_control: str = setting("/run/sipmob/mn.sock", help="the phone's control socket")
    units: list[str] = setting(default_factory=lambda: ["sipmob-slpda", "sipmob-saproxy", "sipmob-phone",
                                                        "sipmob-web"],
                               help="systemd units whose state and STATUS= the page shows")


@dataclasses.dataclass(frozen=True, slots=True)
class WebConfig:
    listen: Listen = setting(default_factory=Listen)
    auth: Auth = setting(default_factory=Auth)
    limits: Limits = setting(default_factory=Limits)
    sources: Sources = setting(default_factory=Sources)
    log: Log = setting(default_factory=Log)
