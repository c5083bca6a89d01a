"""Every accepted form of runtime_env["pixi"] becomes one canonical spec, and every bad
one is refused with the field path, the value seen and the fix."""

from __future__ import annotations

import pytest

from ray_pixi.errors import PixiSpecError
from ray_pixi.spec import Mode, parse_runtime_env, parse_runtime_env_cached, parse_spec

LOCKED_MANIFEST = {"manifest": "pixi.toml", "manifest_content": "[workspace]\n",
                   "lock_content": "version: 6\n"}


def test_a_plain_string_names_a_manifest_in_the_working_dir() -> None:
    spec = parse_runtime_env({"pixi": "envs/pixi.toml", "working_dir": "."})
    assert spec.mode is Mode.PROJECT
    assert spec.manifest == "envs/pixi.toml"
    assert spec.install_locked


def test_inline_and_manifest_modes_are_told_apart() -> None:
    assert parse_spec({"pypi_dependencies": {"six": "*"}}).mode is Mode.INLINE
    assert parse_spec(LOCKED_MANIFEST).mode is Mode.MANIFEST


def test_equal_specs_have_equal_canonical_text_whatever_the_key_order() -> None:
    a = parse_spec({"dependencies": {"a": "1", "b": "2"}, "channels": ["conda-forge"]})
    b = parse_spec({"channels": ("conda-forge",), "dependencies": {"b": "2", "a": "1"}})
    assert a.canonical_json() == b.canonical_json()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"dependencies": {"numpy": 5}},
         "runtime_env['pixi']['dependencies']['numpy'] must be a version string like '>=1.2' "
         "or a table, got 5. For example {'numpy': '>=1.26'}."),
        ({"dependncies": {}}, "has an unknown key 'dependncies'. Did you mean 'dependencies'?"),
        ({"channels": "conda-forge", "dependencies": {}},
         "runtime_env['pixi']['channels'] must be a list of channel names, got 'conda-forge'"),
        ({"pypi_dependencies": {"six": "*"}, "manifest": "pixi.toml"},
         "mixes inline keys ['pypi_dependencies'] with manifest keys ['manifest']"),
        ({"manifest": "../other/pixi.toml"},
         "runtime_env['pixi']['manifest'] must be a manifest path relative to the working_dir "
         "that stays inside it, got '../other/pixi.toml'"),
        ({"manifest": "/etc/pixi.toml"}, "got '/etc/pixi.toml'"),
        ({"manifest": "pixi.toml", "include": ["src/../../x"]},
         "runtime_env['pixi']['include'][0] must be a glob relative to the working_dir"),
        ({"manifest": "environment.yml"}, "must name a pixi.toml or pyproject.toml"),
        ({"pypi_dependencies": {"six": "*"}, "platforms": ["linux64"]},
         "['platforms'][0] is not a pixi platform, got 'linux64'. Did you mean 'linux-64'?"),
        ({"pypi_dependencies": {"six": "*"}, "locked": True},
         "['locked'] applies only to a manifest with a pixi.lock"),
        ({**LOCKED_MANIFEST, "locked": "yes"}, "['locked'] must be true or false, got 'yes'"),
        ({"manifest": "pixi.toml", "manifest_content": "x"},
         "Run `pixi lock --manifest-path pixi.toml`"),
        ({**LOCKED_MANIFEST, "environment": "GPU env"}, "must be a pixi environment name"),
        ({**LOCKED_MANIFEST, "pixi_version": "v0.40.0"}, "Write it without a leading 'v'"),
        ({**LOCKED_MANIFEST, "pixi_install_options": ["--frozen"]},
         "['pixi_install_options'][0] cannot be set here: use `locked=True`, got '--frozen'"),
        ({**LOCKED_MANIFEST, "pixi_install_options": "--offline"},
         "['pixi_install_options'] must be a list of command-line flags, got '--offline'"),
        ({"pypi_dependencies": {"six >=1": "*"}}, "is not a package name"),
        (5, "runtime_env['pixi'] must be a manifest path or a table, got 5."),
        ({}, "declares no environment"),
    ],
)
def test_bad_specs_say_what_where_and_how_to_fix(value: object, expected: str) -> None:
    with pytest.raises(PixiSpecError) as e:
        parse_spec(value)
    assert expected in str(e.value)


