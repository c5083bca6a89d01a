"""End to end on the real node: the chart's webhook, its reconciler and KubeRay together.

The chart is installed with real Helm (the `release` fixture: cluster-wide, the add-on's image
of this checkout); its two roles are the chart's own Pods, each running as its own
ServiceAccount, so a missing RBAC rule fails these tests; the API server calls the webhook
through the chart's own MutatingWebhookConfiguration (Service reference, generated CA, the
Service's ClusterIP through kube-proxy); KubeRay builds the Ray Pods, which stay objects here
(a nodeSelector no node matches keeps them Pending: these tests read their specs).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

import pytest

from kube.manifests import off_node, wait_for_pods
from kube.manifests import raycluster as _raycluster
from kube.manifests import rayjob as _rayjob
from kube.release import CHART, Release
from kube.rest import Rest, poll

pytestmark = pytest.mark.node

LABELS = {"ray-pixi.io/enabled": "true"}
PAYLOAD = "ray-pixi-payload"
VOLUME = "ray-pixi"
MOUNT = "/ray-pixi"
STATUS = "ray-pixi.io/status"
RECORD = "ray-pixi.io/injection"
SETTLE = 60


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def raycluster(name: str, **kw: Any) -> dict[str, Any]:
    """A RayCluster whose Pods stay objects (Pending, off the node)."""
    return off_node(_raycluster(name, **kw))


def rayjob(name: str, **kw: Any) -> dict[str, Any]:
    return off_node(_rayjob(name, **kw))


# --- reading what the API server stored and KubeRay built ---------------------------------


def _settings(release: Release) -> Any:
    from ray_pixi_operator import Settings

    # The webhook Pod's settings; the TLS pair's paths are the Pod's mount, not files here,
    # and nothing of the mutation depends on them.
    env = release.webhook.env()
    tls = ("RAY_PIXI_WEBHOOK_CERT_FILE", "RAY_PIXI_WEBHOOK_KEY_FILE")
    return Settings.from_env({k: v for k, v in env.items() if k not in tls})


def _expected(release: Release, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the webhook means the stored object to be: the operator's own pure mutation."""
    from ray_pixi_operator import prepare

    return dict(prepare(manifest, _settings(release)).body)


def _templates(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    templates = {"head": spec["headGroupSpec"]["template"]}
    for group in spec.get("workerGroupSpecs", []):
        templates[group["groupName"]] = group["template"]
    return templates


def _injected_env_names(release: Release, manifest: dict[str, Any]) -> set[str]:
    submitted = _templates(manifest["spec"])["head"]["spec"]["containers"][0].get("env", [])
    prepared = _templates(_expected(release, manifest)["spec"])["head"]["spec"]["containers"][0]
    return {e["name"] for e in prepared["env"]} - {e["name"] for e in submitted}


def _names(items: list[dict[str, Any]] | None, key: str = "name") -> list[str]:
    return [item[key] for item in items or []]


def _injection_problems(pod_spec: dict[str, Any], env_names: set[str]) -> list[str]:
    """Empty when a pod (or template) spec carries the injection exactly once, correctly."""
    problems = []
    init = _names(pod_spec.get("initContainers"))
    if init.count(PAYLOAD) != 1:
        problems.append(f"init containers {init}: {PAYLOAD} not exactly once")
    elif "wait-gcs-ready" in init and init.index(PAYLOAD) > init.index("wait-gcs-ready"):
        problems.append(f"init containers {init}: {PAYLOAD} after wait-gcs-ready")
    if _names(pod_spec.get("volumes")).count(VOLUME) != 1:
        problems.append(f"volumes {_names(pod_spec.get('volumes'))}: {VOLUME} not exactly once")
    ray, *others = pod_spec["containers"]
    env = _names(ray.get("env"))
    for name in sorted(env_names):
        if env.count(name) != 1:
            problems.append(f"containers[0] env {env}: {name} not exactly once")
    mounts = _names(ray.get("volumeMounts"), "mountPath")
    if mounts.count(MOUNT) != 1:
        problems.append(f"containers[0] mounts {mounts}: {MOUNT} not exactly once")
    for other in others:
        leaked = env_names & set(_names(other.get("env")))
        if leaked:
            problems.append(f"container {other['name']} got {sorted(leaked)}")
    return problems


def _not_injected(pod_spec: dict[str, Any]) -> bool:
    return (
        PAYLOAD not in _names(pod_spec.get("initContainers"))
        and VOLUME not in _names(pod_spec.get("volumes"))
        and MOUNT not in _names(pod_spec["containers"][0].get("volumeMounts"), "mountPath")
    )


def _with_sidecar(manifest: dict[str, Any]) -> dict[str, Any]:
    """A user sidecar after the Ray container: it must not receive the add-on's env vars."""
    manifest = copy.deepcopy(manifest)
    for group in manifest["spec"]["workerGroupSpecs"]:
        group["template"]["spec"]["containers"].append(
            {"name": "log-tailer", "image": "busybox:1.36", "command": ["tail", "-F", "/x"]}
        )
    return manifest


def _get_cluster(admin: Rest, namespace: str, name: str) -> dict[str, Any]:
    return dict(admin.get(f"/apis/ray.io/v1/namespaces/{namespace}/rayclusters/{name}"))


def _events(admin: Rest, namespace: str, name: str) -> list[dict[str, Any]]:
    events = admin.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in events if e["involvedObject"].get("name") == name]


