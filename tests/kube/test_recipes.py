"""The Go build recipes agree with each other (no Go or network needed)."""

from __future__ import annotations

import re

from kube.build import APISERVER, COMPONENTS, ETCD


def _requirements(go_mod: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(?:require\s+)?(\S+) (v\S+)(?: // indirect)?$", go_mod, re.M))


def test_apiserver_staging_modules_are_pinned_to_the_same_release() -> None:
    """Every k8s.io staging module is replaced by v0.<minor>.<patch> of the kubernetes pin."""
    go_mod = (APISERVER.recipe_dir / "go.mod").read_text()
    expected = "v0." + APISERVER.version.removeprefix("v1.")
    replaced = dict(re.findall(r"^\s+(k8s\.io/\S+) => \S+ (v\S+)$", go_mod, re.M))
    assert replaced, "no replace directives for the staging modules"
    assert {module: expected for module in replaced} == replaced


def test_etcd_matches_the_apiservers_etcd_client() -> None:
    """The etcd recipe builds the release whose client k8s.io/kubernetes compiles in."""
    apiserver = _requirements((APISERVER.recipe_dir / "go.mod").read_text())
    assert apiserver["go.etcd.io/etcd/client/v3"] == ETCD.version


def test_each_recipe_has_a_go_sum_and_names_its_module() -> None:
    for component in COMPONENTS:
        assert (component.recipe_dir / "go.sum").is_file(), component.name
        assert component.version.startswith("v"), component.name
