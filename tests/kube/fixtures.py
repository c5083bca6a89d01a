"""pytest fixtures for the cluster-in-a-box.

`kube_cluster` (session) starts etcd, kube-apiserver and KubeRay once; `kube_namespace`
(function) gives each test a fresh namespace and deletes it afterwards. Tests that use
them must carry the `apiserver` marker so `pytest -m apiserver` selects exactly them.

When Go or the Go module proxy is missing the tests skip with the reason, except on CI
(`CI=true`) with Go present: there a harness that cannot start fails, so a broken build
cannot hide behind a skip.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .build import BuildError, Unavailable, ensure_all
from .cluster import Binaries, KubeCluster
from .node import NodeBinaries

__all__ = ["kube_cluster", "kube_namespace", "kube_node", "node_namespace"]

MARKER = "apiserver"
_FIXTURES = ("kube_cluster", "kube_namespace")
NODE_MARKER = "node"
logger = logging.getLogger("kube")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _reporter_log(config: pytest.Config):  # type: ignore[no-untyped-def]
    """Log lines to the terminal even while output is captured (a build takes minutes)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def log(message: str) -> None:
        logger.info(message)
        if reporter is None:
            return
        if capture is None:
            reporter.write_line(message)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(message)

    return log


def _check_markers(session: pytest.Session) -> None:
    unmarked = [
        item.nodeid
        for item in session.items
        if set(_FIXTURES) & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker(MARKER) is None
    ]
    if unmarked:
        pytest.fail(
            f"tests using {' or '.join(_FIXTURES)} must be marked @pytest.mark.{MARKER} "
            f"(so `pytest -m {MARKER}` selects them): {', '.join(unmarked)}",
            pytrace=False,
        )
    unmarked = [
        item.nodeid
        for item in session.items
        if {"kube_node", "node_namespace"} & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker(NODE_MARKER) is None
    ]
    if unmarked:
        pytest.fail(
            f"tests using kube_node must be marked @pytest.mark.{NODE_MARKER}: "
            + ", ".join(unmarked),
            pytrace=False,
        )


def _binaries(request: pytest.FixtureRequest, *, node: bool) -> dict[str, Path]:
    log = _reporter_log(request.config)
    problem = None
    try:
        return ensure_all(log, node=node)
    except Unavailable as error:
        problem = error
    except BuildError as error:
        pytest.fail(f"cluster-in-a-box build failed: {error}", pytrace=False)
    if problem is not None:  # outside the except block: no chained traceback in the report
        if problem.go_present and in_ci():
            pytest.fail(
                f"CI=true and Go is installed, so the cluster harness must run: {problem}",
                pytrace=False,
            )
        pytest.skip(f"cluster-in-a-box unavailable: {problem}")
    raise AssertionError("unreachable")


def _save_logs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
               cluster: KubeCluster) -> None:  # fmt: skip
    if request.session.testsfailed:
        # The work dir goes with the cluster; keep its logs where pytest keeps tmp dirs.
        saved = tmp_path_factory.mktemp("kube-logs")
        for path in cluster.logs():
            shutil.copy(path, saved / path.name)
        _reporter_log(request.config)(f"kube: tests failed; component logs saved in {saved}")


@pytest.fixture(scope="session")
def kube_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KubeCluster]:
    """etcd + kube-apiserver (TLS, RBAC, ServiceAccount tokens) + KubeRay, on loopback."""
    _check_markers(request.session)
    log = _reporter_log(request.config)
    paths = _binaries(request, node=False)
    binaries = Binaries.from_paths(paths)
    with KubeCluster(binaries, log=log) as cluster:
        yield cluster
        _save_logs(request, tmp_path_factory, cluster)


@pytest.fixture(scope="session")
def kube_node(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    node_images: list[str],
) -> Iterator[KubeCluster]:
    """The cluster with a real node (kubelet, containerd, kube-proxy, CoreDNS, scheduler,
    controller-manager) and `node_images` (a fixture of the tests that use it) imported."""
    _check_markers(request.session)
    log = _reporter_log(request.config)
    paths = _binaries(request, node=True)
    binaries = Binaries.from_paths(paths)
    try:
        node = NodeBinaries.find(paths)
    except FileNotFoundError as error:
        if in_ci():
            pytest.fail(f"CI=true, so the node must run: {error}", pytrace=False)
        pytest.skip(str(error))
    with KubeCluster(binaries, log=log, node=node, images=node_images) as cluster:
        yield cluster
        _save_logs(request, tmp_path_factory, cluster)


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its `default` ServiceAccount) for one test."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{secrets.token_hex(3)}"
    kube_cluster.create_namespace(name)
    yield name
    kube_cluster.delete_namespace(name)


@pytest.fixture
def node_namespace(kube_node: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the cluster with the node, deleted (by the namespace controller,
    with everything in it) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"n-{slug}-{secrets.token_hex(3)}"
    kube_node.create_namespace(name)
    yield name
    kube_node.delete_namespace(name)