def _wait_status(admin: Rest, namespace: str, name: str, status: str) -> dict[str, Any]:
    return poll(
        lambda: (
            (c := _get_cluster(admin, namespace, name))["metadata"]
            .get("annotations", {})
            .get(STATUS)
            == status
            and c
        ),
        timeout=SETTLE,
        what=f"{STATUS}={status} on RayCluster {namespace}/{name}",
        describe=lambda: str(
            _get_cluster(admin, namespace, name)["metadata"].get("annotations", {}).get(STATUS)
        ),
    )


# --- the tests -----------------------------------------------------------------------------


def test_each_role_acts_as_its_own_service_account(release: Release) -> None:
    """The roles' Pods run as the chart's ServiceAccounts, and what they ask the API server
    is recorded under those accounts, not the admin's."""
    for role in (release.webhook, release.reconciler):
        pods = role.pods()
        assert pods, f"the {role.role} has no Pods"
        assert {p["spec"]["serviceAccountName"] for p in pods} == {role.service_account}
        events = poll(
            lambda role=role: release.cluster.audit_events(role.username)[0],
            timeout=SETTLE,
            what=f"a request of {role.username} in the audit log",
        )
        print(f"\n{role.username}: {len(events)} requests so far")
    assert release.webhook.username != release.reconciler.username
    for webhook in release.webhook_configuration["webhooks"]:
        assert "service" in webhook["clientConfig"] and "url" not in webhook["clientConfig"]


def test_labelled_raycluster_every_pod_injected_once(release: Release, node_namespace: str) -> None:
    """Head and worker Pods carry the injection once; nothing the webhook added is pruned."""
    admin = release.admin
    manifest = _with_sidecar(raycluster("labelled", labels=LABELS, workers=2))
    release.cluster.apply(copy.deepcopy(manifest), node_namespace)
    env_names = _injected_env_names(release, manifest)
    assert env_names, "the operator's mutation adds no env vars?"

    stored = _get_cluster(admin, node_namespace, "labelled")
    expected = _expected(release, manifest)
    for group, template in _templates(stored["spec"]).items():
        want = _templates(expected["spec"])[group]
        # Everything the mutation produced survived the API server's pruning and defaulting.
        for field in ("initContainers", "volumes"):
            assert [i for i in template["spec"][field] if i["name"] in (PAYLOAD, VOLUME)] == [
                i for i in want["spec"][field] if i["name"] in (PAYLOAD, VOLUME)
            ], f"{group}: {field}"
        ray, want_ray = template["spec"]["containers"][0], want["spec"]["containers"][0]
        assert [e for e in ray["env"] if e["name"] in env_names] == [
            e for e in want_ray["env"] if e["name"] in env_names
        ], group
        assert ray["volumeMounts"] == want_ray["volumeMounts"], group
        # The user's own values are still there.
        assert {"name": "USER_SETTING", "value": "kept"} in ray["env"]
        assert "ray-logs" in _names(template["spec"]["volumes"])

    assert stored["metadata"]["annotations"][RECORD] == expected["metadata"]["annotations"][RECORD]
    pods = wait_for_pods(admin, node_namespace, "labelled", 3)
    for pod in pods:
        assert _injection_problems(pod["spec"], env_names) == [], pod["metadata"]["name"]
    workers = [p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "worker"]
    assert [_names(w["spec"]["initContainers"]) for w in workers] == [
        [PAYLOAD, "wait-gcs-ready"]
    ] * 2

    _wait_status(admin, node_namespace, "labelled", "injected")
    reasons = {e["reason"] for e in _events(admin, node_namespace, "labelled")}
    assert "RayPixiInjected" in reasons


