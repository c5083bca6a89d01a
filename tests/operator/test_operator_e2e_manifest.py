"""e2e/rayjob.yaml, the RayJob the kind flow submits, is a valid v1.7.0 RayJob that the
add-on prepares: what can be checked of the e2e flow on a machine without kind."""

from __future__ import annotations

import os

import yaml
from crd_schema import validate
from operator_support import PAYLOAD_IMAGE
from ray_pixi_operator import Settings
from ray_pixi_operator.render import render

from support import REPO

E2E_JOB = REPO / "e2e" / "rayjob.yaml"


def test_the_e2e_rayjob_is_valid_and_gets_prepared(monkeypatch) -> None:
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_PIXI_PAYLOAD_IMAGE", PAYLOAD_IMAGE)
    original = yaml.safe_load(E2E_JOB.read_text())
    validate(original)
    [prepared] = yaml.safe_load_all(render(E2E_JOB.read_text(), Settings.from_env(os.environ)).text)
    validate(prepared)
    spec = prepared["spec"]["rayClusterSpec"]
    for template in [spec["headGroupSpec"]["template"],
                     *(g["template"] for g in spec["workerGroupSpecs"])]:
        assert [c["name"] for c in template["spec"]["initContainers"]] == ["ray-pixi-payload"]
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert "ray_pixi.PixiPlugin" in env["RAY_RUNTIME_ENV_PLUGINS"]