@pytest.mark.parametrize("other", ["pip", "uv", "conda", "py_executable"])
def test_fields_that_replace_the_interpreter_are_refused(other: str) -> None:
    with pytest.raises(PixiSpecError, match=f"combines 'pixi' with '{other}'"):
        parse_runtime_env({"pixi": {"pypi_dependencies": {"six": "*"}}, other: ["x"]})


def test_a_project_spec_needs_a_working_dir() -> None:
    with pytest.raises(PixiSpecError, match="the runtime_env has no working_dir"):
        parse_runtime_env({"pixi": "pixi.toml"})


def test_an_unlocked_manifest_needs_no_lock() -> None:
    spec = parse_spec({"manifest": "pixi.toml", "manifest_content": "x", "locked": False})
    assert not spec.install_locked


@pytest.mark.parametrize("options", [
    ["--concurrent-downloads", "8"], ["--concurrent-downloads=8"], ["--offline"],
    ["--offline=false"], ["--tls-root-certs", "system", "-v"], ["--no-hard-links"],
])
def test_install_options_that_change_only_how_pixi_fetches_are_passed(options: list) -> None:
    spec = parse_spec({"pypi_dependencies": {"six": "*"}, "pixi_install_options": options})
    assert spec.pixi_install_options == tuple(options)


@pytest.mark.parametrize(("options", "expected"), [
    (["-p", "osx-arm64"], "the plugin installs for the node's platform"),
    (["--platform=win-64"], "the plugin installs for the node's platform"),
    (["--skip", "numpy"], "installs only part of the environment"),
    (["--skip-with-deps=numpy"], "installs only part of the environment"),
    (["--only", "numpy"], "installs only part of the environment"),
    (["--config-file", "/etc/x.toml"], "set PIXI_CONFIG_FILE on the nodes"),
    (["--no-config"], "set PIXI_CONFIG_FILE on the nodes"),
    (["--tls-no-verify"], "turning off TLS verification from a job is refused"),
    (["--run-post-link-scripts"], "post-link scripts run arbitrary code"),
    (["--frozen"], "use `locked=True`"),
    (["--reinstall"], "is not a `pixi install` flag ray-pixi passes through"),
    (["--concurrent-downloads"], "needs a value"),
])
def test_install_options_that_change_what_is_installed_are_refused(
    options: list, expected: str
) -> None:
    with pytest.raises(PixiSpecError) as e:
        parse_spec({"pypi_dependencies": {"six": "*"}, "pixi_install_options": options})
    assert "runtime_env['pixi']['pixi_install_options'][0]" in str(e.value)
    assert expected in str(e.value)


def test_a_digest_key_is_no_longer_accepted() -> None:
    """Nodes key a project by the files Ray uploaded; a driver-side digest could differ."""
    with pytest.raises(PixiSpecError, match="unknown key 'digest'"):
        parse_spec({"manifest": "pixi.toml", "digest": "a" * 64})


def test_a_corrupt_compressed_lock_is_refused() -> None:
    with pytest.raises(PixiSpecError, match=r"\['lock_zlib'\] must be pixi.lock compressed"):
        parse_spec({"manifest": "pixi.toml", "manifest_content": "[workspace]\n",
                    "lock_zlib": "bm90IHpsaWI="})


def test_a_runtime_env_seen_before_is_parsed_once_and_a_bad_one_is_refused_every_time() -> None:
    runtime_env = {"pixi": {"pypi_dependencies": {"six": "*"}}, "env_vars": {"A": "1"}}
    first = parse_runtime_env_cached(runtime_env)
    assert parse_runtime_env_cached(dict(reversed(runtime_env.items()))) is first
    assert first == parse_runtime_env(runtime_env)
    for _ in range(2):
        with pytest.raises(PixiSpecError, match="combines 'pixi' with 'pip'"):
            parse_runtime_env_cached({**runtime_env, "pip": ["six"]})
