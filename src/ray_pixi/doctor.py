"""`ray-pixi doctor`: check a node for what the plugin needs, as the runtime_env agent sees
it. Each check is a function of the agent's environment variables; nothing here imports
Ray, so the checks run the same whatever Python runs the command."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ray_pixi import settings
from ray_pixi.disk import pixi_cache_dir
from ray_pixi.settings import PLUGIN_CLASS, PLUGINS, REGISTER_LINE, InvalidSetting

__all__ = [
    "AgentProcess",
    "Check",
    "check_node",
    "describe_pid",
    "find_agents",
    "lock_holders",
    "pixi_cache_dir",
]

MIN_FREE_BYTES = 2 * 2**30
AGENT_SCRIPT = "runtime_env/agent/main.py"
AGENT_TITLE = "ray::RuntimeEnvAgent"

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class AgentProcess:
    """A Ray node's runtime_env agent (the process that loads the plugin), as its raylet
    starts it: the raylet's pid, the agent's Python and variables, the session."""

    pid: int
    python: str
    environ: dict[str, str]
    session_dir: str | None
    started: float


def _read_proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read()
    except OSError:
        return None


def _args(pid: int) -> list[str]:
    cmdline = _read_proc(pid, "cmdline") or b""
    return [a.decode(errors="replace") for a in cmdline.split(b"\0") if a]


def _is_agent(args: list[str]) -> bool:
    """Ray retitles the agent `ray::RuntimeEnvAgent` once it runs; before that its command
    line is `python [-u] .../runtime_env/agent/main.py ...`."""
    return bool(args) and (args[0].startswith(AGENT_TITLE)
                           or any(a.endswith(AGENT_SCRIPT) for a in args[1:3]))


def _is_raylet(args: list[str]) -> bool:
    return bool(args) and os.path.basename(args[0]) == "raylet" and \
        settings.agent_flag("runtime_env_agent_command", args) is not None


def _ppid(pid: int) -> int | None:
    stat = _read_proc(pid, "stat")
    try:
        return int(stat.rsplit(b")", 1)[1].split()[1]) if stat else None
    except (IndexError, ValueError):
        return None


def agent_process(pid: int) -> AgentProcess | None:
    """The runtime_env agent of the Ray node with this raylet or agent pid, from /proc
    (Linux); None if it is neither or not readable.

    The agent inherits the raylet's variables, and the raylet's command line names the
    agent's Python (`--runtime_env_agent_command=<python> ...`) and the session. Both are
    read from the raylet: Ray retitles the agent with setproctitle, which overwrites the
    agent's own /proc command line and much of its /proc environ.
    """
    args = _args(pid)
    if _is_agent(args):
        parent = _ppid(pid)
        if parent is None:
            return None
        pid, args = parent, _args(parent)
    if not _is_raylet(args):
        return None
    environ = _read_proc(pid, "environ")
    stat = _read_proc(pid, "stat")
    if environ is None or stat is None:
        return None
    env = dict(
        item.decode(errors="replace").split("=", 1)
        for item in environ.split(b"\0") if b"=" in item
    )
    command = settings.agent_flag("runtime_env_agent_command", args) or sys.executable
    started = float(stat.rsplit(b")", 1)[1].split()[19])
    return AgentProcess(pid, command.split()[0], env, settings.agent_flag("session_dir", args),
                        started)


def find_agents() -> list[AgentProcess]:
    """The runtime_env agents of the Ray nodes running here (read through their raylets),
    newest first; empty where there is no /proc."""
    found = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        if not _is_raylet(_args(int(entry.name))):
            continue
        agent = agent_process(int(entry.name))
        if agent is not None:
            found.append(agent)
    return sorted(found, key=lambda a: a.started, reverse=True)


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists (where it would be created)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path) -> str | None:
    """None if files can be created in `path` (or, if missing, where it would be made)."""
    target = _existing(path)
    if not target.is_dir():
        return f"{target} is not a directory"
    try:
        fd, name = tempfile.mkstemp(dir=target, prefix=".ray-pixi-doctor-")
    except OSError as e:
        return f"cannot create a file in {target}: {e.strerror}"
    os.close(fd)
    os.unlink(name)
    return None


def check_plugins_var(env: Mapping[str, str], whose: str) -> Check:
    """Ray's agent parses the variable when it starts: a malformed one takes the node down."""
    fix = f"{REGISTER_LINE} before `ray start` on this node (KubeRay: the ray-pixi add-on sets it)"
    try:
        plugins = settings.plugins(env)
    except InvalidSetting as e:
        return Check("plugin registered", FAIL, f"{e.problem} (Ray's agent cannot start)", e.fix)
    if plugins is None:
        return Check("plugin registered", FAIL, f"{PLUGINS} is not set for {whose}", fix)
    if not any(p["class"] == PLUGIN_CLASS for p in plugins):
        classes = [p["class"] for p in plugins]
        return Check("plugin registered", FAIL, f"{PLUGINS} for {whose} lists {classes}, "
                     f"not {PLUGIN_CLASS}", f"add {{\"class\": \"{PLUGIN_CLASS}\"}} to it")
    return Check("plugin registered", OK, f"{PLUGINS} lists {PLUGIN_CLASS} for {whose}")


