"""Helpers shared by every test tier (importable as `support`)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def session_pixi() -> Path:
    """The real pixi the tests run (tests/realpixi.find, never a download here): for unit
    tests that need a pixi binary without the offline world around it."""
    import pytest

    from realpixi.find import PixiNotAvailable, find_pixi

    try:
        return find_pixi(download=False).path
    except PixiNotAvailable as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true, so real pixi must be present: {e}", pytrace=False)
        pytest.skip(str(e))


def free_port() -> int:
    """A free port below the kernel's ephemeral range (32768+): a port the kernel hands out
    for bind(0) may be taken again by another Ray process before our dashboard binds it."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def stop_cluster_under(temp: Path) -> None:
    """SIGKILL every process of the one Ray cluster whose temp dir is `temp`, and only those:
    the processes naming `temp` on their command line or in their environment, and their
    descendants. Ray's agents rename themselves (`ray::DashboardAgent`, `ray::IDLE`), so a
    command-line match alone leaves them running, holding their ports, once their raylet
    is gone. Never `ray stop`: it stops every Ray cluster on the machine."""
    marker = str(temp).encode()
    parent: dict[int, int] = {}
    argv: dict[int, list[bytes]] = {}
    named: set[int] = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            pid = int(entry.name)
            parent[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
            argv[pid] = cmdline.split(b"\0")
            if marker in cmdline or marker in (entry / "environ").read_bytes():
                named.add(pid)
        except (OSError, ValueError, IndexError):
            continue
    # `ray start` leaves its Ray Client server (`ray.util.client.server --address=<GCS>`)
    # to init, with neither the temp dir nor an ancestor of the cluster: it is the process
    # naming the GCS address that the cluster's raylet names.
    gcs = {arg.split(b"=", 1)[1] for pid in named for arg in argv.get(pid, [])
           if arg.startswith((b"--gcs-address=", b"--gcs_address="))}
    named |= {pid for pid, args in argv.items() if any(b"--address=" + a in args for a in gcs)}
    doomed = set(named)
    grew = True
    while grew:  # descendants, found before any dies and is re-parented to init
        more = {pid for pid, ppid in parent.items() if ppid in doomed} - doomed
        doomed |= more
        grew = bool(more)
    doomed.discard(os.getpid())
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


def persistent_cache(name: str) -> Path:
    """A directory under the user cache that outlives test runs (PyPI downloads)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "ray-pixi-tests" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def hold_flock(path: Path, shared: bool = False) -> subprocess.Popen[str]:
    """Another process (another Ray agent, or `ray-pixi envs rm`) holding an flock on
    `path` until its stdin closes (`child.communicate("")`)."""
    code = textwrap.dedent(f"""
        import fcntl, os, sys
        fd = os.open({str(path)!r}, os.O_RDONLY | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_SH if {shared} else fcntl.LOCK_EX)
        print("held", flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


INSTALLED_LINE = "[ray-pixi: installed "


def install_logs(store: Path, key: str = "") -> list[Path]:
    """The store's install logs (one per attempt), oldest first."""
    logs = (store / "logs").glob(f"install-{key}*.log")
    return sorted(logs, key=lambda p: p.name.rsplit("-", 2)[-2:])


def installs(store: Path, key: str = "") -> int:
    """Completed installs into `store`: attempts whose log ends with the plugin's line."""
    return sum(INSTALLED_LINE in p.read_text(errors="replace") for p in install_logs(store, key))


def kopf_admission_handler(settings: object) -> object:
    """kopf's admission entry point bound to the add-on's webhook role and `settings` (a
    ray_pixi_operator Settings), as `kopf run` binds it; give it to a kopf.WebhookServer.

    Uses kopf internals: the admission and chart-TLS tests drive real AdmissionReviews
    through the same code the operator runs.
    """
    import functools

    import kopf
    from kopf._cogs.structs import references
    from kopf._core.engines.admission import serve_admission_request
    from kopf._core.reactor.inventory import ResourceMemories
    from ray_pixi_operator.roles import build_registry
    from ray_pixi_operator.scope import MEMO_KEY

    insights = references.Insights()
    insights.webhook_resources.add(references.Resource(
        group="ray.io", version="v1", plural="rayclusters", kind="RayCluster",
        singular="raycluster", namespaced=True, preferred=True,
        verbs=("create", "update", "get", "list", "watch", "patch"),
    ))
    return functools.partial(
        serve_admission_request,
        settings=kopf.OperatorSettings(),
        memories=ResourceMemories(),
        memobase=kopf.Memo({MEMO_KEY: settings}),
        registry=build_registry(webhook=True, reconciler=False),
        insights=insights,
        indices={},
    )


def poll(
    check: Callable[[], T | None | Literal[False]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.2,
    describe: Callable[[], str] | None = None,
) -> T:
    """Call `check` until it returns something truthy, and return that; fail after `timeout`.

    `describe` supplies the last observed state for the failure message.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            state = f"; last seen: {describe()}" if describe else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{state}")
        time.sleep(interval)
