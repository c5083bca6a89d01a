"""Ray's token authentication on, as Ray 2.61 has it for every cluster: a cluster of the
test's own (`ray start` on free ports, its own temp dir) with RAY_AUTH_MODE=token and a token
in a file of its own (a HOME of its own too, so the machine's ~/.ray/auth_token is never read
or written). The pixi scenario runs through `ray job submit` and `ray.init`; `ray-pixi
prefetch` and `ray-pixi doctor` take the token as Ray's tools do; a missing or wrong token
gets a message that says so and how to pass one."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from ray_pixi import doctor, pixi
from support import free_port, installs, stop_cluster_under

pytestmark = pytest.mark.integration
RAY = Path(sys.executable).parent / "ray"
JOKES = {"pyjokes": "==0.8.3"}
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS",
             "RAY_API_SERVER_ADDRESS")
DRIVER = textwrap.dedent("""
    import json, sys
    import ray

    @ray.remote
    def look():
        import sys
        import pyjokes
        return {"prefix": sys.prefix, "pyjokes": pyjokes.__file__}

    ray.init(**json.loads(sys.argv[1]))
    print("RESULT " + json.dumps({"driver": sys.prefix, "task": ray.get(look.remote())}))
""")


@dataclass
class TokenCluster:
    gcs: str
    dashboard: str
    token: str
    token_file: Path
    store: Path
    temp: Path
    home: Path  # the users' shells' HOME: no ~/.ray/auth_token in it

    def shell(self, **auth: str) -> dict[str, str]:
        """A user's shell on this machine, with only the auth variables given."""
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        return {**env, "HOME": str(self.home), **auth}

    def with_token(self) -> dict[str, str]:
        return self.shell(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_file))


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory: pytest.TempPathFactory,
                  pixi_node_env: Mapping[str, str]) -> Iterator[TokenCluster]:
    tmp = tmp_path_factory.mktemp("token")
    token = secrets.token_hex(32)
    token_file = tmp / "cluster-token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    (tmp / "node-home").mkdir()
    (tmp / "user-home").mkdir()
    temp = Path(tempfile.mkdtemp(prefix="rp-tok-", dir="/tmp"))  # short socket paths
    store = tmp / "store"
    node = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    node.update({
        **pixi_node_env,
        "HOME": str(tmp / "node-home"),
        "RAY_TMPDIR": str(temp),
        "RAY_RUNTIME_ENV_PLUGINS": json.dumps([{"class": "ray_pixi.PixiPlugin"}]),
        "RAY_PIXI_STORE_DIR": str(store),
        "RAY_RUNTIME_ENV_LOG_TO_DRIVER_ENABLED": "1",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
    })
    dashboard_port = free_port()
    # The GCS on a port the kernel picks (--port 0): Ray's GCS binds with SO_REUSEPORT, so
    # on a port another process chose too, two clusters' GCS would share it and answer
    # each other's clients.
    started = subprocess.run(
        [str(RAY), "start", "--head", "--num-cpus", "2", "--temp-dir", str(temp),
         "--port", "0", "--include-dashboard", "true",
         "--dashboard-port", str(dashboard_port),
         "--dashboard-agent-listen-port", str(free_port()),
         "--ray-client-server-port", str(free_port())],
        env=node, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        gcs_port = re.search(r"ray start --address='[^']+:(\d+)'", started.stdout)[1]  # type: ignore[index]
        yield TokenCluster(f"127.0.0.1:{gcs_port}", f"http://127.0.0.1:{dashboard_port}",
                           token, token_file, store, temp, tmp / "user-home")
    finally:
        stop_cluster_under(temp)  # never `ray stop`: it stops every Ray on the machine
        shutil.rmtree(temp, ignore_errors=True)


def ray_job_submit(c: TokenCluster, env: Mapping[str, str], *args: str
                   ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RAY), "job", "submit", "--address", c.dashboard, *args],
                          capture_output=True, text=True, timeout=900, env=dict(env))


def ray_pixi(env: Mapping[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ray_pixi.cli", *argv], capture_output=True,
                          text=True, timeout=900, env=dict(env))


def result(text: str) -> dict[str, object]:
    return json.loads(text.split("RESULT ", 1)[1].splitlines()[0])  # type: ignore[no-any-return]


def test_a_pixi_job_runs_in_its_env_through_ray_job_submit_and_ray_init_with_the_token(
    token_cluster: TokenCluster, tmp_path: Path,
) -> None:
    c = token_cluster
    spec = pixi(pypi_dependencies=JOKES)
    job = tmp_path / "job"
    job.mkdir()
    (job / "driver.py").write_text(DRIVER)
    # RAY_AUTH_TOKEN in the environment: the Jobs API, the working_dir upload, the job's
    # driver and its task all pass.
    submitted = ray_job_submit(
        c, c.shell(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=c.token),
        "--working-dir", str(job), "--runtime-env-json", json.dumps({"pixi": spec}),
        "--", "python", "driver.py", "{}")
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    seen = result(submitted.stdout)
    env_prefix = seen["driver"]
    assert isinstance(env_prefix, str) and env_prefix.startswith(str(c.store / "envs"))
    assert seen["task"] == {"prefix": env_prefix, "pyjokes": seen["task"]["pyjokes"]}  # type: ignore[index]
    assert str(seen["task"]["pyjokes"]).startswith(env_prefix)

    # ray.init from a driver whose token is in a file (RAY_AUTH_TOKEN_PATH).
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps({"address": c.gcs,
                                                   "runtime_env": {"pixi": spec}})],
        capture_output=True, text=True, timeout=900, env=c.with_token())
    assert driver.returncode == 0, driver.stdout[-3000:] + driver.stderr[-3000:]
    assert result(driver.stdout)["task"]["prefix"] == env_prefix  # type: ignore[index]
    assert installs(c.store) == 1


