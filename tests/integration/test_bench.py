"""`bench/run --quick` end to end on real pixi: every table, the report files and the
headline line. A smoke test of the benchmark's machinery; it asserts nothing about
timings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from support import REPO, session_pixi

pytestmark = pytest.mark.integration

TABLES = (
    "Worker start, cached environment",
    "First worker of each mode",
    "The runtime_env agent's time per worker setup",
    "Worker start, part by part, outside Ray",
    "ray-pixi over the floor, by part",
    "Importing Ray's worker entry point",
    "ray-pixi's worker start over the floor's: where the difference goes",
    "First job of a new environment",
    "ray-pixi's first job, broken down",
    "What the plugin could cut from a first job",
    "Cache-hit setup cost",
    "Concurrent setups of one new environment",
    "The agent's event loop while a setup waits on another process",
    "Disk accounting",
)
MODES = ("no runtime_env", "floor (bash wrapper)", "pip (cached)", "ray-pixi",
         "pixi run per worker")


def test_bench_run_quick_prints_every_table_and_writes_the_report(tmp_path: Path) -> None:
    session_pixi()  # skips (fails under CI=true) without the real pixi the run needs
    env = {**os.environ, "PYTHON": sys.executable}
    for name in ("RAY_ADDRESS", "RAY_RUNTIME_ENV_PLUGINS", "RAY_PIXI_EXE"):
        env.pop(name, None)
    done = subprocess.run([str(REPO / "bench" / "run"), "--quick", "--offline", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=2400,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for title in TABLES:
        assert f"== {title}" in out, title
    assert "offline world (--offline): real pixi pixi 0.77.0" in out
    # Ray's own runtime_envs (py_executable, pip) work with the plugin registered, and
    # every mode measured its fresh workers.
    for mode in MODES:
        assert re.search(rf"^{re.escape(mode)}\s+task\s+3\s+\d+", out, re.M), mode
        assert re.search(rf"^{re.escape(mode)}\s+actor\s+3\s+\d+", out, re.M), mode
    for tool in ("ray-pixi", "uv", "pip"):
        assert re.search(rf"^{tool}\s+cold\s+1\s+\d", out, re.M), tool
    # One install however many setups ask at once, in one agent and across two.
    assert re.search(r"^4 concurrent setups, one agent\s+4\s+1\s", out, re.M)
    assert re.search(r"^2 agents x 2 concurrent setups, one store\s+4\s+1\s", out, re.M)
    assert re.fullmatch(r"ray-pixi/floor round trip: \d+\.\d\dx \(tasks \d+\.\d\dx, "
                        r"actors \d+\.\d\dx\)", out.strip().splitlines()[-1])
    report = (tmp_path / "results.md").read_text()
    assert "Headline: ray-pixi/floor worker round trip" in report
    # Which Ray ran, where it starts and in the report.
    assert re.search(rf"^\[bench [\d:]+\] ray: Ray {re.escape(ray.__version__)} on Python ",
                     out, re.M)
    assert f"**Ray**: {ray.__version__} (every node and driver of the run)" in report
    assert "Requests to hosts other than PyPI during the run: 0." in report
    for title in TABLES:
        assert f"### {title}" in report, title
    assert (tmp_path / "worker-start.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "raw.json").is_file()
