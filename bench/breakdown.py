"""Where a ray-pixi worker's start goes, next to the floor's, part by part: each part run on
its own, outside Ray, as the worker runs it (same interpreter, same variables, same
command), variants interleaved round by round.

The parts of a worker start with a runtime_env, in order: the raylet and the agent until
the fork (the agent's time is in its log: see the worker-start tables); setup_worker.py
(the cluster's python importing part of Ray, then `bash -c "exec <py_executable> ..."`);
the py_executable's interpreter start (site-packages and .pth files); importing Ray's
worker entry point from that interpreter's Ray; then connecting and running the task
(the same code in every mode).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Node, Table, log, median, ms

WORKER_IMPORT = "import ray._private.workers.default_worker"
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)")
_VERSIONS = (
    "import json, importlib.metadata as m\n"
    "out = {}\n"
    "for d in m.distributions():\n"
    "    out[d.metadata['Name'].lower().replace('_', '-')] = d.version\n"
    "print(json.dumps(out))\n"
)
_SITE = (
    "import json, os, sys, site\n"
    "pth = [f for d in site.getsitepackages() if os.path.isdir(d) for f in os.listdir(d) "
    "if f.endswith('.pth')]\n"
    "print(json.dumps({'sys_path': len(sys.path), 'pth': sorted(pth), "
    "'site_packages_entries': sum(len(os.listdir(d)) for d in site.getsitepackages() "
    "if os.path.isdir(d))}))\n"
)


def _setup_worker() -> str:
    import ray._private.workers.setup_worker as sw

    return str(sw.__file__)


def _time(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run; CPU (user + system, exec'd programs included) is
    what the process itself did, little affected by other load on the machine."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} exited with {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def _json(argv: list[str], env: dict[str, str]) -> Any:
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _importtime(argv: list[str], env: dict[str, str], runs: int) -> dict[str, float]:
    """Self time (s) per top-level package importing Ray's worker entry point, the minimum
    over `runs` runs of `-X importtime`."""
    best: dict[str, float] = {}
    for _ in range(runs):
        err = subprocess.run([*argv, "-X", "importtime", "-c", WORKER_IMPORT], env=env,
                             check=True, capture_output=True, text=True).stderr
        per: dict[str, float] = {}
        for line in err.splitlines():
            m = _IMPORT_LINE.match(line)
            if m is None:
                continue
            top = m[2].split(".")[0]
            per[top] = per.get(top, 0.0) + int(m[1]) / 1e6
        for top, t in per.items():
            best[top] = min(best.get(top, t), t)
    return best


def worker_env(base: dict[str, str], context: dict[str, Any]) -> dict[str, str]:
    """What the worker's python runs with: the raylet's variables, then the context's
    (Ray expands ${VAR} against what is already set, as setup_worker.py does)."""
    env = dict(base)
    for name, value in (context.get("env_vars") or {}).items():
        env[name] = os.path.expandvars(value.replace("${" + name + "}", base.get(name, "")))
    return env


def run(n: Node, ws_context: dict[str, Any], contexts: dict[str, str], rounds: int,
        seed: int = 11) -> tuple[list[Table], dict[str, Any]]:
    from bench.common import FRESH_WORKERS

    prefix: Path = ws_context["prefix"]
    env_python = str(prefix / "bin" / "python")
    floor = str(ws_context["floor"])
    cluster_python = sys.executable
    with n.applied(**FRESH_WORKERS):
        raylet_env = dict(os.environ)
    floor_ctx = json.loads(contexts["floor"])
    pixi_ctx = json.loads(contexts["ray-pixi"])
    floor_env = worker_env(raylet_env, floor_ctx)
    pixi_env = worker_env(raylet_env, pixi_ctx)
    setup_worker = _setup_worker()

    def chain(ctx: dict[str, Any]) -> list[str]:
        """What the raylet runs for a runtime_env worker, with Ray's worker entry point
        imported instead of run (it would connect to a raylet)."""
        return [cluster_python, setup_worker, "-c", WORKER_IMPORT,
                f"--serialized-runtime-env-context={json.dumps(ctx)}", "--language=PYTHON"]

    floor_ctx_with_pixi_vars = {**floor_ctx, "env_vars": pixi_ctx.get("env_vars") or {}}
    variants: dict[str, tuple[list[str], dict[str, str]]] = {
        "cluster python: -c pass": ([cluster_python, "-c", "pass"], floor_env),
        "cluster python: -S -c pass (no site)": ([cluster_python, "-S", "-c", "pass"],
                                                 floor_env),
        "floor wrapper: -c pass": ([floor, "-c", "pass"], floor_env),
        "env python: -c pass": ([env_python, "-c", "pass"], pixi_env),
        "env python: -S -c pass (no site)": ([env_python, "-S", "-c", "pass"], pixi_env),
        "cluster python: import Ray's worker": ([cluster_python, "-c", WORKER_IMPORT],
                                                floor_env),
        "floor wrapper: import Ray's worker": ([floor, "-c", WORKER_IMPORT], floor_env),
        "env python: import Ray's worker": ([env_python, "-c", WORKER_IMPORT], pixi_env),
        "env python: import Ray's worker, the floor's variables": (
            [env_python, "-c", WORKER_IMPORT], floor_env),
        "env python: import Ray's worker, no .pyc (compiled in memory)": (
            [env_python, "-X", f"pycache_prefix={n.root / 'no-pycache'}", "-c",
             WORKER_IMPORT], pixi_env),
        "setup_worker.py alone (its imports; exec of `true`)": (
            [cluster_python, setup_worker, f"--serialized-runtime-env-context="
             f"{json.dumps({**floor_ctx, 'py_executable': 'true'})}", "--language=PYTHON"],
            raylet_env),
        "chain, floor: setup_worker.py -> bash -> wrapper -> import": (chain(floor_ctx),
                                                                       raylet_env),
        "chain, ray-pixi: setup_worker.py -> bash -> env python -> import": (chain(pixi_ctx),
                                                                             raylet_env),
        "chain, floor with ray-pixi's env_vars": (chain(floor_ctx_with_pixi_vars),
                                                  raylet_env),
    }
    log(f"breakdown: {len(variants)} variants x {rounds} rounds, interleaved")
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    rng = random.Random(seed)  # noqa: S311 - an order, not a secret
    for argv, env in variants.values():  # once each, untimed: page cache warm
        _time(argv, env)
    for _ in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for name in order:
            argv, env = variants[name]
            wall, cpu = _time(argv, env)
            times[name].append(wall)
            cpus[name].append(cpu)
    log("breakdown: import times per package, versions, site-packages")
    imports = {"cluster": _importtime([cluster_python], floor_env, 5),
               "env": _importtime([env_python], pixi_env, 5)}
    versions = {"cluster": _json([cluster_python, "-c", _VERSIONS], floor_env),
                "env": _json([env_python, "-c", _VERSIONS], pixi_env)}
    sites = {"cluster": _json([cluster_python, "-c", _SITE], floor_env),
             "env": _json([env_python, "-c", _SITE], pixi_env)}
    sizes = {"floor": _environ_bytes(floor_env), "ray-pixi": _environ_bytes(pixi_env)}
    raw = {"times": times, "cpus": cpus, "imports": imports, "versions": versions, "sites": sites,
           "environ_bytes": sizes}
    return _tables(raw), raw


def _environ_bytes(env: dict[str, str]) -> int:
    return sum(len(k) + len(v) + 2 for k, v in env.items())


def _tables(raw: dict[str, Any]) -> list[Table]:
    times, cpus = raw["times"], raw["cpus"]

    def m(name: str) -> float:
        return ms(median(times[name]))

    def c(name: str) -> float:
        return ms(median(cpus[name]))

    parts = Table("Worker start, part by part, outside Ray (ms; wall median and min, CPU "
                  "median, of the interleaved runs)", ["what runs", "wall", "min", "CPU"])
    for name in times:
        parts.add(name, m(name), ms(min(times[name])), c(name))
    parts.notes += [
        "Each row is a process started as a worker's is: the floor rows with the floor's "
        "variables (the raylet's), the ray-pixi rows with the variables its runtime_env "
        "context sets (activation), PYTHONDONTWRITEBYTECODE=1. `import Ray's worker` is "
        f"`{WORKER_IMPORT}`: what default_worker.py imports before it connects.",
        "chain: the raylet's command for a runtime_env worker (setup_worker.py with the "
        "context Ray's agent really produced, taken from its log), with the entry point "
        "imported instead of run.",
        "no .pyc: bytecode looked up in an empty pycache_prefix, so every module is "
        "compiled in memory (nothing is written): a worker of an environment whose "
        "bytecode is not written yet, or was never written.",
    ]

    diff = Table("ray-pixi over the floor, by part (ms, medians of CPU time and of wall "
                 "time; negative: ray-pixi is faster)",
                 ["part", "floor CPU", "ray-pixi CPU", "difference CPU", "difference wall"])

    def row(label: str, floor: Any, pixi: Any) -> None:
        """`floor`/`pixi`: a function of a per-variant median (CPU or wall)."""
        diff.add(label, floor(c), pixi(c), pixi(c) - floor(c), pixi(m) - floor(m))

    wrapper_pass, env_pass = "floor wrapper: -c pass", "env python: -c pass"
    wrapper_ray, env_ray = "floor wrapper: import Ray's worker", "env python: import Ray's worker"
    chain_floor = "chain, floor: setup_worker.py -> bash -> wrapper -> import"
    chain_pixi = "chain, ray-pixi: setup_worker.py -> bash -> env python -> import"
    row("interpreter start (`-c pass`: floor wrapper vs env python)",
        lambda f: f(wrapper_pass), lambda f: f(env_pass))
    row("  of which the bash wrapper (floor only)",
        lambda f: f(wrapper_pass) - f("cluster python: -c pass"), lambda f: 0.0)
    row("  of which site-packages and .pth files (`-c pass` minus `-S -c pass`)",
        lambda f: f("cluster python: -c pass") - f("cluster python: -S -c pass (no site)"),
        lambda f: f(env_pass) - f("env python: -S -c pass (no site)"))
    row("importing Ray's worker entry point (minus the interpreter start)",
        lambda f: f(wrapper_ray) - f(wrapper_pass), lambda f: f(env_ray) - f(env_pass))
    row("  the activation's variables (env python: the floor's vs its own)",
        lambda f: f("env python: import Ray's worker, the floor's variables"),
        lambda f: f(env_ray))
    row("setup_worker.py and bash (the chain minus its interpreter's import)",
        lambda f: f(chain_floor) - f(wrapper_ray), lambda f: f(chain_pixi) - f(env_ray))
    row("  the context's env_vars through setup_worker.py (floor chain without/with them)",
        lambda f: f(chain_floor), lambda f: f("chain, floor with ray-pixi's env_vars"))
    row("the whole chain after the fork, outside Ray",
        lambda f: f(chain_floor), lambda f: f(chain_pixi))
    sizes = raw["environ_bytes"]
    diff.add("environment variables of the worker (bytes)", sizes["floor"], sizes["ray-pixi"],
             sizes["ray-pixi"] - sizes["floor"], "")
    sites = raw["sites"]
    diff.add("sys.path entries", sites["cluster"]["sys_path"], sites["env"]["sys_path"],
             sites["env"]["sys_path"] - sites["cluster"]["sys_path"], "")
    diff.add(".pth files in site-packages", len(sites["cluster"]["pth"]),
             len(sites["env"]["pth"]), len(sites["env"]["pth"]) - len(sites["cluster"]["pth"]),
             "")
    diff.add("site-packages entries", sites["cluster"]["site_packages_entries"],
             sites["env"]["site_packages_entries"],
             sites["env"]["site_packages_entries"] - sites["cluster"]["site_packages_entries"],
             "")
    diff.notes += [
        f".pth files: cluster {', '.join(sites['cluster']['pth']) or '(none)'}; env "
        f"{', '.join(sites['env']['pth']) or '(none)'}.",
    ]

    imports = raw["imports"]
    tops = sorted(set(imports["cluster"]) | set(imports["env"]),
                  key=lambda t: -abs(imports["env"].get(t, 0) - imports["cluster"].get(t, 0)))
    versions = raw["versions"]
    imp = Table("Importing Ray's worker entry point: self time per top-level package (ms, "
                "best of 5 `-X importtime` runs), largest differences first",
                ["package", "cluster", "env", "difference", "cluster version", "env version"])
    for top in tops[:12]:
        c, e = imports["cluster"].get(top, 0.0), imports["env"].get(top, 0.0)
        dist = _dist_of(top)
        imp.add(top, ms(c), ms(e), ms(e - c), versions["cluster"].get(dist, "-"),
                versions["env"].get(dist, "-"))
    total_c, total_e = sum(imports["cluster"].values()), sum(imports["env"].values())
    imp.add("(all)", ms(total_c), ms(total_e), ms(total_e - total_c), "", "")
    differing = sorted(d for d in set(versions["cluster"]) & set(versions["env"])
                       if versions["cluster"][d] != versions["env"][d])
    imp.notes += [
        "Versions that differ between the cluster's environment and the pixi environment "
        "(the pixi environment's uv solved ray[default] afresh): "
        + (", ".join(f"{d} {versions['cluster'][d]} -> {versions['env'][d]}"
                     for d in differing) or "none") + ".",
        "Self times exclude what each module's imports cost; -X importtime itself slows "
        "imports, so compare the columns, not the sum with the tables above.",
    ]
    return [parts, diff, imp]


_DIST = {"google": "protobuf", "yaml": "pyyaml", "grpc": "grpcio", "pydantic_core":
         "pydantic-core", "opentelemetry": "opentelemetry-sdk", "prometheus_client":
         "prometheus-client", "attr": "attrs", "jwt": "pyjwt", "dateutil": "python-dateutil",
         "multidict": "multidict", "yarl": "yarl", "typing_extensions": "typing-extensions"}


def _dist_of(top: str) -> str:
    return _DIST.get(top, top.replace("_", "-"))
