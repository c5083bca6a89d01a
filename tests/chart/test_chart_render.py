"""charts/ray-pixi rendered by the real Helm engine: lint, schema, Kubernetes validation, shape.

Every values variant in `chart_render.VARIANTS` renders, lints strictly (warnings are errors),
and every object validates with kubernetes-validate --strict (built-in kinds) or against the
fields cert-manager's v1 API defines (Issuer, Certificate).
"""

from __future__ import annotations

import re
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_render import (
    CHART_DIR,
    NAMESPACE,
    RELEASE,
    VARIANTS,
    container_env,
    deployment_of,
    of_kind,
    one,
    render,
    render_for_kube,
    render_raw,
    strip_marks,
)

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schema the
# validator ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}

# cert-manager.io/v1: the fields of Issuer and Certificate the chart may set (structure only;
# cert-manager's CRDs are not installed here). Unknown fields are errors, as with --strict.
_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "kind": {"type": "string", "minLength": 1},
        "group": {"type": "string"},
    },
}
_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}
CERT_MANAGER_SCHEMAS = {
    "Issuer": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Issuer"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "minProperties": 1,
                "properties": {
                    "selfSigned": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"crlDistributionPoints": {"type": "array"}},
                    },
                    "ca": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["secretName"],
                        "properties": {"secretName": {"type": "string", "minLength": 1}},
                    },
                },
            },
        },
    },
    "Certificate": {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "cert-manager.io/v1"},
            "kind": {"const": "Certificate"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["secretName", "issuerRef"],
                "properties": {
                    "secretName": {"type": "string", "minLength": 1},
                    "isCA": {"type": "boolean"},
                    "commonName": {"type": "string", "maxLength": 64},
                    "dnsNames": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "duration": {"type": "string"},
                    "renewBefore": {"type": "string"},
                    "revisionHistoryLimit": {"type": "integer", "minimum": 1},
                    "privateKey": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                            "size": {"type": "integer"},
                            "encoding": {"enum": ["PKCS1", "PKCS8"]},
                            "rotationPolicy": {"enum": ["Never", "Always"]},
                        },
                    },
                    "issuerRef": _ISSUER_REF,
                },
            },
        },
    },
}


# --- lint and validation ----------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_lints_strictly_clean(variant):
    report = helm_python.lint(
        CHART_DIR,
        VARIANTS[variant],
        strict=True,
        namespace=NAMESPACE,
        kube_version="v" + KUBE_VERSIONS[0],
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_rendered_object_validates_strictly(variant, version):
    """What each server gets (the oldest the chart supports, the newest) is valid there."""
    objects = render_for_kube(VARIANTS[variant], version)
    assert objects, "nothing rendered"
    for raw in objects:
        obj = strip_marks(raw)
        kind = obj["kind"]
        if obj["apiVersion"].startswith("cert-manager.io/"):
            jsonschema.validate(obj, CERT_MANAGER_SCHEMAS[kind])
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(
                f"{variant}: {kind} {obj['metadata']['name']} invalid for {version}: "
                f"{error.message} at {list(error.path)}"
            )


@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_land_in_the_release_namespace(variant):
    values = VARIANTS[variant]
    for obj in render(values):
        meta = obj["metadata"]
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, obj["kind"]
        elif obj["kind"] in {"Role", "RoleBinding"}:
            assert meta["namespace"] in values["namespaces"]
        else:
            assert meta["namespace"] == NAMESPACE, (obj["kind"], meta)
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_names_stay_valid_for_a_long_release_name():
    name = "a-very-long-release-name-for-ray-pixi-in-production-x"  # 53 chars, Helm's max
    manifests = render_raw({}, name=name)
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for obj in filter(None, yaml.safe_load_all(text)):
            assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])


# --- values.schema.json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"namespace": ["ml"]}, "additional properties 'namespace' not allowed"),
        (
            {"injection": {"cache": {"volum": "hostPath"}}},
            "additional properties 'volum' not allowed",
        ),
        (
            {"webhook": {"failurepolicy": "Ignore"}},
            "additional properties 'failurepolicy' not allowed",
        ),
        ({"webhook": {"tls": {"certmanager": {"enabled": True}}}}, "'certmanager' not allowed"),
        ({"image": {"tags": "1"}}, "additional properties 'tags' not allowed"),
        ({"webhook": {"failurePolicy": "ignore"}}, "value must be one of 'Fail', 'Ignore'"),
        ({"injection": {"cache": {"volume": "nfs"}}}, "value must be one of"),
        ({"injection": {"cache": {"volume": "persistentVolumeClaim"}}}, "pvcName"),
        ({"webhook": {"timeoutSeconds": 60}}, "maximum"),
        ({"injection": {"pixiVersion": "v0.77"}}, "pixiVersion"),
        ({"namespaces": ["Bad_Name"]}, "namespaces/0"),
        ({"logLevel": "verbose"}, "logLevel"),
        ({"webhook": {"replica": 3}}, "additional properties 'replica' not allowed"),
        ({"reconciler": {"replicas": 2}}, "additional properties 'replicas' not allowed"),
        ({"webhook": {"tls": {"existingSecret": "Bad_Name"}}}, "existingSecret"),
        ({"webhook": {"tls": {"caBundle": "not base64!"}}}, "caBundle"),
    ],
)
def test_schema_rejects_typos_and_bad_values(values, complaint):
    with pytest.raises(helm_python.HelmValuesError) as caught:
        render_raw(values)
    assert complaint in str(caught.value)
    report = helm_python.lint(CHART_DIR, values, strict=True)
    assert any(complaint in e for e in report["errors"]), report


