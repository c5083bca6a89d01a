"""What a prepared Pod gets so that it fits any reasonable Pod and cluster (issue 13):
the payload on sys.path without replacing the image's PYTHONPATH, an init container that
keeps a Guaranteed pod Guaranteed and runs non-root whatever the pod says, pull secrets,
the disk budget, pixi's node configuration, the opt-in hostPath preparation, templates with
lists left empty, RayCronJobs, and clusters prepared before all that keeping what they got.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from crd_schema import assert_additions_in_schema, validate
from operator_support import PAYLOAD_IMAGE
from ray_pixi_operator import InjectionError, migrate, names, prepare, restore
from ray_pixi_operator.record import Injection, Record, read_record
from ray_pixi_operator.render import render

PAYLOAD_DIR = names.payload_dir(PAYLOAD_IMAGE)


def head(body: dict[str, Any]) -> dict[str, Any]:
    return body["spec"]["headGroupSpec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def ray_env(body: dict[str, Any]) -> dict[str, Any]:
    return env_of(head(body)["containers"][0])


def payload_init(pod: dict[str, Any]) -> dict[str, Any]:
    (init,) = [c for c in pod["initContainers"] if c["name"] == names.INIT_CONTAINER_NAME]
    return init


def annotate(body: dict[str, Any], **annotations: str) -> dict[str, Any]:
    body["metadata"].setdefault("annotations", {}).update(
        {f"ray-pixi.io/{key.replace('_', '-')}": value for key, value in annotations.items()}
    )
    return body


# --- the payload directory ---------------------------------------------------------------------


def test_each_payload_image_has_its_own_directory_named_for_people():
    one = names.payload_dir("ghcr.io/example/ray-pixi:0.2.0")
    assert one.startswith("/ray-pixi/payloads/0.2.0-")
    assert names.payload_dir("ghcr.io/example/ray-pixi:0.2.1") != one
    assert names.payload_dir("registry.example.com/ray-pixi:0.2.0") != one  # same tag
    pinned = names.payload_dir("ghcr.io/example/ray-pixi@sha256:" + "ab" * 32)
    assert pinned.startswith("/ray-pixi/payloads/digest-")
    assert names.payload_dir("localhost:5000/ray-pixi").startswith("/ray-pixi/payloads/latest-")
    odd = names.payload_key("example.com/ray-pixi:a+b/../c")
    assert "/" not in odd and ".." not in odd.split("-")[0]


# --- PYTHONPATH ---------------------------------------------------------------------------------


def test_the_payload_comes_through_the_user_site_and_the_image_pythonpath_is_untouched(
    manifest, settings
):
    result = prepare(manifest("raycluster-head-only"), settings)
    env = ray_env(result.body)
    assert env["PYTHONUSERBASE"] == PAYLOAD_DIR
    assert "PYTHONPATH" not in env  # so the image's ENV PYTHONPATH stays in force
    assert env["RAY_PIXI_EXE"] == f"{PAYLOAD_DIR}/bin/pixi"
    assert result.notes == ()


@pytest.mark.parametrize("blocker", ["PYTHONNOUSERSITE", "PYTHONUSERBASE"])
def test_a_container_that_disables_the_user_site_gets_pythonpath_with_a_loud_note(
    blocker, manifest, settings
):
    body = manifest("raycluster-head-only")
    head(body)["containers"][0]["env"] = [{"name": blocker, "value": "1"}]
    result = prepare(body, settings)
    env = ray_env(result.body)
    assert env["PYTHONPATH"] == f"{PAYLOAD_DIR}/python"
    assert env[blocker] == "1" and env.get("PYTHONUSERBASE", "1") == "1"  # theirs, kept
    (note,) = result.notes
    assert blocker in note and "replaces the image's own ENV PYTHONPATH" in note
    assert names.IMAGE_PYTHONPATH_ANNOTATION in note


def test_a_declared_image_pythonpath_is_merged_after_the_payload(manifest, settings):
    body = annotate(manifest("raycluster-head-only"), image_pythonpath="/opt/app:/opt/lib")
    result = prepare(body, settings)
    env = ray_env(result.body)
    assert env["PYTHONPATH"] == f"{PAYLOAD_DIR}/python:/opt/app:/opt/lib"
    assert "PYTHONUSERBASE" not in env
    (note,) = result.notes
    assert "/opt/app:/opt/lib" in note and "Keep the annotation" in note
    assert read_record(result.body["metadata"]["annotations"]).settings["imagePythonPath"] == (
        "/opt/app:/opt/lib"
    )
    # An image without one (a venv image): declared empty.
    body = annotate(manifest("raycluster-head-only"), image_pythonpath="")
    assert ray_env(prepare(body, settings).body)["PYTHONPATH"] == f"{PAYLOAD_DIR}/python"


def test_a_container_pythonpath_wins_over_the_declared_image_one(manifest, settings):
    """A container's own PYTHONPATH already replaces the image's: the payload joins it."""
    body = annotate(manifest("raycluster-workers"), image_pythonpath="/opt/image")
    result = prepare(body, settings)
    gpu = result.body["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]
    assert env_of(gpu)["PYTHONPATH"] == f"{PAYLOAD_DIR}/python:/opt/team/lib"


@pytest.mark.parametrize("value", ["relative/dir", "/ok:also/relative"])
def test_a_declared_pythonpath_must_be_absolute_directories(value, manifest, settings):
    body = annotate(manifest("raycluster-head-only"), image_pythonpath=value)
    with pytest.raises(InjectionError, match="image-pythonpath.*absolute directories"):
        prepare(body, settings)


# --- the init container fits the pod --------------------------------------------------------


def _qos_class(pod: dict[str, Any]) -> str:
    """Kubernetes' QoS rule (pkg/apis/core/helper/qos): Guaranteed when every container,
    init containers included, has cpu and memory limits equal to its requests."""
    containers = [*(pod.get("initContainers") or []), *pod["containers"]]
    guaranteed = True
    for container in containers:
        resources = container.get("resources") or {}
        limits = resources.get("limits") or {}
        requests = resources.get("requests") or limits  # Kubernetes defaults them so
        for kind in ("cpu", "memory"):
            if kind not in limits or requests.get(kind, limits[kind]) != limits[kind]:
                guaranteed = False
    return "Guaranteed" if guaranteed else "Burstable"


def test_a_guaranteed_pod_stays_guaranteed(manifest, settings):
    body = manifest("raycluster-head-only")
    assert _qos_class(head(body)) == "Guaranteed"
    pod = head(prepare(body, settings).body)
    assert _qos_class(pod) == "Guaranteed"  # the apiserver tier shows status.qosClass too
    init = payload_init(pod)
    assert init["resources"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"},
        "limits": {"cpu": "200m", "memory": "256Mi"},
    }


@pytest.mark.parametrize(
    ("pod_security", "container_security", "expected"),
    [
        ({"runAsUser": 0}, None, (65532, 65532)),  # root pods: the installer stays non-root
        ({"runAsUser": 0, "runAsGroup": 0, "fsGroup": 0}, None, (65532, 65532)),
        ({"runAsNonRoot": True}, None, (65532, 65532)),
        ({"runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100}, None, (1000, 100)),
        ({"runAsUser": 0}, {"runAsUser": 1001}, (1001, None)),
        ({"runAsUser": 1000}, {"runAsUser": 0}, (65532, 65532)),
    ],
)
def test_the_installer_runs_non_root_as_the_ray_user_where_the_pod_names_one(
    pod_security, container_security, expected, manifest, settings
):
    body = manifest("raycluster-head-only")
    head(body)["securityContext"] = pod_security
    if container_security:
        head(body)["containers"][0]["securityContext"] = container_security
    security = payload_init(head(prepare(body, settings).body))["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security.get("runAsGroup")) == expected
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


def test_pull_secrets_for_the_payload_image_join_the_pods_own(manifest, make_settings):
    settings = make_settings(payload_image_pull_secrets="regcred, mirror-pull")
    body = manifest("raycluster-workers")
    head(body)["imagePullSecrets"] = [{"name": "team-registry"}, {"name": "regcred"}]
    result = prepare(body, settings)
    assert head(result.body)["imagePullSecrets"] == [
        {"name": "team-registry"},
        {"name": "regcred"},
        {"name": "mirror-pull"},
    ]
    worker = result.body["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-pull"}]
    validate(result.body)
    assert_additions_in_schema(body, result.body)
    # An update that drops them gets them back from the record, whatever the settings now.
    dropped = copy.deepcopy(result.body)
    del dropped["spec"]["workerGroupSpecs"][0]["template"]["spec"]["imagePullSecrets"]
    restored = restore(dropped, result.record)
    assert restored.body == result.body


def test_bad_pull_secret_names_stop_the_operator(make_settings):
    from ray_pixi_operator import SettingsError

    with pytest.raises(SettingsError, match="RAY_PIXI_PAYLOAD_IMAGE_PULL_SECRETS='Reg_Cred'"):
        make_settings(payload_image_pull_secrets="Reg_Cred")


# --- the disk budget ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_limit", "budget", "cap"),
    [("20Gi", "15", "10"), ("8Gi", "6", "6"), ("100G", "69.84", "10"), ("1Ti", "768", "10")],
)
def test_an_emptydir_size_limit_gives_the_disk_budget_and_caps_the_store(
    size_limit, budget, cap, manifest, make_settings
):
    env = ray_env(prepare(manifest("raycluster-head-only"), make_settings(
        cache_size_limit=size_limit)).body)  # fmt: skip
    assert env["RAY_PIXI_DISK_BUDGET_GB"] == budget
    assert env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"] == cap


def test_no_size_limit_and_no_setting_means_no_budget(manifest, settings, make_settings):
    assert "RAY_PIXI_DISK_BUDGET_GB" not in ray_env(prepare(manifest("raycluster-head-only"),
                                                            settings).body)  # fmt: skip
    hostpath = make_settings(cache_volume="hostPath")
    assert "RAY_PIXI_DISK_BUDGET_GB" not in ray_env(
        prepare(manifest("raycluster-head-only"), hostpath).body
    )


def test_a_hostpath_or_pvc_budget_comes_from_the_setting_or_the_annotation(
    manifest, make_settings
):
    settings = make_settings(cache_volume="hostPath", disk_budget_gb="80")
    env = ray_env(prepare(manifest("raycluster-head-only"), settings).body)
    assert (env["RAY_PIXI_DISK_BUDGET_GB"], env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"]) == (
        "80",
        "10",
    )
    body = annotate(manifest("raycluster-head-only"), disk_budget_gb="4")
    env = ray_env(prepare(body, settings).body)
    assert (env["RAY_PIXI_DISK_BUDGET_GB"], env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"]) == (
        "4",
        "4",
    )


def test_contradicting_disk_numbers_are_refused(manifest, make_settings):
    from ray_pixi_operator import SettingsError

    with pytest.raises(SettingsError, match="RAY_PIXI_DISK_BUDGET_GB='20'.*less than"):
        make_settings(cache_size_limit="20Gi", disk_budget_gb="20")
    body = annotate(manifest("raycluster-head-only"), disk_budget_gb="30")
    with pytest.raises(InjectionError, match="disk-budget-gb.*not less than.*sizeLimit 20Gi"):
        prepare(body, make_settings(cache_size_limit="20Gi"))
    body = annotate(manifest("raycluster-head-only"), plugin_cache_size_gb="16")
    with pytest.raises(InjectionError, match="plugin-cache-size-gb.*more than the disk budget"):
        prepare(body, make_settings(cache_size_limit="20Gi"))


# --- pixi's configuration for the nodes ----------------------------------------------------


def test_pixi_config_and_credentials_are_mounted_read_only_and_named_to_pixi(
    manifest, make_settings
):
    settings = make_settings(pixi_config_map="site-pixi", pixi_auth_secret="channel-creds")
    body = manifest("raycluster-workers")
    result = prepare(body, settings)
    validate(result.body)
    assert_additions_in_schema(body, result.body)
    for template in [result.body["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in result.body["spec"]["workerGroupSpecs"]
    ]:
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["ray-pixi-config"]["configMap"] == {
            "name": "site-pixi",
            "defaultMode": 0o444,
        }
        assert volumes["ray-pixi-auth"]["secret"] == {
            "secretName": "channel-creds",
            "defaultMode": 0o444,
        }
        ray = pod["containers"][0]
        mounts = {m["mountPath"]: m for m in ray["volumeMounts"]}
        assert mounts["/etc/ray-pixi/pixi-config"] == {
            "name": "ray-pixi-config",
            "mountPath": "/etc/ray-pixi/pixi-config",
            "readOnly": True,
        }
        assert mounts["/etc/ray-pixi/pixi-auth"]["readOnly"] is True
        env = env_of(ray)
        assert env["PIXI_CONFIG_FILE"] == "/etc/ray-pixi/pixi-config/config.toml"
        assert env["RATTLER_AUTH_FILE"] == "/etc/ray-pixi/pixi-auth/credentials.json"
        # Only the Ray container: the sidecars and the installer get none of it.
        for other in [*pod["containers"][1:], payload_init(pod)]:
            assert "PIXI_CONFIG_FILE" not in env_of(other)
    record = read_record(result.body["metadata"]["annotations"])
    assert record.settings["pixiConfigMap"] == "site-pixi"
    assert record.settings["pixiAuthSecret"] == "channel-creds"


def test_a_cluster_names_its_own_pixi_config(manifest, make_settings):
    body = annotate(manifest("raycluster-head-only"), pixi_config_configmap="team-mirrors")
    pod = head(prepare(body, make_settings(pixi_config_map="site-pixi")).body)
    assert {v["name"]: v for v in pod["volumes"]}["ray-pixi-config"]["configMap"]["name"] == (
        "team-mirrors"
    )
    body = annotate(manifest("raycluster-head-only"), pixi_auth_secret="Not_A_Name")
    with pytest.raises(InjectionError, match="pixi-auth-secret.*name of a Secret"):
        prepare(body, make_settings())


def test_a_user_volume_at_the_config_mount_is_refused(manifest, make_settings):
    body = manifest("raycluster-head-only")
    head(body)["containers"][0]["volumeMounts"].append(
        {"name": "ray-logs", "mountPath": "/etc/ray-pixi/pixi-config"}
    )
    with pytest.raises(InjectionError, match="mounts volume 'ray-logs' at /etc/ray-pixi/pixi-conf"):
        prepare(body, make_settings(pixi_config_map="site-pixi"))


# --- shared hostPath volumes --------------------------------------------------------------


def test_hostpath_preparation_is_opt_in_root_without_capabilities(manifest, make_settings):
    plain = head(prepare(manifest("raycluster-head-only"), make_settings(
        cache_volume="hostPath")).body)  # fmt: skip
    assert [c["name"] for c in plain["initContainers"]] == ["ray-pixi-payload"]
    pod = head(
        prepare(
            manifest("raycluster-head-only"),
            make_settings(cache_volume="hostPath", cache_host_path_prepare="true"),
        ).body
    )
    prep, payload = pod["initContainers"]
    assert prep["name"] == "ray-pixi-prepare-volume"
    assert prep["command"] == ["ray-pixi-payload", "prepare-volume", "/ray-pixi"]
    assert prep["securityContext"]["runAsUser"] == 0
    assert prep["securityContext"]["runAsNonRoot"] is False
    assert prep["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert prep["securityContext"]["allowPrivilegeEscalation"] is False
    assert payload["securityContext"]["runAsNonRoot"] is True
    # Only for hostPath: an emptyDir is writable already.
    empty = head(prepare(manifest("raycluster-head-only"), make_settings(
        cache_host_path_prepare="true")).body)  # fmt: skip
    assert [c["name"] for c in empty["initContainers"]] == ["ray-pixi-payload"]


# --- templates with lists left empty -----------------------------------------------------------


NULL_LISTS = """
apiVersion: ray.io/v1
kind: RayCluster
metadata:
  name: empty-lists
  labels: {ray-pixi.io/enabled: "true"}
  annotations:
