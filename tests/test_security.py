"""Origin checks on upgrades and JWT verification (algorithm pinning, exp/nbf, iss/aud),
with real upgrades against a real gateway, and the `fastgw token --iss/--aud` command."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time

import jwt as pyjwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fastgw.auth import NBF_LEEWAY_SECONDS, AuthError, Authenticator, mint_token
from fastgw.security import check_allowed_origins, normalize_origin, origin_allowed
from tests.conftest import SECRET, token

ISSUER = "https://auth.bmtc.test"
AUDIENCE = "fastgw"


async def upgrade(port: int, *, headers: dict[str, str] | None = None, path: str = "/ws") -> tuple[int, dict, bytes]:
    """A raw WebSocket upgrade request: ``(status, headers, body)``; the socket is closed after."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"{extra}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        response_headers = {k.strip().lower(): v.strip()
                            for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = b""
        if status != 101 and "content-length" in response_headers:
            body = await asyncio.wait_for(reader.readexactly(int(response_headers["content-length"])), 5)
        return status, response_headers, body
    finally:
        writer.close()


def rsa_pair(bits: int = 2048) -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    return rsa_pair()


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


# --- Origin: semantics ------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin,canonical",
    [
        ("https://app.bmtc.test", "https://app.bmtc.test"),
        ("HTTPS://App.BMTC.Test", "https://app.bmtc.test"),
        ("https://app.bmtc.test:443", "https://app.bmtc.test"),  # default port = none
        ("http://app.bmtc.test:80", "http://app.bmtc.test"),
        ("https://app.bmtc.test:8443", "https://app.bmtc.test:8443"),
        ("http://localhost:3000", "http://localhost:3000"),
        ("http://[::1]:3000", "http://[::1]:3000"),
        ("https://app.bmtc.test/", "https://app.bmtc.test"),  # tolerated in configuration
        ("null", None),
        ("https://app.bmtc.test/path", None),
        ("https://user@app.bmtc.test", None),
        ("https://app.bmtc.test?x=1", None),
        ("https://app.bmtc.test:99999", None),
        ("https://app.bmtc.test:http", None),
        ("app.bmtc.test", None),
        ("https://", None),
        ("https://app.bmtc.test, https://evil.test", None),
        ("https://bücher.test", None),  # browsers send the punycode form
    ],
)
def test_normalize_origin(origin, canonical):
    assert normalize_origin(origin) == canonical


def test_origin_allowed_semantics():
    allowed = ("https://app.bmtc.test", "http://localhost:3000")
    assert origin_allowed("https://app.bmtc.test", allowed)
    assert origin_allowed("https://APP.bmtc.test:443", allowed)  # case-insensitive host, default port
    assert origin_allowed("http://localhost:3000", allowed)
    assert origin_allowed(None, allowed)  # native apps send no Origin
    assert origin_allowed("", allowed)
    for refused in ["http://app.bmtc.test", "https://app.bmtc.test:8443", "https://evil.test",
                    "https://app.bmtc.test.evil.test", "https://evil.test/https://app.bmtc.test",
                    "http://localhost:3001", "null", "garbage"]:
        assert not origin_allowed(refused, allowed), refused
    assert origin_allowed("https://anything.test", ())  # no list: any origin
    assert origin_allowed("null", ())
    assert not origin_allowed("null", ("null",))  # an opaque origin never matches
    assert not origin_allowed("https://app.bmtc.test", ("not an origin",))  # invalid entries match nothing


def test_check_allowed_origins_for_the_command_line():
    assert check_allowed_origins(("HTTPS://App.bmtc.test:443", "http://localhost:3000")) == (
        "https://app.bmtc.test", "http://localhost:3000")
    with pytest.raises(ValueError, match="app.bmtc.test/admin"):
        check_allowed_origins(("https://app.bmtc.test/admin",))


# --- Origin: real upgrades -----------------------------------------------------------------


