"""A rotated webhook certificate is served without a moment of refused requests.

The real server (``ray_pixi_operator.tls.ReloadingWebhookServer``) on loopback TLS; its files
laid out as kubelet lays out a mounted Secret (``tls.crt -> ..data/tls.crt``, and ``..data`` a
symlink swapped in one rename when the Secret changes). Clients trust the old and the new CA,
as the chart's caBundle does during a rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import json
import os
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ray_pixi_operator.tls import ReloadingWebhookServer

from support import free_port

RELOAD = 0.2  # seconds between the server's checks of its files


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue(ca_name: str) -> tuple[bytes, bytes, bytes]:
    """A new CA and a serving certificate for localhost from it: (ca, cert, key) as PEM."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name(ca_name))
        .issuer_name(_name(ca_name))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    encoding = serialization.Encoding.PEM
    return ca.public_bytes(encoding), cert.public_bytes(encoding), _pem_key(key)


class MountedSecret:
    """A directory laid out like kubelet's projection of a Secret volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0

    def write(self, cert: bytes, key: bytes) -> None:
        self.generation += 1
        data = self.root / f"..gen{self.generation}"
        data.mkdir()
        (data / "tls.crt").write_bytes(cert)
        (data / "tls.key").write_bytes(key)
        link = self.root / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, self.root / "..data")  # one rename: both files change at once
        for name in ("tls.crt", "tls.key"):
            if not (self.root / name).is_symlink():
                (self.root / name).symlink_to(f"..data/{name}")

    @property
    def cert_file(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key_file(self) -> Path:
        return self.root / "tls.key"


async def _answer(request: Any, **_: Any) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": request["request"]["uid"], "allowed": True},
    }


@contextlib.contextmanager
def serving(server: kopf.WebhookServer) -> Iterator[None]:
    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), asyncio.Event()

    async def consume() -> None:
        # kopf asks a server for its next client config when the previous one ends (kopf's
        # own server yields again after reopening its listener); keep asking, as kopf does.
        async for _ in server(_answer):  # type: ignore[arg-type]
            ready.set()

    async def run() -> None:
        consumer = asyncio.ensure_future(consume())
        await stop.wait()
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the webhook server did not start"
        yield
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)


def _client(port: int, trusted: bytes) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cadata=trusted.decode())
    return http.client.HTTPSConnection("localhost", port, context=context, timeout=5)


def _review(connection: http.client.HTTPSConnection) -> bool:
    uid = str(uuid.uuid4())
    body = json.dumps({"request": {"uid": uid}}).encode()
    connection.request("POST", "/inject-raycluster", body, {"Content-Type": "application/json"})
    reply = connection.getresponse()
    answer = json.loads(reply.read())
    return reply.status == 200 and answer["response"]["uid"] == uid


def _served_certificate(port: int, trusted: bytes) -> bytes:
    connection = _client(port, trusted)
    try:
        connection.connect()
        der = connection.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    finally:
        connection.close()
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)


def _wait_until_served(
    port: int, trusted: bytes, cert: bytes, timeout: float = 30, *, tolerate: bool = False
) -> None:
    """Until new connections get ``cert``; ``tolerate``: connection errors meanwhile are fine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _served_certificate(port, trusted) == cert:
                return
        except OSError:
            if not tolerate:
                raise
        assert time.monotonic() < deadline, "the renewed certificate was never served"
        time.sleep(0.05)


def test_a_rotated_pair_is_served_with_no_refused_request(tmp_path: Path) -> None:
    old_ca, old_cert, old_key = issue("old-ca")
    new_ca, new_cert, new_key = issue("new-ca")
    secret = MountedSecret(tmp_path)
    secret.write(old_cert, old_key)
    port = free_port()
    server = ReloadingWebhookServer(
        addr="127.0.0.1",
        port=port,
        host="localhost",
        certfile=secret.cert_file,
        pkeyfile=secret.key_file,
        reload_interval=RELOAD,
    )
    bundle = old_ca + new_ca  # the chart's caBundle while the certificate changes over
    results: list[bool | str] = []
    running = threading.Event()

    def hammer() -> None:
        while running.is_set():
            connection = _client(port, bundle)
            try:
                results.append(_review(connection))
            except (OSError, http.client.HTTPException) as error:
                results.append(f"{type(error).__name__}: {error}")
            finally:
                connection.close()

    with serving(server):
        kept_open = _client(port, bundle)
        assert _review(kept_open)
        running.set()
        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            time.sleep(RELOAD * 3)  # requests on the old certificate, across several checks
            secret.write(new_cert, new_key)
            _wait_until_served(port, bundle, new_cert)
            time.sleep(RELOAD * 3)  # and on the new one
        finally:
            running.clear()
            worker.join(30)
        # A connection opened before the rotation is still served: the listener never closed.
        assert _review(kept_open)
        kept_open.close()
    failures = [r for r in results if r is not True]
    assert results and failures == [], failures[:5]
    assert server.reloads == 1
    print(f"\n{len(results)} admission requests during the rotation, none refused")


def test_a_pair_that_does_not_match_is_skipped_until_it_does(tmp_path: Path) -> None:
    old_ca, old_cert, old_key = issue("old-ca")
    new_ca, new_cert, new_key = issue("new-ca")
    secret = MountedSecret(tmp_path)
    secret.write(old_cert, old_key)
    port = free_port()
    server = ReloadingWebhookServer(
        addr="127.0.0.1",
        port=port,
        host="localhost",
        certfile=secret.cert_file,
        pkeyfile=secret.key_file,
        reload_interval=RELOAD,
    )
    bundle = old_ca + new_ca
    with serving(server):
        secret.write(new_cert, old_key)  # a certificate with the wrong key
        time.sleep(RELOAD * 5)  # several checks: each skips the pair
        assert _served_certificate(port, bundle) == old_cert
        assert server.reloads == 0
        secret.write(new_cert, new_key)
        _wait_until_served(port, bundle, new_cert)
        assert server.reloads == 1


def test_kopfs_own_server_reopens_its_listener_on_renewal(tmp_path: Path) -> None:
    """Why the add-on has its own: kopf's closes the connections it holds when it reloads."""
    old_ca, old_cert, old_key = issue("old-ca")
    new_ca, new_cert, new_key = issue("new-ca")
    secret = MountedSecret(tmp_path)
    secret.write(old_cert, old_key)
    port = free_port()
    server = kopf.WebhookServer(
        addr="127.0.0.1",
        port=port,
        host="localhost",
        certfile=secret.cert_file,
        pkeyfile=secret.key_file,
        file_check_interval=RELOAD,
    )
    bundle = old_ca + new_ca
    with serving(server):
        kept_open = _client(port, bundle)
        assert _review(kept_open)
        secret.write(new_cert, new_key)
        _wait_until_served(port, bundle, new_cert, tolerate=True)
        with pytest.raises((OSError, http.client.HTTPException)):
            _review(kept_open)
        kept_open.close()
