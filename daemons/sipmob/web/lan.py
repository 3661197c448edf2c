"""Where `sipmob-web` listens when ``[listen] addresses`` is empty: 127.0.0.1 and this host's
addresses in private networks (RFC 1918 for IPv4, RFC 4193 unique local for IPv6), read once at
start from the kernel (rtnetlink, through pyroute2). A public address, a link-local one and the
wildcard are never chosen: the page is for the home's LAN, not for whoever can reach the WAN side.

Not here: following addresses that come and go (restart the daemon, or list the addresses).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

log = logging.getLogger("sipmob.web")


def is_lan(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return False
    if ip.version == 4:
        return any(ip in ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
    return ip in ipaddress.ip_network("fc00::/7")


def lan_addresses(found: Iterable[str]) -> list[str]:
    """127.0.0.1 first, then the LAN addresses among ``found``, each once."""
    out = ["127.0.0.1"]
    for address in found:
        if is_lan(address) and address not in out:
            out.append(address)
    return out


def host_addresses() -> list[str]:
    try:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]
    except ImportError:
        log.warning("python3-pyroute2 is missing: serving on 127.0.0.1 only")
        return []
    try:
        with IPRoute() as ipr:
            return [str(msg.get_attr("IFA_ADDRESS")) for msg in ipr.get_addr()
                    if msg.get_attr("IFA_ADDRESS")]
    except OSError as exc:
        log.warning("cannot read this host's addresses (%s): serving on 127.0.0.1 only", exc)
        return []


def listen_addresses() -> list[str]:
    return lan_addresses(host_addresses())
