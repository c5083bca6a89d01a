"""The first job of a new environment: ray-pixi against Ray's own `pip` and `uv`
runtime_envs installing the same PyPI packages, cold (every tool's package cache empty)
and warm (the caches the cold run filled, a new environment), each on a new local cluster
with a new store.

ray-pixi's time is broken down from what the run leaves behind: the runtime_env agent's
log (when Ray asked for the environment, when the plugin started and finished, when the
agent answered), the install log (each step's own time) and the ready marker. pixi's own
time is split apart by running the same manifest again outside Ray: `pixi lock` (the solve
and PyPI metadata) and `pixi install --frozen` from that lock (linking only).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import Node, Table, inline_spec, local_cluster, log, median, ratio

PACKAGES = {"pyjokes": "==0.8.3"}
TOOLS = ("ray-pixi", "uv", "pip")
STATES = ("cold", "warm")


def runtime_env(tool: str) -> dict[str, Any]:
    """The same PyPI packages through each tool. pip and uv run with their caches on
    (Ray's defaults turn them off, so with Ray's defaults every install is a cold one)."""
    packages = [f"{name}{version}" for name, version in PACKAGES.items()]
    if tool == "ray-pixi":
        return {"pixi": inline_spec(**PACKAGES)}
    if tool == "uv":
        return {"uv": {"packages": packages, "uv_pip_install_options": []}}
    return {"pip": {"packages": packages,
                    "pip_install_options": ["--disable-pip-version-check"]}}


def _probe() -> Any:
    import ray

    @ray.remote(num_cpus=1)
    def first() -> str:
        import pyjokes

        return str(pyjokes.__file__)

    return first


# -- what the logs say ----------------------------------------------------------------------
# Ray's Python logs start with the time; the raylet's C++ log with "[" and the time.
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s")


def _wall(line: str) -> float | None:
    m = _STAMP.match(line)
    if m is None:
        return None
    return datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _first(lines: list[str], needle: str, after: float = 0.0) -> float | None:
    for line in lines:
        if needle in line:
            t = _wall(line)
            if t is not None and t >= after - 0.002:
                return t
    return None


def install_steps(log_path: Path) -> dict[str, float]:
    """Each `$ command` of an install log and its `[exit code N after X s]`."""
    steps: dict[str, float] = {}
    command = None
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("$ "):
            command = line[2:]
        m = re.match(r"^\[exit code \d+ after ([\d.]+) s\]$", line)
        if m and command is not None:
            name = ("pixi install" if " install " in command and "pixi" in command else
                    "shell-hook" if "shell-hook" in command else
                    "bytecode (compileall)" if "compileall" in command else
                    "version probe" if "version probe" in command else command[:40])
            steps[name] = steps.get(name, 0.0) + float(m[1])
            command = None
    return steps


def _one(n: Node, tool: str, state: str, rep: int, caches: Path) -> dict[str, Any]:
    import ray

    name = f"fj-{state}-{rep}-{tool}"
    store = n.root / f"store-{name}"
    extra = {"PIXI_CACHE_DIR": str(caches / "pixi"), "UV_CACHE_DIR": str(caches / "uv"),
             "PIP_CACHE_DIR": str(caches / "pip")}
    for d in extra.values():
        Path(d).mkdir(parents=True, exist_ok=True)
    with local_cluster(n, name, store=store, **extra) as cluster:
        probe = _probe()
        # Ray's workers for the driver's own job start with the cluster: let them, so the
        # measured start is the environment's.
        ray.get(ray.remote(num_cpus=1)(lambda: None).remote())
        wall = time.time()
        started = time.monotonic()
        where = ray.get(probe.options(runtime_env=runtime_env(tool)).remote())
        seconds = time.monotonic() - started
        done_wall = time.time()
        agent = (cluster.logs / "runtime_env_agent.log").read_text(errors="replace")
        setup_logs = "\n".join(p.read_text(errors="replace")
                               for p in cluster.logs.glob("runtime_env_setup-*.log"))
        raylet = (cluster.logs / "raylet.out").read_text(errors="replace")
    agent_lines = agent.splitlines()
    creating = _first(agent_lines, "Creating runtime env:", wall)
    created = _first(agent_lines, "Successfully created runtime env:", wall)
    forked = _first(raylet.splitlines(), "Started worker process", created or wall) \
        if created else None
    out: dict[str, Any] = {"tool": tool, "state": state, "rep": rep, "seconds": seconds,
                           "where": where}
    if creating and created:
        out["phases"] = {
            "before the agent": creating - wall,
            "agent": created - creating,
            "agent answered -> worker forked": (forked - created) if forked else None,
            "worker forked -> result": (done_wall - forked) if forked else None,
        }
    setup_lines = setup_logs.splitlines()
    if tool != "ray-pixi":
        cloning = _first(setup_lines, "Cloning virtualenv", wall)
        cloned = _first(setup_lines, "Run cmd[2]", cloning) if cloning else None
        if cloning and cloned:
            out["clone"] = cloned - cloning
    if tool == "ray-pixi":
        plugin_start = _first(setup_lines, "Installing pixi environment", wall)
        plugin_end = _first(setup_lines, "Installed pixi environment", wall)
        [marker] = list((store / "envs").glob("*.json"))
        ready = json.loads(marker.read_text())
        out["marker_seconds"] = ready["seconds"]
        out["steps"] = install_steps(Path(ready["log"]))
        out["workspace"] = str(marker.with_suffix(""))
        if creating and created and plugin_start and plugin_end:
            out["plugin"] = {"agent -> plugin install starts": plugin_start - creating,
                             "plugin install": plugin_end - plugin_start,
                             "plugin done -> agent answers": created - plugin_end}
    return out


def plain_virtualenv(n: Node, runs: int = 3) -> float:
    """What Ray runs instead of cloning when the cluster's Python is not a virtualenv:
    `virtualenv --system-site-packages` (median seconds of `runs`)."""
    import subprocess
    import sys

    times = []
    for i in range(runs):
        target = n.root / f"plain-venv-{i}"
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "virtualenv", "--app-data",
                        str(n.root / f"plain-venv-app-{i}"), "--reset-app-data",
                        "--no-periodic-update", "--system-site-packages", "--no-download",
                        str(target)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        times.append(time.monotonic() - started)
    return median(times)


def split_pixi(n: Node, workspace: Path, cache: Path) -> dict[str, float]:
    """The inline manifest ray-pixi wrote, installed again outside Ray from a warm cache:
    `pixi lock` (solve and PyPI metadata, nothing installed) and `pixi install --frozen`
    from that lock into a new workspace (what a node would do given the lock)."""
    out: dict[str, float] = {}
    for i, stage in enumerate(("lock", "frozen")):
        scratch = n.root / f"split-{i}"
        scratch.mkdir()
        shutil.copy(workspace / "pixi.toml", scratch / "pixi.toml")
        _copy_config(workspace, scratch)
        manifest = str(scratch / "pixi.toml")
        if stage == "lock":
            started = time.monotonic()
            n.run_pixi(["lock", "--manifest-path", manifest], cwd=scratch, cache=cache)
            out["pixi lock (solve + PyPI metadata)"] = time.monotonic() - started
            lock = scratch / "pixi.lock"
        else:
            shutil.copy(lock, scratch / "pixi.lock")
            started = time.monotonic()
            n.run_pixi(["install", "--frozen", "--manifest-path", manifest], cwd=scratch,
                       cache=cache)
            out["pixi install --frozen (link from the lock)"] = time.monotonic() - started
    return out


def _copy_config(workspace: Path, scratch: Path) -> None:
    config = workspace / ".pixi" / "config.toml"
    if config.is_file():
        (scratch / ".pixi").mkdir(exist_ok=True)
        shutil.copy(config, scratch / ".pixi" / "config.toml")


def run(n: Node, reps: int, states: tuple[str, ...] = STATES
        ) -> tuple[list[Table], dict[str, Any]]:
    """`reps` first jobs per tool for each state: cold (new, empty caches), then warm (the
    caches the cold runs left; needs "cold" first)."""
    results: list[dict[str, Any]] = []
    caches = {rep: n.root / f"fj-caches-{rep}" for rep in range(reps)}
    for state in states:
        for rep in range(reps):
            order = TOOLS[rep % 3:] + TOOLS[:rep % 3]
            for tool in order:
                log(f"first job: {tool}, {state} cache, run {rep + 1}/{reps}")
                r = _one(n, tool, state, rep, caches[rep])
                log(f"first job: {tool}, {state}: first result after {r['seconds']:.1f}s")
                results.append(r)
    # Outside Ray, from the last run's (now warm) pixi cache.
    last = [r for r in results if r["tool"] == "ray-pixi"][-1]
    split = split_pixi(n, Path(last["workspace"]), caches[last["rep"]] / "pixi")
    venv = plain_virtualenv(n)
    raw = {"runs": results, "split": split, "plain_virtualenv_s": venv, "packages": PACKAGES}
    return _tables(results, split, venv, states), raw


def _tables(results: list[dict[str, Any]], split: dict[str, float], venv: float,
            states: tuple[str, ...]) -> list[Table]:
    def pick(tool: str, state: str) -> list[dict[str, Any]]:
        return [r for r in results if r["tool"] == tool and r["state"] == state]

    def med(rs: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
        xs = [(r.get(key) or {}).get(sub) if sub else r.get(key) for r in rs]
        return median([x for x in xs if x is not None])

    main = Table(
        f"First job of a new environment: {PACKAGES} (s, submit to first result)",
        ["tool", "cache", "runs", "first result", "vs uv", "no clone", "vs uv, no clone",
         "before the agent", "agent (setup)", "of which clone", "-> worker forked",
         "worker -> result"])

    def unclone(r: dict[str, Any]) -> float:
        """The first result had Ray not cloned the cluster's virtualenv but created a
        plain one (measured apart)."""
        return float(r["seconds"] - r["clone"] + venv) if "clone" in r else float(r["seconds"])

    for state in states:
        uv = med(pick("uv", state), "seconds")
        uv_plain = median([unclone(r) for r in pick("uv", state)])
        for tool in TOOLS:
            rs = pick(tool, state)
            plain = median([unclone(r) for r in rs])
            main.add(tool, state, len(rs), med(rs, "seconds"), ratio(med(rs, "seconds"), uv),
                     plain, ratio(plain, uv_plain),
                     med(rs, "phases", "before the agent"), med(rs, "phases", "agent"),
                     med(rs, "clone") if tool != "ray-pixi" else "-",
                     med(rs, "phases", "agent answered -> worker forked"),
                     med(rs, "phases", "worker forked -> result"))
    main.notes += [
        "Each run is a new local cluster with a new store and a new Ray session; cold: the "
        "tool's package cache is empty (pixi's PIXI_CACHE_DIR: conda packages, repodata, "
        "PyPI wheels; uv's UV_CACHE_DIR; pip's PIP_CACHE_DIR); warm: the cache the cold run "
        "left, and a new environment.",
        "pip and uv install only the listed packages into a virtualenv that sees the "
        "cluster's own Ray; a pixi environment brings its own Python and Ray "
        "(ray[default] from PyPI, ~50 packages), so the comparison favours them by design.",
        "pip runs with pip_install_options=['--disable-pip-version-check'] and uv with "
        "uv_pip_install_options=[] (caches on); Ray's defaults (--no-cache-dir, --no-cache) "
        "make every pip/uv install a cold one.",
        "This cluster's Python is a virtualenv (the checkout's .venv), so Ray's pip and uv "
        "runtime_envs first clone it whole (`_clonevirtualenv.py`, copying its "
        "site-packages: 'of which clone'); on a cluster whose Python is not a virtualenv "
        "Ray creates a `virtualenv --system-site-packages` instead, which took "
        f"{venv:.1f} s here (measured apart). 'no clone' is the first result with the clone "
        "replaced by that, and the ratio to uv on that basis is the fair one.",
        "Phases from the agent's and raylet's logs (ms resolution): before the agent = "
        "submit until the agent starts the setup (job and task scheduling); agent = the "
        "whole runtime_env setup; then until the raylet forked the worker; then until the "
        "driver has the result.",
    ]
    breakdown = Table("ray-pixi's first job, broken down (s, median of runs)",
                      ["part", *states])
    pixi_runs = {s: pick("ray-pixi", s) for s in states}

    def row(label: str, getter: Any) -> None:
        breakdown.add(label, *[median([v for v in (getter(r) for r in pixi_runs[s])
                                       if v is not None]) for s in states])

    row("submit -> the agent starts the setup (Ray)",
        lambda r: (r.get("phases") or {}).get("before the agent"))
    row("agent starts -> plugin starts installing (Ray + plugin: spec, key, pixi lookup, "
        "locks)", lambda r: (r.get("plugin") or {}).get("agent -> plugin install starts"))
    row("  pixi install (solve + PyPI metadata + download + link)",
        lambda r: r["steps"].get("pixi install"))
    row("  pixi shell-hook (activation)", lambda r: r["steps"].get("shell-hook"))
    row("  bytecode: compileall", lambda r: r["steps"].get("bytecode (compileall)"))
    row("  bytecode: linking .pyc into pixi's cache",
        lambda r: r["marker_seconds"]["bytecode"] - r["steps"].get("bytecode (compileall)", 0))
    row("  version probe", lambda r: r["steps"].get("version probe"))
    row("  rest of the install (workspace, marker, size walk)",
        lambda r: r["marker_seconds"]["total"] - r["marker_seconds"]["bytecode"]
        - sum(v for k, v in r["steps"].items() if not k.startswith("bytecode")))
    row("plugin's install, total (ready marker)", lambda r: r["marker_seconds"]["total"])
    row("plugin done -> agent answers (Ray)",
        lambda r: (r.get("plugin") or {}).get("plugin done -> agent answers"))
    row("agent answers -> worker forked (Ray)",
        lambda r: (r.get("phases") or {}).get("agent answered -> worker forked"))
    row("worker forked -> first result (worker start in the new env, the task)",
        lambda r: (r.get("phases") or {}).get("worker forked -> result"))
    row("first result", lambda r: r["seconds"])
    for label, seconds in split.items():
        breakdown.add(f"apart: {label}", *(["-"] * (len(states) - 1)), round(seconds, 2))
    breakdown.notes += [
        "Step times from the install log (`[exit code 0 after X s]`, 0.1 s resolution) and "
        "the ready marker's `seconds`; Ray's parts from the agent's, the setup's and the "
        "raylet's logs.",
        "apart: the same inline manifest, run again outside Ray with the warm cache: `pixi "
        "lock` alone is the solve and PyPI metadata; `pixi install --frozen` from that lock "
        "in a new workspace is what a node given the solved lock would spend.",
    ]
    return [main, breakdown]
