"""The plugin on live local Ray clusters with real pixi: what workers import, where they
run, how often environments are installed, and what a user reads when something is wrong."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import ray
from ray.exceptions import RuntimeEnvSetupError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from projects import (
    ACTIVATION_PACKAGE,
    RAY_LINE,
    manifest_text,
    write_locked,
    write_package,
)
from ray_pixi import pixi
from realpixi.recipes import ACTIVATED_VAR, PATH_VAR, ActivationRecipe
from support import install_logs

pytestmark = pytest.mark.integration
JOKES = {"pyjokes": "==0.8.3"}


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
            "activated": os.environ.get(ACTIVATED_VAR),
            "activated_path": os.environ.get(PATH_VAR),
            "node": worker_ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "cwd": os.getcwd(), "sys_path": sys.path}


def key_of(seen: dict) -> str:
    """The store key of the environment a worker ran in (<store>/envs/<key>/.pixi/...)."""
    return Path(seen["prefix"]).parents[2].name


def test_a_task_imports_what_only_its_inline_env_has_with_its_packages_activation(
    shared_cluster,
) -> None:
    with pytest.raises(ImportError):
        __import__("pyjokes")  # the driver's environment does not have it
    spec = pixi(pypi_dependencies=JOKES, dependencies={ACTIVATION_PACKAGE: "*"})
    with shared_cluster.job(runtime_env={"pixi": spec}):
        seen = ray.get(probe.remote())
    store = str(shared_cluster.store / "envs")
    assert seen["module"] == "0.8.3"
    assert seen["prefix"].startswith(store) and seen["file"].startswith(seen["prefix"])
    assert seen["ray"] == ray.__version__
    assert seen["pixi_env"] == "default"
    # What the package's etc/conda/activate.d script exports, captured once at install.
    assert seen["activated"] == ActivationRecipe().activated_value
    assert seen["activated_path"].split(os.pathsep)[0].startswith(seen["prefix"])
    # The env's bin first, then the node's own PATH as the raylet had it.
    assert seen["path"] == os.path.join(seen["prefix"], "bin") + os.pathsep + os.environ["PATH"]


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


def test_a_manifest_locked_by_pixi_installs_from_its_lock(
    shared_cluster, tmp_path: Path, pixi_node_env
) -> None:
    write_locked(tmp_path / "pixi.toml", manifest_text(
        "demo", pypi={"pyjokes": "==0.8.3"},
        tables={"activation": {"env": {"DEMO": "from-manifest"}}}),
        pixi_node_env)

    @ray.remote(max_calls=1)
    def setting() -> tuple[str, str]:
        import os
        from importlib.metadata import version

        return version("pyjokes"), os.environ["DEMO"]

    with shared_cluster.job(runtime_env={"pixi": pixi(tmp_path / "pixi.toml")}):
        assert ray.get(setting.remote()) == ("0.8.3", "from-manifest")


@ray.remote(max_calls=1)
def mypkg_value() -> tuple[int, str]:
    import mypkg

    return mypkg.VALUE, mypkg.__file__


def write_project(root: Path, value: int, node_env) -> None:
    """A project whose manifest lives in a subdirectory and installs a local package
    editable (pixi puts this environment at envs/.pixi/envs/default, next to it)."""
    write_package(root / "mypkg", value)
    write_locked(root / "envs" / "pixi.toml", manifest_text(
        "proj", pypi={"mypkg": {"path": "../mypkg", "editable": True}}), node_env)


def test_project_mode_in_a_subdirectory_rebuilds_only_when_env_defining_files_change(
    shared_cluster, tmp_path: Path, pixi_node_env
) -> None:
    write_project(tmp_path, 1, pixi_node_env)
    (tmp_path / "driver.py").write_text("# v1\n")

    def run() -> tuple[int, str]:
        spec = pixi("envs/pixi.toml", include=["mypkg/**"], working_dir=tmp_path)
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


def test_a_raw_project_spec_works_without_the_helper(
    shared_cluster, tmp_path: Path, pixi_node_env
) -> None:
    """As `ray job submit --runtime-env-json` sends it."""
    write_project(tmp_path, 7, pixi_node_env)
    runtime_env = {"working_dir": str(tmp_path),
                   "pixi": {"manifest": "envs/pixi.toml", "include": ["mypkg/**"]}}
    with shared_cluster.job(runtime_env=runtime_env):
        value, _ = ray.get(mypkg_value.remote())
    assert value == 7


def test_a_plain_string_names_the_manifest_in_the_working_dir(
    shared_cluster, tmp_path: Path, pixi_node_env
) -> None:
    write_locked(tmp_path / "pixi.toml", manifest_text("plain", pypi={"pyjokes": "==0.6.0"}),
                 pixi_node_env)
    with shared_cluster.job(runtime_env={"working_dir": str(tmp_path), "pixi": "pixi.toml"}):
        assert ray.get(probe.remote())["module"] == "0.6.0"


def test_an_env_without_the_clusters_ray_fails_setup_with_the_remedy(shared_cluster) -> None:
    spec = {"manifest": "pixi.toml", "locked": False,
            "manifest_content": manifest_text("noray", pypi={"pyjokes": "*"}, ray_version=None)}
    with shared_cluster.job(), pytest.raises(RuntimeEnvSetupError) as e:
        ray.get(probe.options(runtime_env={"pixi": spec}).remote())
    text = str(e.value)
    assert f"it has Ray (not installed) but the cluster runs {ray.__version__}" in text
    assert RAY_LINE.strip() in text


def test_a_failed_install_surfaces_pixis_error_and_the_log(shared_cluster) -> None:
    """pixi's report reaches the user whole: a long hyphenated name on one line (pixi wraps
    at 80 columns without a terminal unless told not to)."""
    name = "my-long-hyphenated-package-name-that-nobody-ever-published"
    spec = pixi(dependencies={name: "*"})
    with shared_cluster.job(), pytest.raises(RuntimeEnvSetupError) as e:
        ray.get(probe.options(runtime_env={"pixi": spec}).remote())
    text = str(e.value)
    assert "exited with code 1" in text
    assert f"No candidates were found for {name} *." in text  # pixi's own words, unbroken
    log = text.split("Full log: ", 1)[1].split()[0]
    assert log.startswith(str(shared_cluster.store / "logs")) and Path(log).is_file()
    # The session's logs link to it, for the dashboard's log view.
    assert (shared_cluster.logs / "pixi" / Path(log).name).resolve() == Path(log)
    key = Path(log).name.split("-")[1]  # install-<key>-<time>-<pid>.log
    assert key not in shared_cluster.envs()  # nothing half-installed is left


def pixi_processes(store: Path) -> list[int]:
    """pids of `pixi install` processes working in `store`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[1] == b"install" and str(store).encode() in b" ".join(argv):
            found.append(int(entry.name))
    return found


