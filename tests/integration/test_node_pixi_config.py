"""pixi's configuration given to the chart reaches an install on a prepared Pod's node.

The chart is rendered with `injection.pixiConfig` (real Helm); the operator reads its
Deployment's env into its settings and prepares a RayCluster; the Ray container of the head
pod template then names the configuration in PIXI_CONFIG_FILE, mounted from the ConfigMap.
No kubelet runs here, so this test does what one would: it writes the ConfigMap's keys into a
directory standing for the mount and gives the Ray container's env (its mount paths mapped to
that directory) to the plugin, which installs with real pixi. The ConfigMap holds the tests'
air-gapped node configuration (tests/realpixi/config.py): its [mirrors] send conda-forge and
the conda->PyPI mapping to the loopback mirror, which is what makes the install work; without
it the same install fails (conda-forge is unreachable here).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray._private.runtime_env.context import RuntimeEnvContext

from kube.release import render_chart
from ray_pixi import pixi
from ray_pixi.plugin import PixiPlugin
from support import installs

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent
SPEC = {"pixi": pixi(dependencies={"six": "*"})}
CLUSTER = """
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: mirrored, namespace: ml, labels: {ray-pixi.io/enabled: "true"}}
spec:
  rayVersion: "2.60.0"
  headGroupSpec:
    rayStartParams: {}
    template:
      spec:
        containers: [{name: ray-head, image: rayproject/ray:2.60.0}]
"""


def prepared_head(values: dict[str, Any]) -> dict[str, Any]:
    """The head pod spec the webhook gives a RayCluster under the chart's `values`."""
    from ray_pixi_operator import Settings, prepare

    documents = render_chart(values, name="ray-pixi", namespace="ray-system")
    (webhook,) = [d for d in documents if d["kind"] == "Deployment"
                  and d["metadata"]["labels"].get("ray-pixi.io/role") == "webhook"]  # fmt: skip
    env = {e["name"]: e.get("value", "") for e in
           webhook["spec"]["template"]["spec"]["containers"][0]["env"]}  # fmt: skip
    env.update(RAY_PIXI_WEBHOOK_CERT_FILE="", RAY_PIXI_WEBHOOK_KEY_FILE="")  # not serving here
    body = prepare(yaml.safe_load(CLUSTER), Settings.from_env(env)).body
    return body["spec"]["headGroupSpec"]["template"]["spec"]  # type: ignore[no-any-return]


def kubelet_mounts(pod: dict[str, Any], config_maps: dict[str, dict[str, str]],
                   root: Path) -> dict[str, Path]:  # fmt: skip
    """The Ray container's ConfigMap mounts as a kubelet lays them out (one file per key),
    under `root`; returns container path -> host path."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    mapped = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        host = root / mount["mountPath"].lstrip("/")
        host.mkdir(parents=True)
        for key, text in config_maps[source["name"]].items():
            (host / key).write_text(text)
        mapped[mount["mountPath"]] = host
    return mapped


def container_env(pod: dict[str, Any], mapped: dict[str, Path]) -> dict[str, str]:
    env = {}
    for item in pod["containers"][0]["env"]:
        value = item.get("value", "")
        for inside, host in mapped.items():
            if value.startswith(inside + "/"):
                value = str(host) + value[len(inside):]
        env[item["name"]] = value
    return env


def test_the_charts_pixi_config_reaches_an_install(
    node_env: Path, pixi_node_env, pixi_mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = prepared_head({"injection": {"pixiConfig": {"configMap": "site-pixi"}}})
    config_text = Path(pixi_node_env["PIXI_CONFIG_FILE"]).read_text()
    assert "[mirrors]" in config_text
    mapped = kubelet_mounts(pod, {"site-pixi": {"config.toml": config_text}}, tmp_path / "pod")
    env = container_env(pod, mapped)
    config_file = env["PIXI_CONFIG_FILE"]
    assert config_file == str(mapped["/etc/ray-pixi/pixi-config"] / "config.toml")
    assert Path(config_file).read_text() == config_text

    # The node runs with the Ray container's PIXI_CONFIG_FILE (the rest of the world's
    # settings stay: the session's pixi and its cache, the proxy to PyPI).
    monkeypatch.setenv("PIXI_CONFIG_FILE", config_file)
    pixi_mirror.clear_requests()
    plugin = PixiPlugin()
    uri = plugin.get_uris(SPEC)[0]
    context = RuntimeEnvContext()
    asyncio.run(plugin.create(uri, SPEC, context))
    plugin.modify_context([uri], SPEC, context)
    assert installs(node_env) == 1 and context.py_executable
    # conda-forge came from the mirror that file names.
    assert any(r.path.startswith("/conda-forge/linux-64/") for r in pixi_mirror.requests), (
        pixi_mirror.requests
    )
    plugin.delete_uri(uri)


def test_without_that_config_the_same_install_fails(
    node_env: Path, pixi_node_env, tmp_path: Path
) -> None:
    """The control: an empty pixi configuration, so conda-forge is conda-forge, which this
    machine cannot reach (run without the session's proxy, so nothing leaves for it)."""
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("https_proxy", "http_proxy")}
    env.update(PIXI_CONFIG_FILE=str(empty), RAY_PIXI_STORE_DIR=str(tmp_path / "store"))
    child = subprocess.run(
        [sys.executable, str(HERE / "install_child.py"), str(tmp_path / "store"),
         json.dumps(SPEC["pixi"])],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert child.returncode != 0
    assert "conda.anaconda.org" in child.stderr + child.stdout
