"""get_uris is a pure function of the runtime_env: Ray calls it from its reference table
before anything validates the spec, at a worker's start and again at its exit, so it never
raises, never looks at the node, and gives the same URI for the same request."""

from __future__ import annotations

import pytest

from ray_pixi.uris import URI_SCHEME, get_uris

SPEC = {"pypi_dependencies": {"six": "==1.16.0"}}


def test_a_runtime_env_without_pixi_has_no_uri() -> None:
    assert get_uris({}) == []
    assert get_uris({"pip": ["six"], "pixi": None}) == []


def test_the_same_request_has_the_same_uri_whatever_the_key_order() -> None:
    a = get_uris({"pixi": {"environment": "default", **SPEC}, "env_vars": {"A": "1"}})
    b = get_uris({"env_vars": {"B": "2"}, "pixi": {**SPEC, "environment": "default"}})
    assert a == b and len(a) == 1 and a[0].startswith(URI_SCHEME)


def test_the_uri_changes_with_the_pixi_field() -> None:
    assert get_uris({"pixi": SPEC}) != get_uris({"pixi": {"pypi_dependencies": {"six": "*"}}})


def test_a_project_uri_follows_the_uploaded_working_dir() -> None:
    one = get_uris({"pixi": "pixi.toml", "working_dir": "gcs://_ray_pkg_aaaa.zip"})
    two = get_uris({"pixi": "pixi.toml", "working_dir": "gcs://_ray_pkg_bbbb.zip"})
    assert one != two
    # An inline spec does not depend on what else the job uploads.
    assert get_uris({"pixi": SPEC, "working_dir": "gcs://_ray_pkg_aaaa.zip"}) == \
        get_uris({"pixi": SPEC, "working_dir": "gcs://_ray_pkg_bbbb.zip"})


@pytest.mark.parametrize("value", [
    5, "", [], {"dependncies": {}}, {"manifest": 3}, {1: "a", "b": 2}, float("nan"),
    {"pypi_dependencies": {"six": object()}},
])
def test_bad_specs_get_a_uri_and_never_raise(value: object) -> None:
    """validate reports what is wrong; the reference counts still balance."""
    uris = get_uris({"pixi": value})
    assert uris == get_uris({"pixi": value}) and len(uris) == 1


def test_a_runtime_env_that_is_not_a_mapping_has_no_uri() -> None:
    assert get_uris(None) == []  # type: ignore[arg-type]