def check_settings(env: Mapping[str, str]) -> list[Check]:
    """Each malformed node setting, Ray's own included (a malformed cache size takes the
    agent down when it starts; any other fails every pixi request)."""
    found = [e for e in settings.problems(env) if e.name != PLUGINS]  # check_plugins_var's
    if not found:
        return [Check("settings", OK, "every ray-pixi setting set here is well-formed")]
    return [Check(f"setting {e.name}", FAIL, e.problem, e.fix) for e in found]


_IMPORT_PROBE = (
    "import json, sys\n"
    "import ray, ray_pixi\n"
    "from ray_pixi.plugin import PixiPlugin\n"
    "from ray_pixi.node import PixiNode\n"
    "print(json.dumps({'python': '%d.%d.%d' % sys.version_info[:3], 'ray': ray.__version__,"
    " 'ray_pixi': ray_pixi.__version__, 'where': ray_pixi.__file__}))\n"
)


def probe_python(python: str, env: Mapping[str, str]) -> tuple[dict[str, str] | None, str]:
    """Import Ray and the plugin with the cluster's Python: (versions, error)."""
    try:
        proc = subprocess.run([python, "-c", _IMPORT_PROBE], env=dict(env),
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"could not run {python}: {e}"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return None, lines[-1] if lines else f"exit code {proc.returncode}"
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, f"unexpected output: {proc.stdout.strip()[-200:]!r}"


def check_import(python: str, env: Mapping[str, str], own_version: str
                 ) -> tuple[Check, dict[str, str] | None]:
    seen, error = probe_python(python, env)
    if seen is None:
        return Check("plugin importable", FAIL, f"{python} cannot import the plugin: {error}",
                     f"`{python} -m pip install ray-pixi` on this node (into the Python "
                     "that runs `ray start`)"), None
    detail = f"{python} imports ray_pixi {seen['ray_pixi']} from {seen['where']}"
    if seen["ray_pixi"] != own_version:
        return Check("plugin importable", WARN, f"{detail}, but this command is ray-pixi "
                     f"{own_version}", "install the same ray-pixi version everywhere"), seen
    return Check("plugin importable", OK, detail), seen


def check_pixi(env: Mapping[str, str], min_version: tuple[int, int, int],
               read_version: Callable[[str], tuple[int, int, int]]) -> Check:
    try:
        pinned = settings.pixi_version(env)
    except InvalidSetting:
        pinned = None  # check_settings names it
    minimum = ".".join(map(str, min_version))
    try:
        path = settings.pixi_exe(env)
    except InvalidSetting as e:
        return Check("pixi", FAIL, e.problem, e.fix)
    if path is None:
        path = shutil.which("pixi", path=env.get("PATH", os.defpath))
    if path is None:
        if pinned:
            return Check("pixi", WARN, f"no pixi on PATH and {settings.PIXI_EXE} unset; "
                         f"{settings.PIXI_VERSION}={pinned} will be downloaded (sha256-verified)"
                         f" at the first install", f"set {settings.DOWNLOAD_URL} to a mirror on "
                         "air-gapped nodes, or install pixi")
        return Check("pixi", FAIL, f"no pixi: {settings.PIXI_EXE} is unset and `pixi` is not on "
                     "the PATH the agent has", "install pixi (https://pixi.sh) on the node or "
                     f"set {settings.PIXI_EXE}, or set {settings.PIXI_VERSION} to have ray-pixi "
                     "fetch one")
    try:
        version = read_version(path)
    except Exception as e:  # a broken binary: its own message says what
        return Check("pixi", FAIL, f"{path}: {e}", "replace it with a pixi binary")
    shown = ".".join(map(str, version))
    if version < min_version:
        return Check("pixi", FAIL, f"{path} is pixi {shown}; ray-pixi needs {minimum} or newer",
                     f"`pixi self-update`, or set {settings.PIXI_VERSION} to a newer release")
    note = f" ({settings.PIXI_VERSION}={pinned} will be fetched for specs without " \
           "pixi_version)" if pinned and pinned != shown else ""
    return Check("pixi", OK, f"{path} is pixi {shown} (>= {minimum}){note}")


def check_dirs(env: Mapping[str, str], store: Path) -> list[Check]:
    cache, chosen_by = pixi_cache_dir(env)
    checks = []
    for name, path, var in (("store dir", store, settings.STORE_DIR),
                            ("pixi cache dir", cache, "PIXI_CACHE_DIR")):
        problem = _writable(path)
        if problem:
            checks.append(Check(name, FAIL, f"{path}: {problem}",
                                f"make it writable by the user running Ray, or set {var}"))
        else:
            checks.append(Check(name, OK, f"{path} is writable"
                                + ("" if path.exists() else " (will be created)")))
    store_dev = _existing(store).stat().st_dev
    cache_dev = _existing(cache).stat().st_dev
    if store_dev != cache_dev:
        checks.append(Check("same filesystem", WARN, f"the store ({store}) and pixi's cache "
                            f"({cache}, from {chosen_by}) are on different filesystems: every "
                            "install copies packages instead of linking them",
                            f"set PIXI_CACHE_DIR to a directory on the store's filesystem, "
                            f"e.g. {store.parent / 'pixi-cache'}"))
    else:
        checks.append(Check("same filesystem", OK, "store and pixi cache share a filesystem "
                            "(packages are linked, not copied)"))
    try:
        free = shutil.disk_usage(_existing(store)).free
    except OSError as e:
        return [*checks, Check("free disk", FAIL, f"cannot stat {store}: {e}", "")]
    try:
        cap: int | None = settings.cache_cap_bytes(env)
    except InvalidSetting:
        cap = None  # check_settings names it
    shown = f"{free / 1e9:.1f} GB free where the store lives"
    if free < MIN_FREE_BYTES:
        checks.append(Check("free disk", FAIL, shown, "free disk space (`ray-pixi envs gc`) "
                            f"or move {settings.STORE_DIR} to a larger volume"))
    elif cap is not None and free < cap:
        checks.append(Check("free disk", WARN, f"{shown}, less than the plugin's cache cap "
                            f"of {cap / 1e9:.0f} GB ({settings.CACHE_SIZE})",
                            f"lower {settings.CACHE_SIZE} or give the store more room"))
    else:
        capped = "" if cap is None else f" (cache cap {cap / 1e9:.0f} GB)"
        checks.append(Check("free disk", OK, f"{shown}{capped}"))
    return checks


def check_versions(seen: Mapping[str, str] | None, own_python: str, own_ray: str | None
                   ) -> Check:
    if seen is None:
        return Check("versions", WARN, f"this command: Python {own_python}, Ray "
                     f"{own_ray or '(not installed)'}; the cluster's Python could not be probed",
                     "fix the import problem above")
    cluster = f"Python {seen['python']}, Ray {seen['ray']}"
    if (seen["python"], seen["ray"]) != (own_python, own_ray):
        return Check("versions", WARN, f"the cluster runs {cluster}; this command runs Python "
                     f"{own_python}, Ray {own_ray or '(not installed)'}",
                     "drivers must match the cluster's Python and Ray; run this command "
                     "with the cluster's Python for exact results")
    return Check("versions", OK, f"cluster {cluster}; pixi environments get both pinned")


def check_bash(env: Mapping[str, str]) -> Check:
    """`pixi shell-hook` runs bash to capture activation, and Ray starts every worker with
    `bash -c`: a node without bash can run neither."""
    found = shutil.which("bash", path=env.get("PATH", os.defpath))
    if found is None:
        return Check("bash", FAIL, "no bash on the PATH the agent has: pixi cannot capture an "
                     "environment's activation and Ray cannot start workers in it",
                     "install bash in the node's image")
    return Check("bash", OK, f"{found} (pixi shell-hook and Ray's worker start use it)")


# Filesystems on which flock is not shared between machines, or not reliable: two Ray
# nodes on different hosts sharing such a store could install one environment at once.
_LOCAL_FLOCK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "lustre", "gpfs", "ceph",
                   "glusterfs", "virtiofs")


