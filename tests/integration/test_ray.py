"""The plugin on live local Ray clusters: what workers import, where they run, how often
environments are installed, and what a user reads when something is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from ray.exceptions import RuntimeEnvSetupError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_pixi import pixi
from support import FAKE_PIXI

pytestmark = pytest.mark.integration
CLUSTER_PYTHON = "{}.{}.{}".format(*sys.version_info[:3])


@ray.remote(max_calls=1)
def probe(module: str = "pyjokes") -> dict:
    """What a fresh worker sees: the module it imported, its interpreter and variables."""
    import importlib
    import importlib.metadata
    import os
    import sys

    import ray as worker_ray

    m = importlib.import_module(module)
    return {"module": importlib.metadata.version(module), "file": m.__file__,
            "prefix": sys.prefix, "executable": sys.executable, "ray": worker_ray.__version__,
            "path": os.environ["PATH"], "pixi_env": os.environ.get("PIXI_ENVIRONMENT_NAME"),
            "node": worker_ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "cwd": os.getcwd()}


def test_a_task_imports_a_package_only_its_inline_env_has(shared_cluster) -> None:
    with pytest.raises(ImportError):
        __import__("pyjokes")  # the driver's environment does not have it
    with shared_cluster.job(runtime_env={"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"})}):
        seen = ray.get(probe.remote())
    store = str(shared_cluster.store / "envs")
    assert seen["module"] == "0.8.3"
    assert seen["prefix"].startswith(store) and seen["file"].startswith(seen["prefix"])
    assert seen["ray"] == ray.__version__
    assert seen["pixi_env"] == "default"
    assert seen["path"].startswith(os.path.join(seen["prefix"], "bin") + os.pathsep)
    assert os.path.dirname(sys.executable) in seen["path"].split(os.pathsep)  # node PATH kept


def test_a_second_job_reuses_the_environment(shared_cluster) -> None:
    spec = {"pixi": pixi(pypi_dependencies={"pyjokes": "==0.6.0"})}
    before = shared_cluster.installs
    with shared_cluster.job(runtime_env=spec):
        first = ray.get(probe.remote())
    with shared_cluster.job(runtime_env=spec):
        second = ray.get(probe.remote())
    assert first["prefix"] == second["prefix"] and second["module"] == "0.6.0"
    assert shared_cluster.installs == before + 1


def test_concurrent_tasks_needing_a_new_env_install_it_once(shared_cluster) -> None:
    spec = pixi(pypi_dependencies={"pyjokes": "==0.5.0"})
    before = shared_cluster.installs
    with shared_cluster.job():
        # Different env_vars make eight distinct runtime_envs sharing one pixi URI, so the
        # agent sets them up concurrently.
        refs = [probe.options(runtime_env={"pixi": spec, "env_vars": {"N": str(i)}}).remote()
                for i in range(8)]
        seen = ray.get(refs)
    assert {s["module"] for s in seen} == {"0.5.0"}
    assert len({s["prefix"] for s in seen}) == 1
    assert shared_cluster.installs == before + 1


RAY_LINE = f'ray = {{ version = "=={ray.__version__}", extras = ["default"] }}\n'


def manifest_text(name: str, pypi: str, extra: str = "") -> str:
    """A pixi.toml pinning the cluster's Python, with `pypi` under [pypi-dependencies]."""
    return (f'[workspace]\nname = "{name}"\nchannels = ["conda-forge"]\n'
            f'platforms = ["linux-64"]\n[dependencies]\npython = "=={CLUSTER_PYTHON}"\n'
            f'[pypi-dependencies]\n{pypi}{extra}')


def write_locked(manifest: Path, text: str) -> None:
    manifest.write_text(text)
    subprocess.run([str(FAKE_PIXI), "lock", "--manifest-path", str(manifest)], check=True)


