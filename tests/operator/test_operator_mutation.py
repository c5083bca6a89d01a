"""The mutation on realistic RayClusters: what lands in each pod template, and nothing else.

Every prepared object is validated against the KubeRay v1.7.0 CRD schema (including a check
that nothing it adds would be pruned) and prepared again to prove idempotence. Also: the
injection record on the metadata, what an UPDATE restores from it, an explicit migration, and
the adoption of a cluster that ray-pixi 0.1.0 prepared.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonpatch
import pytest
from crd_schema import assert_additions_in_schema, load_schema, unknown_fields, validate
from operator_support import PAYLOAD_IMAGE
from ray_pixi_operator import InjectionError, Settings, migrate, names, prepare, restore
from ray_pixi_operator.record import Record, read_record

PLUGIN = {"class": "ray_pixi.PixiPlugin"}
PAYLOAD_DIR = names.payload_dir(PAYLOAD_IMAGE)


def prepared(body: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Prepare, check against the CRD schema, and check that preparing again changes nothing."""
    validate(body)
    result = prepare(body, settings)
    validate(result.body)
    assert_additions_in_schema(body, result.body)
    again = prepare(result.body, settings)
    assert again.body == result.body, "preparing twice differs from preparing once"
    assert not again.changed
    assert again.kept == result.kept
    return result.body


def templates(body: dict[str, Any]) -> list[dict[str, Any]]:
    spec = body["spec"]
    spec = spec.get("rayClusterSpec") or spec.get("rayClusterConfig") or spec
    return [spec["headGroupSpec"]["template"]] + [
        g["template"] for g in spec.get("workerGroupSpecs", [])
    ]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {
        item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])
    }


