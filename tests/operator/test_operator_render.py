"""`ray-pixi-operator render`: the webhook's mutation offline, for YAML streams."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from crd_schema import assert_additions_in_schema, validate
from operator_support import MANIFESTS, PAYLOAD_IMAGE, load_manifest
from ray_pixi_operator import Settings, prepare
from ray_pixi_operator.cli import main


@pytest.fixture(autouse=True)
def operator_env(monkeypatch):
    for name in Settings.env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_PIXI_PAYLOAD_IMAGE", PAYLOAD_IMAGE)


def run_render(capsys, *args: str) -> tuple[int, list, str]:
    code = main(["render", *args])
    out, err = capsys.readouterr()
    return code, [doc for doc in yaml.safe_load_all(out) if doc is not None], err


def stream(*names: str) -> str:
    return "---\n".join((MANIFESTS / f"{name}.yaml").read_text() for name in names)


def test_render_prepares_a_cluster_as_the_webhook_would(capsys, settings):
    code, docs, err = run_render(capsys, str(MANIFESTS / "raycluster-workers.yaml"))
    assert (code, err) == (0, "")
    assert docs == [prepare(load_manifest("raycluster-workers"), settings).body]


def test_render_multi_document_stream_of_every_ray_kind(capsys, tmp_path: Path, settings):
    unlabelled = load_manifest("raycluster-head-only")
    del unlabelled["metadata"]["labels"]["ray-pixi.io/enabled"]
    source = tmp_path / "all.yaml"
    source.write_text(
        stream("raycluster-autoscaler", "rayjob", "rayservice")
        + "---\n"
        + yaml.safe_dump(unlabelled)
    )
    code, docs, err = run_render(capsys, str(source))
    assert code == 0, err
    originals = [load_manifest(n) for n in ("raycluster-autoscaler", "rayjob", "rayservice")] + [
        unlabelled
    ]
    assert [d["kind"] for d in docs] == ["RayCluster", "RayJob", "RayService", "RayCluster"]
    for original, rendered in zip(originals, docs, strict=True):
        validate(rendered)
        assert_additions_in_schema(original, rendered)
        assert rendered == prepare(original, settings).body
    assert docs[3] == unlabelled  # no label: unchanged
    assert "ray-pixi-payload" in str(docs[1]["spec"]["rayClusterSpec"])
    assert "hostPath" in str(docs[2]["spec"]["rayClusterConfig"])


def test_render_is_idempotent(capsys, tmp_path: Path):
    source = tmp_path / "in.yaml"
    source.write_text(stream("raycluster-workers", "rayjob"))
    _, first, _ = run_render(capsys, str(source))
    again = tmp_path / "again.yaml"
    again.write_text(yaml.safe_dump_all(first))
    _, second, _ = run_render(capsys, str(again))
    assert second == first


def test_render_reads_stdin_and_skips_empty_documents(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", _Text("---\n" + stream("raycluster-head-only") + "---\n"))
    code, docs, _ = run_render(capsys, "-")
    assert code == 0 and len(docs) == 1


def test_flags_override_the_env_vars(capsys):
    code, docs, err = run_render(
        capsys,
        str(MANIFESTS / "raycluster-head-only.yaml"),
        "--payload-image=registry.local/ray-pixi:dev",
        "--cache-volume=hostPath",
        "--cache-host-path=/mnt/envs",
        "--pixi-version=0.40.3",
        "--plugin-cache-size-gb=3",
    )
    assert code == 0, err
    pod = docs[0]["spec"]["headGroupSpec"]["template"]["spec"]
    assert pod["initContainers"][-1]["image"] == "registry.local/ray-pixi:dev"
    assert pod["volumes"][-1] == {
        "name": "ray-pixi",
        "hostPath": {"path": "/mnt/envs", "type": "DirectoryOrCreate"},
    }
    env = {e["name"]: e["value"] for e in pod["containers"][0]["env"]}
    assert env["RAY_PIXI_PIXI_VERSION"] == "0.40.3"
    assert env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"] == "3"


def test_invalid_flag_names_the_variable_and_the_flag(capsys):
    code, docs, err = run_render(
        capsys, str(MANIFESTS / "raycluster-head-only.yaml"), "--cache-volume", "nfs"
    )
    assert code == 2 and docs == []
    assert (
        "Invalid RAY_PIXI_CACHE_VOLUME='nfs': must be one of emptyDir, hostPath, persistentVolumeClaim"  # noqa: E501
        in err
    )
    assert "(from --cache-volume)" in err


def test_missing_payload_image_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.delenv("RAY_PIXI_PAYLOAD_IMAGE")
    code, _, err = run_render(capsys, str(MANIFESTS / "raycluster-head-only.yaml"))
    assert code == 2
    assert "Invalid RAY_PIXI_PAYLOAD_IMAGE='': required" in err


def test_invalid_yaml_names_the_document_and_line(capsys, tmp_path: Path):
    source = tmp_path / "broken.yaml"
    source.write_text(
        stream("raycluster-head-only") + "---\nkind: RayCluster\nmetadata: {name: [oops\n"
    )
    code, docs, err = run_render(capsys, str(source))
    assert code == 1 and docs == []
    assert f"{source}: document 2: invalid YAML:" in err
    assert "line" in err and "column" in err


def test_objects_of_other_kinds_beside_a_cluster_come_out_unchanged(capsys, tmp_path: Path):
    """What `kustomize build` emits: the cluster with its ConfigMaps, Services, Deployments."""
    source = tmp_path / "mixed.yaml"
    web = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    source.write_text(stream("raycluster-head-only") + "---\n" + yaml.safe_dump(web))
    code, docs, err = run_render(capsys, str(source))
    assert (code, err) == (0, "")
    assert docs[1] == web
    assert "ray-pixi-payload" in str(docs[0]["spec"]["headGroupSpec"])


def test_a_labelled_object_of_another_kind_is_a_clear_error(capsys, tmp_path: Path):
    source = tmp_path / "mixed.yaml"
    source.write_text(
        stream("raycluster-head-only")
        + "---\napiVersion: apps/v1\nkind: Deployment\n"
        + "metadata: {name: web, labels: {ray-pixi.io/enabled: 'true'}}\n"
    )
    code, docs, err = run_render(capsys, str(source))
    assert code == 1 and docs == []
    assert "document 2 (Deployment 'web')" in err
    assert "not a RayCluster, RayJob, RayService or RayCronJob" in err


def test_a_list_document_is_a_clear_error(capsys, tmp_path: Path):
    source = tmp_path / "list.yaml"
    source.write_text("- a\n- b\n")
    code, _, err = run_render(capsys, str(source))
    assert code == 1 and "document 1: expected a Kubernetes object" in err


def test_unquoted_true_label_is_a_clear_error(capsys, tmp_path: Path):
    source = tmp_path / "bool.yaml"
    source.write_text(
        stream("raycluster-head-only").replace(
            'ray-pixi.io/enabled: "true"', "ray-pixi.io/enabled: true"
        )
    )
    code, _, err = run_render(capsys, str(source))
    assert code == 1
    assert (
        "metadata.labels['ray-pixi.io/enabled'] must be the string \"true\", got True: quote it"
        in err
    )


def test_bad_annotation_names_the_document(capsys, tmp_path: Path):
    body = load_manifest("rayjob")
    body["metadata"]["annotations"]["ray-pixi.io/plugin-cache-size-gb"] = "lots"
    source = tmp_path / "job.yaml"
    source.write_text(yaml.safe_dump(body))
    code, _, err = run_render(capsys, str(source))
    assert code == 1
    assert "document 1 (RayJob 'nightly-etl')" in err
    assert "metadata.annotations['ray-pixi.io/plugin-cache-size-gb']" in err and "'lots'" in err


def test_kept_user_values_are_noted_on_stderr(capsys, tmp_path: Path):
    body = load_manifest("raycluster-head-only")
    body["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "RAY_PIXI_EXE", "value": "/opt/pixi/bin/pixi"}
    ]
    source = tmp_path / "own-pixi.yaml"
    source.write_text(yaml.safe_dump(body))
    code, docs, err = run_render(capsys, str(source))
    assert code == 0
    assert "note:" in err and "env[RAY_PIXI_EXE] keeps the user's '/opt/pixi/bin/pixi'" in err


def test_missing_file_is_a_clear_error(capsys, tmp_path: Path):
    code, _, err = run_render(capsys, str(tmp_path / "nope.yaml"))
    assert code == 2 and "cannot read" in err and "nope.yaml" in err


def test_console_entry_point_renders_from_stdin_without_importing_ray_or_kopf():
    """The operator must never import ray; render does not even need kopf."""
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['ray-pixi-operator', 'render', '-']\n"
        "try:\n"
        "    runpy.run_module('ray_pixi_operator.cli', run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'kopf'))\n"
        "print('LOADED', loaded, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        input=stream("raycluster-head-only"),
        capture_output=True,
        text=True,
        env={"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "LOADED []" in result.stderr
    (doc,) = yaml.safe_load_all(result.stdout)
    assert (
        doc["spec"]["headGroupSpec"]["template"]["spec"]["initContainers"][-1]["image"]
        == PAYLOAD_IMAGE
    )


def test_operator_modules_never_import_ray():
    probe = (
        "import sys\n"
        "import ray_pixi_operator, ray_pixi_operator.handlers, ray_pixi_operator.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


class _Text:
    def __init__(self, text: str) -> None:
        self._text = text

    def read(self) -> str:
        return self._text


def test_run_fails_at_startup_on_invalid_settings():
    result = subprocess.run(
        [sys.executable, "-m", "ray_pixi_operator.cli", "run"],
        capture_output=True,
        text=True,
        env={
            "RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE,
            "RAY_PIXI_CACHE_VOLUME": "nfs",
            "PATH": "/usr/bin:/bin",
        },
        timeout=60,
    )
    assert result.returncode == 2
    assert "Invalid RAY_PIXI_CACHE_VOLUME='nfs': must be one of emptyDir" in result.stderr


def test_run_without_tls_files_or_certbuilder_says_how_to_fix_it():
    pytest.importorskip("kopf")
    try:
        import certbuilder  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("certbuilder is installed: kopf can make its own certificate")
    result = subprocess.run(
        [sys.executable, "-m", "ray_pixi_operator.cli", "run"],
        capture_output=True,
        text=True,
        env={"RAY_PIXI_PAYLOAD_IMAGE": PAYLOAD_IMAGE, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 2
    assert "Invalid RAY_PIXI_WEBHOOK_CERT_FILE='': unset" in result.stderr
    assert "RAY_PIXI_WEBHOOK_KEY_FILE" in result.stderr
