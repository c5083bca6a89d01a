"""`ray-pixi` without a cluster: complete --help, one-line errors, the doctor's checks, and
`envs list|rm|gc` on a store whose locks are held the way agents hold them."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from ray_pixi import cli, doctor, pixi, settings
from ray_pixi.activation import Activation
from ray_pixi.commands import prefetch
from ray_pixi.pixi_cli import MIN_PIXI_VERSION, read_pixi_version
from ray_pixi.records import ReadyRecord
from ray_pixi.store import Store
from support import session_pixi

REGISTERED = json.dumps([{"class": "ray_pixi.PixiPlugin"}])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "options"), [
    ([], ["doctor", "envs", "prefetch", "demo"]),
    (["doctor"], ["--agent-pid", "--shell", "--python", "--strict", "RAY_RUNTIME_ENV_PLUGINS",
                  "PIXI_CACHE_DIR", "RAY_PIXI_STORE_DIR", "RAY_PIXI_EXE"]),
    (["envs"], ["list", "rm", "gc", "lock", "RAY_PIXI_STORE_DIR"]),
    (["envs", "lock"], ["KEY", "--store"]),
    (["envs", "list"], ["--store", "--json"]),
    (["envs", "rm"], ["KEY", "--store", "never removed"]),
    (["envs", "gc"], ["--older-than", "--dry-run", "--store"]),
    (["prefetch"], ["--address", "--manifest", "--pypi", "--conda", "--channel",
                    "--runtime-env-json", "--environment", "--timeout", "examples:"]),
    (["demo"], ["--num-cpus"]),
])
def test_help_lists_every_option(capsys, argv: list[str], options: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in options:
        assert option in text


@pytest.mark.parametrize(("text", "expected"), [
    ("requests>=2.31", ("requests", ">=2.31")),
    ("numpy", ("numpy", "*")),
    ("ray[default]==2.60.0", ("ray", {"version": "==2.60.0", "extras": ["default"]})),
    ("typing_extensions >= 4, <5", ("typing_extensions", ">= 4, <5")),
])
def test_requirements_become_pixi_dependency_tables(text: str, expected: tuple) -> None:
    assert prefetch._requirement(text, "--pypi") == expected


def test_prefetch_builds_the_runtime_env_a_job_would_send() -> None:
    args = cli.build_parser().parse_args(
        ["prefetch", "--pypi", "pyjokes==0.8.3", "--timeout", "60"])
    assert prefetch.build_prefetch_env(args) == {
        "pixi": pixi(pypi_dependencies={"pyjokes": "==0.8.3"}),
        "config": {"setup_timeout_seconds": 60}}


@pytest.mark.parametrize(("argv", "message"), [
    (["prefetch"], "give exactly one of --manifest PATH"),
    (["prefetch", "--pypi", "x", "--manifest", "pixi.toml"], "give exactly one of"),
    (["prefetch", "--pypi", "==1"], "--pypi '==1' is not a requirement"),
    (["prefetch", "--runtime-env-json", "{nope"], "--runtime-env-json is not JSON"),
    (["prefetch", "--runtime-env-json", '{"pip": ["six"]}'], "with a 'pixi' field"),
    (["prefetch", "--manifest", "/nonexistent/pixi.toml"], "/nonexistent/pixi.toml"),
])
def test_prefetch_mistakes_are_one_line_with_the_remedy(capsys, argv, message) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("ray-pixi: ") and message in err and err.count("\n") == 1


def test_a_setup_failure_is_shortened_to_the_plugins_message() -> None:
    text = ("Failed to set up runtime environment.\nTraceback (most recent call last):\n"
            '  File "x.py", line 1\nray_pixi.errors.PixiInstallError: `pixi install '
            "--manifest-path m` exited with code 1.\nLast lines of pixi's output:\n"
            "  · linking packages\nError:   × failed to solve the conda requirements\n"
            "  ╰─▶ No candidates were found for numpy >=2.\n[exit code 1]\n"
            "Full log: /tmp/l.log\n")
    line = prefetch._one_line(RuntimeError(text))
    assert "\n" not in line
    assert "failed to solve" in line and "No candidates were found for numpy >=2." in line
    assert line.endswith("Full log: /tmp/l.log")


def test_pixi_0_77s_wrapped_error_report_gives_its_first_and_innermost_lines() -> None:
    """As pixi 0.77.0 writes it to a log (no tty: miette wraps at 80 columns, `│` gutters,
    nested causes): the innermost cause, which names the missing package, survives whole."""
    text = ("ray_pixi.errors.PixiInstallError: `pixi install --manifest-path m` exited with "
            "code 1.\nError:   × failed to solve requirements of environment 'default' for "
            "platform 'linux-\n  │ 64'\n  ├─▶   × failed to solve the environment\n  │   \n"
            "  ╰─▶ Cannot solve the request because of: No candidates were found for numpy\n"
            "      >=2.\n      \n\n[exit code 1 after 0.1 s]\nFull log: /tmp/l.log\n")
    line = prefetch._one_line(RuntimeError(text))
    assert line == (
        "`pixi install --manifest-path m` exited with code 1. pixi: failed to solve "
        "requirements of environment 'default' for platform 'linux-64' cause: Cannot solve "
        "the request because of: No candidates were found for numpy >=2. Full log: /tmp/l.log"
    )


# -- doctor ------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "status", "words"), [
    (None, doctor.FAIL, "is not set"),
    ("{not json", doctor.FAIL, "is not JSON"),
    ('{"class": "ray_pixi.PixiPlugin"}', doctor.FAIL, "must be a JSON list"),
    ('[{"class": "other.Plugin"}]', doctor.FAIL, "not ray_pixi.PixiPlugin"),
    ('[{"class": "ray_pixi.PixiPlugin", "priority": 500}]', doctor.FAIL, "priority 500"),
    (REGISTERED, doctor.OK, "lists ray_pixi.PixiPlugin"),
])
def test_the_plugin_variable_is_parsed_as_the_agent_parses_it(value, status, words) -> None:
    env = {} if value is None else {settings.PLUGINS: value}
    check = doctor.check_plugins_var(env, "the agent")
    assert check.status == status and words in check.detail
    if status == doctor.FAIL:
        assert check.fix
    if words in ("is not JSON", "must be a JSON list", "priority 500"):
        assert check.detail.startswith(f"Invalid RAY_RUNTIME_ENV_PLUGINS={value!r}: ")


def test_pixi_is_found_and_its_version_checked(tmp_path: Path) -> None:
    pixi = str(session_pixi())
    ok = doctor.check_pixi({"RAY_PIXI_EXE": pixi}, MIN_PIXI_VERSION, read_pixi_version)
    assert ok.status == doctor.OK and "is pixi 0.77.0" in ok.detail
    too_old = doctor.check_pixi({"RAY_PIXI_EXE": pixi}, MIN_PIXI_VERSION,
                                lambda path: (0, 30, 1))
    assert too_old.status == doctor.FAIL and "needs 0.53.0 or newer" in too_old.detail
    missing = doctor.check_pixi({"PATH": str(tmp_path)}, MIN_PIXI_VERSION, read_pixi_version)
    assert missing.status == doctor.FAIL and "RAY_PIXI_EXE" in missing.fix
    pinned = doctor.check_pixi({"PATH": str(tmp_path), "RAY_PIXI_PIXI_VERSION": "0.77.0"},
                               MIN_PIXI_VERSION, read_pixi_version)
    assert pinned.status == doctor.WARN and "downloaded" in pinned.detail
    bad = doctor.check_pixi({"RAY_PIXI_EXE": str(tmp_path)}, MIN_PIXI_VERSION,
                            read_pixi_version)
    assert bad.status == doctor.FAIL and "not an executable file" in bad.detail


def test_store_and_cache_must_be_writable_and_should_share_a_filesystem(tmp_path: Path) -> None:
    env = {"RAY_PIXI_STORE_DIR": str(tmp_path / "store"),
           "PIXI_CACHE_DIR": str(tmp_path / "cache")}
    checks = {c.name: c for c in doctor.check_dirs(env, settings.store_dir(env))}
    assert checks["store dir"].status == doctor.OK and "will be created" in \
        checks["store dir"].detail
    assert checks["same filesystem"].status == doctor.OK
    (tmp_path / "file").write_text("")
    blocked = {c.name: c for c in doctor.check_dirs(env, tmp_path / "file" / "store")}
    assert blocked["store dir"].status == doctor.FAIL
    assert "RAY_PIXI_STORE_DIR" in blocked["store dir"].fix
    if Path("/dev/shm").is_dir() and os.stat("/dev/shm").st_dev != tmp_path.stat().st_dev:
        split = {c.name: c for c in doctor.check_dirs(
            {**env, "PIXI_CACHE_DIR": "/dev/shm/c"}, tmp_path / "store")}
        assert split["same filesystem"].status == doctor.WARN
        assert "copies packages" in split["same filesystem"].detail
    tight = {c.name: c for c in doctor.check_dirs(
        {**env, "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB": "1e9"}, tmp_path / "store")}
    assert tight["free disk"].status == doctor.WARN


def test_doctor_exits_nonzero_and_says_what_to_fix(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAY_PIXI_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("PIXI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAY_PIXI_EXE", str(session_pixi()))
    monkeypatch.delenv(settings.PLUGINS, raising=False)
    code, out, _ = run(capsys, "doctor", "--shell", "--python", sys.executable)
    assert code == 1
    assert "FAIL  plugin registered: RAY_RUNTIME_ENV_PLUGINS is not set" in out
    assert f"fix: {settings.REGISTER_LINE}" in out
    assert "ok    plugin importable" in out and "ok    pixi:" in out
    monkeypatch.setenv(settings.PLUGINS, REGISTERED)
    code, out, _ = run(capsys, "doctor", "--shell", "--python", sys.executable)
    assert code == 0 and "0 problem(s)" in out, out


def test_doctor_names_a_python_that_lacks_the_plugin(capsys, tmp_path: Path,
                                                    monkeypatch) -> None:
    bare = tmp_path / "python"
    bare.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named ray_pixi' >&2\n"
                    "exit 1\n")
    bare.chmod(0o755)
    monkeypatch.setenv(settings.PLUGINS, REGISTERED)
    code, out, _ = run(capsys, "doctor", "--shell", "--python", str(bare))
    assert code == 1
    assert f"FAIL  plugin importable: {bare} cannot import the plugin: " \
           "ModuleNotFoundError" in out
    assert f"fix: `{bare} -m pip install ray-pixi`" in out


# -- envs --------------------------------------------------------------------------------
def make_env(store: Store, key: str, size: int = 1000, used: float | None = None) -> None:
    (store.workspace(key) / ".pixi").mkdir(parents=True)
    store.write_ready(ReadyRecord(key, activation=Activation("p"), size_bytes=size,
                                  python="3.11.7", ray="2.60.0", mode="inline",
                                  environment="default", manifest=None))
    if used is not None:
        os.utime(store.envs / f"{key}.json", (used, used))


@pytest.fixture
def store(tmp_path: Path, monkeypatch) -> Store:
    monkeypatch.setenv("RAY_PIXI_STORE_DIR", str(tmp_path / "store"))
    s = Store(tmp_path / "store")
    make_env(s, "a" * 32, 2_000_000)
    make_env(s, "b" * 32, 3_000_000, used=time.time() - 3 * 86400)
    s.write_failed("c" * 32, "Ray would refuse this pixi environment's workers: ...")
    (s.workspace("d" * 32)).mkdir()  # an interrupted install: no marker
    return s


def test_envs_list_shows_every_entry_and_who_uses_it(capsys, store: Store) -> None:
    held = store.use_lock("a" * 32).acquire(shared=True)  # as an agent holds it
    try:
        code, out, _ = run(capsys, "envs", "list")
        rows = json.loads(run(capsys, "envs", "list", "--json")[1])
    finally:
        held.release()
    assert code == 0
    by_key = {r["key"][0]: r for r in rows}
    assert by_key["a"]["in_use"] and f"pid {os.getpid()}" in by_key["a"]["used_by"][0]
    assert by_key["b"]["status"] == "ready" and not by_key["b"]["in_use"]
    assert by_key["c"]["status"] == "failed" and by_key["d"]["status"] == "incomplete"
    line_a = next(ln for ln in out.splitlines() if ln.startswith("a" * 32))
    assert "2.0 MB" in line_a and f"yes: pid {os.getpid()}" in line_a
    assert "3d ago" in next(ln for ln in out.splitlines() if ln.startswith("b" * 32))
    assert "2 environment(s), 5.0 MB; 1 in use" in out


def test_envs_list_shows_an_install_under_way_with_its_phase_and_time(
        capsys, store: Store) -> None:
    from ray_pixi.progress import Progress, dump_progress

    key = "d" * 32
    store.progress_path(key).write_text(dump_progress(Progress(
        "10.0.0.5", key, "downloading and linking packages", time.time() - 12, os.getpid())))
    held = store.install_lock(key).acquire()  # as the installing agent holds it
    try:
        _, out, _ = run(capsys, "envs", "list")
        rows = json.loads(run(capsys, "envs", "list", "--json")[1])
    finally:
        held.release()
    row = next(r for r in rows if r["key"] == key)
    assert row["status"] == "installing" and row["phase"] == "downloading and linking packages"
    assert 12 <= row["elapsed_seconds"] < 60 and row["node"] == "10.0.0.5"
    line = next(ln for ln in out.splitlines() if ln.startswith(key))
    assert re.search(r"installing on node 10\.0\.0\.5: downloading and linking packages "
                     r"\(1[2-9] s so far\)", line)


def test_envs_rm_never_removes_an_env_in_use(capsys, store: Store) -> None:
    held = store.use_lock("a" * 32).acquire(shared=True)
    try:
        code, _, err = run(capsys, "envs", "rm", "aaaa")
        assert code == 1 and f"kept {'a' * 32}: in use by pid {os.getpid()}" in err
        assert store.read_ready("a" * 32) is not None
    finally:
        held.release()
    code, out, _ = run(capsys, "envs", "rm", "aaaa", "cc")
    assert code == 0 and f"removed {'a' * 32} (2.0 MB)" in out
    assert not store.workspace("a" * 32).exists() and store.read_failed("c" * 32) is None


def test_envs_rm_names_a_key_it_cannot_resolve(capsys, store: Store) -> None:
    make_env(store, "a" * 31 + "f")
    code, _, err = run(capsys, "envs", "rm", "aa")
    assert code == 2 and "matches 2 environments" in err and "give more of the key" in err
    code, _, err = run(capsys, "envs", "rm", "zz")
    assert code == 2 and "`ray-pixi envs list` shows the keys" in err


def test_envs_gc_removes_what_is_unused_and_keeps_what_is_used(capsys, store: Store) -> None:
    held = store.use_lock("a" * 32).acquire(shared=True)
    try:
        code, out, _ = run(capsys, "envs", "gc", "--older-than", "1d", "--dry-run")
        assert code == 0 and f"would remove {'b' * 32}" in out and "would remove aaaa" not in out
        assert store.read_ready("b" * 32) is not None
        code, out, _ = run(capsys, "envs", "gc")
        assert code == 0
    finally:
        held.release()
    assert f"kept {'a' * 32}: in use by pid {os.getpid()}" in out
    assert "freed 3.0 MB in 3 environment(s); 1 kept in use" in out
    assert sorted(p.name for p in store.envs.iterdir()) == ["a" * 32, "a" * 32 + ".json"]


def test_envs_without_a_store_say_where_they_looked(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "envs", "list", "--store", str(tmp_path / "nowhere"))
    assert code == 2 and "no ray-pixi store at" in err and "--store DIR" in err


def test_gc_rejects_an_age_it_cannot_read(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["envs", "gc", "--older-than", "soon"])
    assert e.value.code == 2 and "'soon' is not an age" in capsys.readouterr().err


def test_a_node_without_bash_is_reported(tmp_path: Path) -> None:
    assert doctor.check_bash({"PATH": str(tmp_path)}).status == doctor.FAIL
    assert doctor.check_bash({"PATH": "/usr/bin:/bin"}).status == doctor.OK


MOUNTINFO = (
    "22 27 0:21 / / rw,relatime - ext4 /dev/vda rw\n"
    "30 22 0:40 / /mnt/nfs rw,relatime - nfs4 server:/export rw,vers=4.1,local_lock=none\n"
    "31 22 0:41 / /mnt/nfs-local rw,relatime - nfs4 server:/x rw,vers=4.1,local_lock=flock\n"
)


@pytest.mark.parametrize(("store", "status", "words"), [
    ("/var/cache/store", doctor.OK, "on ext4"),
    ("/mnt/nfs/store", doctor.WARN, "only as reliable across machines"),
    ("/mnt/nfs-local/store", doctor.FAIL, "not seen by other machines"),
])
def test_the_stores_filesystem_must_share_its_locks(store: str, status: str, words: str) -> None:
    check = doctor.check_locks(Path(store), MOUNTINFO)
    assert check.status == status and words in check.detail


def test_the_nodes_pixi_config_must_exist_and_parse(tmp_path: Path) -> None:
    missing = doctor.check_pixi_config({"PIXI_CONFIG_FILE": str(tmp_path / "nope.toml")})
    assert missing.status == doctor.FAIL and "is not a file" in missing.detail
    (tmp_path / "bad.toml").write_text("[mirrors\n")
    bad = doctor.check_pixi_config({"PIXI_CONFIG_FILE": str(tmp_path / "bad.toml")})
    assert bad.status == doctor.FAIL and "cannot be read as TOML" in bad.detail
    (tmp_path / "ok.toml").write_text('tls-root-certs = "system"\n')
    ok = doctor.check_pixi_config({"PIXI_CONFIG_FILE": str(tmp_path / "ok.toml")})
    assert ok.status == doctor.OK and str(tmp_path / "ok.toml") in ok.detail


def test_pixis_cache_dir_is_resolved_as_pixi_does(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert doctor.pixi_cache_dir(env)[0] == tmp_path / "xdg" / "rattler" / "cache"
    (tmp_path / "xdg" / "pixi").mkdir(parents=True)  # pixi uses it only once it exists
    assert doctor.pixi_cache_dir(env)[0] == tmp_path / "xdg" / "pixi"
    assert doctor.pixi_cache_dir({**env, "RATTLER_CACHE_DIR": "/r"})[0] == Path("/r")


def test_a_bad_pinned_pixi_version_is_a_failure() -> None:
    [check] = doctor.check_settings({"RAY_PIXI_PIXI_VERSION": "v0.77"})
    assert check.status == doctor.FAIL
    assert check.detail == "Invalid RAY_PIXI_PIXI_VERSION='v0.77': must be a pixi release " \
        "version X.Y.Z"


def test_doctor_names_every_malformed_setting_rays_own_included(capsys, tmp_path: Path,
                                                                monkeypatch) -> None:
    """Ray parses the cache size and the plugin list when its agent starts, so doctor
    (before `ray start`) is where a malformed one is caught."""
    malformed = {
        "RAY_PIXI_DISK_BUDGET_GB": "not-a-number",
        "RAY_RUNTIME_ENV_PIXI_CACHE_SIZE_GB": "ten",
        "RAY_RUNTIME_ENV_PLUGINS": "{bad",
        "RAY_DEFAULT_PYTHON_VERSION_MATCH_LEVEL": "major",
        "RAY_PIXI_PIXI_VERSION": "v0.77",
        "RAY_PIXI_DOWNLOAD_URL": "mirror.local",
        "RAY_PIXI_STORE_DIR": "relative/store",
    }
    monkeypatch.setenv("PIXI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAY_PIXI_EXE", str(session_pixi()))
    for name, value in malformed.items():
        monkeypatch.setenv(name, value)
    code, out, _ = run(capsys, "doctor", "--shell", "--python", sys.executable)
    assert code == 1
    for name, value in malformed.items():
        assert f"FAIL  {'plugin registered' if name == settings.PLUGINS else 'setting ' + name}"\
               f": Invalid {name}={value!r}: " in out, (name, out)
    assert f"{len(malformed)} problem(s)" in out, out


def test_envs_lock_prints_the_lock_and_list_names_it(capsys, store: Store) -> None:
    key = "e" * 32
    (store.workspace(key) / ".pixi").mkdir(parents=True)
    (store.workspace(key) / "pixi.lock").write_text("version: 6\npackages: []\n")
    store.write_ready(ReadyRecord(key, activation=Activation("p"), python="3.11.7",
                                  ray="2.60.0", mode="inline", environment="default",
                                  lock_sha256="f00d" * 16, solution="s" * 32,
                                  solution_source="shared"))
    code, out, _ = run(capsys, "envs", "lock", "eee")
    assert (code, out) == (0, "version: 6\npackages: []\n")
    _, out, _ = run(capsys, "envs", "list")
    assert "lock f00df00df00d, the cluster's" in \
        next(ln for ln in out.splitlines() if ln.startswith(key))
    row = next(r for r in json.loads(run(capsys, "envs", "list", "--json")[1])
               if r["key"] == key)
    assert (row["lock_sha256"], row["solution_source"]) == ("f00d" * 16, "shared")
    code, _, err = run(capsys, "envs", "lock", "a" * 32)  # no pixi.lock in its workspace
    assert code != 0 and "has no pixi.lock" in err
