"""`ray-pixi`: commands for people running Ray clusters with pixi environments.

  ray-pixi doctor                 check this node for what the plugin needs
  ray-pixi envs list|rm|gc        the environments in this node's store
  ray-pixi prefetch               install an environment on every alive node of a cluster
  ray-pixi demo                   run a task inside a pixi environment on a local cluster
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray_pixi import settings

__all__ = ["CliError", "main"]



class CliError(Exception):
    """A mistake or a state the user fixes: printed as one line with its remedy."""


def _register_plugin() -> None:
    """Add the plugin to Ray's plugin list (settings.PLUGINS) for the local cluster ray.init
    starts."""
    current = settings.plugins(os.environ) or []
    if not any(p["class"] == settings.PLUGIN_CLASS for p in current):
        current.append({"class": settings.PLUGIN_CLASS})
    os.environ[settings.PLUGINS] = json.dumps(current)


# -- demo --------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Start a local Ray cluster and run a task inside an inline pixi environment."""
    import ray

    from ray_pixi import pixi

    _register_plugin()
    spec = pixi(pypi_dependencies={"pyjokes": "==0.8.3"})
    print(f"runtime_env = {{'pixi': {spec}}}")
    # A cluster of its own, never one already running here (a bare ray.init() joins that).
    ray.init(address="local", num_cpus=args.num_cpus, runtime_env={"pixi": spec},
             log_to_driver=False)
    try:
        @ray.remote(max_calls=1)
        def task() -> dict[str, str]:
            import sys
            from importlib.metadata import version

            import pyjokes  # type: ignore[import-not-found]  # in the pixi env only

            return {"python": sys.executable, "pyjokes": version("pyjokes"),
                    "joke": pyjokes.get_joke()}

        for attempt in ("first task (installs the environment)", "second task (cached)"):
            started = time.monotonic()
            seen = ray.get(task.remote())
            print(f"{attempt}: {time.monotonic() - started:.1f}s")
        print(f"worker python: {seen['python']}")
        print(f"worker imported pyjokes {seen['pyjokes']}: {seen['joke']}")
    finally:
        ray.shutdown()
    return 0


# -- doctor ------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    """Check this node for everything the plugin needs, as Ray's runtime_env agent sees it,
    and print what to fix. Exits 1 if a check fails (or warns, with --strict)."""
    from ray_pixi import __version__, doctor
    from ray_pixi.pixi_cli import MIN_PIXI_VERSION, read_pixi_version

    env, python, whose = _agent_view(args)
    print(f"Checking {whose}")
    short = "this shell" if whose.startswith("this shell") else "the agent"
    checks = doctor.check_node(env, python, short, __version__, MIN_PIXI_VERSION,
                               read_pixi_version)
    checks.append(_token_check(env, whose))
    for c in checks:
        print(f"  {c.status:<4}  {c.name}: {c.detail}")
        if c.fix and c.status != doctor.OK:
            print(f"        fix: {c.fix}")
    failed = [c for c in checks if c.status == doctor.FAIL]
    warned = [c for c in checks if c.status == doctor.WARN]
    print(f"{len(failed)} problem(s), {len(warned)} warning(s)")
    return 1 if failed or (args.strict and warned) else 0


def _agent_view(args: argparse.Namespace) -> tuple[dict[str, str], str, str]:
    """The variables and Python the plugin runs with: a running agent's, else this
    shell's (what `ray start` run from it would pass on)."""
    from ray_pixi import doctor

    if args.agent_pid is not None:
        agent = doctor.agent_process(args.agent_pid)
        if agent is None:
            raise CliError(f"process {args.agent_pid} is not a Ray raylet or runtime_env agent "
                           "this user can read under /proc; give the pid of one (`pgrep "
                           "raylet`), or run as its user")
        return agent.environ, args.python or agent.python, _whose(agent)
    if not args.shell:
        agents = doctor.find_agents()
        if agents:
            others = f"; {len(agents) - 1} other agent(s) running, pick one with " \
                     "--agent-pid" if len(agents) > 1 else ""
            return agents[0].environ, args.python or agents[0].python, \
                _whose(agents[0]) + others
    return dict(os.environ), args.python or _cluster_python(), \
        "this shell's environment (what `ray start` run from here would pass on)" + (
            "" if args.shell else "; no Ray runtime_env agent is running on this node")


