"""The plugin through Ray's Jobs server, as `ray job submit` users meet it, with real pixi:
the error a bad field gives, a project with a multi-megabyte pixi.lock, and a raw-spec job
that keeps its environment while a pixi() job on the same files is evicted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray
from ray.job_submission import JobStatus, JobSubmissionClient

from projects import CLUSTER_PYTHON, manifest_text, pixi_lock, write_locked
from ray_pixi import PixiSpecError, pixi
from realpixi.bulk import BULK_PREFIX, build_bulk_channel, build_bulk_manifest
from support import persistent_cache

pytestmark = pytest.mark.integration
NETWORK_PROBLEM = "maybe there are some network problems"  # what an HTTP 500 becomes


def ray_job(cluster, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The `ray job` CLI, run as a user does from their shell."""
    ray_cli = Path(sys.executable).parent / "ray"
    return subprocess.run([str(ray_cli), "job", command, "--address", cluster.dashboard, *args],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "RAY_ADDRESS": ""})


def wait_done(client: JobSubmissionClient, job: str, timeout: float = 900) -> JobStatus:
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job)) not in (
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.monotonic() < deadline, f"job {job} still {status}"
        time.sleep(0.5)  # poll the Jobs API
    return status


def session_logs_text(cluster) -> str:
    return "\n".join(p.read_text(errors="replace") for p in cluster.logs.rglob("*")
                     if p.is_file() and p.suffix in (".log", ".err", ".out"))


def test_ray_job_submit_with_a_bad_field_fails_with_the_field_not_an_http_500(
    own_cluster,
) -> None:
    with own_cluster() as c:
        client = c.jobs()
        before = {j.submission_id for j in client.list_jobs()}
        bad = json.dumps({"pixi": {"pypi_dependencies": {"six": 5}}})
        done = ray_job(c, "submit", "--runtime-env-json", bad, "--", "python", "-c",
                       "print('never runs')")
        jobs = [j for j in client.list_jobs() if j.submission_id not in before]
        assert len(jobs) == 1, done.stdout + done.stderr
        [job] = jobs
        assert wait_done(client, job.submission_id) == JobStatus.FAILED
        info = client.get_job_info(job.submission_id)
        expected = ("runtime_env['pixi']['pypi_dependencies']['six'] must be a version string "
                    "like '>=1.2' or a table, got 5")
        assert expected in (info.message or ""), info.message
        assert expected in done.stdout + done.stderr
        assert "never runs" not in done.stdout
        assert NETWORK_PROBLEM not in session_logs_text(c)


@pytest.fixture(scope="module")
def big_project(tmp_path_factory: pytest.TempPathFactory, pixi_node_env) -> Path:
    """A project whose pixi.lock is ~3 MB: 2,000 packages in seven environments."""
    bulk = build_bulk_channel(2000, persistent_cache("conda-channel-bulk"))
    root = tmp_path_factory.mktemp("big")
    (root / "pixi.toml").write_text(build_bulk_manifest("big", CLUSTER_PYTHON, ray.__version__,
                                                        bulk, environments=6))
    pixi_lock(root / "pixi.toml", pixi_node_env)
    (root / "check.py").write_text(textwrap.dedent(f"""
        import json, os, sys
        import ray

        @ray.remote
        def where():
            import sys
            return sys.prefix

        ray.init()
        share = os.path.join(sys.prefix, "share", "{BULK_PREFIX}")
        print("RESULT " + json.dumps({{"driver": sys.prefix, "task": ray.get(where.remote()),
                                      "bulk_files": len(os.listdir(share))}}))
    """))
    return root


def test_a_3_mb_lock_cannot_be_inlined_and_says_which_route_works(big_project: Path) -> None:
    assert (big_project / "pixi.lock").stat().st_size > 3_000_000
    with pytest.raises(PixiSpecError) as e:
        pixi(big_project / "pixi.toml")
    assert "more than the 32 KiB" in str(e.value) and "include=[])" in str(e.value)


def test_a_3_mb_lock_works_through_ray_job_submit_and_ray_init(own_cluster,
                                                               big_project: Path) -> None:
    """The documented route: the manifest and lock travel in the working_dir. The job's
    driver and its tasks run in the environment, and ray.init on the same project reuses
    it."""
    with own_cluster() as c:
        c.jobs()  # accepting jobs
        done = ray_job(c, "submit", "--working-dir", str(big_project), "--runtime-env-json",
                       json.dumps({"pixi": "pixi.toml"}), "--", "python", "check.py")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        seen = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
        assert seen["driver"] == seen["task"] and seen["driver"].startswith(str(c.store))
        assert seen["bulk_files"] == 2000
        spec = pixi("pixi.toml", include=[], working_dir=big_project)
        assert len(json.dumps(spec)) < 200  # what every task spec carries

        @ray.remote
        def where() -> str:
            import sys

            return sys.prefix

        with c.job(runtime_env={"working_dir": str(big_project), "pixi": spec}):
            assert ray.get(where.remote()) == seen["task"]
        assert c.installs == 1


def test_a_raw_spec_job_keeps_running_while_a_pixi_spec_on_the_same_files_is_evicted(
    own_cluster, tmp_path: Path, pixi_node_env
) -> None:
    project = tmp_path / "proj"
    write_locked(project / "pixi.toml", manifest_text("shared", pypi={"pyjokes": "==0.8.3"}),
                 pixi_node_env)
    ready, go = tmp_path / "ready", tmp_path / "go"
    (project / "long.py").write_text(textwrap.dedent(f"""
        import json, os, sys, time
        import ray

        @ray.remote
        class Worker:
            def prefix(self):
                import sys
                return sys.prefix

            def late_import(self):
                import importlib
                return importlib.import_module("pyjokes.jokes_de").__file__

        ray.init()
        w = Worker.remote()
        prefix = ray.get(w.prefix.remote())
        open({str(ready)!r}, "w").write(prefix)
        deadline = time.monotonic() + 600
        while not os.path.exists({str(go)!r}):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        print("RESULT " + json.dumps({{"prefix": prefix,
                                      "late": ray.get(w.late_import.remote())}}))
    """))
    with own_cluster(RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB="0.000001") as c:
        client = c.jobs()
        raw = client.submit_job(entrypoint="python long.py", runtime_env={
            "working_dir": str(project), "pixi": "pixi.toml"})
        deadline = time.monotonic() + 600
        while not ready.exists():
            assert client.get_job_status(raw) in (JobStatus.PENDING, JobStatus.RUNNING), \
                client.get_job_logs(raw)
            assert time.monotonic() < deadline
            time.sleep(0.5)  # poll for the file the job writes once its actor runs
        prefix = ready.read_text()
        env_marker = Path(prefix).parents[2].with_suffix(".json")
        helper = client.submit_job(entrypoint="python -c 'import pyjokes'", runtime_env={
            "working_dir": str(project), "pixi": pixi("pixi.toml", include=[],
                                                      working_dir=project)})
        assert wait_done(client, helper) == JobStatus.SUCCEEDED, client.get_job_logs(helper)
        # Another environment pushes the tiny cache over its cap: Ray evicts the finished
        # pixi() job's URI, whose environment the raw-spec job still runs in.
        other = client.submit_job(entrypoint="python -c 'import pyjokes'", runtime_env={
            "pixi": pixi(pypi_dependencies={"pyjokes": "==0.6.0"})})
        assert wait_done(client, other) == JobStatus.SUCCEEDED, client.get_job_logs(other)
        key = Path(prefix).parents[2].name
        stays = f"pixi environment {key} stays: another runtime_env on this node uses it"
        # Ray evicts once the helper job's references drop, which it reports after the job
        # ended: poll the agent's log (runtime_env_agent.log) for what the plugin did.
        deadline = time.monotonic() + 120
        while stays not in (logs := session_logs_text(c)) and time.monotonic() < deadline:
            time.sleep(0.5)
        uri_lines = "\n".join(ln for ln in logs.splitlines()
                               if "URI" in ln or "uri" in ln or "evict" in ln)
        assert stays in logs, uri_lines[-6000:]  # Ray did evict the pixi() job's URI...
        assert env_marker.is_file() and Path(prefix, "bin", "python").is_file()  # ...kept
        go.touch()
        assert wait_done(client, raw) == JobStatus.SUCCEEDED, client.get_job_logs(raw)
        seen = json.loads(client.get_job_logs(raw).split("RESULT ", 1)[1].splitlines()[0])
        assert seen["prefix"] == prefix and seen["late"].startswith(prefix)
        # The shared project once, the other env once (the setup logs say so: the tiny cap
        # has since removed both environments, and their install logs with them).
        installed = [ln for p in c.logs.glob("runtime_env_setup-*.log")
                     for ln in p.read_text(errors="replace").splitlines()
                     if "Installed pixi environment" in ln]
        assert len(installed) == 2, installed