def test_schema_closes_every_object():
    """additionalProperties: false on every object whose keys the chart defines."""
    schema = yaml.safe_load((CHART_DIR / "values.schema.json").read_text())
    free_form = {
        "resources",
        "podSecurityContext",
        "securityContext",
        "affinity",
        "global",
        "commonLabels",
        "podLabels",
        "podAnnotations",
        "nodeSelector",
        "annotations",
        "tolerations[]",
    }

    def walk(node: dict[str, Any], path: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, path
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}")
        elif node.get("type") == "object":
            assert path.rsplit(".", 1)[-1] in free_form, f"{path} accepts any keys"
        if node.get("type") == "array" and isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")

    walk(schema, "values")


def test_every_value_has_a_comment_and_an_example():
    """values.yaml documents each key: a comment right above it, and 'For example' in it."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    schema = yaml.safe_load((CHART_DIR / "values.schema.json").read_text())
    leaf_keys = set()

    def walk(node: dict[str, Any]) -> None:
        for key, child in node.get("properties", {}).items():
            if "properties" in child:
                walk(child)
            else:
                leaf_keys.add(key)

    walk(schema)
    leaf_keys.discard("global")
    undocumented, no_example = [], []
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match or match.group(2) not in leaf_keys:
            continue
        comment = []
        j = index - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.append(lines[j])
            j -= 1
        if not comment:
            undocumented.append(match.group(2))
        elif not any("For example" in c for c in comment):
            no_example.append(match.group(2))
    assert undocumented == [] and no_example == [], (undocumented, no_example)


def test_readme_values_table_lists_every_value():
    readme = (CHART_DIR / "README.md").read_text()
    values = helm_python.Chart.load(CHART_DIR).values
    missing = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if (
                isinstance(value, dict)
                and value
                and path
                not in {
                    "resources",
                    "reconciler.resources",
                    "podSecurityContext",
                    "securityContext",
                    "nodeSelector",
                }
            ):
                walk(value, path + ".")
            elif f"`{path}`" not in readme:
                missing.append(path)

    walk(values, "")
    assert missing == []


# --- the Deployment ------------------------------------------------------------------------------


def _hardened(pod: dict[str, Any]) -> dict[str, Any]:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp"
    return dict(container)


def test_the_webhook_runs_hardened_replicas_that_drain_and_a_pdb_keeps_one():
    objects = render()
    deployment = deployment_of(objects, "webhook")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    container = _hardened(pod)
    assert container["command"] == ["ray-pixi-operator", "webhook"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = container_env(deployment)
    assert ports["webhook"] == int(env["RAY_PIXI_WEBHOOK_PORT"])
    assert ports["health"] == int(env["RAY_PIXI_HEALTH_PORT"])
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    # It answers for drainSeconds after SIGTERM, well inside the grace period.
    assert 0 < int(env["RAY_PIXI_WEBHOOK_DRAIN_SECONDS"]) < pod["terminationGracePeriodSeconds"]
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


def test_the_reconciler_runs_exactly_once():
    """One replica, replaced with Recreate: kopf's peering is not leader election."""
    objects = render()
    deployment = deployment_of(objects, "reconciler")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    container = _hardened(spec["template"]["spec"])
    assert container["command"] == ["ray-pixi-operator", "reconcile"]
    assert [p["name"] for p in container["ports"]] == ["health"]
    assert "webhook-tls" not in {m["name"] for m in container["volumeMounts"]}
    # Its pods are never webhook endpoints, nor counted by the webhook's budget.
    service = one(objects, "Service")
    labels = spec["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= labels.items()
    budget = one(objects, "PodDisruptionBudget")
    assert not budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_one_webhook_replica_gets_no_pdb_and_the_reconciler_can_be_left_out():
    objects = render(VARIANTS["one-webhook-replica-no-reconciler"])
    assert of_kind(objects, "PodDisruptionBudget") == []
    assert [
        d["metadata"]["labels"]["ray-pixi.io/role"] for d in of_kind(objects, "Deployment")
    ] == ["webhook"]
    assert [sa["metadata"]["name"] for sa in of_kind(objects, "ServiceAccount")] == [RELEASE]


def test_a_drain_longer_than_the_grace_period_is_refused():
    with pytest.raises(helm_python.HelmRenderError, match="drainSeconds .* must be less than"):
        render_raw({"webhook": {"drainSeconds": 30, "terminationGracePeriodSeconds": 30}})


def test_image_and_payload_image_references():
    deployment = deployment_of(render(VARIANTS["pinned"]), "webhook")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/ml/ray-pixi:0.1.0@sha256:" + "ab" * 32
    env = container_env(deployment)
    assert env["RAY_PIXI_PAYLOAD_IMAGE"] == "registry.example.com/ml/ray-pixi-payload:7"
    assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    default = container_env(deployment_of(render(), "webhook"))
    chart_version = helm_python.Chart.load(CHART_DIR).metadata["appVersion"]
    assert default["RAY_PIXI_PAYLOAD_IMAGE"] == f"ghcr.io/ray-pixi/ray-pixi:{chart_version}"


# --- RBAC ---------------------------------------------------------------------------------------


def _rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        rule
        for role in of_kind(objects, "ClusterRole") + of_kind(objects, "Role")
        for rule in role["rules"]
    ]