def _token_check(env: dict[str, str], whose: str) -> Any:
    """Token auth as the checked node runs it, and for a running node whether this shell
    has the token its clients need."""
    from ray_pixi import auth

    return auth.check_token_auth(env, auth.home_of(env), os.environ, auth.home_of(os.environ),
                                 node_is_running=not whose.startswith("this shell"))


def _whose(agent: Any) -> str:
    session = os.path.basename(agent.session_dir.rstrip("/")) if agent.session_dir else "?"
    return f"the runtime_env agent of the running Ray node (raylet pid {agent.pid}, {session})"


def _cluster_python() -> str:
    """The Python `ray start` on PATH runs (its script's shebang), else this one."""
    import shutil

    ray_script = shutil.which("ray")
    if ray_script:
        try:
            with open(ray_script, "rb") as f:
                first = f.readline().decode(errors="replace").strip()
        except OSError:
            first = ""
        if first.startswith("#!") and "python" in first and " " not in first[2:].strip():
            return first[2:].strip()
    return sys.executable


# -- envs --------------------------------------------------------------------------------
def _open_store(args: argparse.Namespace) -> Any:
    from ray_pixi import doctor
    from ray_pixi.store import Store

    if args.store:
        root, source = Path(args.store), "--store"
    elif os.environ.get(settings.STORE_DIR):
        root, source = settings.store_dir(os.environ), settings.STORE_DIR
    else:
        stores = set()
        for agent in doctor.find_agents():
            with contextlib.suppress(settings.InvalidSetting):  # that node has no store
                stores.add(settings.store_dir(agent.environ))
        if len(stores) == 1:
            root, source = stores.pop(), f"the running Ray agent's {settings.STORE_DIR}"
        else:
            root, source = settings.store_dir(os.environ), "the default"
    store = Store(root)
    if not store.envs.is_dir():
        raise CliError(f"no ray-pixi store at {root} (from {source}); pass --store DIR or set "
                       f"{settings.STORE_DIR} to the directory the Ray nodes use")
    return store, f"{root} (from {source})"


def _human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _ago(then: float) -> str:
    seconds = max(0.0, time.time() - then)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _parse_age(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age; write a number with s, m, h, d or w, e.g. 7d")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400,
                              "w": 604800}[match[2]]


def _rows(store: Any) -> list[dict[str, Any]]:
    """Every environment in the store (`Store.entries`), as `envs list --json` prints it,
    with the processes that use each ready one."""
    from ray_pixi import doctor

    rows = []
    for e in store.entries():
        row: dict[str, Any] = {"key": e.key, "status": e.state.value,
                               "size_bytes": e.size_bytes, "last_used": e.last_used,
                               "in_use": e.in_use, "used_by": []}
        if e.record is not None:
            holders = sorted(doctor.lock_holders(store.use_lock(e.key).path))
            row.update(used_by=[doctor.describe_pid(p) for p in holders],
                       environment=e.record.environment, mode=e.record.mode,
                       manifest=e.record.manifest, python=e.record.python, ray=e.record.ray)
        elif e.failure is not None:
            message = e.failure.strip().splitlines()
            row["error"] = message[0] if message else ""
        rows.append(row)
    return rows


def cmd_envs_list(args: argparse.Namespace) -> int:
    """List the environments in this node's store: size, last use, and whether a running
    Ray node uses them (holds the environment's use lock)."""
    store, where = _open_store(args)
    rows = _rows(store)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"store: {where}")
    if not rows:
        print("no environments")
        return 0
    table = [("KEY", "STATUS", "SIZE", "LAST USED", "IN USE", "ENVIRONMENT")]
    for r in rows:
        if r["status"] == "ready":
            what = f"{r['environment']} ({r['mode']}" + (
                f", {r['manifest']}" if r["manifest"] else "") + \
                f"; Python {r['python']}, Ray {r['ray']})"
        elif r["status"] == "failed":
            what = r["error"][:100]
        else:
            what = "an install is under way" if r["status"] == "installing" else \
                "an interrupted install; `ray-pixi envs gc` removes it"
        in_use = ("yes: " + "; ".join(r["used_by"])) if r["used_by"] else \
            ("yes" if r["in_use"] else "no")
        size = _human_size(r["size_bytes"]) if r["status"] == "ready" else "-"
        table.append((r["key"], r["status"], size, _ago(r["last_used"]), in_use, what))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    ready = [r for r in rows if r["status"] == "ready"]
    print(f"{len(ready)} environment(s), {_human_size(sum(r['size_bytes'] for r in ready))}; "
          f"{sum(1 for r in ready if r['in_use'])} in use")
    return 0


