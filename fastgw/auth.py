"""JWT verification (HS256 shared secret or RS256 public key) and token minting.

The algorithm is pinned by the configuration: a gateway with a secret accepts
HS256 only, one with a public key RS256 only. So ``alg: none`` and algorithm
confusion (an HS256 token "signed" with the RS256 public key as its secret, or an
RS256 token shown to an HS256 gateway) are rejected.

Claims:

* ``sub`` (the user id, channel grammar) and ``exp`` are required; ``admin: true``
  marks admin tokens.
* ``exp``: a number; refused once more than :data:`LEEWAY_SECONDS` (30 s) in the
  past, which forgives a phone that reconnects with a token that just expired.
* ``nbf``: optional; a number; refused while more than :data:`NBF_LEEWAY_SECONDS`
  (5 s) in the future. The issuing backends and the gateways keep NTP time, so a
  few seconds cover their skew; a token deliberately made valid later stays refused.
* ``iat``: optional; a number, refused more than 30 s in the future (PyJWT's rule).
* ``iss`` / ``aud``: required and compared exactly when the gateway is configured
  with ``--jwt-issuer`` / ``--jwt-audience`` (``aud`` may be a list containing it).
  A token that carries an ``aud`` is refused by a gateway without
  ``--jwt-audience`` (RFC 7519 4.1.3: a recipient that does not identify itself
  with the audience must reject the token).

Every failure is an :class:`AuthError` (HTTP 401 before the upgrade); nothing
else escapes :meth:`Authenticator.authenticate`, whatever the token holds.

A token that verified is remembered (a digest of it, its principal and when it stops
being valid; at most :data:`VERIFIED_CACHE_SIZE`, oldest forgotten first): a client that
reconnects shows the same token again, and in a reconnect storm verification was a sixth
of the gateway's CPU. Nothing in a verified token's outcome depends on time except ``exp``,
which the remembered entry keeps. Failures are not remembered.
Problems with the configuration (a PEM key given as the HS256 secret, a private
key or a short RSA key given as the public key) are a :class:`ValueError` when
the :class:`Authenticator` is made, not a 401 on every connection.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any, Mapping

import jwt
from jwt.algorithms import HMACAlgorithm, RSAAlgorithm

from fastgw.channels import ANONYMOUS, Principal, is_valid_user_id

__all__ = [
    "AuthError",
    "Authenticator",
    "mint_token",
    "token_from_request_parts",
    "LEEWAY_SECONDS",
    "NBF_LEEWAY_SECONDS",
]

log = logging.getLogger("fastgw.auth")

#: Clock leeway for ``exp`` (and PyJWT's future-``iat`` check), seconds.
LEEWAY_SECONDS = 30
#: Clock leeway for ``nbf``, seconds.
NBF_LEEWAY_SECONDS = 5
#: Verified tokens remembered per process (~170 bytes each).
VERIFIED_CACHE_SIZE = 50_000
#: Smallest RSA modulus accepted for RS256 (NIST SP 800-57).
MIN_RSA_BITS = 2048
#: Shortest HS256 secret that does not log a warning (RFC 7518 3.2: at least the hash size).
MIN_SECRET_BYTES = 32


class AuthError(Exception):
    """Authentication failed; ``reason`` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Authenticator:
    """Turns a bearer token (or its absence) into a :class:`Principal`."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        allow_anonymous: bool = False,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        if secret and public_key:
            raise ValueError("give either a secret (HS256) or a public key (RS256)")
        self._key: Any = None
        self._algorithm = "HS256" if secret else "RS256"
        if secret:
            self._key = _hmac_key(secret)
        elif public_key:
            self._key = _rsa_public_key(public_key)
        self.allow_anonymous = allow_anonymous
        self.issuer = issuer or None
        self.audience = audience or None
        require = ["sub", "exp"]
        if self.issuer is not None:
            require.append("iss")
        if self.audience is not None:
            require.append("aud")
        # nbf is checked here with its own (smaller) leeway; PyJWT checks exp and iat.
        self._options: dict[str, Any] = {"require": require, "verify_nbf": False}
        #: digest of a verified token -> (its principal, the time.time() it stops being valid)
        self._verified: dict[bytes, tuple[Principal, float]] = {}

    @property
    def algorithm(self) -> str | None:
        """The one accepted algorithm (None: no key, tokens are refused)."""
        return self._algorithm if self._key is not None else None

    def authenticate(self, token: str | None) -> Principal:
        """Verify ``token``; with no token, anonymous if allowed. Raises :class:`AuthError`."""
        if not token:
            if self.allow_anonymous:
                return ANONYMOUS
            raise AuthError("missing token")
        if self._key is None:
            raise AuthError("tokens are not accepted: no key configured")
        digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        known = self._verified.get(digest)
        if known is not None:
            if time.time() < known[1]:
                return known[0]
            del self._verified[digest]  # expired since: verified (and refused) below
        principal, valid_until = self._verify(token)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[digest] = (principal, valid_until)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        """The principal of ``token`` and until when it is valid, or :class:`AuthError`."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                options=self._options,
                leeway=LEEWAY_SECONDS,
                issuer=self.issuer,
                audience=self.audience,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError("token not yet valid") from None
        except jwt.InvalidIssuerError:
            raise AuthError("invalid token: wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise AuthError("invalid token: wrong audience") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        except Exception as exc:  # whatever a crafted token provokes in the library: still a 401
            log.debug("token verification failed unexpectedly: %r", exc)
            raise AuthError("invalid token") from None
        if not isinstance(claims, dict):
            raise AuthError("invalid token: claims must be an object")
        for name in ("exp", "nbf", "iat"):
            if name in claims and not _is_number(claims[name]):
                raise AuthError(f"invalid token: {name} must be a number")
        nbf = claims.get("nbf")
        if nbf is not None and nbf > time.time() + NBF_LEEWAY_SECONDS:
            raise AuthError("token not yet valid")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not is_valid_user_id(sub):
            raise AuthError("invalid token: bad sub")
        # PyJWT accepts while now < exp + leeway
        return Principal(user_id=sub, admin=claims.get("admin") is True), claims["exp"] + LEEWAY_SECONDS


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _hmac_key(secret: str) -> bytes:
    try:
        key = HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError as exc:
        raise ValueError(f"--jwt-secret is not usable as an HS256 secret: {exc} "
                         "(an RS256 public key goes in --jwt-public-key)") from None
    if len(key) < MIN_SECRET_BYTES:
        log.warning("--jwt-secret is %d bytes; HS256 wants at least %d random bytes", len(key), MIN_SECRET_BYTES)
    return key


def _rsa_public_key(pem: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

    try:
        key = RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(pem)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
        raise ValueError(f"--jwt-public-key is not an RSA public key in PEM: {exc}") from None
    if isinstance(key, RSAPrivateKey):
        raise ValueError("--jwt-public-key holds a private key: give the public key "
                         "(`openssl pkey -in KEY -pubout`); the gateway never needs the private one")
    if not isinstance(key, RSAPublicKey):
        raise ValueError("--jwt-public-key is not an RSA public key")
    if key.key_size < MIN_RSA_BITS:
        raise ValueError(f"--jwt-public-key is a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits are required")
    return key  # parsed once, not per token


def mint_token(
    sub: str,
    *,
    secret: str | None = None,
    private_key: str | None = None,
    admin: bool = False,
    ttl: int = 3600,
    now: float | None = None,
    issuer: str | None = None,
    audience: str | None = None,
) -> str:
    """Sign a token for ``sub`` (HS256 with ``secret`` or RS256 with ``private_key``),
    with ``iss``/``aud`` when given."""
    if not is_valid_user_id(sub):
        raise ValueError(f"invalid user id {sub!r}")
    if bool(secret) == bool(private_key):
        raise ValueError("give exactly one of secret and private_key")
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    if admin:
        claims["admin"] = True
    if secret:
        return jwt.encode(claims, secret, algorithm="HS256")
    return jwt.encode(claims, private_key, algorithm="RS256")


def token_from_request_parts(headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
    """The bearer token from ``Authorization: Bearer …`` or else from ``?token=``."""
    header = headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return query.get("token") or None
