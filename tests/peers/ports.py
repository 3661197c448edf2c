"""Free port numbers on loopback for peers that must be told their port before they bind it.

The port is free when returned and may be taken by someone else before it is used; tests that start
many peers at once get distinct ports because each is bound by the kernel, not guessed.
"""

from __future__ import annotations

import random
import socket


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port on `host` that nothing is bound to right now."""
    with socket.socket(_family(host), socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing is bound to right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_sip_port(host: str = "127.0.0.1", attempts: int = 20) -> int:
    """A port free for both UDP and TCP on `host`, as a SIP listener on both transports needs."""
    for _ in range(attempts):
        with socket.socket(_family(host), socket.SOCK_DGRAM) as udp, \
                socket.socket(_family(host), socket.SOCK_STREAM) as tcp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no port free for both UDP and TCP on {host} after {attempts} attempts")


def free_loopback_address(port: int = 5060, attempts: int = 50) -> str:
    """A random 127.x.y.z on which `port` is free for UDP and TCP.

    For a peer that must sit on the default SIP port, because someone will reach it by an
    address-of-record without a port (sip:user@host means port 5060, RFC 3263 §4.2).
    """
    rng = random.Random()
    for _ in range(attempts):
        host = f"127.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                udp.bind((host, port))
                tcp.bind((host, port))
        except OSError:
            continue
        return host
    raise OSError(f"no loopback address with port {port} free after {attempts} attempts")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