def test_labelled_rayjob_gets_an_injected_raycluster(release: Release, node_namespace: str) -> None:
    """KubeRay copies the RayJob's label onto the RayCluster it creates; that one is injected."""
    admin = release.admin
    manifest = rayjob("labelled-job", labels=LABELS, workers=1)
    release.cluster.apply(copy.deepcopy(manifest), node_namespace)
    path = release.cluster.path_for("ray.io/v1", "RayCluster", node_namespace)
    (generated,) = poll(
        lambda: admin.get(path)["items"], timeout=SETTLE, what="the RayJob's RayCluster"
    )
    env_names = _injected_env_names(release, raycluster("x", labels=LABELS))
    for group, template in _templates(generated["spec"]).items():
        assert _injection_problems(template["spec"], env_names) == [], group
    for pod in wait_for_pods(admin, node_namespace, generated["metadata"]["name"], 2):
        assert _injection_problems(pod["spec"], env_names) == [], pod["metadata"]["name"]


def test_unlabelled_raycluster_is_untouched(release: Release, node_namespace: str) -> None:
    """Without the label the webhook is not even called: templates and Pods stay as written."""
    admin = release.admin
    manifest = raycluster("plain", workers=1)
    release.cluster.apply(copy.deepcopy(manifest), node_namespace)
    stored = _get_cluster(admin, node_namespace, "plain")
    for group, template in _templates(stored["spec"]).items():
        assert _not_injected(template["spec"]), group
    for pod in wait_for_pods(admin, node_namespace, "plain", 2):
        assert _not_injected(pod["spec"]), pod["metadata"]["name"]
    assert STATUS not in stored["metadata"].get("annotations", {})
    assert RECORD not in stored["metadata"].get("annotations", {})


def test_scaling_a_worker_group_keeps_one_injection(release: Release, node_namespace: str) -> None:
    """An UPDATE (replicas 1 -> 3) goes through the webhook again without duplicating it."""
    admin = release.admin
    manifest = raycluster("scaled", labels=LABELS, workers=1)
    release.cluster.apply(copy.deepcopy(manifest), node_namespace)
    env_names = _injected_env_names(release, manifest)
    wait_for_pods(admin, node_namespace, "scaled", 2)
    before = _get_cluster(admin, node_namespace, "scaled")

    admin.json_patch(
        f"/apis/ray.io/v1/namespaces/{node_namespace}/rayclusters/scaled",
        [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}],
    )
    after = _get_cluster(admin, node_namespace, "scaled")
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert _templates(after["spec"]) == _templates(before["spec"])
    for group, template in _templates(after["spec"]).items():
        assert _injection_problems(template["spec"], env_names) == [], group
    for pod in wait_for_pods(admin, node_namespace, "scaled", 4):
        assert _injection_problems(pod["spec"], env_names) == [], pod["metadata"]["name"]


def test_cluster_created_while_down_with_ignore_is_reported_and_never_changed(
    release: Release, node_namespace: str
) -> None:
    """failurePolicy Ignore admits a labelled cluster unprepared; the reconciler says so and
    how to prepare it, and changes nothing behind the user's back."""
    admin = release.admin
    release.set_failure_policy("Ignore")
    release.stop()
    try:
        release.cluster.apply(raycluster("missed", labels=LABELS, workers=1), node_namespace)
        stored = _get_cluster(admin, node_namespace, "missed")
        for group, template in _templates(stored["spec"]).items():
            assert _not_injected(template["spec"]), group
        pods = wait_for_pods(admin, node_namespace, "missed", 2)
        assert all(_not_injected(p["spec"]) for p in pods)
    finally:
        release.start()
        release.set_failure_policy(
            release.one("MutatingWebhookConfiguration")["webhooks"][0]["failurePolicy"]
        )

    reported = _wait_status(admin, node_namespace, "missed", "not-injected")
    (event,) = poll(
        lambda: [
            e
            for e in _events(admin, node_namespace, "missed")
            if e["reason"] == "RayPixiNotInjected"
        ],
        timeout=SETTLE,
        what="the reconciler's RayPixiNotInjected event",
    )
    assert event["type"] == "Warning" and "ray-pixi.io/migrate" in event["message"]
    # Writing the status annotation did not prepare it (an operator never rebuilds pods).
    assert _templates(reported["spec"]) == _templates(stored["spec"])
    assert RECORD not in reported["metadata"]["annotations"]


