"""`bench/run --quick` end to end: every table, the report files and the ratio line. A
smoke test of the benchmark's machinery; it asserts nothing about timings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

pytestmark = pytest.mark.integration


def test_bench_run_quick_prints_every_table_and_writes_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    for name in ("RAY_ADDRESS", "RAY_RUNTIME_ENV_PLUGINS", "RAY_PIXI_EXE"):
        env.pop(name, None)
    done = subprocess.run([str(REPO / "bench" / "run"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for title in ("Worker start latency", "First worker of each mode",
                  "Where the in-process time goes", "Cache-hit setup cost",
                  "Concurrent setups of one new environment", "Disk accounting"):
        assert f"== {title}" in out
    # Ray's own runtime_envs (py_executable, pip) work with the plugin registered.
    for mode in ("no runtime_env", "floor (bash wrapper)", "pip (cached)", "ray-pixi",
                 "pixi run per worker"):
        assert re.search(rf"^{re.escape(mode)}\s+task\s+3\s+\d+", out, re.M), mode
    assert re.search(r"^4 concurrent setups, one agent\s+4\s+1\s", out, re.M)
    assert re.search(r"^2 agents x 2 concurrent setups, one store\s+4\s+1\s", out, re.M)
    assert re.fullmatch(r"ray-pixi/floor worker-start ratio: \d+\.\d\d",
                        out.strip().splitlines()[-1])
    report = (tmp_path / "results.md").read_text()
    assert "ray-pixi/floor worker-start ratio" in report and "| ray-pixi | task | 3 |" in report
    assert (tmp_path / "worker-start.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "raw.json").is_file()
