"""The configuration of `sipmob-transcoder` (``/etc/sipmob/transcoder.toml``): keys, defaults, checks.

Not here: what the keys do (`sipmob.transcoder.app`) or loading the file (`sipmob.service.config`).
"""

from __future__ import annotations

import dataclasses

from sipmob.service import slpkeys
from sipmob.service.config import Log, each, host_port, ip_address, ip_network, port, positive, setting

# RFC 1918 and RFC 4193 private ranges, link-local and loopback: the home network and the box itself.
PRIVATE_NETWORKS = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                    "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"]
CODECS = ("PCMU", "PCMA", "G722", "opus", "L16")


def _codec(value: str) -> str | None:
    if value.upper() not in {c.upper() for c in CODECS}:
        return f"must be one of {', '.join(CODECS)}, got {value!r}"
    return None


def _scope(value: str) -> str | None:
    if not value or any(c in value for c in ',()\\!<=>~;*+') or value.strip() != value:
        return f"must be a scope name without spaces at its ends or any of , ( ) \\ ! < = > ~ ; * +, " \
               f"got {value!r}"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Sip:
    address: str = setting("0.0.0.0", check=ip_address, help="address to receive SIP on (UDP)")
    port: int = setting(5080, check=port, help="SIP port (UDP)")
    advertise_address: str = setting("", check=lambda v: ip_address(v) if v else None,
                                     help="address put in our SDP and SLP URL; empty: the SIP address, "
                                          "or 127.0.0.1 when that is 0.0.0.0")


@dataclasses.dataclass(frozen=True, slots=True)
class Rtp:
    address: str = setting("0.0.0.0", check=ip_address, help="address the RTP and RTCP sockets bind")
    port_min: int = setting(20000, check=port, help="lowest RTP port (even; RTCP is the next one)")
    port_max: int = setting(20999, check=port, help="highest port used for RTP or RTCP")

    def validate(self) -> list[tuple[str, str]]:
        if self.port_max - self.port_min < 3:
            return [("port_max", f"must leave room for one call (4 ports) above port_min "
                                 f"({self.port_min}), got {self.port_max}")]
        return []


@dataclasses.dataclass(frozen=True, slots=True)
class Media:
    codecs: list[str] = setting(default_factory=lambda: list(CODECS), check=each(_codec),
                                help="codecs converted, either side")
    relay: bool = setting(True, help="also anchor calls whose sides share a codec (relay, no decode)")
    workers: int = setting(0, check=lambda v: None if 0 <= v <= 256 else f"must be 0-256, got {v}",
                           help="media worker processes, each single-threaded with its share of the "
                                "calls and of [capacity] channels; 0: one per core")
    gather_ms: float = setting(4.0, check=lambda v: None if 0 <= v <= 20 else f"must be 0-20, got {v}",
                               help="once packets come that often, a media worker lets them gather this "
                                    "long between rounds: fewer wake-ups, less CPU per packet, at most "
                                    "this much added latency; 0: serve each at once")

    def validate(self) -> list[tuple[str, str]]:
        return [] if self.codecs else [("codecs", "must list at least one codec")]


@dataclasses.dataclass(frozen=True, slots=True)
class Capacity:
    channels: int = setting(100, check=positive,
                            help="converted directions accepted at once (a call is two); more get 503 "
                                 "with Retry-After. Size it with tests/bench/bench_transcoder.py")
    retry_after: int = setting(30, check=positive, help="seconds said in Retry-After when full")
    max_sdp: int = setting(8192, check=positive, help="largest SDP body accepted, in bytes")
    idle_timeout: float = setting(60.0, check=positive,
                                  help="seconds without RTP from either side before a call is hung up")


@dataclasses.dataclass(frozen=True, slots=True)
class Access:
    allowed_networks: list[str] = setting(default_factory=lambda: list(PRIVATE_NETWORKS),
                                          check=each(ip_network),
                                          help="networks whose hosts may invoke the transcoder; "
                                               "others get 403")


@dataclasses.dataclass(frozen=True, slots=True)
class Slp:
    enabled: bool = setting(True, help="register service:sip-transcoder in the Directory Agents")
    das: list[str] = setting(default_factory=lambda: ["127.0.0.1"], check=each(host_port(427)),
                             help="Directory Agents, HOST[:PORT] (port 427 when absent)")
    scopes: list[str] = setting(default_factory=lambda: ["DEFAULT"], check=each(_scope),
                                help="scopes to register in")
    lifetime: int = setting(300, check=lambda v: None if 60 <= v <= 65535 else
                            f"must be 60-65535 seconds, got {v}",
                            help="registration lifetime, refreshed before it ends")
    update_interval: float = setting(10.0, check=positive,
                                     help="least seconds between re-registrations when free-channels "
                                          "changes")
    name: str = setting("Transcoder", help="the name attribute")
    spi: str = slpkeys.spi_setting("transcoder")
    key_file: str = slpkeys.key_file_setting(slpkeys.key_path("transcoder"))  # made at install

    def validate(self) -> list[tuple[str, str]]:
        return slpkeys.key_problems(self) if self.enabled else []


@dataclasses.dataclass(frozen=True, slots=True)
class TranscoderConfig:
    sip: Sip = setting(default_factory=Sip)
    rtp: Rtp = setting(default_factory=Rtp)
    media: Media = setting(default_factory=Media)
    capacity: Capacity = setting(default_factory=Capacity)
    access: Access = setting(default_factory=Access)
    slp: Slp = setting(default_factory=Slp)
    log: Log = setting(default_factory=Log)

    def advertised_address(self) -> str:
        if self.sip.advertise_address:
            return self.sip.advertise_address
        if self.sip.address not in ("0.0.0.0", "::"):
            return self.sip.address
        return "127.0.0.1"
