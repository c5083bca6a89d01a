"""Loopback servers that stand in for the network of an air-gapped cluster.

- `Mirror`: the site's HTTP mirror. It serves the test channel as a mirror of conda-forge
  (pixi's `[mirrors]` sends `https://conda.anaconda.org/conda-forge` here) and answers the
  conda->PyPI mapping endpoints of `https://conda-mapping.prefix.dev` as that service does:
  404 for a package hash it does not know (`/hash-v0/<sha256>`), and the compressed
  mapping (`/compressed-v0/compressed_mapping.json`, conda name -> PyPI name or null) for
  the channel's packages. It records every request, and can stall a path on demand so a
  test can make real pixi hang.
- `ConnectRecorder`: an `HTTPS_PROXY` that tunnels (CONNECT) only to the PyPI hosts and
  refuses and records everything else, so a test can show no other host was asked for.

Both bind 127.0.0.1 on a free port by default, serve from daemon threads, and stop on
`close()`. `host=` binds another address of this machine instead, e.g. the host's address on
the node's address, so the node's Pods (tests/node) reach them; nothing else can.
"""

from __future__ import annotations

import contextlib
import email.utils
import fnmatch
import http.server
import json
import selectors
import socket
import socketserver
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .channel import Channel

__all__ = ["CHANNEL_ROUTE", "ConnectRecorder", "MAPPING_ROUTE", "Mirror", "PYPI_HOSTS",
           "Stall"]

CHANNEL_ROUTE = "/conda-forge"
LOOPBACK = "127.0.0.1"
MAPPING_ROUTE = "/conda-mapping"
PYPI_HOSTS = ("pypi.org", "files.pythonhosted.org")


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    client: str = ""  # the address the request came from