def test_a_self_contained_manifest_needs_no_working_dir(shared_cluster, tmp_path: Path) -> None:
    write_locked(tmp_path / "pixi.toml", manifest_text(
        "demo", 'pyjokes = "==0.8.3"\n' + RAY_LINE,
        '[activation.env]\nDEMO_SETTING = "from-manifest"\n'))

    @ray.remote(max_calls=1)
    def setting() -> tuple[str, str]:
        import os
        from importlib.metadata import version

        import pyjokes  # noqa: F401
        return version("pyjokes"), os.environ["DEMO_SETTING"]

    with shared_cluster.job(runtime_env={"pixi": pixi(tmp_path / "pixi.toml")}):
        assert ray.get(setting.remote()) == ("0.8.3", "from-manifest")


def write_project(root: Path, value: int) -> None:
    (root / "mypkg" / "src" / "mypkg").mkdir(parents=True, exist_ok=True)
    (root / "mypkg" / "pyproject.toml").write_text(
        '[project]\nname = "mypkg"\nversion = "0.1"\n'
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n')
    (root / "mypkg" / "src" / "mypkg" / "__init__.py").write_text(f"VALUE = {value}\n")
    write_locked(root / "pixi.toml", manifest_text(
        "proj", 'mypkg = { path = "./mypkg", editable = true }\n' + RAY_LINE))


@ray.remote(max_calls=1)
def mypkg_value() -> tuple[int, str]:
    import mypkg

    return mypkg.VALUE, mypkg.__file__


def test_project_mode_rebuilds_only_when_env_defining_files_change(
    shared_cluster, tmp_path: Path
) -> None:
    write_project(tmp_path, 1)
    (tmp_path / "driver.py").write_text("# v1\n")

    def run() -> tuple[int, str]:
        spec = pixi("pixi.toml", include=["mypkg/**"], working_dir=tmp_path)
        with shared_cluster.job(runtime_env={"working_dir": str(tmp_path), "pixi": spec}):
            return ray.get(mypkg_value.remote())

    before = shared_cluster.installs
    value, path = run()
    assert value == 1 and path.startswith(str(shared_cluster.store / "envs"))
    (tmp_path / "driver.py").write_text("# v2: edited, new working_dir upload\n")
    assert run() == (1, path)
    assert shared_cluster.installs == before + 1
    (tmp_path / "mypkg" / "src" / "mypkg" / "__init__.py").write_text("VALUE = 2\n")
    assert run()[0] == 2
    assert shared_cluster.installs == before + 2


def test_a_raw_project_spec_works_without_the_helper(shared_cluster, tmp_path: Path) -> None:
    """As `ray job submit --runtime-env-json` sends it: no digest, so the agent hashes the
    downloaded working_dir itself."""
    write_project(tmp_path, 7)
    runtime_env = {"working_dir": str(tmp_path),
                   "pixi": {"manifest": "pixi.toml", "include": ["mypkg/**"]}}
    with shared_cluster.job(runtime_env=runtime_env):
        value, _ = ray.get(mypkg_value.remote())
    assert value == 7


def test_a_plain_string_names_the_manifest_in_the_working_dir(
    shared_cluster, tmp_path: Path
) -> None:
    write_locked(tmp_path / "pixi.toml", manifest_text("plain", 'pyjokes = "==0.6.0"\n' + RAY_LINE))
    with shared_cluster.job(runtime_env={"working_dir": str(tmp_path), "pixi": "pixi.toml"}):
        assert ray.get(probe.remote())["module"] == "0.6.0"


def test_an_env_without_the_clusters_ray_fails_setup_with_the_remedy(
    shared_cluster, tmp_path: Path
) -> None:
    spec = {"manifest": "pixi.toml", "locked": False,
            "manifest_content": manifest_text("noray", 'pyjokes = "*"\n')}
    with shared_cluster.job(), pytest.raises(RuntimeEnvSetupError) as e:
        ray.get(probe.options(runtime_env={"pixi": spec}).remote())
    text = str(e.value)
    assert f"it has Ray (not installed) but the cluster runs {ray.__version__}" in text
    assert RAY_LINE.strip() in text


def test_a_failed_install_surfaces_the_log_tail(own_cluster, tmp_path: Path) -> None:
    with own_cluster(FAKE_PIXI_FAIL_INSTALL="failed to fetch repodata: connection reset") as c:
        with c.job(), pytest.raises(RuntimeEnvSetupError) as e:
            ray.get(probe.options(
                runtime_env={"pixi": pixi(pypi_dependencies={"pyjokes": "*"})}).remote())
        text = str(e.value)
        assert "exited with code 1" in text
        assert "failed to fetch repodata: connection reset" in text
        log = text.split("Full log: ", 1)[1].split()[0]
        assert log.startswith(str(c.logs / "pixi")) and Path(log).is_file()
        assert c.envs() == []


def test_a_timed_out_install_is_killed_and_never_reused(own_cluster, tmp_path: Path) -> None:
    """Ray cancels an attempt at setup_timeout_seconds and retries: the hung pixi's process
    group is killed, its half-written env is discarded, and the retry installs afresh."""
    hung = tmp_path / "hung.pid"
    with own_cluster(FAKE_PIXI_HANG_INSTALL=str(hung),
                     FAKE_PIXI_FAULT_ONCE=str(tmp_path / "faulted")) as c:
        spec = pixi(pypi_dependencies={"pyjokes": "==0.8.3"})
        with c.job():
            seen = ray.get(probe.options(runtime_env={
                "pixi": spec, "config": {"setup_timeout_seconds": 15}}).remote())
        with pytest.raises(ProcessLookupError):
            os.kill(int(hung.read_text()), 0)  # the hung pixi was killed with its group
        key = Path(seen["prefix"]).parents[2].name
        attempts = sorted((c.logs / "pixi").glob(f"install-{key}-*.log"))
        assert len(attempts) == 2, attempts  # the timed-out attempt, then a full install
        assert "[exit code" not in attempts[0].read_text()
        assert seen["module"] == "0.8.3" and c.installs == 1


def test_two_nodes_on_one_host_share_one_install(own_cluster) -> None:
    with own_cluster(nodes=2, cpus=1) as c:
        with c.job(runtime_env={"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"})}):
            nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            assert len(nodes) == 2
            seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False)).remote() for node in nodes])
        assert {s["node"] for s in seen} == set(nodes)
        assert len({s["prefix"] for s in seen}) == 1
        assert c.installs == 1


