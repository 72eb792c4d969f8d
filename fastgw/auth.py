"""JWT verification (HS256 shared secret or RS256 public key) and token minting.

Only the configured algorithm is accepted, so ``alg: none`` and algorithm
confusion (an HS256 token signed with the RS256 public key) are rejected.
Tokens must carry ``sub`` and ``exp``; ``admin: true`` marks admin tokens.
"""

from __future__ import annotations

import time
from typing import Mapping

import jwt

from fastgw.channels import ANONYMOUS, Principal, is_valid_user_id

__all__ = ["AuthError", "Authenticator", "mint_token", "token_from_request_parts"]

LEEWAY_SECONDS = 30


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
    ) -> None:
        if secret and public_key:
            raise ValueError("give either a secret (HS256) or a public key (RS256)")
        self._key: str | None = secret or public_key
        self._algorithm = "HS256" if secret else "RS256"
        self.allow_anonymous = allow_anonymous

    def authenticate(self, token: str | None) -> Principal:
        """Verify ``token``; with no token, anonymous if allowed. Raises :class:`AuthError`."""
        if not token:
            if self.allow_anonymous:
                return ANONYMOUS
            raise AuthError("missing token")
        if self._key is None:
            raise AuthError("tokens are not accepted: no key configured")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                options={"require": ["sub", "exp"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not is_valid_user_id(sub):
            raise AuthError("invalid token: bad sub")
        return Principal(user_id=sub, admin=claims.get("admin") is True)


def mint_token(
    sub: str,
    *,
    secret: str | None = None,
    private_key: str | None = None,
    admin: bool = False,
    ttl: int = 3600,
    now: float | None = None,
) -> str:
    """Sign a token for ``sub`` (HS256 with ``secret`` or RS256 with ``private_key``)."""
    if not is_valid_user_id(sub):
        raise ValueError(f"invalid user id {sub!r}")
    if bool(secret) == bool(private_key):
        raise ValueError("give exactly one of secret and private_key")
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {"sub": sub, "iat": issued, "exp": issued + int(ttl)}
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
