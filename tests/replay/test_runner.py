"""The replay's runner on small hand-made Pods: ordering, failures, networking, teardown."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from kube.rest import poll
from replay.images import BASE_IMAGE
from replay.pod import ReplayError
from replay.runner import SESSION_LABEL, PodStartError, Replay

pytestmark = pytest.mark.docker


def pod(name: str, containers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "ns", "uid": f"uid-{name}", "labels": {"app": name},
        },  # fmt: skip
        "spec": {"containers": containers, "restartPolicy": "Always", **spec},
    }


def sh(name: str, script: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "image": BASE_IMAGE, "command": ["sh", "-c", script], **fields}


def headless(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"clusterIP": "None", "selector": selector},
    }


def session_objects(replay: Replay) -> tuple[list[str], list[str]]:
    label = f"label={SESSION_LABEL}={replay.session}"
    containers = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True,
                                text=True, check=True).stdout.split()  # fmt: skip
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", label],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return containers, networks


def test_init_containers_run_in_order_on_the_shared_volume_then_the_main_container(replay):
    volume = [{"name": "work", "mountPath": "/work"}]
    spec = pod(
        "ordered",
        [sh("main", "cat /work/log; sleep infinity", volumeMounts=volume)],
        initContainers=[
            sh("first", "echo first:$(id -u) >> /work/log", volumeMounts=volume,
               securityContext={"runAsUser": 1234, "readOnlyRootFilesystem": True}),
            sh("second", "echo second:$POD_IP >> /work/log", volumeMounts=volume,
               env=[{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]),
        ],
        volumes=[{"name": "work", "emptyDir": {}}],
    )  # fmt: skip
    (running,) = replay.start([spec])
    assert (running.host_path("work") / "log").read_text().split() == [
        "first:1234",
        f"second:{running.ip}",
    ]
    assert running.running("main")
    assert running.inspect("first")["State"]["ExitCode"] == 0


def test_a_failing_init_container_stops_the_pod_with_its_log(replay):
    spec = pod(
        "failing",
        [sh("main", "sleep infinity")],
        initContainers=[sh("setup", "echo 'cannot prepare /data' >&2; exit 3")],
    )
    with pytest.raises(PodStartError) as error:
        replay.start([spec])
    message = str(error.value)
    assert "Pod ns/failing: init container setup exited with 3" in message
    assert "cannot prepare /data" in message
    containers, _ = session_objects(replay)
    names = subprocess.run(["docker", "inspect", "--format", "{{.Name}}", *containers],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert not [n for n in names if n.endswith("-main")], "the main container must not start"


def test_run_as_non_root_refuses_an_image_that_runs_as_root(replay):
    spec = pod("rooted", [sh("main", "sleep infinity", securityContext={"runAsNonRoot": True})])
    with pytest.raises(ReplayError, match=f"runAsNonRoot and image {BASE_IMAGE} will run as root"):
        replay.start([spec])


def test_pods_reach_each_other_through_a_headless_service_and_nothing_else(replay):
    server = pod("server", [sh("http", "cd /tmp && exec python3 -m http.server 8080",
                               securityContext={"runAsUser": 1000})])  # fmt: skip
    client = pod("client", [sh("main", "sleep infinity")])
    started = replay.start([server, client], services=[headless("web", {"app": "server"})])
    server_pod, client_pod = started
    assert server_pod.ip != client_pod.ip

    fetch = (
        "import sys, time, urllib.request\n"
        "for _ in range(100):\n"
        "    try:\n"
        "        print(urllib.request.urlopen(sys.argv[1], timeout=5).status); break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
    )
    for url in ("http://web.ns.svc.cluster.local:8080/", "http://web:8080/"):
        got = client_pod.exec("main", "python3", "-c", fetch, url)
        assert got.stdout.strip() == "200", got.stderr
    resolved = client_pod.exec("main", "getent", "hosts", "web")
    assert resolved.stdout.split()[0] == server_pod.ip

    # The Pod's default route has no gateway: nothing is routed off the replay's bridge.
    routes = client_pod.exec("main", "cat", "/proc/net/route").stdout.splitlines()[1:]
    default = [line.split() for line in routes if line.split()[1] == "00000000"]
    assert default and all(fields[2] == "00000000" for fields in default), routes
    # No resolver: a name outside /etc/hosts fails at once instead of leaving the host.
    assert "nameserver 127.0.0.1" in client_pod.exec("main", "cat", "/etc/resolv.conf").stdout
    assert client_pod.exec("main", "getent", "hosts", "pypi.org").returncode != 0


def test_a_restarted_container_keeps_its_volume_and_pod_ip_but_not_its_filesystem(replay):
    volume = [{"name": "work", "mountPath": "/work"}]
    spec = pod(
        "restarted",
        [sh("main", "echo started:$(hostname -i):$(cat /tmp/mark 2>/dev/null) >> /work/starts;"
                    " echo here > /tmp/mark; exec sleep infinity",
            volumeMounts=volume)],
        volumes=[{"name": "work", "emptyDir": {}}],
        terminationGracePeriodSeconds=1,
    )  # fmt: skip
    (running,) = replay.start([spec])
    starts = running.host_path("work") / "starts"
    poll(lambda: starts.exists() and starts.read_text(), timeout=30, what=f"{starts} written")
    running.restart("main")
    assert running.running("main")
    lines = poll(
        lambda: len(text := starts.read_text().split()) == 2 and text,
        timeout=30,
        what="the restarted container's line",
    )
    # The second container started from the image again: the first one's /tmp/mark is gone.
    assert lines == [f"started:{running.ip}:"] * 2


def test_teardown_removes_every_container_and_the_network(tmp_path):
    with Replay(tmp_path, sandbox_image=BASE_IMAGE, log=lambda _: None) as replay:
        replay.start([pod("short", [sh("main", "sleep infinity")])])
        containers, networks = session_objects(replay)
        assert len(containers) == 2 and len(networks) == 1  # the sandbox and the container
    assert session_objects(replay) == ([], [])
