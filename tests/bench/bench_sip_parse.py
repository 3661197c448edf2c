"""Benchmark: parse and serialise a typical INVITE with SDP (~1 KB, 12 headers).

Run: .venv/bin/python tests/bench/bench_sip_parse.py [count]
Prints microseconds per parse, per serialise and per parse+serialise (best of 5 runs), for the same
message again and again, and for messages whose URIs, tags, branch and Call-ID all differ (so no
parse of a URI can be reused: the worst case for a UAS whose every request comes from a new peer).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "daemons"))

from sipmob.sip.message import parse_message

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=call\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 9 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n"
    b"m=video 51372 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=42e01f\r\n"
)
INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b'From: "Alice Liddell" <sip:alice@atlanta.example.com>;tag=1928301774\r\n'
    b"Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@pc33.atlanta.example.com;transport=udp>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY, UPDATE\r\n"
    b"Supported: replaces, timer, norefersub\r\n"
    b"User-Agent: sipmob/0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def _best(fn: object, count: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(count):
            fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    msg = parse_message(INVITE)
    assert msg.to_bytes() == INVITE
    parse = _best(lambda: parse_message(INVITE), count)
    serialise = _best(msg.to_bytes, count)
    both = _best(lambda: parse_message(INVITE).to_bytes(), count)
    print(f"message: {len(INVITE)} bytes, {len(msg.headers)} headers, {count} iterations, best of 5")
    print(f"parse:            {parse:7.1f} us")
    print(f"serialise:        {serialise:7.1f} us")
    print(f"parse+serialise:  {both:7.1f} us")
    unique = [_unique(i) for i in range(count)]
    parse_u = _best_each(lambda m: parse_message(m), unique)
    both_u = _best_each(lambda m: parse_message(m).to_bytes(), unique)
    print(f"every message different: parse {parse_u:.1f} us, parse+serialise {both_u:.1f} us")


def _unique(i: int) -> bytes:
    """The INVITE with every URI host, tag, branch and Call-ID made unique by `i`."""
    return (INVITE.replace(b"example.com", b"h%d.example.com" % i)
            .replace(b"1928301774", b"t%d" % i).replace(b"776asdhds", b"b%d" % i)
            .replace(b"a84b4c76e66710", b"c%d" % i))


def _best_each(fn: object, messages: list[bytes]) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for m in messages:
            fn(m)  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best / len(messages) * 1e6


if __name__ == "__main__":
    main()
