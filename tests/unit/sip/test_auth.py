"""Tests for sipmob.sip.auth: Digest vectors (RFC 2617, RFC 7616 §3.9.1) and the server side."""

from __future__ import annotations

import pytest

from sipmob.sip.auth import (
    AuthStatus,
    Challenge,
    Credentials,
    DigestServer,
    authorization,
    compute_ha1,
    make_challenge,
    nonce_time,
)
from sipmob.sip.uri import SIPParseError

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def _response(header: str) -> str:
    return Credentials.parse(header).response


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example(algorithm: str, expected: str) -> None:
    challenge = Challenge.parse(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )
    header = authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle of Life", RFC7616_CNONCE, 1)
    assert _response(header) == expected
    assert Credentials.parse(header).opaque == RFC7616_OPAQUE


def test_rfc2617_example() -> None:
    challenge = Challenge.parse(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    header = authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b", 1)
    assert _response(header) == "6629fae49393a05397450978507c4ef1"
    assert "nc=00000001" in header


def test_challenge_round_trips_through_its_string() -> None:
    c = Challenge(realm="home", nonce="n1", algorithm="SHA-512-256", opaque="o", stale=True)
    assert Challenge.parse(str(c)) == c


def test_challenge_of_other_scheme_is_rejected() -> None:
    with pytest.raises(SIPParseError):
        Challenge.parse('Basic realm="x"')


def test_unknown_algorithm_is_not_supported() -> None:
    assert not Challenge(realm="r", nonce="n", algorithm="SHA-1").supported


# server side -------------------------------------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"


def _lookup(username: str, realm: str, algorithm: str) -> str | None:
    return compute_ha1(algorithm, username, realm, "pw") if username == "alice" else None


def _signed(server: DigestServer, now: float, nc: int = 1, algorithm: str = "SHA-256", **kw: str) -> str:
    challenge = server.make_challenge(now, algorithm=algorithm)
    return authorization(challenge, "REGISTER", "sip:home.example", kw.get("user", "alice"),
                         kw.get("password", "pw"), "cn", nc)  # fmt: skip


ALGORITHMS = ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256", "SHA-512-256-sess"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_server_accepts_correct_credentials(algorithm: str) -> None:
    server = DigestServer("home.example", SECRET)
    result = server.verify(_signed(server, 100.0, algorithm=algorithm), "REGISTER", _lookup, 101.0)
    assert result.ok and result.username == "alice"


def test_server_rejects_wrong_password() -> None:
    server = DigestServer("home.example", SECRET)
    header = _signed(server, 100.0, password="nope")
    assert server.verify(header, "REGISTER", _lookup, 101.0).status is AuthStatus.BAD_RESPONSE


def test_server_rejects_unknown_user() -> None:
    server = DigestServer("home.example", SECRET)
    header = _signed(server, 100.0, user="mallory")
    assert server.verify(header, "REGISTER", _lookup, 101.0).status is AuthStatus.UNKNOWN_USER


def test_server_rejects_other_method() -> None:
    server = DigestServer("home.example", SECRET)
    assert server.verify(_signed(server, 100.0), "INVITE", _lookup, 101.0).status is AuthStatus.BAD_RESPONSE


def test_old_nonce_is_stale() -> None:
    server = DigestServer("home.example", SECRET, nonce_lifetime=300)
    assert server.verify(_signed(server, 100.0), "REGISTER", _lookup, 401.0).stale


def test_replayed_nonce_count_is_rejected() -> None:
    server = DigestServer("home.example", SECRET)
    header = _signed(server, 100.0)
    server.verify(header, "REGISTER", _lookup, 101.0)
    assert server.verify(header, "REGISTER", _lookup, 102.0).status is AuthStatus.REPLAY


def test_next_nonce_count_is_accepted() -> None:
    server = DigestServer("home.example", SECRET)
    challenge = server.make_challenge(100.0)
    for nc in (1, 3, 2):
        header = authorization(challenge, "REGISTER", "sip:h", "alice", "pw", "cn", nc)
        assert server.verify(header, "REGISTER", _lookup, 101.0).ok


def test_nonce_from_another_secret_is_unknown() -> None:
    other = DigestServer("home.example", b"x" * 32)
    server = DigestServer("home.example", SECRET)
    assert server.verify(_signed(other, 100.0), "REGISTER", _lookup, 101.0).status is AuthStatus.UNKNOWN_NONCE


def test_expired_nonces_are_forgotten() -> None:
    server = DigestServer("home.example", SECRET, nonce_lifetime=10)
    server.verify(_signed(server, 100.0), "REGISTER", _lookup, 101.0)
    server.verify("Digest garbage", "REGISTER", _lookup, 200.0)
    assert server.tracked_nonces == 0


def test_nonce_carries_its_issue_time() -> None:
    challenge = make_challenge("r", "MD5", SECRET, 1234.5, salt=b"12345678")
    assert nonce_time(challenge.nonce, "r", SECRET) == 1234.5
    assert nonce_time(challenge.nonce, "other realm", SECRET) is None


def test_malformed_authorization_is_reported() -> None:
    server = DigestServer("home.example", SECRET)
    assert server.verify('Digest username="a"', "REGISTER", _lookup, 1.0).status is AuthStatus.MALFORMED
