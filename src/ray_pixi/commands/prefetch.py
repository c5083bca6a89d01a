"""`ray-pixi prefetch`: install an environment on every alive node of a running cluster
before a job needs it, through Ray itself (one pinned task per node), so the environment is
exactly the one the job's runtime_env selects. Failures come back as one line per node."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from typing import Any

from ray_pixi.commands.common import CliError

__all__ = ["build_prefetch_env", "run"]


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


def run(args: argparse.Namespace) -> int:
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