def assert_prepared_template(template: dict[str, Any], original: dict[str, Any]) -> None:
    """The observable contract for one pod template (head or worker group)."""
    pod = template["spec"]
    ray = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert names.VOLUME_NAME in volumes
    assert {"name": "ray-pixi", "mountPath": "/ray-pixi"} in ray["volumeMounts"]

    init = pod["initContainers"][-1]
    assert init["name"] == "ray-pixi-payload"
    assert init["command"] == ["ray-pixi-payload", "add", PAYLOAD_DIR]
    assert init["volumeMounts"] == [{"name": "ray-pixi", "mountPath": "/ray-pixi"}]
    # Requests equal limits for cpu and memory, as for KubeRay's wait-gcs-ready.
    assert init["resources"]["requests"] == init["resources"]["limits"]
    assert set(init["resources"]["limits"]) == {"cpu", "memory"}
    security = init["securityContext"]
    assert security["runAsNonRoot"] is True
    assert isinstance(security["runAsUser"], int) and security["runAsUser"] > 0
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    original_inits = [c["name"] for c in original["spec"].get("initContainers", [])]
    assert [c["name"] for c in pod["initContainers"]] == [*original_inits, "ray-pixi-payload"]

    env = env_of(ray)
    assert PLUGIN in json.loads(env["RAY_RUNTIME_ENV_PLUGINS"])
    assert env["RAY_PIXI_EXE"] == f"{PAYLOAD_DIR}/bin/pixi"
    assert env["RAY_PIXI_STORE_DIR"] == "/ray-pixi/store"
    assert env["PIXI_CACHE_DIR"] == "/ray-pixi/pixi-cache"
    # The payload reaches Python through the user site; the image's PYTHONPATH is untouched.
    assert env["PYTHONUSERBASE"] == PAYLOAD_DIR
    assert env.get("PYTHONPATH") == env_of(original["spec"]["containers"][0]).get("PYTHONPATH")
    assert float(env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"]) > 0

    # Other containers (sidecars) and the Ray container's command are untouched.
    assert pod["containers"][1:] == original["spec"]["containers"][1:]
    for key in ("command", "args", "image", "resources", "ports"):
        assert ray.get(key) == original["spec"]["containers"][0].get(key)


# JSON-pointer paths (as jsonpatch diffs them) the mutation may touch inside a pod template.
_ALLOWED = re.compile(
    r"^/metadata/annotations(?:/ray-pixi\.io~1injection)?$"
    r"|^/spec/(?:(?:rayClusterSpec|rayClusterConfig)/)?(?:headGroupSpec|workerGroupSpecs/\d+)/template/"
    r"(?:spec/(?:volumes|initContainers)(?:/\d+|/-)?"
    r"|spec/containers/0/(?:env|volumeMounts)(?:/\d+|/-)?(?:/value)?"
    r"|spec)$"
)


def assert_nothing_else_changes(before: dict[str, Any], after: dict[str, Any]) -> None:
    for op in jsonpatch.make_patch(before, after).patch:
        assert _ALLOWED.match(op["path"]), f"unexpected change {op}"
        if op["op"] == "remove":
            pytest.fail(f"the mutation removed {op['path']}")


@pytest.mark.parametrize(
    "name",
    [
        "raycluster-head-only",
        "raycluster-workers",
        "raycluster-autoscaler",
        "raycluster-from-rayjob",
    ],
)
def test_every_pod_template_of_a_labelled_cluster_is_prepared(name, manifest, settings):
    original = manifest(name)
    body = prepared(original, settings)
    assert len(templates(body)) == len(templates(original))
    for template, before in zip(templates(body), templates(original), strict=True):
        assert_prepared_template(template, before)
    assert_nothing_else_changes(original, body)
    # The record is the only thing added to the metadata, where KubeRay's spec hash never looks.
    annotations = body["metadata"].pop("annotations")
    assert annotations.pop(names.INJECTION_ANNOTATION)
    assert annotations == original["metadata"].get("annotations", {})
    assert body["metadata"] == {k: v for k, v in original["metadata"].items() if k != "annotations"}


def test_head_only_cluster_gets_the_default_emptydir_and_payload_image(manifest, settings):
    body = prepared(manifest("raycluster-head-only"), settings)
    (template,) = templates(body)
    assert template["spec"]["volumes"][-1] == {"name": "ray-pixi", "emptyDir": {}}
    init = template["spec"]["initContainers"][-1]
    assert init["image"] == PAYLOAD_IMAGE
    assert init["imagePullPolicy"] == "IfNotPresent"
    env = env_of(template["spec"]["containers"][0])
    assert env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"] == "10"
    assert "RAY_PIXI_PIXI_VERSION" not in env
    assert "PYTHONPATH" not in env and env["PYTHONUSERBASE"] == PAYLOAD_DIR
    # The user's own volume and mount stay.
    assert template["spec"]["volumes"][0] == {"name": "ray-logs", "emptyDir": {}}
    assert template["spec"]["containers"][0]["volumeMounts"][0] == {
        "mountPath": "/tmp/ray",
        "name": "ray-logs",
    }


def test_the_init_containers_resources_follow_the_settings(manifest, settings, make_settings):
    """200m and 256Mi by default; an admin raises them (the chart's injection.initContainerCPU
    and initContainerMemory), requests always equal to limits."""
    (default,) = templates(prepared(manifest("raycluster-head-only"), settings))
    amounts = {"cpu": "200m", "memory": "256Mi"}
    assert default["spec"]["initContainers"][-1]["resources"] == {
        "requests": amounts, "limits": amounts}
    raised = make_settings(init_container_cpu="1", init_container_memory="1Gi")
    (template,) = templates(prepared(manifest("raycluster-head-only"), raised))
    amounts = {"cpu": "1", "memory": "1Gi"}
    assert template["spec"]["initContainers"][-1]["resources"] == {
        "requests": amounts, "limits": amounts}


def test_worker_groups_keep_their_init_containers_pythonpath_and_user(manifest, settings):
    body = prepared(manifest("raycluster-workers"), settings)
    head, cpu, gpu = templates(body)
    assert [c["name"] for c in cpu["spec"]["initContainers"]] == ["fetch-data", "ray-pixi-payload"]
    # The payload runs as the Ray container's explicit user, so the files it makes are writable.
    security = cpu["spec"]["initContainers"][-1]["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (1000, 100)
    # Without a user in the pod, the image's uid, explicitly (the pod's may be root).
    gpu_security = gpu["spec"]["initContainers"][-1]["securityContext"]
    assert (gpu_security["runAsUser"], gpu_security["runAsGroup"]) == (65532, 65532)
    # The group's own PYTHONPATH stays as it was: the payload comes through the user site.
    assert env_of(gpu["spec"]["containers"][0])["PYTHONPATH"] == "/opt/team/lib"
    # The log-shipping sidecar of the head gets nothing.
    sidecar = head["spec"]["containers"][1]
    assert env_of(sidecar) == {"FLUENT_LOG_LEVEL": "info"}
    assert env_of(head["spec"]["containers"][0])["RAY_LOG_TO_STDERR"] == "0"


def test_autoscaler_options_are_untouched(manifest, settings):
    original = manifest("raycluster-autoscaler")
    body = prepared(original, settings)
    assert body["spec"]["autoscalerOptions"] == original["spec"]["autoscalerOptions"]
    assert body["spec"]["enableInTreeAutoscaling"] is True
    # The annotation on this cluster asks for a pixi version.
    for template in templates(body):
        assert env_of(template["spec"]["containers"][0])["RAY_PIXI_PIXI_VERSION"] == "0.40.3"


def test_rayjob_generated_cluster_takes_the_copied_annotation(manifest, settings):
    body = prepared(manifest("raycluster-from-rayjob"), settings)
    for template in templates(body):
        assert (
            env_of(template["spec"]["containers"][0])["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"] == "25"
        )


def test_unlabelled_cluster_is_returned_unchanged(manifest, settings):
    original = manifest("raycluster-workers")
    del original["metadata"]["labels"]["ray-pixi.io/enabled"]
    result = prepare(original, settings)
    assert not result.opted_in and not result.changed
    assert result.body == original


@pytest.mark.parametrize("value", ["false", "True", "yes", ""])
def test_only_the_exact_label_value_true_opts_in(value, manifest, settings):
    original = manifest("raycluster-head-only")
    original["metadata"]["labels"]["ray-pixi.io/enabled"] = value
    assert prepare(original, settings).body == original


def test_the_input_object_is_not_modified(manifest, settings):
    original = manifest("raycluster-workers")
    snapshot = copy.deepcopy(original)
    prepare(original, settings)
    assert original == snapshot


# --- RAY_RUNTIME_ENV_PLUGINS ---


def _with_ray_env(body: dict[str, Any], **env: Any) -> dict[str, Any]:
    ray = body["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ray.setdefault("env", []).extend(
        {"name": key, **(value if isinstance(value, dict) else {"value": value})}
        for key, value in env.items()
    )
    return body


def test_user_plugins_are_kept_and_ours_appended(manifest, settings):
    theirs = [{"class": "acme.runtime.VaultPlugin", "priority": 5}]
    body = _with_ray_env(
        manifest("raycluster-head-only"), RAY_RUNTIME_ENV_PLUGINS=json.dumps(theirs)
    )
    result = prepared(body, settings)
    env = env_of(templates(result)[0]["spec"]["containers"][0])
    assert json.loads(env["RAY_RUNTIME_ENV_PLUGINS"]) == [*theirs, PLUGIN]


def test_plugin_already_listed_is_not_duplicated(manifest, settings):
    listed = json.dumps([{"class": "ray_pixi.PixiPlugin", "priority": 20}, {"class": "acme.X"}])
    body = _with_ray_env(manifest("raycluster-head-only"), RAY_RUNTIME_ENV_PLUGINS=listed)
    result = prepared(body, settings)
    assert (
        env_of(templates(result)[0]["spec"]["containers"][0])["RAY_RUNTIME_ENV_PLUGINS"] == listed
    )


def test_empty_plugins_value_becomes_our_plugin(manifest, settings):
    body = _with_ray_env(manifest("raycluster-head-only"), RAY_RUNTIME_ENV_PLUGINS="")
    result = prepared(body, settings)
    env = env_of(templates(result)[0]["spec"]["containers"][0])
    assert json.loads(env["RAY_RUNTIME_ENV_PLUGINS"]) == [PLUGIN]


@pytest.mark.parametrize("value", ['{"class": "acme.X"}', "acme.X", "[{'class': 'acme.X'}"])
def test_plugins_value_that_is_not_a_json_list_is_rejected(value, manifest, settings):
    body = _with_ray_env(manifest("raycluster-head-only"), RAY_RUNTIME_ENV_PLUGINS=value)
    with pytest.raises(InjectionError) as error:
        prepare(body, settings)
    message = str(error.value)
    assert "spec.headGroupSpec.template.spec.containers[0].env[RAY_RUNTIME_ENV_PLUGINS]" in message
    assert "must be a JSON list" in message and repr(value) in message


def test_plugins_from_valuefrom_is_rejected(manifest, settings):
    ref = {"valueFrom": {"configMapKeyRef": {"name": "ray-env", "key": "plugins"}}}
    body = _with_ray_env(manifest("raycluster-head-only"), RAY_RUNTIME_ENV_PLUGINS=ref)
    with pytest.raises(InjectionError, match="valueFrom.*set it with value instead"):
        prepare(body, settings)


# --- A user's value of the same name wins ---


def test_user_env_var_of_the_same_name_wins_and_is_reported(manifest, settings):
    body = _with_ray_env(manifest("raycluster-head-only"), PIXI_CACHE_DIR="/mnt/team-cache")
    result = prepare(body, settings)
    assert (
        env_of(templates(result.body)[0]["spec"]["containers"][0])["PIXI_CACHE_DIR"]
        == "/mnt/team-cache"
    )
    (kept,) = result.kept
    assert kept.path == "spec.headGroupSpec.template.spec.containers[0].env[PIXI_CACHE_DIR]"
    assert "'/mnt/team-cache'" in str(kept) and "'/ray-pixi/pixi-cache'" in str(kept)
    prepared(body, settings)  # schema and idempotence


def test_user_volume_named_ray_pixi_wins_and_is_mounted(manifest, settings):
    body = manifest("raycluster-head-only")
    own = {"name": "ray-pixi", "persistentVolumeClaim": {"claimName": "team-envs"}}
    body["spec"]["headGroupSpec"]["template"]["spec"]["volumes"].append(own)
    result = prepare(body, settings)
    pod = templates(result.body)[0]["spec"]
    assert [v for v in pod["volumes"] if v["name"] == "ray-pixi"] == [own]
    assert {"name": "ray-pixi", "mountPath": "/ray-pixi"} in pod["containers"][0]["volumeMounts"]
    assert [k.path for k in result.kept] == ["spec.headGroupSpec.template.spec.volumes[ray-pixi]"]
    prepared(body, settings)


def test_user_pythonpath_with_our_dir_already_in_it_is_left_as_is(manifest, settings):
    body = _with_ray_env(
        manifest("raycluster-head-only"), PYTHONPATH="/opt/lib:/ray-pixi/payload/python"
    )
    result = prepared(body, settings)
    assert (
        env_of(templates(result)[0]["spec"]["containers"][0])["PYTHONPATH"]
        == "/opt/lib:/ray-pixi/payload/python"
    )


def test_other_mount_at_ray_pixi_is_rejected(manifest, settings):
    body = manifest("raycluster-head-only")
    body["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "ray-logs", "mountPath": "/ray-pixi"}
    )
    with pytest.raises(
        InjectionError, match=r"mounts volume 'ray-logs' at /ray-pixi.*mount it elsewhere"
    ):
        prepare(body, settings)


def test_template_without_containers_is_rejected(manifest, settings):
    body = manifest("raycluster-workers")
    body["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"] = []
    with pytest.raises(
        InjectionError, match=r"spec.workerGroupSpecs\[1\].template.spec.containers is empty"
    ):
        prepare(body, settings)


# --- Cache volume kinds, from settings and from annotations ---

VOLUME_CASES = [
    ({}, {}, {"emptyDir": {}}),
    ({"cache_size_limit": "20Gi"}, {}, {"emptyDir": {"sizeLimit": "20Gi"}}),
    ({}, {"ray-pixi.io/cache-size-limit": "5Gi"}, {"emptyDir": {"sizeLimit": "5Gi"}}),
    (
        {"cache_volume": "hostPath"},
        {},
        {"hostPath": {"path": "/var/cache/ray-pixi", "type": "DirectoryOrCreate"}},
    ),
    (
        {"cache_volume": "hostPath", "cache_host_path": "/mnt/nvme/ray-pixi"},
        {},
        {"hostPath": {"path": "/mnt/nvme/ray-pixi", "type": "DirectoryOrCreate"}},
    ),
    (
        {},
        {"ray-pixi.io/cache-volume": "hostPath", "ray-pixi.io/cache-host-path": "/data/envs"},
        {"hostPath": {"path": "/data/envs", "type": "DirectoryOrCreate"}},
    ),
    (
        {"cache_volume": "persistentVolumeClaim", "cache_pvc_name": "ray-envs"},
        {},
        {"persistentVolumeClaim": {"claimName": "ray-envs"}},
    ),
    (
        {"cache_size_limit": "20Gi"},
        {
            "ray-pixi.io/cache-volume": "persistentVolumeClaim",
            "ray-pixi.io/cache-pvc-name": "team-a-envs",
        },
        {"persistentVolumeClaim": {"claimName": "team-a-envs"}},
    ),
    (
        {"cache_volume": "hostPath"},
        {"ray-pixi.io/cache-volume": "emptyDir"},
        {"emptyDir": {}},
    ),
]


@pytest.mark.parametrize(("env", "annotations", "volume"), VOLUME_CASES)
def test_cache_volume_kind_from_settings_or_annotations(
    env, annotations, volume, manifest, make_settings
):
    body = manifest("raycluster-workers")
    body["metadata"].setdefault("annotations", {}).update(annotations)
    result = prepared(body, make_settings(**env))
    for template in templates(result):
        assert [v for v in template["spec"]["volumes"] if v["name"] == "ray-pixi"] == [
            {"name": "ray-pixi", **volume}
        ]


def test_annotations_override_version_cache_cap_and_volume(manifest, make_settings):
    body = manifest("raycluster-workers")
    body["metadata"]["annotations"] = {
        "ray-pixi.io/pixi-version": "0.41.0",
        "ray-pixi.io/plugin-cache-size-gb": "2.5",
        "ray-pixi.io/cache-volume": "hostPath",
    }
    settings = make_settings(
        pixi_version="0.40.3", plugin_cache_size_gb="50", payload_image_pull_policy="Always"
    )
    result = prepared(body, settings)
    for template in templates(result):
        env = env_of(template["spec"]["containers"][0])
        assert env["RAY_PIXI_PIXI_VERSION"] == "0.41.0"
        assert env["RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB"] == "2.5"
        assert template["spec"]["initContainers"][-1]["imagePullPolicy"] == "Always"
        assert "hostPath" in template["spec"]["volumes"][-1]


BAD_ANNOTATIONS = [
    ({"ray-pixi.io/pixi-version": "latest"}, "pixi-version", "X.Y.Z"),
    (
        {"ray-pixi.io/cache-volume": "nfs"},
        "cache-volume",
        "emptyDir, hostPath, persistentVolumeClaim",
    ),
    ({"ray-pixi.io/cache-size-limit": "lots"}, "cache-size-limit", "positive Kubernetes quantity"),
    ({"ray-pixi.io/cache-size-limit": "0Gi"}, "cache-size-limit", "positive Kubernetes quantity"),
    ({"ray-pixi.io/plugin-cache-size-gb": "-1"}, "plugin-cache-size-gb", "greater than 0"),
    ({"ray-pixi.io/plugin-cache-size-gb": "ten"}, "plugin-cache-size-gb", "greater than 0"),
    (
        {"ray-pixi.io/cache-volume": "hostPath", "ray-pixi.io/cache-host-path": "relative/dir"},
        "cache-host-path",
        "absolute directory path",
    ),
    (
        {
            "ray-pixi.io/cache-volume": "persistentVolumeClaim",
            "ray-pixi.io/cache-pvc-name": "Team_Envs",
        },
        "cache-pvc-name",
        "existing PersistentVolumeClaim",
    ),
    ({"ray-pixi.io/cache-volume": "persistentVolumeClaim"}, "cache-volume", "no claim is named"),
    (
        {"ray-pixi.io/cache-volume": "hostPath", "ray-pixi.io/cache-size-limit": "1Gi"},
        "cache-size-limit",
        "applies only with ray-pixi.io/cache-volume: emptyDir",
    ),
    (
        {"ray-pixi.io/cache-host-path": "/data"},
        "cache-host-path",
        "applies only with ray-pixi.io/cache-volume: hostPath",
    ),
    ({"ray-pixi.io/pixi-verison": "0.40.3"}, "pixi-verison", "unknown ray-pixi annotation"),
]


@pytest.mark.parametrize(("annotations", "key", "rule"), BAD_ANNOTATIONS)
def test_bad_annotation_is_rejected_naming_it_and_the_fix(
    annotations, key, rule, manifest, settings
):
    body = manifest("raycluster-head-only")
    body["metadata"]["annotations"] = annotations
    with pytest.raises(InjectionError) as error:
        prepare(body, settings)
    message = str(error.value)
    assert f"ray-pixi.io/{key}" in message
    assert rule in message


# --- The injection record ---


def test_the_record_holds_the_values_that_were_injected(manifest, make_settings):
    body = manifest("raycluster-workers")
    body["metadata"]["annotations"] = {"ray-pixi.io/pixi-version": "0.40.3"}
    result = prepare(body, make_settings(cache_volume="hostPath"))
    record = read_record(result.body["metadata"]["annotations"])
    assert record is not None and record == result.record
    assert record.settings == {
        "payloadImage": PAYLOAD_IMAGE,
        "payloadImagePullPolicy": "IfNotPresent",
        "payloadDir": PAYLOAD_DIR,
        "pixiVersion": "0.40.3",
        "cacheVolume": "hostPath",
        "cacheHostPath": "/var/cache/ray-pixi",
        "pluginCacheSizeGB": 10.0,
    }
    assert record.prepared_by.startswith("ray-pixi-operator ")
    # Exactly what each template got, as values: the cpu group's installer runs as its user.
    for group, template in zip(
        ("headGroupSpec", "workerGroupSpecs[cpu]", "workerGroupSpecs[gpu]"),
        templates(result.body),
        strict=True,
    ):
        injection = record.injection_for(group)
        assert injection is not None
        pod = template["spec"]
        assert list(injection.init_containers) == pod["initContainers"][-1:]
        assert list(injection.volumes) == pod["volumes"][-1:]
        assert {e["name"]: e for e in injection.env}.items() <= {
            e["name"]: e for e in pod["containers"][0]["env"]
        }.items()
    # It reads back exactly, and nothing else on the metadata changed.
    text = result.body["metadata"]["annotations"][names.INJECTION_ANNOTATION]
    assert Record.loads(text) == record and Record.loads(text).dumps() == text


def test_changed_settings_never_change_a_prepared_cluster(manifest, make_settings):
    """An operator upgrade (new payload image, a pixi version) leaves prepared templates alone."""
    first = prepare(manifest("raycluster-workers"), make_settings()).body
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0", pixi_version="0.77.0")
    again = prepare(first, newer)
    assert again.body == first and not again.changed
    assert restore(first, again.record).body == first


def test_migration_replaces_the_add_ons_values_but_not_the_users(manifest, make_settings):
    body = _with_ray_env(manifest("raycluster-head-only"), PIXI_CACHE_DIR="/mnt/team-cache")
    body["metadata"]["annotations"] = {"ray-pixi.io/pixi-version": "0.40.3"}
    first = prepare(body, make_settings()).body

    # The pixi version annotation removed, a new payload image: an explicit migration.
    del first["metadata"]["annotations"]["ray-pixi.io/pixi-version"]
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0")
    moved = migrate(first, newer, read_record(first["metadata"]["annotations"]), "2025-01-01")
    validate(moved.body)
    pod = templates(moved.body)[0]["spec"]
    assert [c["image"] for c in pod["initContainers"]] == ["ghcr.io/example/ray-pixi:0.2.0"]
    env = env_of(pod["containers"][0])
    assert "RAY_PIXI_PIXI_VERSION" not in env
    assert env["PIXI_CACHE_DIR"] == "/mnt/team-cache"
    assert [k.path.rsplit("[", 1)[1] for k in moved.kept] == ["PIXI_CACHE_DIR]"]
    assert moved.record is not None and moved.record.migration == "2025-01-01"
    assert moved.record.payload_image == "ghcr.io/example/ray-pixi:0.2.0"
    # The same token again changes nothing: prepare sees the migration recorded.
    moved.body["metadata"]["annotations"]["ray-pixi.io/migrate"] = "2025-01-01"
    assert not prepare(moved.body, newer).changed


def test_user_value_set_later_over_an_injected_one_wins(manifest, settings):
    first = prepare(manifest("raycluster-head-only"), settings).body
    ray = templates(first)[0]["spec"]["containers"][0]
    for item in ray["env"]:
        if item["name"] == "RAY_PIXI_STORE_DIR":
            item["value"] = "/mnt/store"
    second = prepare(first, settings)
    assert (
        env_of(templates(second.body)[0]["spec"]["containers"][0])["RAY_PIXI_STORE_DIR"]
        == "/mnt/store"
    )
    assert [k.path.rsplit("[", 1)[1] for k in second.kept] == ["RAY_PIXI_STORE_DIR]"]


def test_a_list_replaced_by_a_merge_patch_comes_back_from_the_record(manifest, settings):
    """kubectl apply on a custom resource sends a merge patch, which replaces whole lists."""
    first = prepare(manifest("raycluster-head-only"), settings).body
    original_ray = manifest("raycluster-head-only")["spec"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ]
    templates(first)[0]["spec"]["containers"] = original_ray
    record = read_record(first["metadata"]["annotations"])
    again = restore(first, record)
    validate(again.body)
    assert again.body == prepare(manifest("raycluster-head-only"), settings).body


def test_a_whole_replaced_spec_and_annotations_come_back_byte_identical(manifest, settings):
    """What a RayService does to its RayCluster: spec and annotations replaced by its own."""
    injected = prepare(manifest("raycluster-workers"), settings).body
    replaced = copy.deepcopy(injected)
    replaced["spec"] = manifest("raycluster-workers")["spec"]
    replaced["metadata"]["annotations"] = {"ray.io/kuberay-version": "v1.6.2"}
    back = restore(replaced, read_record(injected["metadata"]["annotations"])).body
    assert json.dumps(back["spec"], sort_keys=True) == json.dumps(injected["spec"], sort_keys=True)
    assert back["metadata"]["annotations"] == {
        "ray.io/kuberay-version": "v1.6.2",
        names.INJECTION_ANNOTATION: injected["metadata"]["annotations"][names.INJECTION_ANNOTATION],
    }


def test_a_worker_group_added_later_gets_the_recorded_injection(manifest, make_settings):
    first = prepare(manifest("raycluster-workers"), make_settings()).body
    added = copy.deepcopy(first)
    group = copy.deepcopy(manifest("raycluster-workers")["spec"]["workerGroupSpecs"][0])
    group["groupName"] = "cpu-large"
    added["spec"]["workerGroupSpecs"].append(group)
    # Restored from the record, not from today's settings.
    back = restore(added, read_record(first["metadata"]["annotations"])).body
    new_group = templates(back)[-1]
    assert_prepared_template(new_group, group["template"])
    init = new_group["spec"]["initContainers"][-1]
    assert init["image"] == PAYLOAD_IMAGE
    security = init["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == (1000, 100)
    assert templates(back)[:-1] == templates(first)


def test_a_record_that_cannot_be_read_is_refused_naming_the_fix(manifest, settings):
    body = manifest("raycluster-head-only")
    body["metadata"]["annotations"] = {names.INJECTION_ANNOTATION: '{"format": 99}'}
    with pytest.raises(InjectionError, match="has format 99.*remove it"):
        prepare(body, settings)


# --- Clusters prepared by ray-pixi 0.1.0 (no record) ---


def test_a_cluster_prepared_by_0_1_0_is_adopted_unchanged(manifest, make_settings):
    legacy = manifest("raycluster-prepared-by-0.1.0")
    newer = make_settings(payload_image="ghcr.io/example/ray-pixi:0.2.0", pixi_version="0.77.0")
    adopted = prepare(legacy, newer)
    assert adopted.adopted
    assert adopted.body["spec"] == legacy["spec"]  # not one byte of a template changes
    record = adopted.record
    assert record is not None and record.adopted
    assert record.prepared_by == "ray-pixi-operator 0.1.0"
    assert record.payload_image == "ghcr.io/example/ray-pixi:0.1.0"
    # What 0.1.0 injected comes back exactly after its templates are replaced wholesale.
    replaced = copy.deepcopy(adopted.body)
    replaced["spec"] = manifest("raycluster-workers")["spec"]
    assert restore(replaced, record).body["spec"] == legacy["spec"]


# --- The compatibility gate ---


@pytest.mark.parametrize("version", ["2.9.3", "2.0.0", "1.13.1"])
def test_a_ray_version_below_the_supported_range_is_refused_naming_it(version, manifest, settings):
    body = manifest("raycluster-head-only")
    body["spec"]["rayVersion"] = version
    with pytest.raises(InjectionError) as error:
        prepare(body, settings)
    message = str(error.value)
    assert f"spec.rayVersion is {version!r}" in message
    assert "Ray >= 2.10, Python >= 3.10, pydantic >= 2.5" in message
    assert "Ray 2.10 to 2.60 tested, newer accepted" in message
    assert "tagged with its Python (such as rayproject/ray:2.60.0-py311)" in message
    assert "ray-pixi.io/ray-version" in message


@pytest.mark.parametrize("version", ["2.10.0", "2.46.0", "2.52.0", "2.60.0", "2.61.0", "3.0.0"])
def test_every_ray_from_the_floor_up_is_prepared(version, manifest, settings):
    """The floor and KubeRay's sample releases, and releases newer than the tests ran."""
    body = manifest("raycluster-head-only")
    body["spec"]["rayVersion"] = version
    result = prepare(body, settings)
    assert result.changed and result.notes == ()


def test_an_admin_can_vouch_for_a_stale_ray_version(manifest, settings):
    body = manifest("raycluster-head-only")
    body["spec"]["rayVersion"] = "2.9.0"
    body["metadata"]["annotations"] = {"ray-pixi.io/ray-version": "2.60.1"}
    assert prepare(body, settings).changed


@pytest.mark.parametrize("version", [None, "nightly"])
def test_a_ray_version_that_cannot_be_compared_is_a_warning(version, manifest, settings):
    body = manifest("raycluster-head-only")
    if version is None:
        del body["spec"]["rayVersion"]
    else:
        body["spec"]["rayVersion"] = version
    result = prepare(body, settings)
    assert result.changed
    (note,) = result.notes
    assert "Ray >= 2.10" in note and "ray-pixi.io/ray-version" in note


# --- RayJob and RayService ---


def test_rayjob_cluster_spec_is_prepared_and_the_submitter_is_not(manifest, settings):
    original = manifest("rayjob")
    body = prepared(original, settings)
    assert body["spec"]["submitterPodTemplate"] == original["spec"]["submitterPodTemplate"]
    for template, before in zip(templates(body), templates(original), strict=True):
        assert_prepared_template(template, before)
    assert_nothing_else_changes(original, body)


def test_rayjob_on_an_existing_cluster_is_unchanged(manifest, settings):
    original = manifest("rayjob")
    del original["spec"]["rayClusterSpec"]
    original["spec"]["clusterSelector"] = {"ray.io/cluster": "shared"}
    assert prepare(original, settings).body == original


def test_rayservice_cluster_config_is_prepared_with_its_annotation(manifest, settings):
    original = manifest("rayservice")
    body = prepared(original, settings)
    for template, before in zip(templates(body), templates(original), strict=True):
        assert_prepared_template(template, before)
        assert "hostPath" in template["spec"]["volumes"][-1]
    assert_nothing_else_changes(original, body)


def test_other_kinds_are_refused(settings):
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}
    with pytest.raises(
        InjectionError, match="'Deployment'.*not a RayCluster, RayJob, RayService or RayCronJob"
    ):
        prepare(deployment, settings)


# --- The schema helper itself ---


def test_schema_helper_catches_a_field_the_api_server_would_prune(manifest):
    before = manifest("raycluster-head-only")
    after = copy.deepcopy(before)
    after["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["pixiCache"] = "/x"
    after["spec"]["headGroupSpec"]["template"]["metadata"]["ownerReferences"] = []
    schema = load_schema("RayCluster")
    assert sorted(unknown_fields(after, schema)) == [
        ("spec", "headGroupSpec", "template", "metadata", "ownerReferences"),
        ("spec", "headGroupSpec", "template", "spec", "containers", 0, "pixiCache"),
    ]
    with pytest.raises(AssertionError, match="pixiCache: added but not in the CRD schema"):
        assert_additions_in_schema(before, after)