def mount_of(path: Path, mountinfo: str | None = None) -> tuple[str, str, str]:
    """(mount point, filesystem type, super options) of the mount holding `path`."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return ("/", "unknown", "")
    existing = _existing(path)
    target = str(existing.resolve() / path.relative_to(existing))
    best = ("/", "unknown", "")
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        fstype, options = after[0], after[2] if len(after) > 2 else ""
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fstype, options)
    return best


def check_locks(store: Path, mountinfo: str | None = None) -> Check:
    point, fstype, options = mount_of(store, mountinfo)
    base = fstype.split(".", 1)[0]
    if base in ("nfs", "nfs4") and ("local_lock=flock" in options or "local_lock=all" in options):
        return Check("store locks", FAIL, f"{store} is on {fstype} ({point}) mounted with "
                     "local_lock, so its flock locks are not seen by other machines: nodes "
                     "on two hosts may install one environment at the same time",
                     "mount it without local_lock, or give each node its own store "
                     f"({settings.STORE_DIR} on local disk)")
    if base in _LOCAL_FLOCK_FS or base == "fuse":
        return Check("store locks", WARN, f"{store} is on {fstype} ({point}): ray-pixi's "
                     "install and use locks (flock) are only as reliable across machines as "
                     "this filesystem's locking", "share a store between hosts only on a "
                     "filesystem whose flock is cluster-wide (NFSv4 with lock support); "
                     "otherwise give each node its own store")
    return Check("store locks", OK, f"{store} is on {fstype}: flock is reliable")


def check_pixi_config(env: Mapping[str, str]) -> Check:
    """The node's pixi configuration: which file pixi reads, and that it parses."""
    explicit = env.get("PIXI_CONFIG_FILE")
    if env.get("PIXI_NO_CONFIG") not in (None, "", "0", "false"):
        return Check("pixi config", OK, "PIXI_NO_CONFIG is set: pixi reads no node "
                     "configuration (mirrors, TLS roots)")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            return Check("pixi config", FAIL, f"PIXI_CONFIG_FILE={explicit!r} is not a file: "
                         "every pixi command fails", "point PIXI_CONFIG_FILE at the node's "
                         "pixi config.toml, or unset it")
        candidates = [path]
    else:
        home = Path(env.get("PIXI_HOME") or _home(env) / ".pixi")
        xdg = Path(env.get("XDG_CONFIG_HOME") or _home(env) / ".config")
        candidates = [p for p in (Path("/etc/pixi/config.toml"), xdg / "pixi" / "config.toml",
                                  home / "config.toml") if p.is_file()]
    if not candidates:
        return Check("pixi config", OK, "no node pixi configuration (pixi's defaults: "
                     "conda-forge and pypi.org over the internet)")
    from ray_pixi.tomlread import tomllib

    for path in candidates:
        try:
            tomllib.loads(path.read_text())
        except (OSError, ValueError) as e:
            return Check("pixi config", FAIL, f"{path} cannot be read as TOML: {e}",
                         "fix the file (pixi refuses to run with it)")
    return Check("pixi config", OK, "pixi reads " + ", ".join(map(str, candidates)))