async def test_origin_checked_on_real_upgrades(start_gateway):
    gw = await start_gateway(allowed_origins=("https://app.bmtc.test", "http://localhost:3000"))
    auth = bearer(token("rider1"))

    status, _, _ = await upgrade(gw.port, headers={**auth, "Origin": "https://app.bmtc.test"})
    assert status == 101
    status, _, _ = await upgrade(gw.port, headers={**auth, "Origin": "https://APP.BMTC.TEST:443"})
    assert status == 101
    status, _, _ = await upgrade(gw.port, headers=auth)  # the Android/iOS apps: no Origin
    assert status == 101

    status, headers, body = await upgrade(gw.port, headers={**auth, "Origin": "https://evil.test"})
    assert status == 403 and headers["content-type"].startswith("application/json")
    assert orjson.loads(body) == {"error": "forbidden", "message": "origin not allowed"}
    status, _, body = await upgrade(gw.port, headers={**auth, "Origin": "null"})
    assert status == 403
    # refused before authentication: no token needed to learn that the origin is wrong
    status, _, _ = await upgrade(gw.port, headers={"Origin": "http://localhost:3001"})
    assert status == 403
    assert gw.stats.rejected["origin"] == 3
    assert not gw.connections


async def test_no_origin_list_accepts_every_origin(gateway):
    status, _, _ = await upgrade(gateway.port, headers={**bearer(token()), "Origin": "https://evil.test"})
    assert status == 101


async def test_allowed_origin_end_to_end_with_a_browser_like_client(start_gateway):
    import aiohttp

    gw = await start_gateway(allowed_origins=("https://app.bmtc.test",))
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('rider1')}",
                                origin="https://app.bmtc.test") as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"ws://127.0.0.1:{gw.port}/ws?token={token('rider1')}", origin="https://evil.test")
        assert err.value.status == 403


# --- JWT: unit ---------------------------------------------------------------------------


def claims(**extra) -> dict:
    return {"sub": "u1", "exp": int(time.time()) + 600, **extra}


def hs(payload: dict, secret: str = SECRET, **headers) -> str:
    return pyjwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def test_exp_required_and_checked():
    auth = Authenticator(secret=SECRET)
    assert auth.authenticate(hs(claims())).user_id == "u1"
    with pytest.raises(AuthError, match="exp"):
        auth.authenticate(hs({"sub": "u1"}))
    with pytest.raises(AuthError, match="token expired"):
        auth.authenticate(hs(claims(exp=int(time.time()) - 60)))
    for bad in ["99999999999", True, None, [1]]:  # NumericDate is a JSON number
        with pytest.raises(AuthError):
            auth.authenticate(hs(claims(exp=bad)))


def test_nbf_checked_with_a_small_leeway():
    auth = Authenticator(secret=SECRET)
    now = int(time.time())
    assert auth.authenticate(hs(claims(nbf=now - 3600))).user_id == "u1"
    assert auth.authenticate(hs(claims(nbf=now + NBF_LEEWAY_SECONDS - 2))).user_id == "u1"  # skew forgiven
    with pytest.raises(AuthError, match="not yet valid"):
        auth.authenticate(hs(claims(nbf=now + NBF_LEEWAY_SECONDS + 5)))
    with pytest.raises(AuthError, match="not yet valid"):
        auth.authenticate(hs(claims(nbf=now + 3600)))
    with pytest.raises(AuthError, match="nbf"):
        auth.authenticate(hs(claims(nbf="soon")))