def test_a_new_ray_session_reuses_the_store(own_cluster, tmp_path: Path) -> None:
    spec = {"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"})}
    with own_cluster() as c, c.job(runtime_env=spec):
        first = ray.get(probe.remote())
    with own_cluster() as c:  # ray stop / ray start: a new session, same store directory
        with c.job(runtime_env=spec):
            second = ray.get(probe.remote())
        assert c.installs == 1
    assert first["prefix"] == second["prefix"]


def test_a_small_cache_cap_evicts_an_unused_env(own_cluster) -> None:
    with own_cluster(RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB="0.000001") as c:
        with c.job():
            first = ray.get(probe.options(
                runtime_env={"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"})}).remote())
            first_key = Path(first["prefix"]).parents[2].name
            assert first_key in c.envs()
            # Once no worker uses the first env, adding another pushes the cache over its
            # cap and Ray evicts the unused one.
            deadline = time.monotonic() + 120
            while first_key in c.envs():
                assert time.monotonic() < deadline, "the unused env was never evicted"
                ray.get(probe.options(runtime_env={"pixi": pixi(
                    pypi_dependencies={"pyjokes": "==0.6.0"}), "env_vars": {
                    "T": str(time.monotonic())}}).remote())
        assert not (c.store / "envs" / f"{first_key}.json").exists()


def test_a_store_path_with_shell_syntax_cannot_inject(own_cluster, tmp_path: Path) -> None:
    """Ray splices py_executable into `bash -c` unquoted; the plugin must quote it."""
    store = tmp_path / "my store $(touch INJECTED) ; echo"
    with own_cluster(RAY_PIXI_STORE_DIR=str(store)) as c, c.job(
            runtime_env={"pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"})}):
        seen = ray.get(probe.remote())
    assert seen["prefix"].startswith(str(store / "envs"))
    # An injected `touch` would run in the shell that starts the worker, in its cwd.
    assert not (Path(seen["cwd"]) / "INJECTED").exists()
    assert not list(tmp_path.rglob("INJECTED"))
