"""pytest fixtures for the offline world real pixi runs in (all session-scoped).

    test_pixi      TestPixi: the real pixi (path, version, source) the session runs
    conda_channel  Channel: the local channel (python, activation package, noarch six)
    pixi_mirror    Mirror: loopback mirror of conda-forge and the conda->PyPI mapping
    pypi_proxy     ConnectRecorder: HTTPS_PROXY that tunnels only to PyPI, records the rest
    pixi_config    PixiConfig: isolated PIXI_HOME/XDG_CONFIG_HOME, config.toml, cache dir
    pixi_node_env  Mapping[str, str]: every env var a Ray node, or a direct pixi call,
                   needs to run that pixi offline

A missing prerequisite (pixi, patchelf, py-rattler) skips the tests that need it with the
reason, except under `CI=true`, where it fails them: CI installs all of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import NoReturn

import pytest

from support import persistent_cache

from .channel import Channel, channel_location, default_recipes
from .config import PixiConfig, build_node_env, write_pixi_config
from .find import PixiNotAvailable, TestPixi, find_pixi
from .recipes import PrerequisiteMissing
from .servers import ConnectRecorder, Mirror
from .world import CHANNEL_CACHE, PIXI_CACHE, WHEEL_CACHE, session_channel

__all__ = ["_test_pixi", "conda_channel", "pixi_config", "pixi_mirror", "pixi_node_env",
           "pypi_proxy", "report_header"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip with `reason`, or fail under CI=true (where every prerequisite is installed)."""
    if in_ci():
        pytest.fail(f"CI=true, so this prerequisite must be present: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", name="test_pixi")
def _test_pixi() -> TestPixi:
    """The real pixi of this session: `$RAY_PIXI_TEST_PIXI`, the sha256-checked
    `../shared/pixi/pixi`, or pixi's verified v0.77.0 release (see realpixi.find)."""
    problem = None
    try:
        return find_pixi()
    except PixiNotAvailable as e:
        problem = str(e)
    unavailable(problem)


@pytest.fixture(scope="session")
def conda_channel() -> Channel:
    """The local conda channel, built once per machine into the user cache
    (`~/.cache/ray-pixi-tests/conda-channel`): `python` at exactly this interpreter's
    version, `ray-pixi-test-activation`, and `six` as `noarch: python`."""
    problem = None
    try:
        return session_channel()
    except PrerequisiteMissing as e:
        problem = str(e)
    unavailable(problem)


@pytest.fixture(scope="session")
def pixi_mirror(conda_channel: Channel) -> Iterator[Mirror]:
    """The site's mirror on loopback: `conda_channel` as conda-forge at
    `pixi_mirror.channel_url`, the mapping service at `pixi_mirror.mapping_url`.
    `.requests` lists what it answered; `.stall(pattern)` makes matching requests hang."""
    with Mirror(conda_channel) as mirror:
        yield mirror


@pytest.fixture(scope="session")
def pypi_proxy() -> Iterator[ConnectRecorder]:
    """The HTTPS_PROXY every pixi of the session uses: tunnels to pypi.org and
    files.pythonhosted.org only. At the end of the session, any request it refused (a
    host other than PyPI) fails the run: nothing else may leave the machine."""
    with ConnectRecorder() as proxy:
        yield proxy
        refused = proxy.refused
    if refused:
        pytest.fail(f"requests left for hosts other than PyPI during the session: "
                    f"{sorted({a.target for a in refused})}", pytrace=False)


@pytest.fixture(scope="session")
def pixi_config(pixi_mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> PixiConfig:
    """The session's pixi configuration: `config_file` (mirrors, `tls-root-certs =
    "system"`), empty `home` and `xdg_config_home`, and `cache_dir`, the per-machine pixi
    cache (`~/.cache/ray-pixi-tests/realpixi-pixi-cache`)."""
    return write_pixi_config(tmp_path_factory.mktemp("realpixi"), pixi_mirror.channel_url,
                             pixi_mirror.mapping_url, persistent_cache(PIXI_CACHE))


@pytest.fixture(scope="session")
def pixi_node_env(test_pixi: TestPixi, pixi_config: PixiConfig,
                  pypi_proxy: ConnectRecorder) -> Mapping[str, str]:
    """The env vars (read-only mapping) under which a Ray node, or a direct pixi call,
    runs real pixi offline:

    - `RAY_PIXI_EXE`: `test_pixi.path`
    - `PIXI_CONFIG_FILE`: `pixi_config.config_file`; `PIXI_HOME`, `XDG_CONFIG_HOME`: empty
      dirs, so nothing of the user's pixi config applies; `PIXI_CACHE_DIR`: the per-machine
      cache
    - `HTTPS_PROXY`/`https_proxy`: `pypi_proxy.url`; `NO_PROXY`/`no_proxy`: loopback
    - `RAY_USAGE_STATS_ENABLED=0`: Ray reports nothing home either
    """
    return MappingProxyType(build_node_env(test_pixi.path, pixi_config, pypi_proxy.url))


def report_header() -> list[str]:
    """pytest's header lines: which pixi, and where the channel is (this builds and
    downloads nothing)."""
    try:
        pixi = find_pixi(download=False).describe()
    except (PixiNotAvailable, RuntimeError) as e:  # the fixture reports it; not the header
        pixi = f"unavailable ({e})"
    try:
        where, ready = channel_location(default_recipes(persistent_cache(WHEEL_CACHE)),
                                        persistent_cache(CHANNEL_CACHE))
        channel = f"{where} ({'cached' if ready else 'built on first use'})"
    except PrerequisiteMissing as e:
        channel = f"unavailable ({e})"
    return [
        f"real pixi: {pixi}",
        f"conda channel: {channel}; served as conda-forge by a loopback mirror, PyPI "
        "through a CONNECT recorder",
    ]
