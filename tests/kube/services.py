"""Stand-in for kube-proxy and the Pods behind a Service: an HTTP CONNECT proxy.

There are no Pods or Service IPs on loopback, yet a webhook whose clientConfig names a
Service (as the chart's does) must be reachable. kube-apiserver dials such a webhook at the
Service's ClusterIP through its egress selector's "cluster" network, which the harness
points at this proxy on a Unix socket. The proxy connects a routed `<ClusterIP>:<port>` to a
process listening on 127.0.0.1 and refuses everything else, so nothing leaves loopback. TLS
passes through untouched: the API server still checks the certificate against the
webhook's caBundle and the name `<service>.<namespace>.svc`.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from pathlib import Path

__all__ = ["ServiceRouter", "egress_selector_config"]

_MAX_HEADER = 8192


def egress_selector_config(socket_path: Path) -> str:
    """kube-apiserver's --egress-selector-config-file content sending "cluster" traffic here."""
    return (
        "apiVersion: apiserver.k8s.io/v1beta1\n"
        "kind: EgressSelectorConfiguration\n"
        "egressSelections:\n"
        "  - name: cluster\n"
        "    connection:\n"
        "      proxyProtocol: HTTPConnect\n"
        "      transport:\n"
        "        uds:\n"
        f"          udsName: {socket_path}\n"
    )


class ServiceRouter:
    """Routes `CONNECT <host>:<port>` to `127.0.0.1:<target port>` for registered targets."""

    def __init__(self, socket_path: Path, log_file: Path) -> None:
        self.socket_path = socket_path
        self.log_file = log_file
        self._routes: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> ServiceRouter:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self._thread = threading.Thread(target=self._serve, name="kube-service-router", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for conn in list(self._open):
                with contextlib.suppress(OSError):
                    conn.close()
            self._open.clear()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def route(self, host: str, port: int, target_port: int) -> None:
        with self._lock:
            self._routes[(host, port)] = target_port
        self._log(f"route {host}:{port} -> 127.0.0.1:{target_port}")

    def unroute(self, host: str, port: int) -> None:
        with self._lock:
            self._routes.pop((host, port), None)
        self._log(f"unroute {host}:{port}")

    # ----------------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        with self._lock, open(self.log_file, "a") as log:
            log.write(line + "\n")

    def _serve(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _track(self, *conns: socket.socket, add: bool) -> None:
        with self._lock:
            for conn in conns:
                if add:
                    self._open.add(conn)
                else:
                    self._open.discard(conn)

    def _handle(self, client: socket.socket) -> None:
        self._track(client, add=True)
        upstream: socket.socket | None = None
        try:
            request = b""
            while b"\r\n\r\n" not in request and len(request) < _MAX_HEADER:
                chunk = client.recv(1024)
                if not chunk:
                    return
                request += chunk
            line = request.split(b"\r\n", 1)[0].decode("latin-1")
            method, _, rest = line.partition(" ")
            target = rest.split(" ", 1)[0]
            host, _, port = target.rpartition(":")
            with self._lock:
                target_port = self._routes.get((host.strip("[]"), int(port or 0)))
            if method != "CONNECT" or target_port is None:
                self._log(f"refused {line!r}: no route")
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", target_port), timeout=5)
            except OSError as error:
                self._log(f"{target} -> 127.0.0.1:{target_port} unreachable: {error}")
                client.sendall(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
                return
            upstream.settimeout(None)
            self._track(upstream, add=True)
            self._log(f"{target} -> 127.0.0.1:{target_port}")
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            self._pipe(client, upstream)
        except OSError:
            pass
        finally:
            for conn in (client, upstream):
                if conn is not None:
                    self._track(conn, add=False)
                    with contextlib.suppress(OSError):
                        conn.close()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        with selectors.DefaultSelector() as selector:
            selector.register(a, selectors.EVENT_READ)
            selector.register(b, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=0.5):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    data = source.recv(65536)
                    if not data:
                        return
                    peers[source].sendall(data)
