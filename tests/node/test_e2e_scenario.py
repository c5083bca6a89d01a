"""The end-to-end scenario (e2e/scenario.py, the code `e2e/run` runs on kind) on the real node.

The node tier's cluster for it: the harness's API server (admin kubeconfig), the chart
installed with the add-on's image of this checkout (`release`), the local Ray images for the
Docker Hub ones the manifests name (`e2e_images`), the offline site in every Ray container
and its ConfigMaps in the namespace (`site`), each head's Jobs API at its Service's ClusterIP
(kube-proxy routes the host there), the local channel's activation package for conda-forge's
proj, and the project locked with the real pixi here (on kind it installs unlocked: no pixi
on that host). The scenario checks every step itself; the tests below add what only this
machine can check: the real pixi in the payload, the site's records, the Ray images built
here, KubeRay v1.6.2's probes.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import e2e.scenario as scenario
from e2e.scenario import Activation, Cluster, Report
from kube.cluster import KubeCluster
from kube.node import POD_SUBNET
from kube.release import Release
from node.images import PYTHON_PREFIX_IN_IMAGE, UNSUPPORTED_RAY, real_pixi
from node.raycluster import cluster_templates, dashboard_address
from node.site import Site
from ray_pixi.compat import MIN_RAY
from realpixi.channel import Channel
from realpixi.recipes import ActivationRecipe
from realpixi.run import run_pixi
from realpixi.servers import PYPI_HOSTS

pytestmark = [pytest.mark.node]

ACTIVATION = ActivationRecipe()
UNSUPPORTED = "pixi-e2e-unsupported-ray"


def _adapt(images: Mapping[str, str], site: Site):  # type: ignore[no-untyped-def]
    """A RayCluster as the node runs it: only local images (nothing is pulled here), Ray's
    usage stats off (with them off, Ray's dashboard still tells usage-stats.ray.io once that
    they are, so the report goes to a closed port), and the offline site."""

    def adapt(ray_cluster: dict) -> dict:
        ray_cluster = copy.deepcopy(ray_cluster)
        for template in cluster_templates(ray_cluster):
            for container in template["spec"]["containers"]:
                assert container["image"] in images.values(), (
                    f"{container['image']}: no local stand-in in {dict(images)}")
                container["imagePullPolicy"] = "IfNotPresent"
                container.setdefault("env", []).extend([
                    {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
                    {"name": "RAY_USAGE_STATS_REPORT_URL", "value": "http://127.0.0.1:9/"},
                ])  # fmt: skip
        return site.apply_to(ray_cluster)

    return adapt


def _lock(pixi_node_env: Mapping[str, str]):  # type: ignore[no-untyped-def]
    def lock(project: Path) -> None:
        locked = run_pixi(["lock", "--manifest-path", str(project / "pixi.toml")], pixi_node_env)
        assert locked.returncode == 0, locked.stderr

    return lock


@pytest.fixture(scope="module")
def report(
    kube_node: KubeCluster, release: Release, e2e_images: dict[str, str], site: Site,
    pixi_node_env: Mapping[str, str],
) -> Iterator[Report]:  # fmt: skip
    """The scenario, run once on the node in a namespace of its own."""
    namespace = kube_node.create_namespace(f"node-e2e-{secrets.token_hex(3)}")
    cluster = Cluster(
        kubeconfig=kube_node.admin_kubeconfig,
        jobs_address=lambda ns, name: contextlib.nullcontext(
            dashboard_address(kube_node, ns, name)),
        images=e2e_images,
        adapt=_adapt(e2e_images, site),
        namespace_objects=site.config_maps,
        activation=Activation(ACTIVATION.name, "RAY_PIXI_TEST_ACTIVATED",
                              ACTIVATION.activated_value),
        lock_project=_lock(pixi_node_env),
        log=lambda line: print(line, flush=True),
    )  # fmt: skip
    try:
        yield scenario.run(cluster, namespace)
    finally:
        kube_node.delete_namespace(namespace, timeout=180)


def test_the_e2e_scenario_passes_on_the_node(report: Report) -> None:
    """Every step of e2e/scenario.py (its docstring lists them) passed on the kubelet's Pods."""
    assert set(report.seconds) == {"raycluster", "raycluster-unsupported-ray.yaml",
                                   "raycluster-read-only-store.yaml", "rayjob"}  # fmt: skip
    print("node: e2e scenario:", {k: round(v) for k, v in report.seconds.items()})


def test_the_payloads_pixi_is_the_real_pixi_written_by_the_non_root_installer(
    report: Report,
) -> None:
    _, pixi_sha = real_pixi()
    for role in ("head", "worker"):
        assert report.payload_pixi[role]["sha256"] == pixi_sha, report.payload_pixi[role]
        assert report.payload_pixi[role]["uid"] != 0


def test_the_channels_python_is_the_ray_images(report: Report, conda_channel: Channel) -> None:
    """Ray compares Python to the patch level: the local channel's python, which every pixi
    environment here gets, is the Ray image's interpreter (the one the node tests build)."""
    assert report.image["python"] == conda_channel.version("python")
    assert report.image["prefix"] == PYTHON_PREFIX_IN_IMAGE


def test_kuberays_own_probes_made_the_pods_ready(report: Report) -> None:
    """For rayVersion >= 2.53 KubeRay (v1.6.2 here) probes with one HTTP check on the dashboard
    agent's /api/healthz; without rayVersion (the unsupported Ray) it calls `wget` in the Ray
    container, which the node's Ray images have, as Ray's own do."""
    for role in ("head", "worker"):
        ray = report.pods[role]["spec"]["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            assert ray[probe]["httpGet"]["path"] == "/api/healthz", ray[probe]
    ray = report.pods[UNSUPPORTED]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "wget " in " ".join(ray[probe]["exec"]["command"]), ray[probe]


def test_the_unsupported_ray_names_its_version_and_the_floor(report: Report) -> None:
    error = report.jobs[UNSUPPORTED].result["nodes"]["head"]["task"]["error"]
    floor = ".".join(map(str, MIN_RAY))
    assert f"Ray {UNSUPPORTED_RAY} (needs >= {floor})" in error, error


def test_pixi_in_the_pods_reached_the_site_only(report: Report, site: Site) -> None:
    """The mirror answered pixi in both Pods of the scenario's cluster, the proxy tunnelled to
    PyPI for both, every client was a Pod, and no other host was asked for (the site's
    teardown checks that again at the very end)."""
    ips = {report.pods["head"]["status"]["podIP"], report.pods["worker"]["status"]["podIP"]}
    pods = ipaddress.ip_network(POD_SUBNET)
    mirrored = {r.client for r in site.mirror.requests}
    attempts = site.proxy.attempts
    assert ips <= mirrored and ips <= {a.client for a in attempts}
    assert all(ipaddress.ip_address(c) in pods for c in mirrored | {a.client for a in attempts})
    assert {a.target for a in attempts} <= {f"{host}:443" for host in PYPI_HOSTS}
    assert not site.proxy.refused, site.proxy.refused

