"""ray-pixi on each supported Ray release, as that release's users run it: a head node and
drivers from the release's own venv, real pixi offline. Inline and project specs through
`ray.init` and through `ray job submit`, workers started in the environment, eviction, and
a bad field's message reaching the user, and `ray-pixi prefetch`."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from integration.projects import CLUSTER_PYTHON, manifest_text, pixi_lock
from ray_pixi import pixi
from release import ReleaseCluster
from support import poll

pytestmark = pytest.mark.compat
DRIVER = Path(__file__).with_name("driver.py")
BAD_FIELD = ("runtime_env['pixi']['pypi_dependencies']['six'] must be a version string "
             "like '>=1.2' or a table, got 5")
# What the job's driver (the entrypoint) and its task report, for `ray job submit`.
CHECK = textwrap.dedent("""
    import json, sys
    import ray

    @ray.remote
    def where():
        import importlib, sys
        return {"prefix": sys.prefix, "executable": sys.executable,
                "file": importlib.import_module("pyjokes").__file__}

    ray.init()
    print("RESULT " + json.dumps({"driver": sys.prefix, "task": ray.get(where.remote()),
                                  "ray": ray.__version__}))
""")


def run_driver(cluster: ReleaseCluster, **request: object) -> dict:
    """One job from a driver on this release's Python; its RESULT."""
    done = subprocess.run([cluster.python, str(DRIVER),
                           json.dumps({"address": cluster.address, **request})],
                          env=cluster.env, capture_output=True, text=True, timeout=1200)
    assert "RESULT " in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])


def ray_job_submit(cluster: ReleaseCluster, runtime_env: dict, *entrypoint: str,
                   working_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """This release's `ray job submit`, waiting for the job as a user's shell does."""
    args = [cluster.ray_cli, "job", "submit", "--address", cluster.dashboard,
            "--runtime-env-json", json.dumps(runtime_env)]
    if working_dir is not None:
        args += ["--working-dir", str(working_dir)]
    return subprocess.run([*args, "--", *entrypoint], env=cluster.env, capture_output=True,
                          text=True, timeout=1200)


@pytest.fixture(scope="module")
def project(release_cluster: ReleaseCluster, tmp_path_factory: pytest.TempPathFactory,
            pixi_node_env) -> Path:  # type: ignore[no-untyped-def]
    """A pixi project locked by real pixi for this release: pyjokes and this Ray."""
    root = tmp_path_factory.mktemp(f"project-{release_cluster.release}")
    (root / "pixi.toml").write_text(manifest_text(
        "compat", pypi={"pyjokes": "==0.8.3"}, ray_version=release_cluster.release))
    pixi_lock(root / "pixi.toml", pixi_node_env)
    (root / "check.py").write_text(CHECK)
    return root


def in_store(cluster: ReleaseCluster, seen: dict, release: str | None = None) -> None:
    """The worker ran the environment's own Python, from this cluster's store."""
    prefix = seen["prefix"]
    assert prefix.startswith(str(cluster.store / "envs")), seen
    assert seen["executable"].startswith(prefix) and seen["file"].startswith(prefix), seen
    if release is not None:
        assert seen["ray"] == release


def test_an_inline_spec_through_ray_init(release_cluster: ReleaseCluster) -> None:
    result = run_driver(release_cluster, module="pyjokes",
                        pixi_args={"pypi_dependencies": {"pyjokes": "==0.8.3"}})
    assert "seen" in result, result.get("error", "")[-3000:]
    in_store(release_cluster, result["seen"], release_cluster.release)


def test_a_manifest_with_its_lock_through_ray_init(release_cluster: ReleaseCluster,
                                                   project: Path) -> None:
    result = run_driver(release_cluster, module="pyjokes",
                        pixi_args={"manifest": str(project / "pixi.toml")})
    assert "seen" in result, result.get("error", "")[-3000:]
    in_store(release_cluster, result["seen"], release_cluster.release)
    assert f"python{CLUSTER_PYTHON.rsplit('.', 1)[0]}" in result["seen"]["file"]


@pytest.mark.parametrize("route", ["project", "inline"])
def test_ray_job_submit(release_cluster: ReleaseCluster, project: Path, route: str) -> None:
    """The job's driver and its task both run in the environment: a project spec
    (`{"pixi": "pixi.toml"}` with the working_dir Ray uploads) and an inline one."""
    spec = "pixi.toml" if route == "project" else pixi(pypi_dependencies={"pyjokes": "==0.8.3"})
    done = ray_job_submit(release_cluster, {"pixi": spec}, "python", "check.py",
                          working_dir=project)
    assert "RESULT " in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])
    in_store(release_cluster, seen["task"])
    assert seen["driver"] == seen["task"]["prefix"]
    assert seen["ray"] == release_cluster.release


def test_a_finished_jobs_environment_is_evicted_for_a_new_one(
    release_cluster: ReleaseCluster,
) -> None:
    """With Ray's cache for the plugin capped tiny, installing another environment frees
    the one no job uses any more; a job needing it again gets it back."""
    first = run_driver(release_cluster, module="pyjokes",
                       pixi_args={"pypi_dependencies": {"pyjokes": "==0.6.0"}})
    assert "seen" in first, first.get("error", "")[-3000:]
    evicted = Path(first["seen"]["prefix"])
    second = run_driver(release_cluster, module="pyjokes",
                        pixi_args={"pypi_dependencies": {"pyjokes": "==0.5.0"}})
    assert "seen" in second, second.get("error", "")[-3000:]
    key = evicted.parents[2].name  # <store>/envs/<key>/.pixi/envs/default
    poll(lambda: not evicted.exists(), timeout=120, interval=0.5, what=f"{evicted} evicted",
         describe=lambda: "agent log lines on it:\n" + "\n".join(
             ln for ln in release_cluster.logs_text().splitlines() if key in ln)[-4000:])
    again = run_driver(release_cluster, module="pyjokes",
                       pixi_args={"pypi_dependencies": {"pyjokes": "==0.6.0"}})
    assert again.get("seen", {}).get("prefix") == str(evicted), again


def test_ray_pixi_prefetch_installs_what_a_job_then_uses(release_cluster: ReleaseCluster,
                                                        project: Path) -> None:
    """The `ray-pixi` command, run from this release's venv against its cluster."""
    done = subprocess.run([str(release_cluster.venv / "bin" / "ray-pixi"), "prefetch",
                           "--address", release_cluster.address,
                           "--manifest", str(project / "pixi.toml")],
                          env=release_cluster.env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1/1 node(s) ready" in done.stdout, done.stdout
    result = run_driver(release_cluster, module="pyjokes",
                        pixi_args={"manifest": str(project / "pixi.toml")})
    assert "seen" in result, result.get("error", "")[-3000:]
    assert result["seen"]["prefix"] in done.stdout


def test_a_bad_field_reaches_the_user(release_cluster: ReleaseCluster, tmp_path: Path) -> None:
    """Through ray.init (RuntimeEnvSetupError) and `ray job submit` (the job's message)."""
    bad = {"pypi_dependencies": {"six": 5}}
    result = run_driver(release_cluster, pixi=bad)
    assert BAD_FIELD in result.get("error", ""), result
    done = ray_job_submit(release_cluster, {"pixi": bad}, "python", "-c", "print('never runs')")
    assert BAD_FIELD in done.stdout + done.stderr, done.stdout[-3000:] + done.stderr[-3000:]
    assert "never runs" not in done.stdout