def test_iss_and_aud_when_configured():
    auth = Authenticator(secret=SECRET, issuer=ISSUER, audience=AUDIENCE)
    good = claims(iss=ISSUER, aud=AUDIENCE)
    assert auth.authenticate(hs(good)).user_id == "u1"
    assert auth.authenticate(hs({**good, "aud": ["other", AUDIENCE]})).user_id == "u1"  # aud may be a list
    for bad, reason in [
        ({**good, "iss": "https://evil.test"}, "wrong issuer"),
        ({**good, "iss": ISSUER.upper()}, "wrong issuer"),  # exact comparison
        ({**good, "aud": "other"}, "wrong audience"),
        ({**good, "aud": ["other"]}, "wrong audience"),
        ({k: v for k, v in good.items() if k != "iss"}, "iss"),
        ({k: v for k, v in good.items() if k != "aud"}, "aud"),
    ]:
        with pytest.raises(AuthError, match=reason):
            auth.authenticate(hs(bad))
    plain = Authenticator(secret=SECRET)  # not configured: iss is not checked ...
    assert plain.authenticate(hs(claims(iss="anyone"))).user_id == "u1"
    with pytest.raises(AuthError, match="audience"):  # ... but a token for an audience is not for us
        plain.authenticate(hs(claims(aud="someone-else")))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 token
def test_algorithm_is_pinned(rsa_keys):
    private, public = rsa_keys
    hs_auth = Authenticator(secret=SECRET)
    rs_auth = Authenticator(public_key=public)
    assert hs_auth.algorithm == "HS256" and rs_auth.algorithm == "RS256"
    rs_token = pyjwt.encode(claims(), private, algorithm="RS256")
    assert rs_auth.authenticate(rs_token).user_id == "u1"
    with pytest.raises(AuthError):  # RS256 at an HS256 gateway
        hs_auth.authenticate(rs_token)
    with pytest.raises(AuthError):  # HS256 at an RS256 gateway
        rs_auth.authenticate(hs(claims()))
    # HS/RS confusion: an HS256 token whose HMAC key is the (public) RSA key text
    forged = forge_hs256(claims(), public.encode())
    with pytest.raises(AuthError):
        rs_auth.authenticate(forged)
    for tok in [unsigned(claims()), unsigned(claims(), alg="None"), unsigned(claims(), alg="nOnE")]:
        with pytest.raises(AuthError):
            hs_auth.authenticate(tok)
        with pytest.raises(AuthError):
            rs_auth.authenticate(tok)
    with pytest.raises(AuthError):  # another HMAC size is another algorithm
        hs_auth.authenticate(pyjwt.encode(claims(), SECRET, algorithm="HS512"))


def b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unsigned(payload: dict, alg: str = "none") -> str:
    header = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return (header + b"." + b64(json.dumps(payload).encode()) + b".").decode()


def forge_hs256(payload: dict, key: bytes) -> str:
    import hashlib
    import hmac

    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(payload).encode())
    return (signing + b"." + b64(hmac.new(key, signing, hashlib.sha256).digest())).decode()


def test_configuration_mistakes_fail_at_start(rsa_keys):
    private, public = rsa_keys
    with pytest.raises(ValueError, match="jwt-public-key"):  # a PEM key as the HS256 secret
        Authenticator(secret=public)
    with pytest.raises(ValueError, match="private key"):
        Authenticator(public_key=private)
    with pytest.raises(ValueError, match="RSA public key"):
        Authenticator(public_key="-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n")
    _, short = rsa_pair(1024)
    with pytest.raises(ValueError, match="1024-bit"):
        Authenticator(public_key=short)
    with pytest.raises(ValueError):
        Authenticator(secret=SECRET, public_key=public)


def test_mint_token_with_iss_and_aud():
    tok = mint_token("u1", secret=SECRET, issuer=ISSUER, audience=AUDIENCE, ttl=60)
    payload = pyjwt.decode(tok, SECRET, algorithms=["HS256"], issuer=ISSUER, audience=AUDIENCE)
    assert payload["iss"] == ISSUER and payload["aud"] == AUDIENCE and payload["exp"] - payload["iat"] == 60
    assert Authenticator(secret=SECRET, issuer=ISSUER, audience=AUDIENCE).authenticate(tok).user_id == "u1"
    assert "iss" not in pyjwt.decode(mint_token("u1", secret=SECRET), SECRET, algorithms=["HS256"])


