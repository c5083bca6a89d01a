"""The real node's configuration as data (tests/kube/node.py), without starting it: what each
component is told is what `real-node.md` found to work on these machines."""

from __future__ import annotations

from pathlib import Path

from kube import node


def test_docker_tags_get_the_names_containerd_and_the_kubelet_give_them() -> None:
    assert node.containerd_ref("ray:test") == "docker.io/library/ray:test"
    assert node.containerd_ref("rayproject/ray:2.60.0") == "docker.io/rayproject/ray:2.60.0"
    assert node.containerd_ref("registry.example.com/ml/ray-pixi:0.2.0") == (
        "registry.example.com/ml/ray-pixi:0.2.0")
    assert node.containerd_ref("localhost/x:1") == "localhost/x:1"


def test_pods_get_a_bridge_of_their_own_that_masquerades_nothing() -> None:
    (bridge, loopback) = node.cni_conflist(Path("/ipam"))["plugins"]
    assert bridge["bridge"] == node.BRIDGE and bridge["ipMasq"] is False
    assert bridge["ipam"]["ranges"] == [[{"subnet": node.POD_SUBNET}]]
    assert bridge["ipam"]["dataDir"] == "/ipam"
    assert loopback == {"type": "loopback"}


def test_the_kubelet_runs_on_cgroup_v1_and_never_collects_the_imported_images() -> None:
    config = node.kubelet_config(
        ip="192.0.2.2", port=1, healthz_port=2, ca_file=Path("/ca"), cert=Path("/c"),
        key=Path("/k"), runtime_socket=Path("/s"),
    )  # fmt: skip
    assert config["failCgroupV1"] is False and config["cgroupDriver"] == "cgroupfs"
    assert config["imageGCHighThresholdPercent"] == 100
    assert config["containerRuntimeEndpoint"] == "unix:///s"
    assert config["clusterDNS"] == ["192.0.2.2"]  # CoreDNS listens on the node's address
    assert config["authentication"]["anonymous"] == {"enabled": False}


def test_kube_proxy_keeps_to_its_own_nft_tables_and_leaves_conntrack_alone() -> None:
    config = node.kube_proxy_config(kubeconfig=Path("/kc"), healthz_port=1, metrics_port=2)
    assert config["mode"] == "nftables"
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["min"] == 0


def test_containerd_runs_as_an_instance_of_its_own() -> None:
    text = node.containerd_config(Path("/r"), Path("/s"), Path("/s/c.sock"), Path("/cni"),
                                  Path("/conf"), "docker.io/library/pause:1")  # fmt: skip
    assert 'root = "/r"' in text and 'address = "/s/c.sock"' in text
    assert "SystemdCgroup = false" in text and "restrict_oom_score_adj = true" in text
    assert 'sandbox_image = "docker.io/library/pause:1"' in text
