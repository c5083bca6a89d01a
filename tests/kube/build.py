"""Build the cluster's Go binaries from their published modules, once, into the user cache.

Each component has a recipe: a wrapper Go module under `tests/kube/go/<component>/` whose
go.mod pins the published module (and, for k8s.io/kubernetes, its staging modules) and
whose go.sum makes the download verifiable. The binary lands in
`<cache>/<component>-<version>/` next to a stamp of the recipe it was built from, so a
changed recipe rebuilds and an unchanged one is reused. The Go module and build caches
live under `<cache>/go/` so a second component, or a second machine session, reuses them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "APISERVER",
    "COMPONENTS",
    "ETCD",
    "KUBERAY",
    "BuildError",
    "Component",
    "Unavailable",
    "cache_dir",
    "ensure_all",
    "ensure_built",
    "module_source",
]

RECIPES = Path(__file__).resolve().parent / "go"

Log = Callable[[str], None]


class Unavailable(RuntimeError):
    """A prerequisite outside this repository is missing: Go, or the Go module proxy.

    `go_present` tells the fixture whether Go itself exists: on CI a harness that has Go
    must run, so only a missing Go may turn into a skip there.
    """

    def __init__(self, message: str, *, go_present: bool) -> None:
        super().__init__(message)
        self.go_present = go_present


class BuildError(RuntimeError):
    """`go build` failed although the module proxy answered: the recipe itself is broken."""


@dataclass(frozen=True)
class Component:
    """One binary built from a published Go module through a recipe in `tests/kube/go/`."""

    name: str
    module: str
    package: str
    recipe: str
    x_flags: tuple[str, ...] = field(default=())
    # Roughly what a cold build took on a 2-core build machine (in COMPONENTS order, so
    # later ones reuse the shared dependencies' build cache), shown while the build runs.
    cold_minutes: int = 10

    @property
    def recipe_dir(self) -> Path:
        return RECIPES / self.recipe

    @property
    def version(self) -> str:
        """The module version the recipe's go.mod pins: the one definition of it (a recipe of
        its own, with no module, is versioned by its content)."""
        if not self.module:
            return "r" + self.recipe_digest()[:12]
        text = (self.recipe_dir / "go.mod").read_text()
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(self.module)} (v\S+)", text, re.M)
        if not match:
            raise BuildError(f"{self.recipe_dir / 'go.mod'} does not require {self.module}")
        return match.group(1)

    def ldflags(self) -> str:
        flags = ["-s", "-w"]
        if not self.x_flags:
            return " ".join(flags)
        major, minor = self.version.lstrip("v").split(".")[:2]
        flags += [
            "-X " + flag.format(version=self.version, major=major, minor=minor)
            for flag in self.x_flags
        ]
        return " ".join(flags)

    def recipe_digest(self) -> str:
        digest = hashlib.sha256()
        for name in sorted(p.name for p in self.recipe_dir.iterdir() if p.is_file()):
            digest.update(name.encode() + b"\0" + (self.recipe_dir / name).read_bytes() + b"\0")
        digest.update(self.package.encode() + b"\0" + self.ldflags().encode())
        return digest.hexdigest()

    def install_dir(self) -> Path:
        return cache_dir() / f"{self.name}-{self.version}"

    def binary(self) -> Path:
        return self.install_dir() / self.name


APISERVER = Component(
    name="kube-apiserver",
    module="k8s.io/kubernetes",
    package="k8s.io/kubernetes/cmd/kube-apiserver",
    recipe="kube-apiserver",
    x_flags=(
        # What `kube-apiserver --version` and GET /version report; a module build otherwise
        # calls itself v0.0.0-master.
        "k8s.io/component-base/version.gitVersion={version}",
        "k8s.io/component-base/version.gitMajor={major}",
        "k8s.io/component-base/version.gitMinor={minor}",
        "k8s.io/component-base/version.gitTreeState=clean",
    ),
    cold_minutes=6,
)
# etcd at the version k8s.io/kubernetes itself pins (its integration tests run against it),
# built from go.etcd.io/etcd/server/v3 through a three-line main in the recipe.
ETCD = Component(
    name="etcd",
    module="go.etcd.io/etcd/server/v3",
    package="ray-pixi.test/kube/etcd",
    recipe="etcd",
    cold_minutes=2,
)
KUBERAY = Component(
    name="kuberay-operator",
    module="github.com/ray-project/kuberay/ray-operator",
    package="github.com/ray-project/kuberay/ray-operator",
    recipe="kuberay-operator",
    cold_minutes=3,
)
# The real node's Kubernetes parts: one recipe (the kube-apiserver module set plus what these
# commands need), four binaries. The kubelet first: the other three reuse its build cache.
_KUBE_VERSION_FLAGS = APISERVER.x_flags


def _kube_node_component(name: str, cold_minutes: int) -> Component:
    return Component(
        name=name,
        module="k8s.io/kubernetes",
        package=f"k8s.io/kubernetes/cmd/{name}",
        recipe="kube-node",
        x_flags=_KUBE_VERSION_FLAGS,
        cold_minutes=cold_minutes,
    )


KUBELET = _kube_node_component("kubelet", 10)
KUBE_PROXY = _kube_node_component("kube-proxy", 1)
KUBE_SCHEDULER = _kube_node_component("kube-scheduler", 1)
KUBE_CONTROLLER_MANAGER = _kube_node_component("kube-controller-manager", 1)
# Cluster DNS, built from github.com/coredns/coredns with only the plugins the node uses.
COREDNS = Component(
    name="coredns",
    module="github.com/coredns/coredns",
    package="ray-pixi.test/kube/coredns",
    recipe="coredns",
    cold_minutes=2,
)
# The Pod sandbox's process (the pause image's only file): standard library Go.
PAUSE = Component(
    name="pause",
    module="",
    package="ray-pixi.test/kube/pause",
    recipe="pause",
    cold_minutes=1,
)
# The controller-manager runs with or without the node: its namespace, ServiceAccount and
# root-CA publisher controllers are what a cluster provides.
COMPONENTS = (ETCD, APISERVER, KUBERAY, KUBE_CONTROLLER_MANAGER)
NODE_COMPONENTS = (KUBELET, KUBE_SCHEDULER, KUBE_PROXY, COREDNS, PAUSE)


def cache_dir() -> Path:
    """`$RAY_PIXI_KUBE_CACHE`, else `<user cache dir>/ray-pixi/kube`."""
    explicit = os.environ.get("RAY_PIXI_KUBE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ray-pixi" / "kube"


def go_env() -> dict[str, str]:
    """The environment every `go` call of the harness runs with."""
    env = dict(os.environ)
    env.update(
        GOMODCACHE=str(cache_dir() / "go" / "mod"),
        GOCACHE=str(cache_dir() / "go" / "build"),
        GOFLAGS="-mod=readonly -buildvcs=false",
        GOTOOLCHAIN="local",
        GOWORK="off",
        CGO_ENABLED="0",
    )
    return env


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def is_built(component: Component) -> bool:
    stamp = component.install_dir() / "recipe.sha256"
    return (
        component.binary().is_file()
        and stamp.is_file()
        and stamp.read_text().strip() == component.recipe_digest()
    )


def ensure_built(component: Component, log: Log = print) -> Path:
    """The component's binary, built first if the cache lacks one for the current recipe.

    Raises `Unavailable` when Go or the module proxy is missing, `BuildError` when the
    build itself fails.
    """
    if is_built(component):
        return component.binary()
    go = shutil.which("go")
    if go is None:
        raise Unavailable(
            f"{component.name} {component.version} is not built in {cache_dir()} and Go is "
            "not on PATH to build it (install Go, then run .ci/setup-kube)",
            go_present=False,
        )
    install_dir = component.install_dir()
    install_dir.mkdir(parents=True, exist_ok=True)
    with open(install_dir.parent / f".{component.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building the same thing
        if is_built(component):
            return component.binary()
        _build(go, component, log)
    return component.binary()


MINIMUM_GO = (1, 26)  # the recipes' `go` lines; GOTOOLCHAIN=local never downloads a newer one


def _check_go_version(go: str, env: dict[str, str]) -> None:
    found = subprocess.run(
        [go, "env", "GOVERSION"], env=env, capture_output=True, text=True, timeout=60
    ).stdout.strip()
    match = re.match(r"go(\d+)\.(\d+)", found)
    if not match or (int(match.group(1)), int(match.group(2))) < MINIMUM_GO:
        raise Unavailable(
            f"{go} is {found or 'of unknown version'}; the build recipes need Go "
            f"{'.'.join(map(str, MINIMUM_GO))} or newer",
            go_present=True,
        )


def _build(go: str, component: Component, log: Log) -> None:
    env = go_env()
    cwd = component.recipe_dir
    _check_go_version(go, env)
    started = time.monotonic()
    log(
        f"kube: building {component.name} {component.version} from {component.module} "
        f"(Go caches in {cache_dir() / 'go'}; a cold build takes ~{component.cold_minutes} "
        "min on 2 cores, later runs reuse the binary)"
    )
    download = subprocess.run(
        [go, "mod", "download"], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200
    )
    if download.returncode != 0:
        raise Unavailable(
            f"could not download the Go modules for {component.name} {component.version} "
            f"(is the Go module proxy {env.get('GOPROXY') or 'default'} reachable?):\n"
            + _tail(download.stderr),
            go_present=True,
        )
    downloaded = time.monotonic()
    output = component.install_dir() / f".{component.name}.partial"
    build_log = component.install_dir() / "build.log"
    with open(build_log, "w") as log_file:
        result = subprocess.run(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                component.ldflags(),
                "-o",
                str(output),
                component.package,
            ],
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=3600,
        )
    if result.returncode != 0:
        raise BuildError(
            f"go build {component.package} failed (exit {result.returncode}); "
            f"log {build_log}:\n" + _tail(build_log.read_text())
        )
    output.replace(component.binary())
    (component.install_dir() / "recipe.sha256").write_text(component.recipe_digest() + "\n")
    finished = time.monotonic()
    log(
        f"kube: built {component.name} {component.version} in {finished - started:.0f} s "
        f"(download {downloaded - started:.0f} s, compile {finished - downloaded:.0f} s) "
        f"-> {component.binary()}"
    )


def module_source(component: Component) -> Path:
    """The component's published module, unpacked in the harness's module cache (KubeRay's
    `config/samples` are read from there), downloaded first if missing: a download, no build.

    Raises `Unavailable` when Go or the module proxy is missing.
    """
    # The cache's path escapes each upper-case letter as '!' + its lower case.
    escaped = re.sub(r"[A-Z]", lambda m: "!" + m.group(0).lower(), component.module)
    source = Path(go_env()["GOMODCACHE"]) / f"{escaped}@{component.version}"
    if source.is_dir():
        return source
    go = shutil.which("go")
    if go is None:
        raise Unavailable(
            f"{component.module}@{component.version} is not in {source.parent} and Go is not on "
            "PATH to download it (install Go, then run .ci/setup-kube)",
            go_present=False,
        )
    download = subprocess.run(
        [go, "mod", "download", component.module],
        cwd=component.recipe_dir,
        env=go_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if download.returncode != 0 or not source.is_dir():
        raise Unavailable(
            f"could not download {component.module}@{component.version} (is the Go module "
            "proxy reachable?):\n" + _tail(download.stderr),
            go_present=True,
        )
    return source


def ensure_all(log: Log = print, *, node: bool = False) -> dict[str, Path]:
    """Every component's binary by name (with `node`, the real node's too), building what is
    missing.

    `$RAY_PIXI_ETCD` names an etcd binary to use instead of building one (Debian's
    etcd-server 3.4.23 works with this kube-apiserver too).
    """
    binaries = {}
    for component in (*COMPONENTS, *(NODE_COMPONENTS if node else ())):
        explicit = os.environ.get("RAY_PIXI_ETCD") if component is ETCD else None
        binaries[component.name] = Path(explicit) if explicit else ensure_built(component, log)
    return binaries