def _remove(store: Any, key: str) -> tuple[bool, str]:
    """Delete `key` unless a process uses or installs it: (removed, why not)."""
    from ray_pixi import doctor

    if store.delete_if_unused(key, background=False):
        return True, ""
    holders = doctor.lock_holders(store.use_lock(key).path) | \
        doctor.lock_holders(store.install_lock(key).path)
    who = "; ".join(doctor.describe_pid(p) for p in sorted(holders)) or "another process"
    return False, f"in use by {who}"


def _resolve_keys(rows: list[dict[str, Any]], wanted: Sequence[str]) -> list[str]:
    keys = []
    for prefix in wanted:
        matches = [r["key"] for r in rows if r["key"].startswith(prefix)]
        if not matches:
            raise CliError(f"no environment {prefix!r} in the store; `ray-pixi envs list` "
                           "shows the keys")
        if len(matches) > 1:
            raise CliError(f"{prefix!r} matches {len(matches)} environments "
                           f"({', '.join(m[:12] for m in matches)}); give more of the key")
        keys.append(matches[0])
    return keys


def cmd_envs_rm(args: argparse.Namespace) -> int:
    """Remove environments (by key or unique key prefix) that no running Ray node uses.
    An environment in use is never removed: exits 1 and says who uses it."""
    store, where = _open_store(args)
    rows = {r["key"]: r for r in _rows(store)}
    refused = 0
    for key in _resolve_keys(list(rows.values()), args.keys):
        removed, why = _remove(store, key)
        if removed:
            print(f"removed {key} ({_human_size(rows[key]['size_bytes'])})")
        else:
            refused += 1
            print(f"kept {key}: {why}; stop the Ray node using it (`ray stop`) or wait until "
                  "Ray evicts it, then retry", file=sys.stderr)
    return 1 if refused else 0


def cmd_envs_gc(args: argparse.Namespace) -> int:
    """Remove every environment no running Ray node uses (optionally only those unused for
    --older-than), remembered failures, and what interrupted installs left. Safe while Ray
    runs: an environment in use is kept."""
    store, where = _open_store(args)
    print(f"store: {where}")
    cutoff = time.time() - args.older_than
    freed = removed = kept = 0
    for r in _rows(store):
        if r["status"] == "installing" or r["last_used"] > cutoff:
            continue
        if r["in_use"]:
            kept += 1
            print(f"kept {r['key']}: in use by {'; '.join(r['used_by']) or 'a running agent'}")
            continue
        if args.dry_run:
            print(f"would remove {r['key']} ({r['status']}, {_human_size(r['size_bytes'])}, "
                  f"last used {_ago(r['last_used'])})")
            removed += 1
            freed += r["size_bytes"]
            continue
        ok, why = _remove(store, r["key"])
        if ok:
            removed += 1
            freed += r["size_bytes"]
            print(f"removed {r['key']} ({r['status']}, {_human_size(r['size_bytes'])})")
        else:
            kept += 1
            print(f"kept {r['key']}: {why}")
    if not args.dry_run:
        store.sweep()
    verb = "would free" if args.dry_run else "freed"
    print(f"{verb} {_human_size(freed)} in {removed} environment(s); {kept} kept in use")
    return 0


# -- prefetch ----------------------------------------------------------------------------
def _requirement(text: str, option: str) -> tuple[str, Any]:
    """`name[extras]<spec>` -> (name, version spec or {version, extras})."""
    match = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*(.*?)\s*",
                         text)
    if not match:
        raise CliError(f"{option} {text!r} is not a requirement; write NAME or NAME<spec>, "
                       "e.g. requests>=2.31 or numpy==2.1")
    name, extras, spec = match[1], match[2], match[3] or "*"
    if extras:
        return name, {"version": spec, "extras": [e.strip() for e in extras.split(",")]}
    return name, spec


