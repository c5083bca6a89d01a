"""The pure Pod -> docker translation (tests/replay/pod.py), without Docker.

Golden inputs: the head and worker Pods and the head Service that KubeRay v1.6.2 built on the
apiserver harness for a labelled RayCluster after the add-on's webhook (pods/*.json, recorded
from that harness with managedFields dropped); small hand-made Pods for the rules KubeRay's
Pods do not exercise.
"""

from __future__ import annotations

import base64
import copy
import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from replay.pod import (
    ContainerRun,
    HostDirectory,
    PodContext,
    ReplayError,
    build_hosts_file,
    build_pod_plan,
    build_resolv_conf,
    build_sandbox,
    build_service_hosts,
    expand,
    parse_quantity,
)

PODS = Path(__file__).parent / "pods"
POD_DIR = Path("/replay/pod")
NODE_DIR = Path("/replay/node")


def load(name: str) -> dict[str, Any]:
    return json.loads((PODS / f"kuberay-v1.6.2-{name}.json").read_text())


def context(**overrides: Any) -> PodContext:
    values: dict[str, Any] = {
        "pod_ip": "172.30.0.2",
        "host_ip": "172.30.0.1",
        "sandbox": "s-sandbox",
        "name_prefix": "s",
        "pod_dir": POD_DIR,
        "node_dir": NODE_DIR,
        "service_account_token": "token-value",
        "config_maps": {
            "kube-root-ca.crt": {"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": "CA"}}
        },
        "image_users": {"ray-pixi-replay-operator:x": "65532:65532"},
    }
    values.update(overrides)
    return PodContext(**values)


def options_of(run: ContainerRun, flag: str) -> list[str]:
    """Every value given to `flag` in a run's options."""
    found = []
    for index, option in enumerate(run.options):
        if option == flag:
            found.append(run.options[index + 1])
    return found


def env_of(run: ContainerRun) -> dict[str, str]:
    return dict(run.env)


