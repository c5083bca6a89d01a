"""The webhook's HTTPS server: kopf's, except that a renewed certificate is loaded in place.

kopf's own ``WebhookServer`` notices changed certificate files (every 60 s by default) by
closing its listener and opening a new one; for that moment the port refuses connections,
and with ``failurePolicy: Fail`` the API server refuses the request being admitted. This
server keeps one listener for its whole life. It checks the files every
``reload_interval`` seconds and loads a changed pair into the live ``ssl.SSLContext``: new TLS
handshakes get the new certificate, connections in flight keep theirs, and nothing is
refused. A pair that does not load (a half-written file, a key that does not match) is
skipped and tried again at the next check; the old pair keeps serving.

Rotation without a window also needs the API server to trust both the old and the new
certificate while they change over: the chart's CA bundle holds the current and the previous
CA, or the certificate is renewed from an unchanged CA (cert-manager).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp.web
import kopf

__all__ = ["ReloadingWebhookServer"]

logger = logging.getLogger(__name__)


class ReloadingWebhookServer(kopf.WebhookServer):
    """A ``kopf.WebhookServer`` that reloads ``certfile``/``pkeyfile`` without a restart."""

    def __init__(self, *, reload_interval: float = 10.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.reload_interval = reload_interval
        self.reloads = 0  # how many renewed pairs were loaded (for logs and tests)

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        cadata, context = self._build_ssl()

        async def serve(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        path = self.path.rstrip("/") if self.path else ""
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post(f"{path}/{{id:.*}}", serve)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False)
        await runner.setup()
        try:
            port = self.port or self._allocate_free_port()
            site = aiohttp.web.TCPSite(
                runner, self.addr or None, port, ssl_context=context, reuse_address=True
            )
            await site.start()
            schema = "http" if context is None else "https"
            host = self.host or self.DEFAULT_HOST or self._get_accessible_addr(self.addr)
            config = kopf.WebhookClientConfig(
                url=self._build_url(schema, host, port, self.path or "")
            )
            if cadata is not None:
                config["caBundle"] = base64.b64encode(cadata).decode("ascii")
            logger.debug("Listening for webhooks at %s", config["url"])
            yield config
            if context is not None and self.certfile is not None and self.pkeyfile is not None:
                await self._reload_forever(context, Path(self.certfile), Path(self.pkeyfile))
            else:
                await asyncio.Event().wait()  # nothing to reload: serve until cancelled
        finally:
            await runner.cleanup()

    async def _reload_forever(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        loaded = _digest(cert, key)
        while True:
            await asyncio.sleep(self.reload_interval)
            try:
                current = _digest(cert, key)
            except OSError as error:
                logger.warning("Cannot read the webhook certificate files: %s", error)
                continue
            if current == loaded:
                continue
            try:
                _load_in_place(context, cert, key, self.password)
            except (OSError, ssl.SSLError) as error:
                logger.warning(
                    "The renewed webhook certificate %s does not load yet (%s); serving the "
                    "previous one and trying again in %g s",
                    cert,
                    error,
                    self.reload_interval,
                )
                continue
            loaded = current
            self.reloads += 1
            logger.info("Serving the renewed webhook certificate %s", cert)


def _digest(*paths: Path) -> str:
    hasher = hashlib.sha256()
    for path in paths:
        hasher.update(path.read_bytes())
        hasher.update(b"\0")
    return hasher.hexdigest()


def _load_in_place(context: ssl.SSLContext, cert: Path, key: Path, password: object) -> None:
    """Check the pair on a scratch context, then load the very same bytes into the live one.

    Loading straight into the live context could leave it with a new certificate and the old
    key if the key does not match; the scratch load catches that first. The bytes are read once
    into private temporary files so both loads see the same pair even if the files change.
    """
    cert_bytes, key_bytes = cert.read_bytes(), key.read_bytes()
    with contextlib.ExitStack() as stack:
        files = []
        for data in (cert_bytes, key_bytes):
            handle = stack.enter_context(tempfile.NamedTemporaryFile(prefix="ray-pixi-tls-"))
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            files.append(handle.name)
        scratch = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
        scratch.load_cert_chain(files[0], files[1], password)  # type: ignore[arg-type]
        context.load_cert_chain(files[0], files[1], password)  # type: ignore[arg-type]