def build_prefetch_env(args: argparse.Namespace) -> dict[str, Any]:
    """The runtime_env to install, from --runtime-env-json, --manifest or --pypi/--conda."""
    from ray_pixi import pixi

    inline = bool(args.pypi or args.conda or args.channel)
    given = sum(bool(x) for x in (args.runtime_env_json, args.manifest, inline))
    if given != 1:
        raise CliError("give exactly one of --manifest PATH, --pypi/--conda requirements, or "
                       "--runtime-env-json JSON")
    if args.runtime_env_json:
        try:
            runtime_env = json.loads(args.runtime_env_json)
        except ValueError as e:
            raise CliError(f"--runtime-env-json is not JSON ({e}); quote it for your "
                           "shell, e.g. '{\"pixi\": \"pixi.toml\"}'") from None
        if not isinstance(runtime_env, dict) or "pixi" not in runtime_env:
            raise CliError("--runtime-env-json must be an object with a 'pixi' field, as "
                           "`ray job submit --runtime-env-json` takes it")
    elif args.manifest:
        runtime_env = {"pixi": pixi(args.manifest, environment=args.environment)}
    else:
        pypi = dict(_requirement(r, "--pypi") for r in args.pypi)
        conda = dict(_requirement(r, "--conda") for r in args.conda)
        runtime_env = {"pixi": pixi(dependencies=conda or None, pypi_dependencies=pypi or None,
                                    channels=args.channel or None,
                                    environment=args.environment)}
    if args.timeout is not None:
        runtime_env.setdefault("config", {})["setup_timeout_seconds"] = args.timeout
    return runtime_env


def _one_line(error: BaseException) -> str:
    """The line of a setup failure a person acts on: the plugin's own message."""
    text = str(error)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if re.match(r"(ray_pixi\.errors\.)?Pixi\w+Error: ", line):
            msg = line.split(": ", 1)[1]
            rest = lines[i + 1:]
            # An install failure: pixi's own error (`Error: × ...` and its `╰─▶` cause)
            # says what went wrong; the log has the rest.
            start = next((j for j, ln in enumerate(rest) if ln.startswith("Error:")), None)
            if start is not None:
                msg = " ".join([msg, *_pixi_error_ends(rest[start:])])
            log = next((ln for ln in rest if ln.startswith("Full log: ")), "")
            return f"{msg} {log}".strip()
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return lines[-1][:300] if lines else type(error).__name__


def _pixi_error_ends(lines: list[str]) -> list[str]:
    """pixi's error report (miette: `Error: × what`, then `├─▶`/`╰─▶` causes, wrapped at 80
    columns with `│` gutters) as its first and innermost statements, each on one line: the
    innermost cause is the one that says what to change (`No candidates were found for
    numpy >=2`)."""
    items: list[str] = []
    for line in lines:
        if line.startswith(("[exit code", "Full log: ")):
            break
        text = line.lstrip("│ ").strip()
        if line.startswith("Error:") or line.lstrip().startswith(("├─▶", "╰─▶")):
            items.append(text.removeprefix("Error:").lstrip(" ├╰─▶×").strip())
        elif items and text:
            joiner = "" if items[-1].endswith("-") else " "
            items[-1] = f"{items[-1]}{joiner}{text}"
    items = [i for i in items if i]
    return [f"pixi: {items[0]}", *([f"cause: {items[-1]}"] if len(items) > 1 else [])]


def _check_reachable(address: str) -> None:
    """Fail at once on a host:port nobody listens on (ray.init would retry for minutes)."""
    import socket

    match = re.fullmatch(r"(?:[a-z]+://)?\[?([^\]/]+?)\]?:(\d+)", address)
    if address.startswith("ray://") or not match:
        return
    try:
        socket.create_connection((match[1], int(match[2])), timeout=10).close()
    except OSError as e:
        raise CliError(f"cannot connect to Ray at {address!r} ({e.strerror or e}); start the "
                       "cluster (`ray start --head`) or pass --address with the head's "
                       "GCS address (host:6379 by default)") from None


def _progress(done: int, total: int, failed: int, started: float, tty: bool) -> None:
    if not tty:
        return
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "-" * (width - filled)
    sys.stdout.write(f"\r[{bar}] {done}/{total} nodes, {failed} failed, "
                     f"{time.monotonic() - started:.0f}s")
    sys.stdout.flush()