spec:
  rayVersion: "2.60.0"
  headGroupSpec:
    rayStartParams: {}
    template:
      metadata:
      spec:
        volumes:
        initContainers:
        imagePullSecrets:
        containers:
          - name: ray-head
            image: rayproject/ray:2.60.0
            env:
            volumeMounts:
"""


def test_render_and_prepare_fill_lists_left_empty(settings, make_settings):
    import yaml

    body = yaml.safe_load(NULL_LISTS)
    rendered = render(NULL_LISTS, make_settings(payload_image_pull_secrets="regcred"))
    (out,) = list(yaml.safe_load_all(rendered.text))
    pod = head(out)
    assert [v["name"] for v in pod["volumes"]] == ["ray-pixi"]
    assert [c["name"] for c in pod["initContainers"]] == ["ray-pixi-payload"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    ray = pod["containers"][0]
    assert ray["volumeMounts"] == [{"name": "ray-pixi", "mountPath": "/ray-pixi"}]
    assert env_of(ray)["PYTHONUSERBASE"] == PAYLOAD_DIR
    assert names.INJECTION_ANNOTATION in out["metadata"]["annotations"]
    # The same through prepare and an UPDATE's restore.
    prepared = prepare(body, settings)
    assert restore(yaml.safe_load(NULL_LISTS), prepared.record).body == prepared.body


# --- RayCronJob -----------------------------------------------------------------------------


def raycronjob(labels: dict[str, str] | None = None) -> dict[str, Any]:
    from operator_support import load_manifest

    job = load_manifest("rayjob")
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCronJob",
        "metadata": {"name": "nightly", "namespace": "ml", "labels": labels or {}},
        "spec": {"schedule": "0 3 * * *", "jobTemplate": job["spec"]},
    }


def test_a_raycronjobs_job_template_is_prepared_and_its_record_stays_on_it(settings):
    """KubeRay copies a RayCronJob's jobTemplate (not its labels or annotations) into every
    RayJob it creates, and from there into the RayCluster: the template is what must carry the
    injection."""
    body = raycronjob({names.ENABLED_LABEL: "true"})
    result = prepare(body, settings)
    spec = result.body["spec"]["jobTemplate"]["rayClusterSpec"]
    pod = spec["headGroupSpec"]["template"]["spec"]
    assert payload_init(pod)["command"] == ["ray-pixi-payload", "add", PAYLOAD_DIR]
    assert env_of(pod["containers"][0])["PYTHONUSERBASE"] == PAYLOAD_DIR
    record = read_record(result.body["metadata"]["annotations"])
    assert record is not None and record.payload_image == PAYLOAD_IMAGE
    # The submitter and the job's own fields are untouched.
    def job_fields(template: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in template.items() if k != "rayClusterSpec"}

    assert job_fields(result.body["spec"]["jobTemplate"]) == job_fields(body["spec"]["jobTemplate"])
    assert prepare(result.body, settings).body == result.body
    assert not prepare(raycronjob(), settings).changed  # unlabelled: untouched


def test_render_prepares_a_raycronjob(settings):
    import yaml

    text = yaml.safe_dump(raycronjob({names.ENABLED_LABEL: "true"}))
    (out,) = list(yaml.safe_load_all(render(text, settings).text))
    assert out["kind"] == "RayCronJob"
    pod = out["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert payload_init(pod)["name"] == "ray-pixi-payload"


# --- clusters prepared before: the record rules --------------------------------------------------


def legacy_record(settings_json: dict[str, Any]) -> Record:
    """The record ray-pixi 0.2.0 wrote: the /ray-pixi/payload symlink layout, PYTHONPATH."""
    injection = Injection(
        volumes=({"name": "ray-pixi", "emptyDir": {"sizeLimit": "20Gi"}},),
        volume_mounts=({"name": "ray-pixi", "mountPath": "/ray-pixi"},),
        init_containers=(
            {
                "name": "ray-pixi-payload",
                "image": "ghcr.io/example/ray-pixi:0.2.0",
                "imagePullPolicy": "IfNotPresent",
                "command": list(names.LEGACY_PAYLOAD_COMMAND),
                "resources": {
                    "requests": {"cpu": "50m", "memory": "64Mi"},
                    "limits": {"memory": "256Mi"},
                },
                "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True},
                "volumeMounts": [{"name": "ray-pixi", "mountPath": "/ray-pixi"}],
            },
        ),
        runtime_env_plugins=({"class": names.PLUGIN_CLASS},),
        env=(
            {"name": "RAY_PIXI_EXE", "value": names.LEGACY_PIXI_EXE_PATH},
            {"name": "RAY_PIXI_STORE_DIR", "value": "/ray-pixi/store"},
            {"name": "PIXI_CACHE_DIR", "value": "/ray-pixi/pixi-cache"},
            {"name": "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB", "value": "10"},
        ),
        python_path=(names.LEGACY_PAYLOAD_PYTHON_DIR,),
    )
    return Record.build(
        settings_json,
        {"headGroupSpec": injection},
        injection,
        prepared_by="ray-pixi-operator 0.2.0",
    )


def test_a_cluster_prepared_by_0_2_keeps_its_items_and_moves_only_when_migrated(
    manifest, settings
):
    """Existing clusters are never changed silently: an UPDATE restores the old record's items
    (the old layout); an explicit migration replaces them with this version's, and the
    PYTHONPATH the old version set goes away whole, so the image's own applies again."""
    record = legacy_record({"payloadImage": "ghcr.io/example/ray-pixi:0.2.0"})
    body = manifest("raycluster-head-only")
    body["metadata"]["annotations"] = {names.INJECTION_ANNOTATION: record.dumps()}
    old = restore(body, record).body
    env = ray_env(old)
    assert env["PYTHONPATH"] == "/ray-pixi/payload/python"
    assert env["RAY_PIXI_EXE"] == "/ray-pixi/payload/bin/pixi"
    assert payload_init(head(old))["command"] == list(names.LEGACY_PAYLOAD_COMMAND)
    # An UPDATE (here: a label change) under today's settings changes nothing of it.
    updated = copy.deepcopy(old)
    updated["metadata"]["labels"]["team"] = "other"
    assert restore(updated, record).body == updated
    assert prepare(old, settings).body == old  # re-applied from an export: the same
    # Migration: this version's items replace the recorded ones.
    moved = migrate(old, settings, record, token="2026-01-01T00:00:00Z").body
    env = ray_env(moved)
    assert "PYTHONPATH" not in env
    assert env["PYTHONUSERBASE"] == PAYLOAD_DIR and env["RAY_PIXI_EXE"] == f"{PAYLOAD_DIR}/bin/pixi"
    init = payload_init(head(moved))
    assert init["command"] == ["ray-pixi-payload", "add", PAYLOAD_DIR]
    assert init["resources"]["limits"]["cpu"] == "200m"
    new_record = read_record(moved["metadata"]["annotations"])
    assert new_record.migration == "2026-01-01T00:00:00Z"
    assert json.loads(new_record.dumps())["format"] == 1
