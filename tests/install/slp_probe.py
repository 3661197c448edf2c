"""Ask an SLP directory agent for itself, from inside the install-test container.

Run by the container's own /usr/bin/python3 against the installed python3-sipmob, so it also shows
that the packaged library imports and encodes on the target system:

    python3 slp_probe.py [--port 427] [--scope SCOPE] [--timeout 3]

sends one SrvRqst for ``service:directory-agent`` (RFC 2608 §8.1: a DA answers it with a DAAdvert)
to 127.0.0.1 and prints the reply as one JSON object. Exit status 1 when nothing answers in time.
Loopback only: the container has no other network anyway.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

from sipmob.slp import wire
from sipmob.slp.messages import DAAdvert, FunctionId, Header, SrvRqst


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=427)
    parser.add_argument("--scope", default="DEFAULT")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()

    request = SrvRqst(header=Header(FunctionId.SrvRqst, xid=4242), prlist="",
                      service_type="service:directory-agent", scope_list=args.scope, predicate="")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(args.timeout)
        sock.sendto(wire.encode(request), ("127.0.0.1", args.port))
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            print(f"no reply from 127.0.0.1:{args.port} within {args.timeout} s", file=sys.stderr)
            return 1
    reply = wire.decode(data)
    out: dict[str, object] = {"type": type(reply).__name__, "xid": reply.header.xid}
    if isinstance(reply, DAAdvert):
        out.update(error=int(reply.error), url=reply.url, scope_list=reply.scope_list,
                   boot_timestamp=reply.boot_timestamp, attr_list=reply.attr_list)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