def cmd_prefetch(args: argparse.Namespace) -> int:
    """Install a pixi environment on every alive node of a running cluster before a job
    needs it: one task per node, pinned to it, with the environment as its runtime_env.
    Exits 1 if any node failed."""
    runtime_env = build_prefetch_env(args)
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ray_pixi import auth

    address = args.address or os.environ.get("RAY_ADDRESS") or "auto"
    _check_reachable(address)
    refused = auth.client_refusal(address, os.environ, auth.home_of(os.environ))
    if refused:
        raise CliError(refused)
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except auth.ray_auth_errors() as e:  # Ray's own check (RAY_AUTH_MODE=token, no token)
        raise CliError(f"this cluster requires a Ray auth token "
                       f"({str(getattr(e, 'message', e)).splitlines()[0]}); pass it "
                       f"{auth.AS_RAY_TAKES_IT}") from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise CliError(f"cannot connect to Ray at {address!r} ({str(e).splitlines()[0]}); "
                       "start the cluster (`ray start --head`) or pass --address") from None
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
        if not nodes:
            raise CliError(f"the cluster at {address!r} has no alive nodes")

        @ray.remote(num_cpus=0, max_retries=0)
        def where() -> dict[str, str]:
            import sys

            return {"python": sys.executable, "prefix": sys.prefix}

        tty = sys.stdout.isatty()
        print(f"Installing on {len(nodes)} alive node(s) of {address}: "
              f"runtime_env['pixi'] = {_describe(runtime_env['pixi'])}")
        started = time.monotonic()
        pending = {}
        for n in nodes:
            ref = where.options(
                runtime_env=runtime_env,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            ).remote()
            pending[ref] = n
        results: list[tuple[dict[str, Any], str, float, str]] = []
        failed = 0
        _progress(0, len(nodes), 0, started, tty)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            node = pending.pop(ready[0])
            elapsed = time.monotonic() - started
            try:
                seen = ray.get(ready[0])
                status, detail = "ready", seen["prefix"]
            except Exception as e:  # the node's setup failed: its one line goes below
                status, detail = "FAILED", _one_line(e)
                failed += 1
            results.append((node, status, elapsed, detail))
            if tty:
                _progress(len(results), len(nodes), failed, started, tty)
            else:
                print(f"[{len(results)}/{len(nodes)}] {node['NodeManagerAddress']} "
                      f"{node['NodeID'][:12]}: {status} after {elapsed:.1f}s", flush=True)
        if tty:
            print()
    finally:
        ray.shutdown()
    print("\nnode          address          result  seconds  environment / error")
    for node, status, elapsed, detail in sorted(results, key=lambda r: r[0]["NodeID"]):
        print(f"{node['NodeID'][:12]:<13} {node['NodeManagerAddress']:<16} {status:<7} "
              f"{elapsed:7.1f}  {detail}")
    print(f"{len(results) - failed}/{len(results)} node(s) ready")
    return 1 if failed else 0


def _describe(spec: Any) -> str:
    if isinstance(spec, dict) and "manifest_content" in spec:
        return f"manifest {spec.get('manifest')} (inlined), environment " \
               f"{spec.get('environment', 'default')}"
    return json.dumps(spec, sort_keys=True)[:200]