def test_guaranteed_ray_pods_stay_guaranteed(release: Release, node_namespace: str) -> None:
    """The API server sets each Pod's QoS class: a cluster whose Ray containers ask for what
    they are limited to keeps Guaranteed Pods with the payload init container (and KubeRay's
    wait-gcs-ready) added, since both init containers' requests equal their limits."""
    admin = release.admin
    manifest = raycluster("guaranteed", labels=LABELS, workers=1)
    for template in _templates(manifest["spec"]).values():
        resources = template["spec"]["containers"][0]["resources"]
        assert resources["requests"] == resources["limits"]
    release.cluster.apply(copy.deepcopy(manifest), node_namespace)
    pods = wait_for_pods(admin, node_namespace, "guaranteed", 2)
    for pod in pods:
        assert PAYLOAD in _names(pod["spec"]["initContainers"])
        assert pod["status"]["qosClass"] == "Guaranteed", pod["metadata"]["name"]


def _granted(release: Release, role: str) -> set[tuple[str, str, str]]:
    """(group, resource, verb) the chart's (Cluster)Roles bound to a role's account allow."""
    account = getattr(release, role).service_account
    admin = release.admin
    granted = set()
    for kind, binding_kind in (("clusterroles", "clusterrolebindings"),):
        for binding in admin.get(f"/apis/rbac.authorization.k8s.io/v1/{binding_kind}")["items"]:
            if not any(s.get("name") == account and s.get("namespace") == release.namespace
                       for s in binding.get("subjects") or []):  # fmt: skip
                continue
            rules = admin.get(
                f"/apis/rbac.authorization.k8s.io/v1/{kind}/{binding['roleRef']['name']}"
            )["rules"]
            for rule in rules:
                for group in rule["apiGroups"]:
                    for resource in rule["resources"]:
                        for verb in rule["verbs"]:
                            granted.add((group, resource, verb))
    return granted


def _used(release: Release, role: str) -> set[tuple[str, str, str]]:
    events, _ = release.cluster.audit_events(getattr(release, role).username)
    return {
        (e["objectRef"].get("apiGroup", ""), e["objectRef"]["resource"], e["verb"])
        for e in events
        if e.get("objectRef") and e["objectRef"].get("resource")
        and e["objectRef"].get("subresource") is None
    }  # fmt: skip


def test_each_role_uses_every_verb_it_is_granted(release: Release) -> None:
    """Least privilege, measured: over this module's clusters (injection, scaling, status,
    events, an outage), the API server's audit log shows each role using every verb its
    Roles grant. (Self-reviews and discovery are not RBAC rules of the chart.)"""
    for role in ("webhook", "reconciler"):
        granted, used = _granted(release, role), _used(release, role)
        unused = sorted(granted - used)
        assert unused == [], f"{role}: granted but never used: {unused}; used: {sorted(used)}"


def test_operator_log_shows_no_permission_errors(release: Release) -> None:
    """Run last: both roles, on the chart's RBAC alone, were never refused anything."""
    log = release.logs()
    assert release.webhook.log() and release.reconciler.log(), "a role's Pods wrote no log"
    # RBAC denials read 'X is forbidden: User "system:serviceaccount:..." cannot <verb> ...';
    # other 403s (an event posted into a namespace being deleted) are not about RBAC.
    refused = [line for line in log.splitlines() if re.search(r'forbidden: User ".*" cannot', line)]
    assert refused == [], "\n".join(refused[:20])


def test_chart_renders_the_failure_policy_it_is_given(tmp_path: Path) -> None:
    """What set_failure_policy emulates is what the chart renders for that value."""
    from kube.release import render_chart

    if importlib.util.find_spec("helm_python") is None or not (CHART / "Chart.yaml").exists():
        _missing("helm-python-sdk or the chart is missing")
    (webhook,) = [
        d
        for d in render_chart({"webhook": {"failurePolicy": "Ignore"}}, name="r", namespace="n")
        if d["kind"] == "MutatingWebhookConfiguration"
    ]
    assert webhook["webhooks"][0]["failurePolicy"] == "Ignore"
    assert webhook["webhooks"][1]["failurePolicy"] == "Ignore"  # UPDATEs always fail open