def test_a_timed_out_install_is_killed_and_never_reused(own_cluster, pixi_mirror) -> None:
    """Ray cancels an attempt at setup_timeout_seconds and retries: the hung pixi's process
    group is killed, its half-written env is discarded, and the retry installs afresh. The
    site's mirror stalling is what hangs real pixi."""
    with own_cluster() as c:
        spec = pixi(pypi_dependencies={"pyjokes": "==0.8.3"}, dependencies={"six": "*"})
        with pixi_mirror.stall("/conda-forge/*/repodata*") as stall, c.job():
            ref = probe.options(runtime_env={
                "pixi": spec, "config": {"setup_timeout_seconds": 60}}).remote()
            assert stall.wait_hit(timeout=120), "pixi never asked the mirror for repodata"
            deadline = time.monotonic() + 120
            while not (hung := pixi_processes(c.store)):
                assert time.monotonic() < deadline, "no pixi install process appeared"
                time.sleep(0.1)  # poll /proc for the process the stall holds
            while any(Path(f"/proc/{pid}").exists() for pid in hung):
                assert time.monotonic() < deadline, "the hung pixi was never killed"
                time.sleep(0.1)  # poll until the plugin's cancellation has killed it
            stall.release()  # the retry's solve goes through
            seen = ray.get(ref)
        key = key_of(seen)
        attempts = install_logs(c.store, key)
        assert len(attempts) == 2, attempts  # the timed-out attempt, then a full install
        assert "[exit code" not in attempts[0].read_text().split("$ ")[1]
        assert seen["module"] == "0.8.3" and c.installs == 1


def test_two_nodes_on_one_host_share_one_install(own_cluster) -> None:
    with own_cluster(nodes=2, cpus=1) as c:
        with c.job(runtime_env={"pixi": pixi(pypi_dependencies=JOKES)}):
            nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            assert len(nodes) == 2
            seen = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node, soft=False)).remote() for node in nodes])
        assert {s["node"] for s in seen} == set(nodes)
        assert len({s["prefix"] for s in seen}) == 1
        assert c.installs == 1