def _allows(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_rbac_has_no_wildcards(variant):
    for rule in _rules(render(VARIANTS[variant])):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"escalate", "bind", "impersonate", "delete", "deletecollection"} & set(
            rule["verbs"]
        )


def _bound(objects: list[dict[str, Any]], kind: str, subject: str) -> list[dict[str, Any]]:
    """The rules bound to ServiceAccount ``subject`` by (Cluster)RoleBindings."""
    binding_kind = {"ClusterRole": "ClusterRoleBinding", "Role": "RoleBinding"}[kind]
    roles = {r["metadata"]["name"]: r for r in of_kind(objects, kind)}
    return [
        rule
        for binding in of_kind(objects, binding_kind)
        if {"kind": "ServiceAccount", "name": subject, "namespace": NAMESPACE}
        in binding["subjects"]
        for rule in roles[binding["roleRef"]["name"]]["rules"]
    ]


def _service_accounts(objects: list[dict[str, Any]]) -> tuple[str, str]:
    webhook = deployment_of(objects, "webhook")["spec"]["template"]["spec"]["serviceAccountName"]
    reconciler = deployment_of(objects, "reconciler")["spec"]["template"]["spec"][
        "serviceAccountName"
    ]
    return webhook, reconciler


def test_cluster_wide_rbac_grants_each_role_what_it_does():
    objects = render()
    assert of_kind(objects, "Role") == []
    webhook_sa, reconciler_sa = _service_accounts(objects)
    assert webhook_sa != reconciler_sa
    assert {sa["metadata"]["name"] for sa in of_kind(objects, "ServiceAccount")} == {
        webhook_sa,
        reconciler_sa,
    }
    # The webhook: only CRD discovery (kopf notices KubeRay installed later). Nothing on Ray.
    webhook = _bound(objects, "ClusterRole", webhook_sa)
    assert _allows(webhook, "apiextensions.k8s.io", "customresourcedefinitions", "watch")
    for verb in ("get", "list", "patch"):
        assert not _allows(webhook, "ray.io", "rayclusters", verb)
    assert not _allows(webhook, "", "pods", "list")
    # The reconciler: what it watches, patches and reports.
    rules = _bound(objects, "ClusterRole", reconciler_sa)
    for verb in ("list", "watch", "patch"):
        assert _allows(rules, "ray.io", "rayclusters", verb)
    for verb in ("list", "watch"):  # the pod index
        assert _allows(rules, "", "pods", verb)
    assert _allows(rules, "", "events", "create")
    assert _allows(rules, "apiextensions.k8s.io", "customresourcedefinitions", "watch")
    # Nothing else for anyone: no secrets, no pod writes, no webhook configurations.
    every = _rules(objects)
    assert not _allows(every, "", "secrets", "get")
    assert not _allows(every, "", "pods", "create")
    assert not _allows(every, "", "pods", "patch")
    assert not _allows(
        every, "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"
    )


