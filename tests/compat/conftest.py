"""The compat tier: the plugin's real-pixi scenario on each Ray release of
`RAY_PIXI_COMPAT_RAYS` (default: the supported floor and the newest), one venv and one head
node per release, shared by the release's tests. Each release's time is printed at the end."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import pytest

from release import ReleaseCluster, build_venv, head_node, releases

_TIMES: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module", params=releases())
def release_cluster(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory,
                    pixi_node_env: Mapping[str, str]) -> Iterator[ReleaseCluster]:
    """A head node of one Ray release, started from that release's own venv."""
    release = request.param
    root = tmp_path_factory.mktemp(f"ray-{release}")
    t0 = time.monotonic()
    venv = build_venv(release, root)
    times = _TIMES.setdefault(release, {"venv": time.monotonic() - t0})
    t1 = time.monotonic()
    with head_node(release, venv, root, pixi_node_env) as cluster:
        times["head"] = time.monotonic() - t1
        yield cluster
    times["total"] = time.monotonic() - t0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for release, times in _TIMES.items():
        terminalreporter.write_line(
            f"compat: Ray {release}: venv {times.get('venv', 0):.0f} s, head node "
            f"{times.get('head', 0):.0f} s, in all {times.get('total', 0):.0f} s")