def test_a_new_ray_session_reuses_the_store(own_cluster, tmp_path: Path) -> None:
    spec = {"pixi": pixi(pypi_dependencies=JOKES)}
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
            first = ray.get(probe.options(runtime_env={"pixi": pixi(pypi_dependencies=JOKES)})
                            .remote())
            first_key = key_of(first)
            assert first_key in c.envs()
            # Once no worker uses the first env, adding another pushes the cache over its
            # cap and Ray evicts the unused one.
            deadline = time.monotonic() + 300
            while first_key in c.envs():
                assert time.monotonic() < deadline, "the unused env was never evicted"
                ray.get(probe.options(runtime_env={"pixi": pixi(
                    pypi_dependencies={"pyjokes": "==0.6.0"}), "env_vars": {
                    "T": str(time.monotonic())}}).remote())
        assert not (c.store / "envs" / f"{first_key}.json").exists()


def test_a_store_path_with_shell_syntax_cannot_inject(own_cluster, tmp_path: Path) -> None:
    """Ray splices py_executable into `bash -c` unquoted; the plugin must quote it."""
    store = tmp_path / "my store ; echo & (x) >y"
    with own_cluster(store=store) as c, c.job(runtime_env={"pixi": pixi(
            pypi_dependencies=JOKES)}):
        seen = ray.get(probe.remote())
    assert seen["prefix"].startswith(str(store / "envs"))
    assert seen["module"] == "0.8.3"


def test_a_store_path_pixis_activation_would_expand_is_refused(own_cluster,
                                                               tmp_path: Path) -> None:
    """pixi's activation script (bash) holds the prefix in double quotes: a `$(...)` in the
    store path would run there. The plugin refuses such a store before running pixi."""
    store = tmp_path / "store $(touch INJECTED)"
    with own_cluster(store=store) as c, c.job():
        with pytest.raises(RuntimeEnvSetupError) as e:
            ray.get(probe.options(runtime_env={"pixi": pixi(pypi_dependencies=JOKES)}).remote())
        assert ray.get(plain.remote()) == "ran"  # the node is fine for other jobs
    assert f"ray-pixi's environment store {store} cannot be used" in str(e.value)
    assert "its path contains '$'" in str(e.value)
    assert not list(tmp_path.rglob("INJECTED"))


@ray.remote(max_calls=1)
def plain() -> str:
    return "ran"


def test_a_node_whose_store_cannot_be_used_stays_up_for_other_jobs(own_cluster,
                                                                   tmp_path: Path) -> None:
    """A store path that is a file (a volume mounted wrong): pixi jobs fail naming it and
    the fix; the node, and jobs without pixi, carry on."""
    store = tmp_path / "store"
    store.write_text("not a directory")
    with own_cluster(store=store) as c, c.job():
        with pytest.raises(RuntimeEnvSetupError) as e:
            ray.get(probe.options(runtime_env={"pixi": pixi(pypi_dependencies=JOKES)}).remote())
        assert ray.get(plain.remote()) == "ran"
        assert ray.get(plain.options(runtime_env={"env_vars": {"A": "1"}}).remote()) == "ran"
        assert all(n["Alive"] for n in ray.nodes())
    text = str(e.value)
    assert f"ray-pixi's environment store {store} cannot be used on this node" in text
    assert "is not a directory" in text and "RAY_PIXI_STORE_DIR" in text


def test_a_project_is_keyed_by_exactly_what_ray_uploaded(
    shared_cluster, tmp_path: Path, pixi_node_env
) -> None:
    """A symlinked directory inside `include` (Ray's zip follows it), a file .gitignore
    hides and one runtime_env['excludes'] drops: the environment is built from, and keyed
    by, the files the node received, with no 'files differ' failure."""
    outside = tmp_path / "shared-data"
    outside.mkdir()
    (outside / "table.txt").write_text("from a symlinked directory\n")
    project = tmp_path / "proj"
    write_locked(project / "pixi.toml", manifest_text("upload", pypi={"pyjokes": "==0.8.3"}),
                 pixi_node_env)
    (project / "data").mkdir()
    (project / "data" / "kept.txt").write_text("kept\n")
    (project / "data" / "secret.txt").write_text("ignored by git\n")
    (project / "data" / "big.bin").write_bytes(b"excluded by the runtime_env\n")
    (project / ".gitignore").write_text("data/secret.txt\n")
    os.symlink(outside, project / "data" / "linked")

    @ray.remote(max_calls=1)
    def env_files() -> list[str]:
        import os

        root = os.path.join(os.environ["PIXI_PROJECT_ROOT"], "data")
        return sorted(os.path.relpath(os.path.join(d, f), root)
                      for d, _, fs in os.walk(root) for f in fs)

    runtime_env = {"working_dir": str(project), "excludes": ["data/big.bin"],
                   "pixi": pixi("pixi.toml", include=["data/**"], working_dir=project)}
    with shared_cluster.job(runtime_env=runtime_env):
        assert ray.get(env_files.remote()) == ["kept.txt", "linked/table.txt"]