def test_namespaced_mode_uses_roles_in_the_chosen_namespaces_only():
    values = VARIANTS["namespaced"]
    objects = render(values)
    assert of_kind(objects, "ClusterRole") == [] and of_kind(objects, "ClusterRoleBinding") == []
    roles, bindings = of_kind(objects, "Role"), of_kind(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(values["namespaces"])
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(values["namespaces"])
    webhook_sa, reconciler_sa = _service_accounts(objects)
    for role, binding in zip(roles, bindings, strict=True):
        assert _allows(role["rules"], "ray.io", "rayclusters", "patch")
        assert _allows(role["rules"], "", "pods", "watch")
        assert [s["name"] for s in binding["subjects"]] == [reconciler_sa]
    for role in ("webhook", "reconciler"):
        env = container_env(deployment_of(objects, role))
        assert env["RAY_PIXI_NAMESPACES"] == "ml-team-a,ml-team-b"
    for webhook in one(objects, "MutatingWebhookConfiguration")["webhooks"]:
        assert webhook["namespaceSelector"] == {
            "matchExpressions": [
                {
                    "key": "kubernetes.io/metadata.name",
                    "operator": "In",
                    "values": values["namespaces"],
                }
            ]
        }


def test_rbac_and_service_account_can_be_brought_along():
    objects = render(VARIANTS["bring-your-own-rbac"])
    kinds = {o["kind"] for o in objects}
    assert not kinds & {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    }
    assert _service_accounts(objects) == ("ops", "ops")


# --- the webhook ----------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_webhook_configuration(variant):
    from ray_pixi_operator import names

    values = VARIANTS[variant]
    objects = render(values)
    create, update = one(objects, "MutatingWebhookConfiguration")["webhooks"]
    for webhook, operation in ((create, "CREATE"), (update, "UPDATE")):
        assert webhook["rules"] == [
            {
                "apiGroups": ["ray.io"],
                "apiVersions": ["v1"],
                "operations": [operation],
                "resources": ["rayclusters"],
                "scope": "Namespaced",
            }
        ]
        assert webhook["objectSelector"] == {
            "matchLabels": {names.ENABLED_LABEL: names.ENABLED_VALUE}
        }
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert 1 <= webhook["timeoutSeconds"] <= 10
        service_ref = webhook["clientConfig"]["service"]
        assert service_ref["path"] == names.WEBHOOK_PATH
        service = one(objects, "Service")
        assert service_ref["name"] == service["metadata"]["name"]
        assert service_ref["namespace"] == NAMESPACE
        (port,) = service["spec"]["ports"]
        assert service_ref["port"] == port["port"] and port["targetPort"] == "webhook"
    # CREATE fails closed by default; UPDATEs always fail open and are filtered by the server.
    assert create["failurePolicy"] == values.get("webhook", {}).get("failurePolicy", "Fail")
    assert "matchConditions" not in create
    assert update["failurePolicy"] == "Ignore"
    assert [c["name"] for c in update["matchConditions"]] == [
        "not-being-deleted",
        "changes-templates-or-ray-pixi-annotations",
    ]
    assert create["clientConfig"] == update["clientConfig"]
    pod_labels = deployment_of(objects, "webhook")["spec"]["template"]["metadata"]["labels"]
    assert one(objects, "Service")["spec"]["selector"].items() <= pod_labels.items()


def test_older_servers_get_no_match_conditions_and_the_update_webhook_fails_open():
    """Before Kubernetes 1.28 the field is unknown: the chart leaves it out."""
    for version, expected in (("1.27.9", False), ("1.28.0", True), (KUBE_VERSIONS[-1], True)):
        create, update = one(render_for_kube({}, version), "MutatingWebhookConfiguration")[
            "webhooks"
        ]
        assert ("matchConditions" in update) is expected, version
        assert update["failurePolicy"] == "Ignore" and create["failurePolicy"] == "Fail"


def test_failure_policy_default_is_fail_and_stated_in_values():
    text = (CHART_DIR / "values.yaml").read_text()
    block = text[text.index("webhook:") : text.index("failurePolicy: Fail")]
    assert "Default Fail" in block and "objectSelector" in block
    assert "UPDATEs always fail open" in block


def test_helm_test_hook_pod_targets_the_webhook():
    from ray_pixi_operator import names

    objects = render()
    (pod,) = of_kind(objects, "Pod")
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    service = one(objects, "Service")
    assert env["WEBHOOK_URL"] == (
        f"https://{service['metadata']['name']}.{NAMESPACE}.svc:443{names.WEBHOOK_PATH}"
    )
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_notes_render_for_each_mode():
    notes = render_raw({})[f"{RELEASE}/templates/NOTES.txt"]
    assert 'ray-pixi.io/enabled: "true"' in notes and "every namespace" in notes
    assert "helm test ray-pixi" in notes
    namespaced = render_raw(VARIANTS["namespaced"])[f"{RELEASE}/templates/NOTES.txt"]
    assert "ml-team-a, ml-team-b" in namespaced
    assert "cert-manager" in render_raw(VARIANTS["cert-manager"])[f"{RELEASE}/templates/NOTES.txt"]
