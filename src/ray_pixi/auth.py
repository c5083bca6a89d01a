"""Ray's token authentication (Ray 2.52+, on by default for local clusters from 2.59) as
Ray's own tools take it: `RAY_AUTH_MODE=token`, and the token from `RAY_AUTH_TOKEN`, else the
file `RAY_AUTH_TOKEN_PATH` names, else `~/.ray/auth_token`. ray-pixi reads the same
variables, so a shell that can `ray job submit` can `ray-pixi prefetch`, and when a cluster
turns a client away it says whether no token was sent or the one sent was refused, and how to
pass one. Reading the variables is pure; `gcs_refuses` is the one network call."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ray_pixi.doctor import FAIL, OK, WARN, Check

__all__ = [
    "AS_RAY_TAKES_IT",
    "TokenSource",
    "check_token_auth",
    "client_refusal",
    "find_token",
    "home_of",
    "ray_auth_errors",
]

MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"  # noqa: S105 (a variable name)
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"  # noqa: S105 (a variable name)
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"  # under HOME
AS_RAY_TAKES_IT = (f"as Ray's tools take it: {MODE_VAR}=token with {TOKEN_VAR}=<token>, or "
                   f"{TOKEN_PATH_VAR}=<file holding it>, or the file ~/.ray/auth_token "
                   "(`ray get-auth-token` on the head node prints the cluster's token)")
# Any GCS method answers UNAUTHENTICATED before it runs; this one exists in every Ray >= 2.7.
_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"


@dataclass(frozen=True)
class TokenSource:
    """Where a process's token comes from; `token` is None if that place is unreadable."""

    where: str
    token: str | None


def token_mode(env: Mapping[str, str]) -> str:
    """The auth mode the variables set: "token", "disabled", or "" (unset: Ray decides)."""
    return env.get(MODE_VAR, "").strip().lower()


def find_token(env: Mapping[str, str], home: Path) -> TokenSource | None:
    """The token Ray would load for a process with `env` and `home`, in Ray's order."""
    if env.get(TOKEN_VAR, "").strip():
        return TokenSource(TOKEN_VAR, env[TOKEN_VAR].strip())
    if env.get(TOKEN_PATH_VAR):
        return TokenSource(f"{TOKEN_PATH_VAR}={env[TOKEN_PATH_VAR]}",
                           _read(Path(env[TOKEN_PATH_VAR])))
    default = home / DEFAULT_TOKEN_FILE
    token = _read(default)
    return TokenSource(str(default), token) if token else None


def home_of(env: Mapping[str, str]) -> Path:
    """The HOME whose ~/.ray/auth_token a process with `env` reads."""
    return Path(env.get("HOME") or os.path.expanduser("~"))


def ray_auth_errors() -> tuple[type[Exception], ...]:
    """Ray's AuthenticationError where this Ray has one (2.52+), for an `except`."""
    import ray.exceptions

    error = getattr(ray.exceptions, "AuthenticationError", None)
    return (error,) if isinstance(error, type) and issubclass(error, Exception) else ()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def client_refusal(address: str, env: Mapping[str, str], home: Path) -> str | None:
    """Why the cluster at `address` (host:port of its GCS) turns this client away, or None:
    what `ray.init(address=...)` would otherwise report, after a minute of retries, as
    "Failed to connect"."""
    mode = token_mode(env)
    source = find_token(env, home)
    if mode == "token" and (source is None or source.token is None):
        where = f" ({source.where} is missing or empty)" if source else ""
        return (f"{MODE_VAR}=token but this shell has no Ray auth token{where}; pass one "
                + AS_RAY_TAKES_IT)
    sent = source if mode == "token" else None
    if not gcs_refuses(address, sent.token if sent else None):
        return None
    if sent is None:
        unsent = f" ({source.where} is set, but Ray sends a token only with " \
                 f"{MODE_VAR}=token)" if source else ""
        return (f"the Ray cluster at {address!r} requires a Ray auth token and this shell "
                f"sent none{unsent}; pass it {AS_RAY_TAKES_IT}")
    return (f"the Ray cluster at {address!r} refused the Ray auth token from {sent.where}; "
            f"pass this cluster's token {AS_RAY_TAKES_IT}")


def gcs_refuses(address: str, token: str | None, timeout: float = 10.0) -> bool:
    """True if the GCS at `address` answers UNAUTHENTICATED to a call carrying `token`
    (or none). Any other outcome (success, no such method, unreachable) is left to
    ray.init to report."""
    match = re.fullmatch(r"\[?([^\]/]+?)\]?:(\d+)", address)
    if not match:
        return False
    try:
        import grpc  # type: ignore[import-untyped]  # Ray's own dependency
    except ImportError:
        return False
    metadata = [("authorization", f"Bearer {token}")] if token else []
    # Straight to the GCS, as Ray's own clients go: never through an https_proxy.
    with grpc.insecure_channel(f"{match[1]}:{match[2]}",
                               options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary(_PROBE_METHOD)
        try:
            call(b"", timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            return bool(e.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


def check_token_auth(node: Mapping[str, str], node_home: Path, shell: Mapping[str, str],
                     shell_home: Path, node_is_running: bool) -> Check:
    """`ray-pixi doctor`'s view of token auth: whether the node has it on and a token to
    run with, and, for a running node, whether this shell holds the token its clients
    need."""
    name = "token auth"
    mode = token_mode(node)
    if mode != "token":
        return Check(name, OK, f"off ({MODE_VAR} is {mode!r})" if mode else
                     f"off ({MODE_VAR} unset; `ray start` turns it on if it finds a token)")
    source = find_token(node, node_home)
    if source is None or source.token is None:
        where = f" ({source.where} is missing or empty)" if source else ""
        return Check(name, FAIL, f"{MODE_VAR}=token but no token{where}",
                     fix=f"set {TOKEN_VAR}, or {TOKEN_PATH_VAR} to a file holding the token, "
                         "or write ~/.ray/auth_token (`ray get-auth-token --generate`)")
    on = f"on ({MODE_VAR}=token), the node's token from {source.where}"
    if not node_is_running:
        return Check(name, OK, on)
    mine = find_token(shell, shell_home) if token_mode(shell) == "token" else None
    if mine is not None and mine.token == source.token:
        return Check(name, OK, f"{on}; this shell sends the same token (from {mine.where})")
    why = "sends no token" if mine is None or mine.token is None else \
        f"sends another token (from {mine.where})"
    return Check(name, WARN, f"{on}; this shell {why}, so `ray job submit` and "
                 "`ray-pixi prefetch` from here are refused",
                 fix=f"pass the cluster's token {AS_RAY_TAKES_IT}")