class Stall:
    """Requests whose path matches `pattern` (fnmatch) hang until `release()`."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._hit = threading.Event()
        self._released = threading.Event()

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.pattern)

    def hold(self) -> None:
        self._hit.set()
        self._released.wait()

    def wait_hit(self, timeout: float) -> bool:
        """True once a request has reached the stall (pixi is now hanging on it)."""
        return self._hit.wait(timeout)

    def release(self) -> None:
        self._released.set()

    def __enter__(self) -> Stall:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client went away (e.g. a test killed the pixi it stalled)
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class Mirror:
    """The loopback mirror (see the module docstring). `url` is its base URL;
    `channel_url` the conda-forge mirror, `mapping_url` the mapping service's."""

    def __init__(self, channel: Channel, host: str = LOOPBACK) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._stalls: list[Stall] = []
        mapping = json.dumps(channel.pypi_mapping, sort_keys=True).encode()
        mirror = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def send_response(self, code: int, message: str | None = None) -> None:
                mirror._record(Request(self.command, self.path, int(code),
                                       str(self.client_address[0])))
                super().send_response(code, message)

            def log_message(self, format: str, *args: object) -> None:
                pass  # recorded instead

            def do_GET(self) -> None:
                self._answer()

            def do_HEAD(self) -> None:
                self._answer()

            def _answer(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                for stall in mirror._active_stalls(path):
                    stall.hold()
                if path.startswith(MAPPING_ROUTE + "/hash-v0/"):
                    self._reply(404, b"no mapping for this hash", "text/plain")
                elif path == MAPPING_ROUTE + "/compressed-v0/compressed_mapping.json":
                    self._reply(200, mapping, "application/json")
                elif path.startswith(CHANNEL_ROUTE + "/"):
                    mirror._serve_file(self, urllib.parse.unquote(path[len(CHANNEL_ROUTE):]))
                else:
                    self._reply(404, b"not a mirrored URL", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str,
                       headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

        self._server = _Server((host, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="realpixi-mirror", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def channel_url(self) -> str:
        return self.url + CHANNEL_ROUTE

    @property
    def mapping_url(self) -> str:
        return self.url + MAPPING_ROUTE

    def _serve_file(self, handler: Any, relative: str) -> None:
        """A channel file, with the validators a real mirror sends (`ETag`,
        `Last-Modified`, also on a 304, which rattler needs) and `Cache-Control:
        no-cache`, so every solve revalidates. pixi's repodata cache is
        keyed by the conda-forge URL and outlives the session: a rebuilt channel must win
        over what an earlier session cached."""
        root = self.channel.path.resolve()
        target = (root / relative.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            handler._reply(404, b"no such file in the channel", "text/plain")
            return
        stat = target.stat()
        validators = {
            "ETag": f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"',
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
            "Cache-Control": "no-cache",
        }
        # Only an ETag the client holds earns a 304: rattler (0.31) treats a 304 whose
        # strong ETag its cached entry lacks as "received unexpected status code (304 Not
        # Modified)", so a client holding only Last-Modified gets the full file again.
        match = handler.headers.get("If-None-Match")
        unchanged = match is not None and validators["ETag"] in match
        if unchanged:
            handler.send_response(304)
            for name, value in validators.items():
                handler.send_header(name, value)
            handler.end_headers()
            return
        content_type = "application/json" if target.suffix == ".json" else (
            "application/octet-stream")
        handler._reply(200, target.read_bytes(), content_type, validators)

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _active_stalls(self, path: str) -> list[Stall]:
        with self._lock:
            return [s for s in self._stalls if s.matches(path)]

    @property
    def requests(self) -> list[Request]:
        """Every request answered so far (method, path, status), oldest first."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def stall(self, pattern: str) -> Stall:
        """Hang requests whose path matches `pattern` (e.g. `/conda-forge/*/repodata*`)
        until the returned `Stall` is released (or used as a context manager and left)."""
        stall = Stall(pattern)
        with self._lock:
            self._stalls.append(stall)
        return stall

    def unstall(self, stall: Stall) -> None:
        with self._lock:
            self._stalls.remove(stall)
        stall.release()

    def close(self) -> None:
        with self._lock:
            stalls, self._stalls = self._stalls, []
        for stall in stalls:
            stall.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# --- the HTTPS_PROXY recorder -----------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    """One request the proxy saw: `target` is `host:port` (CONNECT) or the URL."""

    method: str
    target: str
    allowed: bool
    client: str = ""  # the address the request came from


def _connect_target(target: str) -> tuple[str, int] | None:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]").lower(), int(port)


def _peer(sock: socket.socket) -> str:
    try:
        return str(sock.getpeername()[0])
    except OSError:  # already gone
        return ""


class ConnectRecorder:
    """`HTTPS_PROXY` on loopback (or `host`): tunnels CONNECT to `allowed_hosts` port 443,
    answers 403 to anything else, and records every attempt. `url` is what `HTTPS_PROXY` names."""

    def __init__(self, allowed_hosts: tuple[str, ...] = PYPI_HOSTS,
                 host: str = LOOPBACK) -> None:
        self.allowed_hosts = allowed_hosts
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._open: set[socket.socket] = set()
        recorder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                recorder._handle(self.request)

        self._server = socketserver.ThreadingTCPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="realpixi-connect-recorder", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    @property
    def refused(self) -> list[Attempt]:
        """Every request to a host other than the PyPI hosts (must stay empty)."""
        return [a for a in self.attempts if not a.allowed]

    def clear(self) -> None:
        with self._lock:
            self._attempts.clear()

    def _handle(self, client: socket.socket) -> None:
        head = b""
        client.settimeout(30)
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                return
            head += chunk
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        parsed = _connect_target(target) if method == "CONNECT" else None
        allowed = parsed is not None and parsed[0] in self.allowed_hosts and parsed[1] == 443
        with self._lock:
            self._attempts.append(Attempt(method, target, allowed, _peer(client)))
        if not allowed or parsed is None:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            return
        try:
            upstream = socket.create_connection(parsed, timeout=30)
        except OSError:
            client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        with upstream:
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            early = head.split(b"\r\n\r\n", 1)[1]
            if early:
                upstream.sendall(early)
            self._pump(client, upstream)

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            self._open.update((a, b))
        try:
            a.settimeout(None)
            b.settimeout(None)
            peers = {a: b, b: a}
            with selectors.DefaultSelector() as sel:
                for s in peers:
                    sel.register(s, selectors.EVENT_READ)
                while True:
                    for key, _ in sel.select():
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        peers[key.fileobj].sendall(data)  # type: ignore[index]
        except OSError:
            return
        finally:
            with self._lock:
                self._open.difference_update((a, b))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets = list(self._open)
        for s in sockets:
            with contextlib.suppress(OSError):  # already closed by its peer
                s.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)

    def __enter__(self) -> ConnectRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

