"""The agent's event loop while a setup waits on another process: how late a 10 ms timer
fires while the plugin, on the loop the way Ray's runtime_env agent runs it, waits for an
environment another process is installing (it holds the install lock) or deleting
(`ray-pixi envs rm`), and while it then installs. Ray serves every other setup, and its
own RPCs, on that one loop."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Node, Table, inline_spec, log, median, percentile

QUIET = logging.getLogger("bench.quiet")
QUIET.setLevel(logging.WARNING)
TICK = 0.010
SLOW = 0.020  # asyncio debug mode reports callbacks that hold the loop longer
HOLD_SECONDS = 2.0
HOLDER = """
import sys
from pathlib import Path
from ray_pixi.store import Store
held = Store(Path(sys.argv[1])).install_lock(sys.argv[2]).acquire()
print("held", flush=True)
sys.stdin.readline()
"""


class SlowCallbacks(logging.Handler):
    """asyncio's debug mode names every callback that held the loop longer than
    `slow_callback_duration`: what blocked it, not only that it was blocked."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing "):
            try:
                seconds = float(message.rsplit(" took ", 1)[1].split()[0])
            except (IndexError, ValueError):
                return
            self.seen.append((seconds, message.rsplit(" took ", 1)[0][len("Executing "):]))


class LagProbe:
    """A coroutine asking for a 10 ms sleep again and again; each lateness is recorded
    under the phase current when it fired."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.lags: dict[str, list[float]] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            t = loop.time()
            await asyncio.sleep(TICK)
            self.lags.setdefault(self.phase, []).append(loop.time() - t - TICK)

    def stop(self) -> None:
        self._stop.set()


async def _setup(plugin: Any, runtime_env: Any) -> float:
    from ray._private.runtime_env.context import RuntimeEnvContext

    started = time.perf_counter()
    plugin.validate(runtime_env)
    uris = plugin.get_uris(runtime_env)
    context = RuntimeEnvContext()
    await plugin.create(uris[0], runtime_env, context, logger=QUIET)
    plugin.modify_context(uris, runtime_env, context, logger=QUIET)
    return time.perf_counter() - started


async def _until(condition: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return True
        await asyncio.sleep(0.005)  # polls the condition with a deadline
    return False


async def _scenarios(n: Node, new_spec: dict[str, Any], doomed_spec: dict[str, Any],
                     installed_spec: dict[str, Any]) -> dict[str, Any]:
    from ray.runtime_env import RuntimeEnv

    from ray_pixi.plugin import PixiPlugin
    from ray_pixi.store import Store

    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW
    slow = SlowCallbacks()
    logging.getLogger("asyncio").addHandler(slow)
    plugin = PixiPlugin()
    impl = plugin._impl()
    store = Store(n.store)
    probe = LagProbe()
    probing = asyncio.create_task(probe.run())
    notes: dict[str, Any] = {}
    await asyncio.sleep(1.0)  # the idle baseline

    # 1. Another process holds the install lock of a new environment.
    key = await impl.key_for(RuntimeEnv(pixi=new_spec))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(n.store), key],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ))
    assert holder.stdout is not None and holder.stdin is not None
    assert await asyncio.to_thread(holder.stdout.readline) == "held\n"
    probe.phase = "a setup waits: another process holds the install lock"
    waiting = asyncio.create_task(_setup(plugin, RuntimeEnv(pixi=new_spec)))
    other = await _setup(plugin, RuntimeEnv(pixi=installed_spec, env_vars={"X": "1"}))
    notes["unrelated setup while waiting (s)"] = other
    await asyncio.sleep(HOLD_SECONDS)
    probe.phase = "the same setup installs (pixi, bytecode, probe)"
    holder.stdin.write("go\n")
    holder.stdin.flush()
    await waiting
    holder.wait(timeout=60)

    # 2. Another process deletes an installed environment a setup then asks for.
    doomed = await impl.key_for(RuntimeEnv(pixi=doomed_spec))
    cli = Path(sys.executable).parent / "ray-pixi"
    probe.phase = "a setup waits: `ray-pixi envs rm` deletes its environment"
    rm = await asyncio.create_subprocess_exec(
        str(cli), "envs", "rm", "--store", str(n.store), doomed,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def deleting() -> bool:
        held = store.use_lock(doomed).try_acquire(shared=True)
        if held is None:
            return True
        held.release()
        return False

    caught = await _until(lambda: deleting() or rm.returncode is not None, 30)
    deleting_now = caught and rm.returncode is None
    notes["setup started while rm held the lock"] = deleting_now
    reinstall = asyncio.create_task(_setup(plugin, RuntimeEnv(pixi=doomed_spec)))
    await rm.wait()
    probe.phase = "the same setup reinstalls it"
    await reinstall
    probe.stop()
    await probing
    logging.getLogger("asyncio").removeHandler(slow)
    worst = sorted(slow.seen, reverse=True)[:5]
    return {"lags": probe.lags, "notes": notes,
            "slow_callbacks": [{"seconds": t, "callback": c[:300]} for t, c in worst]}


def run(n: Node, new_spec: dict[str, Any], doomed_spec: dict[str, Any],
        installed_spec: dict[str, Any]) -> tuple[list[Table], dict[str, Any]]:
    log("loop lag: a setup waiting on another process's install lock, then on a deletion")
    with n.applied():
        result = asyncio.run(_scenarios(n, new_spec, doomed_spec, installed_spec))
    table = Table("The agent's event loop while a setup waits on another process "
                  "(ms: how late a 10 ms timer fires)",
                  ["phase", "timers", "median", "p99", "max"])
    for phase, lags in result["lags"].items():
        ms_lags = [1000 * x for x in lags]
        table.add(phase, len(ms_lags), median(ms_lags), percentile(ms_lags, 99),
                  max(ms_lags))
    notes = result["notes"]
    table.notes += [
        "The plugin runs on one asyncio loop as in Ray's runtime_env agent, with a probe "
        "coroutine sleeping 10 ms again and again; lateness is how much longer each sleep "
        f"took. The install lock was held {HOLD_SECONDS:.0f} s by another process; during "
        "that wait an unrelated setup (an installed environment) finished in "
        f"{1000 * notes['unrelated setup while waiting (s)']:.1f} ms.",
        "The deletion is the real `ray-pixi envs rm` (synchronous rmtree under the "
        "environment's locks) of an installed environment; the setup asked for it "
        + ("while the deletion held its lock." if notes["setup started while rm held the lock"]
           else "after the deletion had already finished (it was faster than the poll)."),
        "Lateness on a 2-core machine shared with other jobs includes the OS scheduling "
        "this process late; compare with the idle row. The loop runs in asyncio's debug "
        f"mode, which names each callback that held it longer than {1000 * SLOW:.0f} ms: "
        + ("; ".join(f"{1000 * c['seconds']:.0f} ms in {_short(c['callback'])}"
                     for c in result["slow_callbacks"]) or "none did") + ".",
    ]
    return [table], result


def _short(callback: str) -> str:
    """A slow callback's repr, without addresses and paths."""
    import re

    text = re.sub(r" at 0x[0-9a-f]+", "", callback)
    text = re.sub(r"(/[^ :>]+)+/", "", text)
    return text[:160]


def specs() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A new environment, an installed one to delete, an installed one to set up."""
    from bench.concurrency import TWO_AGENTS

    # The two-agent environment: its agents have exited, so nothing holds it.
    return (inline_spec(six="==1.13.0"), inline_spec(**TWO_AGENTS),
            inline_spec(pyjokes="==0.8.3"))
