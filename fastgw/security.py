"""TLS for ``wss://``/``https://`` served directly, and the ``Origin`` check of upgrades.

TLS (``--tls-cert``/``--tls-key``)
    :func:`ssl_context` builds the listening socket's server context: TLS 1.2 or
    1.3 only, forward-secret AEAD cipher suites for TLS 1.2 (TLS 1.3 suites are
    OpenSSL's, all AEAD), server cipher preference, no TLS compression, no
    renegotiation, ALPN ``http/1.1`` (aiohttp speaks HTTP/1.1 only; a WebSocket
    over TLS is an HTTP/1.1 upgrade, RFC 6455, so h2 is never offered; a client
    offering only h2 still connects, without ALPN). The certificate file may hold
    the whole chain (leaf first, then intermediates). The files are read once, at
    start: a renewed certificate needs a restart (rolling, with ``--drain-period``).
    Every problem with the files (missing, unreadable, not PEM, an encrypted key,
    a key that does not match the certificate) is a :class:`ValueError` whose
    message names the file and the fix.

Origins (``--allowed-origins``)
    :func:`origin_allowed` compares the ``Origin`` header of a WebSocket upgrade
    with the configured list, exactly: scheme, host and port must all match, the
    scheme and host case-insensitively, a default port (``:443`` for https,
    ``:80`` for http) being the same as none. No wildcards, no path.
    A request **without** ``Origin`` is accepted: browsers always send one on a
    WebSocket upgrade, and the Android/iOS apps (native clients) send none; the
    check exists to stop other web sites' pages from using a rider's browser
    session, not to authenticate clients (tokens do that). ``Origin: null``
    (sandboxed frames, ``file://`` pages) never matches. With an empty list every
    origin is accepted.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
from urllib.parse import urlsplit

__all__ = ["ssl_context", "origin_allowed", "normalize_origin", "check_allowed_origins", "TLS_CIPHERS"]

log = logging.getLogger("fastgw.security")

#: TLS 1.2 cipher suites: ECDHE key exchange (forward secrecy) with AES-GCM or
#: ChaCha20-Poly1305 only: Mozilla's "intermediate" profile minus finite-field DHE.
#: Every client the apps support (Android 5+, iOS 9+, current browsers) has them.
TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for a passphrase and block.
    raise _EncryptedKey()


def ssl_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context for ``cert``/``key`` (PEM paths), or None without them.

    Raises :class:`ValueError` with a message fit for the command line when the
    files cannot be used.
    """
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError("--tls-cert and --tls-key go together")
    cert_text = _read_pem(cert, "--tls-cert")
    key_text = _read_pem(key, "--tls-key")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        if "PRIVATE KEY-----" in cert_text:
            raise ValueError(f"--tls-cert {cert}: holds a private key, not a certificate (are the two swapped?)")
        raise ValueError(f"--tls-cert {cert}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    if "PRIVATE KEY-----" not in key_text:
        if "-----BEGIN CERTIFICATE-----" in key_text:
            raise ValueError(f"--tls-key {key}: holds a certificate, not a private key (are the two swapped?)")
        raise ValueError(f"--tls-key {key}: no PEM private key (-----BEGIN ... PRIVATE KEY-----) in it")
    if "ENCRYPTED" in key_text:
        raise ValueError(f"--tls-key {key}: the private key is encrypted; give an unencrypted key "
                         "(e.g. `openssl pkey -in KEY -out PLAIN`) and protect the file by its permissions")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ValueError(f"--tls-key {key}: the private key is encrypted; give an unencrypted key") from None
    except ssl.SSLError as exc:
        text = f"{exc.reason or ''} {exc}".upper()
        if "MISMATCH" in text:  # [X509: KEY_VALUES_MISMATCH]
            raise ValueError(f"--tls-key {key} does not match the certificate in --tls-cert {cert}") from None
        raise ValueError(f"cannot load --tls-cert {cert} / --tls-key {key}: {exc}") from None
    except OSError as exc:  # the files changed under us
        raise ValueError(f"cannot read --tls-cert {cert} / --tls-key {key}: {exc.strerror or exc}") from None
    _warn_if_expired(cert_text, cert)
    return context


def _read_pem(path: str, flag: str) -> str:
    if not os.path.exists(path):
        raise ValueError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a directory, not a PEM file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None
    return data.decode("ascii", errors="replace")


def _warn_if_expired(cert_text: str, path: str) -> None:
    """Log (not refuse: an operator may need the gateway up) an expired or future leaf."""
    try:
        import datetime

        from cryptography import x509

        leaf = x509.load_pem_x509_certificate(cert_text.encode("ascii", errors="replace"))
        now = datetime.datetime.now(datetime.timezone.utc)
        if leaf.not_valid_after_utc < now:
            log.warning("TLS certificate %s expired on %s: clients will refuse it", path, leaf.not_valid_after_utc)
        elif leaf.not_valid_before_utc > now:
            log.warning("TLS certificate %s is not valid before %s", path, leaf.not_valid_before_utc)
    except Exception:  # informational only; OpenSSL has already accepted the file
        pass


# --- Origin ---------------------------------------------------------------------


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in canonical form (lower case, default port dropped),
    or None if ``origin`` is not a serialized origin (``null``, a path, credentials...)."""
    if not origin or len(origin) > 2048 or not origin.isascii() or any(c.isspace() for c in origin):
        return None
    try:
        parts = urlsplit(origin)
        port = parts.port  # ValueError for a non-numeric or out-of-range port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname  # lower-cased; brackets of an IPv6 literal removed
    if not scheme or not host or parts.username is not None or parts.password is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or origin.endswith(("?", "#")):
        return None
    if "%" in host or "[" in host or "]" in host:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


@functools.lru_cache(maxsize=16)
def _allowed_set(allowed: tuple[str, ...]) -> frozenset[str]:
    return frozenset(n for n in map(normalize_origin, allowed) if n is not None)


def check_allowed_origins(allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Validate configured origins (for the command line): their canonical forms, or
    :class:`ValueError` naming the first one that is not ``scheme://host[:port]``."""
    out = []
    for entry in allowed:
        canonical = normalize_origin(entry)
        if canonical is None:
            raise ValueError(f"--allowed-origins: {entry!r} is not an origin (scheme://host[:port], no path)")
        out.append(canonical)
    return tuple(out)


def origin_allowed(origin: str | None, allowed: tuple[str, ...]) -> bool:
    """Is an upgrade with this ``Origin`` header accepted?

    No list: any. No header (or an empty one): yes, native apps send none. Otherwise its canonical
    form must be one of the list's (invalid list entries match nothing).
    """
    if not allowed or origin is None or not origin.strip():
        return True
    canonical = normalize_origin(origin)
    return canonical is not None and canonical in _allowed_set(tuple(allowed))
