import time

import jwt
import pytest

from fastgw.auth import AuthError, Authenticator, mint_token, token_from_request_parts

SECRET = "unit-secret-0123456789abcdef0123456789"


def test_round_trip_user_and_admin():
    auth = Authenticator(secret=SECRET)
    assert auth.authenticate(mint_token("u1", secret=SECRET)).user_id == "u1"
    who = auth.authenticate(mint_token("ops", secret=SECRET, admin=True))
    assert who.admin and who.user_id == "ops"


def test_admin_claim_must_be_true_exactly():
    tok = jwt.encode({"sub": "u1", "exp": time.time() + 60, "admin": "yes"}, SECRET, "HS256")
    assert not Authenticator(secret=SECRET).authenticate(tok).admin


@pytest.mark.parametrize(
    "claims,reason",
    [
        ({"sub": "u1", "exp": 1}, "token expired"),
        ({"exp": 9_999_999_999}, "invalid token"),
        ({"sub": "bad user!", "exp": 9_999_999_999}, "invalid token: bad sub"),
    ],
)
def test_rejections(claims, reason):
    with pytest.raises(AuthError) as err:
        Authenticator(secret=SECRET).authenticate(jwt.encode(claims, SECRET, "HS256"))
    assert err.value.reason.startswith(reason)


def test_expiry_leeway_and_ttl():
    issued = time.time() - 100
    tok = mint_token("u1", secret=SECRET, ttl=90, now=issued)  # expired 10 s ago: within leeway
    assert Authenticator(secret=SECRET).authenticate(tok).user_id == "u1"
    tok = mint_token("u1", secret=SECRET, ttl=10, now=issued)  # expired 90 s ago
    with pytest.raises(AuthError):
        Authenticator(secret=SECRET).authenticate(tok)


def test_anonymous_only_when_allowed():
    with pytest.raises(AuthError):
        Authenticator(secret=SECRET).authenticate(None)
    assert Authenticator(secret=SECRET, allow_anonymous=True).authenticate(None).anonymous


def test_token_sources():
    assert token_from_request_parts({"Authorization": "Bearer abc"}, {"token": "q"}) == "abc"
    assert token_from_request_parts({"Authorization": "bearer  abc "}, {}) == "abc"
    assert token_from_request_parts({}, {"token": "q"}) == "q"
    assert token_from_request_parts({"Authorization": "Basic x"}, {}) is None


def test_a_verified_token_is_remembered_until_it_expires(monkeypatch):
    """The same token twice: verified once (PyJWT not called again), the same principal; once
    past exp + leeway it is verified again, and refused."""
    auth = Authenticator(secret=SECRET)
    # expired 29 s ago: within the 30 s leeway for one more second
    tok = mint_token("u1", secret=SECRET, ttl=60, now=time.time() - 89)
    first = auth.authenticate(tok)
    calls = []
    real_decode = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **kw: calls.append(1) or real_decode(*a, **kw))
    assert auth.authenticate(tok) is first and calls == []
    time.sleep(1.2)
    with pytest.raises(AuthError, match="expired"):
        auth.authenticate(tok)
    assert calls == [1]


def test_failures_are_not_remembered_and_the_memory_is_bounded(monkeypatch):
    import fastgw.auth as auth_module

    monkeypatch.setattr(auth_module, "VERIFIED_CACHE_SIZE", 3)
    auth = Authenticator(secret=SECRET)
    tok = mint_token("u1", secret=SECRET)
    for _ in range(2):  # a tampered token is refused every time
        with pytest.raises(AuthError):
            auth.authenticate(tok[:-2] + ("AA" if not tok.endswith("AA") else "BB"))
    assert len(auth._verified) == 0
    tokens = [mint_token(f"u{i}", secret=SECRET) for i in range(5)]
    for t in tokens:
        auth.authenticate(t)
    assert len(auth._verified) == 3  # the two oldest forgotten
    assert [auth.authenticate(t).user_id for t in tokens] == [f"u{i}" for i in range(5)]