def test_prefetch_and_doctor_take_the_token_as_rays_tools_do(token_cluster: TokenCluster
                                                             ) -> None:
    c = token_cluster
    done = ray_pixi(c.with_token(), "prefetch", "--address", c.gcs, "--pypi",
                    "pyjokes==0.8.3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1/1 node(s) ready" in done.stdout and str(c.store / "envs") in done.stdout

    raylets = [a for a in doctor.find_agents()
               if a.session_dir and a.session_dir.startswith(str(c.temp))]
    assert len(raylets) == 1, raylets
    pid = str(raylets[0].pid)
    checked = ray_pixi(c.with_token(), "doctor", "--agent-pid", pid)
    assert checked.returncode == 0, checked.stdout
    assert "ok    plugin registered" in checked.stdout
    assert (f"ok    token auth: on (RAY_AUTH_MODE=token), the node's token from "
            f"RAY_AUTH_TOKEN_PATH={c.token_file}; this shell sends the same token (from "
            f"RAY_AUTH_TOKEN_PATH={c.token_file})") in checked.stdout, checked.stdout

    # A shell without the token: doctor warns that jobs from here are refused, and how.
    bare = ray_pixi(c.shell(), "doctor", "--agent-pid", pid)
    assert bare.returncode == 0, bare.stdout
    assert "warn  token auth: on (RAY_AUTH_MODE=token)" in bare.stdout
    assert ("this shell sends no token, so `ray job submit` and `ray-pixi prefetch` from "
            "here are refused") in bare.stdout
    assert "fix: pass the cluster's token as Ray's tools take it: RAY_AUTH_MODE=token " \
           "with RAY_AUTH_TOKEN=<token>" in bare.stdout


def test_a_missing_or_wrong_token_says_so_and_how_to_pass_one(token_cluster: TokenCluster
                                                             ) -> None:
    c = token_cluster
    how = ("as Ray's tools take it: RAY_AUTH_MODE=token with RAY_AUTH_TOKEN=<token>, or "
           "RAY_AUTH_TOKEN_PATH=<file holding it>, or the file ~/.ray/auth_token")
    missing = ray_pixi(c.shell(), "prefetch", "--address", c.gcs, "--pypi", "six")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith(
        f"ray-pixi: the Ray cluster at '{c.gcs}' requires a Ray auth token and this shell "
        f"sent none; pass it {how}"), missing.stderr
    unsent = ray_pixi(c.shell(RAY_AUTH_TOKEN=c.token), "prefetch", "--address", c.gcs,
                      "--pypi", "six")
    assert unsent.returncode == 2
    assert "(RAY_AUTH_TOKEN is set, but Ray sends a token only with RAY_AUTH_MODE=token)" \
        in unsent.stderr, unsent.stderr
    wrong = ray_pixi(c.shell(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64), "prefetch",
                     "--address", c.gcs, "--pypi", "six")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith(
        f"ray-pixi: the Ray cluster at '{c.gcs}' refused the Ray auth token from "
        f"RAY_AUTH_TOKEN; pass this cluster's token {how}"), wrong.stderr
    for refused in (missing, unsent, wrong):
        assert refused.stderr.count("\n") == 1  # one line, no traceback

    # What `ray job submit` itself prints: the reason, and where Ray looks for a token.
    no_token = ray_job_submit(c, c.shell(), "--", "python", "-c", "print('never runs')")
    assert no_token.returncode != 0 and "never runs" not in no_token.stdout
    out = no_token.stdout + no_token.stderr
    assert "Authentication required: Unauthorized: Missing authentication token" in out
    assert "RAY_AUTH_MODE is currently 'disabled' (not 'token')" in out
    assert "RAY_AUTH_TOKEN_PATH" in out and "`RAY_AUTH_TOKEN` environment variable" in out
    bad = ray_job_submit(c, c.shell(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64),
                         "--", "python", "-c", "print('never runs')")
    assert bad.returncode != 0
    assert "Forbidden: Invalid authentication token" in bad.stdout + bad.stderr
    assert "the authentication token is invalid or incorrect" in bad.stdout + bad.stderr
