"""wss:// and https:// served directly (--tls-cert/--tls-key): real TLS handshakes on loopback.

A throwaway CA and a leaf for 127.0.0.1/localhost are generated with ``cryptography``;
clients trust the CA (as a phone trusts a public CA), or do not.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import pytest
import websockets
import zstandard
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastgw.security import ssl_context
from fastgw.stats import CloseReason
from tests.conftest import SECRET, eventually, token

LOCATION = {"type": "location_update", "vehicle_id": "KA-01-F-1234", "route_id": "500-D", "direction": "UP",
            "latitude": 12.97, "longitude": 77.59}


@dataclass
class Pki:
    ca: Path  # the CA certificate clients trust
    cert: Path  # the server's leaf (then the CA: a full chain)
    key: Path
    other_key: Path  # a valid key that does not match ``cert``
    encrypted_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key, password: bytes | None = None) -> bytes:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def make_pki(folder: Path) -> Pki:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("fastgw test CA")).issuer_name(_name("fastgw test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other.key",
              folder / "encrypted.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_pem_key(key))
    pki.other_key.write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    pki.encrypted_key.write_bytes(_pem_key(key, b"passphrase"))
    for path in (pki.key, pki.other_key, pki.encrypted_key):
        path.chmod(0o600)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def trusting(pki: Pki) -> ssl.SSLContext:
    """A client context that trusts the test CA (and verifies host names)."""
    return ssl.create_default_context(cafile=str(pki.ca))


@pytest.fixture
async def tls_gateway(start_gateway, pki):
    return await start_gateway(tls_cert=str(pki.cert), tls_key=str(pki.key))


# --- serving ----------------------------------------------------------------------------


async def test_wss_welcome_subscribe_and_receive(tls_gateway, pki):
    gw = tls_gateway
    client = trusting(pki)
    async with websockets.connect(f"wss://localhost:{gw.port}/ws?token={token('rider1')}", ssl=client,
                                  proxy=None) as ws:
        assert ws.transport.get_extra_info("ssl_object").version() in ("TLSv1.3", "TLSv1.2")
        welcome = orjson.loads(await ws.recv())
        assert welcome["type"] == "welcome"
        await ws.send(orjson.dumps({"type": "subscribe", "id": "s", "channel": "route:500-D:UP"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "subscribed"
        await ws.send(orjson.dumps({"type": "subscribe", "id": "n", "channel": "user:rider1:notifications"}).decode())
        assert orjson.loads(await ws.recv())["type"] == "subscribed"
        async with aiohttp.ClientSession() as s:  # publish over https too
            for channel, message in [("route:500-D:UP", LOCATION),
                                     ("user:rider1:notifications",
                                      {"type": "user_notification", "notification_id": "n1", "title": "Hi"})]:
                async with s.post(f"https://127.0.0.1:{gw.port}/api/publish", ssl=client,
                                  json={"channel": channel, "message": message},
                                  headers={"Authorization": f"Bearer {token('ops', admin=True)}"}) as r:
                    assert r.status == 200, await r.text()
        first, second = orjson.loads(await ws.recv()), orjson.loads(await ws.recv())
        assert first["channel"] == "route:500-D:UP" and first["message"] == LOCATION
        assert second["channel"] == "user:rider1:notifications" and second["message"]["notification_id"] == "n1"
    assert await eventually(lambda: not gw.connections)


async def test_wss_with_aiohttp_by_ip_and_zstd(tls_gateway, pki):
    """The IP address SAN, and the zstd subprotocol over TLS (binary frames)."""
    gw = tls_gateway
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"wss://127.0.0.1:{gw.port}/ws?token={token('rider2')}", ssl=trusting(pki),
                                protocols=("fastgw.v1.zstd",)) as ws:
            welcome = await ws.receive_json(timeout=5)
            assert welcome["compression"]["algorithm"] == "zstd"
            await ws.send_json({"type": "subscribe", "id": "s", "channel": "route:500-D:UP"})
            assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
            gw.hub.publish("route:500-D:UP", LOCATION)
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.BINARY
            async with s.get(f"https://127.0.0.1:{gw.port}{welcome['compression']['dictUrl']}",
                             ssl=trusting(pki)) as r:
                d = zstandard.ZstdCompressionDict(await r.read())
                plain = zstandard.ZstdDecompressor(dict_data=d).decompressobj().decompress(msg.data)
                assert orjson.loads(plain)["message"] == LOCATION


async def test_https_health_and_alpn(tls_gateway, pki):
    gw = tls_gateway
    async with aiohttp.ClientSession() as s:
        async with s.get(f"https://localhost:{gw.port}/healthz", ssl=trusting(pki)) as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"https://localhost:{gw.port}/readyz", ssl=trusting(pki)) as r:
            assert r.status == 200
    # a client that offers h2 and http/1.1 gets http/1.1 (aiohttp speaks only HTTP/1.1)
    client = trusting(pki)
    client.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=client, server_hostname="localhost")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    writer.close()
    # one that offers only h2 still connects, without ALPN, and speaks HTTP/1.1
    client = trusting(pki)
    client.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=client, server_hostname="localhost")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # TLS 1.0/1.1 named on purpose
async def test_protocol_versions(tls_gateway, pki):
    gw = tls_gateway
    tls12 = trusting(pki)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    _, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=tls12, server_hostname="localhost")
    ssl_object = writer.get_extra_info("ssl_object")
    assert ssl_object.version() == "TLSv1.2"
    cipher = ssl_object.cipher()[0]
    assert "ECDHE" in cipher and ("GCM" in cipher or "CHACHA20" in cipher), cipher  # forward secret, AEAD
    writer.close()
    tls11 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls11.check_hostname, tls11.verify_mode = False, ssl.CERT_NONE
    tls11.set_ciphers("ALL:@SECLEVEL=0")  # let the client itself offer TLS 1.0/1.1
    tls11.minimum_version = ssl.TLSVersion.TLSv1
    tls11.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port, ssl=tls11), 5)


async def test_plain_clients_fail_on_the_tls_port(tls_gateway):
    gw = tls_gateway
    with pytest.raises((websockets.exceptions.InvalidHandshake, websockets.exceptions.InvalidMessage,
                        ConnectionError, EOFError, asyncio.TimeoutError, OSError)):
        async with websockets.connect(f"ws://127.0.0.1:{gw.port}/ws?token={token()}", proxy=None, open_timeout=5):
            pass
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientError):
            async with s.get(f"http://127.0.0.1:{gw.port}/healthz", timeout=aiohttp.ClientTimeout(total=5)) as r:
                await r.read()
    assert not gw.connections and gw.stats.connections_opened == 0


async def test_client_that_does_not_trust_the_certificate_fails(tls_gateway, pki):
    gw = tls_gateway
    system_trust = ssl.create_default_context()  # the system CAs: our test CA is not among them
    with pytest.raises(ssl.SSLCertVerificationError):
        async with websockets.connect(f"wss://localhost:{gw.port}/ws?token={token()}", ssl=system_trust,
                                      proxy=None, open_timeout=5):
            pass
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with s.get(f"https://localhost:{gw.port}/healthz"):
                pass
    # trusted CA, but a name the certificate does not cover
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", gw.port, ssl=trusting(pki),
                                                       server_hostname="gateway.bmtc.test"), 5)
    assert not gw.connections


async def test_slow_consumer_is_still_detected_over_tls(start_gateway, pki):
    """The outbound limit counts what waits in the TLS transport's buffer."""
    gw = await start_gateway(tls_cert=str(pki.cert), tls_key=str(pki.key), outbound_limit=64 * 1024)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
    reader, writer = await asyncio.open_connection(sock=sock, ssl=trusting(pki), server_hostname="localhost",
                                                   limit=4096)
    writer.write((f"GET /ws?token={token('slow')} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    payload = orjson.dumps({"type": "subscribe", "id": "s", "channel": "route:500-D:UP"})
    mask = os.urandom(4)
    writer.write(bytes((0x81, 0x80 | len(payload))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    await writer.drain()
    assert await eventually(lambda: gw.hub.subscriber_count("route:500-D:UP") == 1)
    big = {**LOCATION, "padding": "x" * 2000}
    for _ in range(2000):  # about 4 MB: far beyond the limit, unread by the client
        gw.hub.publish("route:500-D:UP", big)
        if not gw.connections:
            break
        await asyncio.sleep(0)
    assert await eventually(lambda: not gw.connections, timeout=10)
    assert gw.stats.connections_closed[CloseReason.SLOW_CONSUMER.value] == 1
    writer.close()


# --- ssl_context: configuration errors are clear ValueErrors ------------------------------------


def test_ssl_context_defaults(pki):
    assert ssl_context(None, None) is None
    context = ssl_context(str(pki.cert), str(pki.key))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)


def test_ssl_context_errors(pki, tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    cases = [
        ((str(tmp_path / "missing.pem"), str(pki.key)), "--tls-cert .*missing.pem: no such file"),
        ((str(pki.cert), str(tmp_path / "missing.key")), "--tls-key .*missing.key: no such file"),
        ((str(tmp_path), str(pki.key)), "is a directory"),
        ((str(garbage), str(pki.key)), "--tls-cert .*no PEM certificate"),
        ((str(pki.cert), str(garbage)), "--tls-key .*no PEM private key"),
        ((str(pki.key), str(pki.cert)), "swapped"),
        ((str(pki.cert), str(pki.other_key)), "does not match the certificate"),
        ((str(pki.cert), str(pki.encrypted_key)), "encrypted"),
        ((str(pki.cert), None), "go together"),
    ]
    for (cert, key), message in cases:
        with pytest.raises(ValueError, match=message):
            ssl_context(cert, key)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_ssl_context_unreadable_key(pki, tmp_path):
    locked = tmp_path / "locked.key"
    locked.write_bytes(pki.key.read_bytes())
    locked.chmod(0)
    with pytest.raises(ValueError, match="cannot read"):
        ssl_context(str(pki.cert), str(locked))


def test_ssl_context_warns_about_an_expired_certificate(tmp_path, caplog):
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(_name("localhost"))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(now - datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(_pem_key(key))
    with caplog.at_level("WARNING", logger="fastgw.security"):
        assert ssl_context(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")) is not None
    assert "expired" in caplog.text


# --- the command ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_with_tls_flags(pki):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-simulator",
         "--jwt-secret", SECRET, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as s:
            while True:
                assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
                try:
                    async with s.get(f"https://localhost:{port}/readyz", ssl=trusting(pki)) as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, "gateway not ready"
                await asyncio.sleep(0.1)
            async with s.ws_connect(f"wss://localhost:{port}/ws?token={token('rider1')}", ssl=trusting(pki)) as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    finally:
        proc.terminate()
        try:
            assert proc.wait(timeout=15) == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise


def test_serve_with_unusable_tls_files_is_a_usage_error(pki, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTGW_")}
    result = subprocess.run(
        [sys.executable, "-m", "fastgw", "serve", "--host", "127.0.0.1", "--port", str(free_port()), "--no-simulator",
         "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki.key)],
        env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "missing.pem: no such file" in result.stderr and "Traceback" not in result.stderr