def check_node(env: Mapping[str, str], python: str, whose: str, own_version: str,
               min_pixi: tuple[int, int, int],
               read_version: Callable[[str], tuple[int, int, int]]) -> list[Check]:
    """Every check, for an agent with variables `env` running `python`."""
    own_python = "{}.{}.{}".format(*sys.version_info[:3])
    try:
        from importlib.metadata import version

        own_ray: str | None = version("ray")
    except Exception:
        own_ray = None
    checks = [check_plugins_var(env, whose)]
    imported, seen = check_import(python, env, own_version)
    checks.append(imported)
    checks += check_settings(env)
    checks.append(check_pixi(env, min_pixi, read_version))
    checks.append(check_bash(env))
    checks.append(check_pixi_config(env))
    try:
        store = settings.store_dir(env)
    except InvalidSetting:
        store = None  # check_settings names it; the directory checks need the store
    if store is not None:
        checks += check_dirs(env, store)
        checks.append(check_locks(store))
    checks.append(check_versions(seen, own_python, own_ray))
    return checks


def lock_holders(path: Path) -> set[int]:
    """Pids holding an flock on `path`, from /proc/locks (Linux; empty elsewhere, and for
    holders in another pid namespace)."""
    try:
        st = path.stat()
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted:
            try:
                pids.add(int(parts[4]))
            except ValueError:
                continue
    return {p for p in pids if p > 0}


def describe_pid(pid: int) -> str:
    """`pid N` plus the Ray session it serves, if it is a Ray process."""
    args = _args(pid)
    session = settings.agent_flag("session-dir", args) or settings.agent_flag("session_dir", args)
    if session is None and args and args[0].startswith("ray::"):
        parent = _ppid(pid)
        session = settings.agent_flag("session_dir", _args(parent)) if parent else None
    if session:
        return f"pid {pid}, Ray {os.path.basename(session.rstrip('/'))}"
    return f"pid {pid}" + (f" ({os.path.basename(args[0])})" if args else "")
