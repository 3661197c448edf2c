"""Invoke the installed sipmob-transcoder and send audio through it, from inside the container.

Run by the container's own /usr/bin/python3 against the installed packages, so it also shows that
PyAV and libavcodec work under the unit's hardening (MemoryDenyWriteExecute, the system call filter):

    python3 transcoder_probe.py [--port 5080] [--timeout 3]

sends an RFC 4117 INVITE ("SDP A + SDP B": A speaks PCMU, B speaks Opus, both on loopback sockets of
this script), ACKs the 200, sends 25 PCMU packets to the transcoder's side for A, counts the Opus
packets that reach B, sends BYE, and prints one JSON object. Exit status 1 when nothing answers.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import struct
import sys
import time

from sipmob.sdp.session import parse as parse_sdp
from sipmob.sip.message import Response, parse_message

HOST = "127.0.0.1"


def request(sock: socket.socket, dest: tuple[str, int], method: str, call_id: str, cseq: int,
            to: str, body: bytes = b"") -> None:
    local = sock.getsockname()
    lines = [f"{method} sip:transcoder@{dest[0]}:{dest[1]} SIP/2.0",
             f"Via: SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{secrets.token_hex(6)};rport",
             "Max-Forwards: 70", f"From: <sip:probe@{local[0]}>;tag=probe", f"To: {to}",
             f"Call-ID: {call_id}", f"CSeq: {cseq} {method}", f"Contact: <sip:probe@{local[0]}:{local[1]}>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, dest)


def final(sock: socket.socket, method: str, timeout: float) -> Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65535)
        except TimeoutError:
            break
        message = parse_message(data)
        if isinstance(message, Response) and message.status >= 200 and message.cseq.method == method:
            return message
    raise TimeoutError(f"no final response to {method}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=5080)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    dest = (HOST, args.port)
    sip, a, b = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3))
    for s in (sip, a, b):
        s.bind((HOST, 0))
    sdp = (f"v=0\r\no=probe 1 1 IN IP4 {HOST}\r\ns=-\r\nt=0 0\r\n"
           f"m=audio {a.getsockname()[1]} RTP/AVP 0\r\nc=IN IP4 {HOST}\r\n"
           f"m=audio {b.getsockname()[1]} RTP/AVP 111\r\nc=IN IP4 {HOST}\r\na=rtpmap:111 opus/48000/2\r\n")
    call_id = secrets.token_hex(8)
    to = f"<sip:transcoder@{HOST}:{args.port}>"
    try:
        request(sip, dest, "INVITE", call_id, 1, to, sdp.encode())
        ok = final(sip, "INVITE", args.timeout)
    except TimeoutError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    result: dict[str, object] = {"status": ok.status}
    if ok.status == 200:
        to = ok.headers.get("To") or to
        request(sip, dest, "ACK", call_id, 1, to)
        answer = parse_sdp(ok.body)
        port_a = answer.media[0].port
        result["codecs"] = [str(m.rtpmap(m.payload_types[0])) for m in answer.media]
        b.settimeout(0.5)
        received: list[int] = []
        for seq in range(25):
            a.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x1234) + b"\xff" * 160, (HOST, port_a))
            try:
                data = b.recv(2048)
                received.append(data[1] & 0x7F)
            except TimeoutError:
                pass
            time.sleep(0.02)
        result["received"] = len(received)
        result["payload_types"] = sorted(set(received))
        request(sip, dest, "BYE", call_id, 2, to)
        try:
            result["bye"] = final(sip, "BYE", args.timeout).status
        except TimeoutError:
            result["bye"] = None
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
