"""`ray-pixi doctor`: which node's view to check (a running agent's, read from /proc, or this
shell's) and how to print the verdict. The checks themselves are `ray_pixi.doctor`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from ray_pixi.commands.common import CliError

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
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

