"""A small Kubernetes REST client for the harness and its tests, beside the `kubernetes` client.

Kept for what the client's DynamicClient (which does the harness's discovery) does not give
the tests in one call shape: paths that are no resource (the kubelet's proxy and logs,
TokenRequest, /scale, namespace /finalize), the API server's exact answer (status code and
Status body, asserted on) and a LIST's raw bytes (its size is measured).
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import poll  # the tests' one poll, re-exported for the harness's callers

__all__ = ["ApiError", "Rest", "poll"]

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(RuntimeError):
    """A non-2xx answer; `status` is the HTTP code, `body` the decoded Status if any."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path} -> {status}: {message}")
        self.status = status
        self.body = body


@dataclass
class Rest:
    """Requests against `server` as the identity of a client certificate or a token."""

    server: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        self._context = context
        parsed = urllib.parse.urlsplit(self.server)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 443

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request; return the decoded JSON answer or raise `ApiError`."""
        raw = self.request_raw(method, path, body, params=params, content_type=content_type)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw.decode(errors="replace")

    def request_raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> bytes:
        """Send one request; return the answer's bytes as sent (or raise `ApiError`)."""
        if params:
            path = f"{path}?{urllib.parse.urlencode(params)}"
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        connection = http.client.HTTPSConnection(
            self._host, self._port, context=self._context, timeout=self.timeout
        )
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        if not 200 <= response.status < 300:
            try:
                decoded: Any = json.loads(raw) if raw else None
            except ValueError:
                decoded = raw.decode(errors="replace")
            raise ApiError(method, path, response.status, decoded)
        return raw

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def replace(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def merge_patch(self, path: str, patch: Any) -> Any:
        return self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    def json_patch(self, path: str, operations: list[dict[str, Any]]) -> Any:
        return self.request("PATCH", path, operations, content_type=JSON_PATCH)

    def delete(self, path: str, *, missing_ok: bool = False, **params: str) -> Any:
        try:
            return self.request("DELETE", path, params=params or None)
        except ApiError as error:
            if missing_ok and error.status == 404:
                return None
            raise

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True