def pod(containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    """A minimal Pod as the API server returns it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "a"},
            "annotations": {"note": "n"},
        },
        "spec": {"containers": containers, **spec},
    }


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "main", "image": "img:1", **fields}


# --- KubeRay's Pods ------------------------------------------------------------------------------


def test_kuberay_head_pod_runs_the_payload_then_ray_as_kuberay_wrote_it():
    head = load("head")
    plan = build_pod_plan(head, context())
    assert [r.name for r in plan.init_containers] == ["ray-pixi-payload"]
    assert [r.name for r in plan.containers] == ["ray-head"]

    payload = plan.init_containers[0]
    assert payload.image == "ray-pixi-replay-operator:x"
    assert payload.argv[:2] == ["run", "--name"], "an init container runs attached, to completion"
    assert options_of(payload, "--entrypoint") == ["ray-pixi-payload"]
    assert payload.command == ("install", "/ray-pixi/payload")
    assert "--read-only" in payload.options
    assert options_of(payload, "--cap-drop") == ["ALL"]
    assert "no-new-privileges" in options_of(payload, "--security-opt")
    assert "seccomp=unconfined" not in options_of(payload, "--security-opt")  # RuntimeDefault
    assert options_of(payload, "--user") == []  # runAsNonRoot, checked against the image's user
    assert options_of(payload, "--memory") == [str(256 * 2**20)]
    assert options_of(payload, "--network") == ["container:s-sandbox"]

    ray = plan.containers[0]
    assert ray.argv[:2] == ["run", "-d"]
    assert ray.image == "rayproject/ray:2.60.0"
    assert options_of(ray, "--entrypoint") == ["/bin/bash"]
    (script,) = head["spec"]["containers"][0]["args"]
    assert ray.command == ("-c", "--", script)
    env = env_of(ray)
    assert env["RAY_CLOUD_INSTANCE_ID"] == head["metadata"]["name"]
    assert env["RAY_NODE_TYPE_NAME"] == "headgroup"
    assert env["RAY_CLUSTER_NAME"] == "rc"
    assert env["RAY_CLUSTER_NAMESPACE"] == "demo"
    assert env["PYTHONPATH"] == "/ray-pixi/payload/python"
    assert env["USER_SETTING"] == "kept"
    assert "RAY_NODE_TYPE_NAME=headgroup" in ray.options
    assert options_of(ray, "--shm-size") == [str(2 * 2**30)]  # KubeRay's shared-mem volume
    assert options_of(ray, "--cpus") == ["1"]
    assert options_of(ray, "--memory") == [str(2 * 2**30)]
    assert options_of(ray, "--cpu-shares") == ["1024"]
    assert options_of(ray, "--restart") == ["always"]
    assert options_of(ray, "--stop-timeout") == ["30"]
    assert "seccomp=unconfined" in options_of(ray, "--security-opt")  # no profile: kubelet default


def test_payload_volume_is_one_host_directory_shared_by_init_and_ray_containers():
    plan = build_pod_plan(load("head"), context())
    volume = POD_DIR / "volumes" / "ray-pixi"
    assert HostDirectory(volume, 0o777) in plan.directories
    for run in (plan.container("ray-pixi-payload"), plan.container("ray-head")):
        assert f"{volume}:/ray-pixi" in options_of(run, "-v")


def test_service_account_token_volume_is_written_and_mounted_read_only():
    head = load("head")
    plan = build_pod_plan(head, context())
    (projected,) = [v["name"] for v in head["spec"]["volumes"] if "projected" in v]
    base = POD_DIR / "volumes" / projected
    files = {f.path: (f.content, f.mode) for f in plan.files}
    assert files[base / "token"] == (b"token-value", 0o644)
    assert files[base / "ca.crt"] == (b"CA", 0o644)
    assert files[base / "namespace"] == (b"demo", 0o644)
    mount = f"{base}:/var/run/secrets/kubernetes.io/serviceaccount:ro"
    assert mount in options_of(plan.container("ray-head"), "-v")


def test_worker_pod_waits_for_the_gcs_through_the_head_service_name():
    worker, head = load("worker"), load("head")
    services = json.loads((PODS / "kuberay-v1.6.2-services.json").read_text())
    hosts = build_service_hosts(services, [(head, "172.30.0.2"), (worker, "172.30.0.3")])
    assert hosts["rc-head-svc.demo.svc.cluster.local"] == "172.30.0.2"
    assert hosts["rc-head-svc"] == "172.30.0.2"
    plan = build_pod_plan(worker, context(pod_ip="172.30.0.3", cluster_hosts=hosts))
    assert [r.name for r in plan.init_containers] == ["ray-pixi-payload", "wait-gcs-ready"]
    wait = plan.container("wait-gcs-ready")
    assert "ray health-check --address rc-head-svc.demo.svc.cluster.local:6379" in wait.command[-1]
    assert options_of(wait, "--restart") == []
    (etc_hosts,) = [f for f in plan.files if f.path == POD_DIR / "etc" / "hosts"]
    assert "172.30.0.2\trc-head-svc.demo.svc.cluster.local rc-head-svc.demo.svc" in (
        etc_hosts.content.decode()
    )
    assert f"{worker['metadata']['name']}" in etc_hosts.content.decode()
    assert f"{POD_DIR / 'etc' / 'hosts'}:/etc/hosts:ro" in options_of(wait, "-v")
    ray = plan.container("ray-worker")
    assert "--address=rc-head-svc.demo.svc.cluster.local:6379" in ray.command[-1]
    assert env_of(ray)["RAY_NODE_TYPE_NAME"] == "cpu"


def test_a_cluster_ip_service_is_not_a_hosts_entry():
    head = load("head")
    (service,) = json.loads((PODS / "kuberay-v1.6.2-services.json").read_text())
    service = copy.deepcopy(service)
    service["spec"]["clusterIP"] = "10.96.0.20"
    assert build_service_hosts([service], [(head, "172.30.0.2")]) == {}


def test_sandbox_holds_the_network_and_hostname_and_refuses_host_namespaces():
    head = load("head")
    argv = build_sandbox(head, name="s-sb", network="net", image="base", labels={"k": "v"})
    assert argv[:2] == ["run", "-d"]
    assert argv[argv.index("--network") + 1] == "net"
    assert argv[argv.index("--hostname") + 1] == head["metadata"]["name"]
    assert argv[-3:] == ["base", "sleep", "infinity"]
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        with pytest.raises(ReplayError, match=f"spec.{flag} is true"):
            build_sandbox(pod([container()], **{flag: True}), name="x", network="n", image="b",
                          labels={})  # fmt: skip


def test_resolv_conf_has_the_cluster_search_path_and_no_resolver():
    text = build_resolv_conf(load("head"))
    assert "nameserver 127.0.0.1\n" in text
    assert "search demo.svc.cluster.local svc.cluster.local cluster.local\n" in text


# --- env ---------------------------------------------------------------------------------------


def test_env_sources_resolve_like_the_kubelet():
    secret = {
        "metadata": {"name": "creds"},
        "data": {"password": base64.b64encode(b"s3cret").decode()},
    }
    config = {"metadata": {"name": "settings"}, "data": {"level": "debug", "mode": "fast"}}
    spec = container(
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        env=[
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['note']"}}},
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {
                "name": "creds", "key": "password"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {
                "name": "settings", "key": "level"}}},
            {"name": "MISSING", "valueFrom": {"configMapKeyRef": {
                "name": "absent", "key": "k", "optional": True}}},
            {"name": "URL", "value": "http://$(POD_IP):8265/$(UNDEFINED)/$$(POD_IP)"},
            {"name": "CFG_MODE", "value": "overridden"},
        ],
        resources={"limits": {"cpu": "1500m", "memory": "1Gi"}},
    )  # fmt: skip
    plan = build_pod_plan(
        pod([spec]),
        context(secrets={"creds": secret}, config_maps={"settings": config}),
    )
    env = env_of(plan.containers[0])
    assert env == {
        "CFG_level": "debug",
        "CFG_mode": "fast",
        "POD_IP": "172.30.0.2",
        "HOST_IP": "172.30.0.1",
        "NODE": "replay-node",
        "UID": "u-1",
        "NOTE": "n",
        "PASSWORD": "s3cret",
        "LEVEL": "debug",
        "URL": "http://172.30.0.2:8265/$(UNDEFINED)/$(POD_IP)",
        "CFG_MODE": "overridden",
    }
    assert "PASSWORD=s3cret" in options_of(plan.containers[0], "-e")
    assert all("=" in value for value in options_of(plan.containers[0], "-e"))


def test_resource_field_refs_round_up_by_divisor_and_default_to_the_node():
    spec = container(
        env=[
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
            {"name": "MILLI", "valueFrom": {"resourceFieldRef": {
                "resource": "requests.cpu", "divisor": "1m"}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {
                "resource": "limits.memory", "divisor": "1Mi"}}},
        ],
        resources={"limits": {"cpu": "1500m", "memory": "1Gi"}, "requests": {"cpu": "250m"}},
    )  # fmt: skip
    env = env_of(build_pod_plan(pod([spec]), context()).containers[0])
    assert env == {"CPU": "2", "MILLI": "250", "MEM_MI": "1024"}
    unlimited = container(
        env=[{"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]
    )
    assert env_of(build_pod_plan(pod([unlimited]), context(node_cpu="4")).containers[0]) == {
        "CPU": "4"
    }


def test_a_missing_secret_keeps_the_pod_from_starting_with_its_name():
    spec = container(
        env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}]
    )
    with pytest.raises(ReplayError, match=r"env\[0\] \(X\): Secret 'nope' is not among"):
        build_pod_plan(pod([spec]), context())


def test_expansion_follows_the_kubelet():
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(C)", env) == "$(C)"
    assert expand("$$(A)", env) == "$(A)"
    assert expand("$A ${B} $", env) == "$A ${B} $"
    assert expand("$(A", env) == "$(A"
    assert expand("cost $$5", env) == "cost $5"


def test_command_args_and_entrypoint():
    only_args = build_pod_plan(pod([container(args=["x", "$(V)"], env=[
        {"name": "V", "value": "v"}])]), context()).containers[0]  # fmt: skip
    assert options_of(only_args, "--entrypoint") == []
    assert only_args.command == ("x", "v")
    command = build_pod_plan(pod([container(command=["/bin/tool"])]), context()).containers[0]
    assert options_of(command, "--entrypoint") == ["/bin/tool"]
    assert command.command == ()


# --- volumes ------------------------------------------------------------------------------------


def test_host_path_pvc_memory_and_sub_path_volumes():
    spec = container(
        volumeMounts=[
            {"name": "node-cache", "mountPath": "/cache"},
            {"name": "claim", "mountPath": "/data", "readOnly": True},
            {"name": "claim", "mountPath": "/logs", "subPath": "logs"},
            {"name": "scratch", "mountPath": "/scratch"},
        ],
    )
    volumes = [
        {"name": "node-cache", "hostPath": {"path": "/var/cache/ray-pixi",
                                            "type": "DirectoryOrCreate"}},
        {"name": "claim", "persistentVolumeClaim": {"claimName": "store"}},
        {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]  # fmt: skip
    claim_dir = Path("/replay/claims/store")
    plan = build_pod_plan(
        pod([spec], volumes=volumes, securityContext={"fsGroup": 2000}),
        context(claims={"store": claim_dir}),
    )
    run = plan.containers[0]
    node_cache = NODE_DIR / "var" / "cache" / "ray-pixi"
    assert options_of(run, "-v")[-3:] == [
        f"{node_cache}:/cache",
        f"{claim_dir}:/data:ro",
        f"{claim_dir / 'logs'}:/logs",
    ]
    assert options_of(run, "--tmpfs") == [f"/scratch:mode=1777,size={64 * 2**20}"]
    assert HostDirectory(node_cache, 0o755) in plan.directories  # root-owned, as the kubelet
    assert HostDirectory(claim_dir, 0o777, 2000) in plan.directories
    assert options_of(run, "--group-add") == ["2000"]


def test_unsupported_volumes_and_missing_claims_are_refused_with_the_fix():
    spec = container(volumeMounts=[{"name": "v", "mountPath": "/v"}])
    with pytest.raises(ReplayError, match=r"volume type \['nfs'\] cannot be replayed"):
        build_pod_plan(pod([spec], volumes=[{"name": "v", "nfs": {"server": "s"}}]), context())
    with pytest.raises(ReplayError, match="PersistentVolumeClaim 'c' has no host directory"):
        build_pod_plan(
            pod([spec], volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "c"}}]),
            context(),
        )
    with pytest.raises(ReplayError, match="hostPath.path must be absolute"):
        build_pod_plan(pod([spec], volumes=[{"name": "v", "hostPath": {"path": "../x"}}]),
                       context())  # fmt: skip
    escaping = container(volumeMounts=[{"name": "v", "mountPath": "/v", "subPath": "../up"}])
    with pytest.raises(ReplayError, match="subPath must be relative, without '..'"):
        build_pod_plan(pod([escaping], volumes=[{"name": "v", "emptyDir": {}}]), context())


# --- securityContext ---------------------------------------------------------------------------


def test_security_context_container_over_pod():
    spec = container(
        securityContext={
            "runAsUser": 1000,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]},
            "allowPrivilegeEscalation": False,
        }
    )
    plan = build_pod_plan(
        pod([spec], securityContext={
            "runAsUser": 5, "runAsGroup": 100, "supplementalGroups": [7],
            "seccompProfile": {"type": "RuntimeDefault"},
        }),
        context(),
    )  # fmt: skip
    run = plan.containers[0]
    assert options_of(run, "--user") == ["1000:100"]
    assert options_of(run, "--group-add") == ["7"]
    assert "--read-only" in run.options
    assert options_of(run, "--cap-drop") == ["ALL"]
    assert options_of(run, "--cap-add") == ["NET_BIND_SERVICE"]
    assert options_of(run, "--security-opt") == ["no-new-privileges"]


def test_run_as_non_root_is_checked_against_the_image_user_as_the_kubelet_does():
    spec = container(securityContext={"runAsNonRoot": True})
    with pytest.raises(ReplayError, match="runAsNonRoot and image img:1 will run as root"):
        build_pod_plan(pod([spec]), context(image_users={"img:1": ""}))
    with pytest.raises(ReplayError, match=r"non-numeric user \(ray\), cannot verify"):
        build_pod_plan(pod([spec]), context(image_users={"img:1": "ray"}))
    with pytest.raises(ReplayError, match="needs the image's user"):
        build_pod_plan(pod([spec]), context(image_users={}))
    assert build_pod_plan(pod([spec]), context(image_users={"img:1": "1000:100"}))
    root = container(securityContext={"runAsNonRoot": True, "runAsUser": 0})
    with pytest.raises(ReplayError, match="will run as root"):
        build_pod_plan(pod([root]), context())


def test_privileged_and_localhost_seccomp_are_refused():
    with pytest.raises(ReplayError, match="privileged cannot run"):
        build_pod_plan(pod([container(securityContext={"privileged": True})]), context())
    local = container(securityContext={"seccompProfile": {"type": "Localhost"}})
    with pytest.raises(ReplayError, match="seccompProfile type 'Localhost'"):
        build_pod_plan(pod([local]), context())


def test_native_sidecar_runs_detached_with_its_restart_policy():
    sidecar = {"name": "log", "image": "img:1", "restartPolicy": "Always"}
    plan = build_pod_plan(pod([container()], initContainers=[sidecar]), context())
    (run,) = plan.init_containers
    assert run.sidecar and run.argv[:2] == ["run", "-d"]
    assert options_of(run, "--restart") == ["always"]


def test_quantities():
    assert parse_quantity("500m") == Fraction(1, 2)
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    assert parse_quantity(2) == 2
    assert parse_quantity("1.5k") == 1500
    with pytest.raises(ReplayError, match="is not a Kubernetes quantity, got '1 GB'"):
        parse_quantity("1 GB")


def test_hosts_file_has_host_aliases_and_subdomain_names():
    spec_pod = pod([container()], hostname="h", subdomain="sub",
                   hostAliases=[{"ip": "10.0.0.9", "hostnames": ["a", "b"]}])  # fmt: skip
    text = build_hosts_file(spec_pod, "172.30.0.5", {})
    assert "172.30.0.5\th.sub.ns.svc.cluster.local\th\n" in text
    assert "10.0.0.9\ta\tb\n" in text