# --- JWT: refused before the upgrade, on a real gateway --------------------------------------


async def test_gateway_checks_iss_aud_nbf_before_the_upgrade(start_gateway):
    gw = await start_gateway(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    now = int(time.time())
    good = claims(iss=ISSUER, aud=AUDIENCE)
    status, _, _ = await upgrade(gw.port, headers=bearer(hs(good)))
    assert status == 101
    refused = {
        "wrong-iss": hs({**good, "iss": "https://evil.test"}),
        "no-iss": hs({k: v for k, v in good.items() if k != "iss"}),
        "wrong-aud": hs({**good, "aud": "other"}),
        "no-aud": hs({k: v for k, v in good.items() if k != "aud"}),
        "future-nbf": hs({**good, "nbf": now + 120}),
        "expired": hs({**good, "exp": now - 120}),
        "alg-none": unsigned(good),
        "minted-without-iss-aud": token("u1"),
    }
    for name, tok in refused.items():
        for headers, path in [(bearer(tok), "/ws"), ({}, f"/ws?token={tok}")]:
            status, response_headers, body = await upgrade(gw.port, headers=headers, path=path)
            assert status == 401, name
            assert response_headers["www-authenticate"].startswith("Bearer")
            reply = orjson.loads(body)
            assert reply["error"] == "unauthorized" and reply["message"], name
    assert gw.stats.rejected["auth"] == 2 * len(refused)
    assert not gw.connections and gw.stats.connections_opened == 1


async def test_rs256_gateway_refuses_hs256_confusion(start_gateway, rsa_keys):
    private, public = rsa_keys
    gw = await start_gateway(jwt_secret=None, jwt_public_key=public)
    status, _, _ = await upgrade(gw.port, headers=bearer(pyjwt.encode(claims(), private, algorithm="RS256")))
    assert status == 101
    for tok in [forge_hs256(claims(), public.encode()), hs(claims()), unsigned(claims())]:
        status, _, body = await upgrade(gw.port, headers=bearer(tok))
        assert status == 401 and orjson.loads(body)["error"] == "unauthorized"


async def test_admin_api_uses_the_same_rules(start_gateway):
    import aiohttp

    gw = await start_gateway(jwt_issuer=ISSUER, jwt_audience=AUDIENCE)
    body = {"channel": "alerts:all", "message": {"type": "service_alert", "alert_id": "a1"}}
    async with aiohttp.ClientSession() as s:
        for tok, expected in [(token("ops", admin=True), 401),
                              (mint_token("ops", secret=SECRET, admin=True, issuer=ISSUER, audience=AUDIENCE), 200)]:
            async with s.post(f"http://127.0.0.1:{gw.port}/api/publish", json=body, headers=bearer(tok)) as r:
                assert r.status == expected


# --- fastgw token --iss/--aud ----------------------------------------------------------------


def test_token_command_iss_and_aud():
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
    out = subprocess.run([sys.executable, "-m", "fastgw", "token", "--sub", "rider1", "--jwt-secret", SECRET,
                          "--iss", ISSUER, "--aud", AUDIENCE], env=env, capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    payload = pyjwt.decode(out, SECRET, algorithms=["HS256"], issuer=ISSUER, audience=AUDIENCE)
    assert payload["sub"] == "rider1"
    # the same environment as `fastgw serve`: FASTGW_JWT_ISSUER / FASTGW_JWT_AUDIENCE apply to both
    out = subprocess.run([sys.executable, "-m", "fastgw", "token", "--sub", "rider1"],
                         env={**env, "FASTGW_JWT_SECRET": SECRET, "FASTGW_JWT_ISSUER": ISSUER,
                              "FASTGW_JWT_AUDIENCE": AUDIENCE},
                         capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    assert Authenticator(secret=SECRET, issuer=ISSUER, audience=AUDIENCE).authenticate(out).user_id == "rider1"
