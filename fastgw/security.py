"""TLS and Origin checks. Placeholder: being written."""

from __future__ import annotations

import ssl


def ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context for ``cert``/``key`` (PEM paths), or None without them."""
    if not cert or not key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Is an upgrade with this ``Origin`` header accepted? (No list: any.)"""
    return not allowed or origin in allowed