# -- parser ------------------------------------------------------------------------------
def _doc(func: Any) -> str:
    return " ".join((func.__doc__ or "").split())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-pixi", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Errors print one line with the remedy and exit 2.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help=_doc(cmd_demo), description=_doc(cmd_demo))
    demo.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local cluster")
    demo.set_defaults(func=cmd_demo)

    doc = sub.add_parser(
        "doctor", help="check this node for what the plugin needs",
        description=_doc(cmd_doctor) + f" Checks: {settings.PLUGINS} lists "
        f"{settings.PLUGIN_CLASS}; every node setting ({', '.join(settings.NAMES[:-1])}) is "
        "well-formed; the cluster's Python imports Ray and the plugin; pixi is found "
        f"({settings.PIXI_EXE}, then PATH) at a supported version; the store "
        f"({settings.STORE_DIR}) and "
        "pixi's cache (PIXI_CACHE_DIR) are writable and on one filesystem; free disk; Python "
        "and Ray versions. With a Ray node running here, its agent's variables are read from "
        "/proc (from the raylet, which the agent inherits them from); otherwise this shell's, "
        "which `ray start` would pass on.")
    doc.add_argument("--agent-pid", type=int, metavar="PID",
                     help="check the runtime_env agent with this pid, or the one of the raylet "
                          "with this pid (default: the newest Ray node running here)")
    doc.add_argument("--shell", action="store_true",
                     help="check this shell's variables even if an agent is running (before "
                          "`ray start`)")
    doc.add_argument("--python", metavar="PATH",
                     help="the cluster's Python (default: the agent's, else the one `ray` on "
                          "PATH runs)")
    doc.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    doc.set_defaults(func=cmd_doctor)

    envs = sub.add_parser("envs", help="list, remove or garbage-collect this node's "
                          "environments", description="The environments in this node's "
                          f"store. The store is --store, else ${settings.STORE_DIR}, else the "
                          "running Ray agent's, else ~/.cache/ray-pixi/store.")
    envs_sub = envs.add_subparsers(dest="envs_command", required=True, metavar="ACTION")
    store_help = f"the store directory (default: ${settings.STORE_DIR}, else the running " \
        "agent's)"
    ls = envs_sub.add_parser("list", help="list environments", description=_doc(cmd_envs_list))
    ls.add_argument("--store", metavar="DIR", help=store_help)
    ls.add_argument("--json", action="store_true", help="print JSON for scripts")
    ls.set_defaults(func=cmd_envs_list)
    rm = envs_sub.add_parser("rm", help="remove unused environments",
                             description=_doc(cmd_envs_rm))
    rm.add_argument("keys", nargs="+", metavar="KEY", help="environment key or unique prefix")
    rm.add_argument("--store", metavar="DIR", help=store_help)
    rm.set_defaults(func=cmd_envs_rm)
    gc = envs_sub.add_parser("gc", help="remove every unused environment",
                             description=_doc(cmd_envs_gc))
    gc.add_argument("--older-than", type=_parse_age, default=0.0, metavar="AGE",
                    help="only environments last used longer ago than AGE (e.g. 30m, 12h, 7d; "
                         "default: any)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed")
    gc.add_argument("--store", metavar="DIR", help=store_help)
    gc.set_defaults(func=cmd_envs_gc)

    pre = sub.add_parser(
        "prefetch", help="install an environment on every alive node of a cluster",
        description=textwrap.fill(_doc(cmd_prefetch) + " The environment is the same one a "
                                  "job with this runtime_env uses, so the job then starts "
                                  "without installing.", 88),
        epilog="examples:\n  ray-pixi prefetch --address 10.0.0.1:6379 --manifest pixi.toml "
        "-e cuda\n  ray-pixi prefetch --pypi 'requests>=2.31' --conda 'numpy>=2'\n"
        "  ray-pixi prefetch --runtime-env-json '{\"working_dir\": \".\", \"pixi\": "
        "\"pixi.toml\"}'", formatter_class=argparse.RawDescriptionHelpFormatter)
    pre.add_argument("--address", metavar="ADDR",
                     help="the cluster (default: $RAY_ADDRESS, else a cluster on this node)")
    what = pre.add_argument_group(
        "the environment: one of --manifest, inline --pypi/--conda (with --channel), or "
        "--runtime-env-json")
    what.add_argument("--manifest", metavar="PATH",
                      help="pixi.toml or pyproject.toml, inlined with its pixi.lock as "
                           "pixi(PATH) does")
    what.add_argument("--pypi", action="append", default=[], metavar="REQ",
                      help="inline PyPI requirement, e.g. 'requests>=2.31' (repeatable)")
    what.add_argument("--conda", action="append", default=[], metavar="REQ",
                      help="inline conda requirement, e.g. 'numpy>=2' (repeatable)")
    what.add_argument("--channel", action="append", default=[], metavar="NAME",
                      help="conda channel for --conda (repeatable; default conda-forge)")
    what.add_argument("--runtime-env-json", metavar="JSON",
                      help="a whole runtime_env with a 'pixi' field, as `ray job submit` "
                           "takes it (for project mode with a working_dir)")
    pre.add_argument("-e", "--environment", default="default",
                     help="pixi environment (default: default)")
    pre.add_argument("--timeout", type=int, metavar="SECONDS",
                     help="Ray's setup_timeout_seconds per node (default: Ray's, 600)")
    pre.set_defaults(func=cmd_prefetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Exception as e:  # one line with the remedy; tracebacks are for bugs
        from ray_pixi.errors import PixiNotFoundError, PixiSpecError

        if isinstance(e, (CliError, PixiSpecError, PixiNotFoundError, settings.InvalidSetting)):
            print(f"ray-pixi: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
