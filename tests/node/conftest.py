"""Fixtures of the node tests: the images (built once per machine, imported into the node
once), the cluster with its real node, the add-on's chart on it, and the offline site.

Without a Docker daemon or the base image the docker tests skip with the reason that
.ci/setup-docker recorded; on CI (`CI=true`) after a setup that said `ready`, a missing
image or a failed build fails them instead, so a broken build cannot hide behind a skip.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator

import pytest

from kube.cluster import KubeCluster
from kube.node import POD_SUBNET
from kube.release import Release, install_release
from node.images import (
    UNSUPPORTED_RAY,
    ImageError,
    PythonSource,
    docker_setup_said,
    docker_unavailable,
    ensure_operator_image,
    ensure_ray_image,
    ray_version,
    tag_chart_images,
)
from node.raycluster import E2E_RAY_IMAGE
from node.site import Site, open_site
from realpixi.channel import Channel


def _need_docker() -> None:
    reason = docker_unavailable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true" and docker_setup_said().endswith("ready"):
        pytest.fail(f"CI=true and .ci/setup-docker said ready, yet: {reason}", pytrace=False)
    pytest.skip(reason)


def _image(build: object, what: str, request: pytest.FixtureRequest) -> str:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def log(message: str) -> None:
        if reporter is None or capture is None:
            print(message)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(message)

    try:
        return str(build(log))  # type: ignore[operator]
    except ImageError as error:
        pytest.fail(f"{what}: {error}", pytrace=False)


@pytest.fixture(scope="session")
def ray_image(request: pytest.FixtureRequest) -> str:
    """The Ray image: this process's CPython and Ray version, nothing of ray-pixi."""
    _need_docker()
    return _image(ensure_ray_image, "the node tests' Ray image", request)


@pytest.fixture(scope="session")
def unsupported_ray_image(request: pytest.FixtureRequest) -> str:
    """The Ray image at Ray 2.9.3, below the supported floor (same Python, nothing of ray-pixi)."""
    _need_docker()
    return _image(lambda log: ensure_ray_image(log, ray=UNSUPPORTED_RAY),
                  f"the node tests' Ray {UNSUPPORTED_RAY} image", request)


@pytest.fixture(scope="session")
def operator_image(request: pytest.FixtureRequest) -> str:
    """images/Dockerfile of this checkout, with the real pixi as its air-gapped PIXI_FILE."""
    _need_docker()
    return _image(ensure_operator_image, "the add-on's image", request)


@pytest.fixture(scope="session")
def chart_images(operator_image: str) -> list[str]:
    """The add-on's image under the chart's registry names (`node.images.CHART_TAGS`)."""
    return tag_chart_images(operator_image)


@pytest.fixture(scope="session")
def node_images(
    ray_image: str, unsupported_ray_image: str, operator_image: str, chart_images: list[str]
) -> list[str]:
    """What the node's containerd gets from the Docker engine (no registry here)."""
    return [ray_image, unsupported_ray_image, operator_image, *chart_images]


@pytest.fixture(scope="module")
def release(kube_node: KubeCluster, operator_image: str) -> Iterator[Release]:
    """The chart, `helm install`ed once per module (cluster-wide, so never beside a test's
    own namespaced release) with the add-on's image built from this checkout: its webhook and
    reconciler run as the chart's own Pods on the node."""
    repository, tag = operator_image.rsplit(":", 1)
    installed = install_release(
        kube_node,
        name="ray-pixi",
        namespace="ray-pixi-system",
        values={"image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"}},
    )
    try:
        yield installed
    finally:
        installed.uninstall()


@pytest.fixture(scope="session")
def site(kube_node: KubeCluster, conda_channel: Channel) -> Iterator[Site]:
    """The offline world on the node's address: the local channel as conda-forge, the
    mapping service and the PyPI proxy, which the Pods reach through their bridge."""
    with open_site(kube_node.node_ip, ipaddress.ip_network(POD_SUBNET), conda_channel) as opened:
        yield opened
        assert not opened.proxy.refused, (
            f"Pods asked the proxy for hosts other than PyPI: {opened.proxy.refused}")


@pytest.fixture(scope="session")
def e2e_images(ray_image: str, unsupported_ray_image: str) -> dict[str, str]:
    """The Ray images e2e/'s manifests name -> the local images that stand in for them."""
    python = "".join(PythonSource.current().version.split(".")[:2])
    return {
        E2E_RAY_IMAGE.format(ray=ray_version(), python=python): ray_image,
        E2E_RAY_IMAGE.format(ray=UNSUPPORTED_RAY, python=python): unsupported_ray_image,
    }
