"""The local conda channel the tests solve against, built by the suite and cached by
content, so a warm run builds nothing.

Each package is cached under `<cache>/pkgs/<key>/` where the key covers the builder's own
source and the recipe's inputs (the interpreter's identity, wheel hashes, ...); the channel
(`linux-64/` + `noarch/`, indexed by py-rattler's `index_fs`) is cached under
`<cache>/channels/<key>/` keyed by its packages. Builds are serialised by a file lock, so
concurrent sessions share one result, and land by rename, so a half-built one is never
used.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .condapkg import PackageInfo
from .recipes import (
    SIX,
    ActivationRecipe,
    PrerequisiteMissing,
    PythonRecipe,
    Recipe,
    WheelRecipe,
    linux_subdir,
)

__all__ = ["Channel", "build_channel", "channel_location", "default_recipes"]

_BUILDER_SOURCES = ("channel.py", "condapkg.py", "recipes.py")


@dataclass(frozen=True)
class Channel:
    """A built, indexed channel directory.

    `packages`: what it holds. `pypi_mapping`: conda name -> the PyPI names it provides
    (`None`: not a PyPI package), as the compressed conda->PyPI mapping says it.
    `built`: the package files this call had to build (empty on a warm cache);
    `indexed`: whether this call had to assemble and index the channel.
    """

    path: Path
    packages: tuple[PackageInfo, ...]
    pypi_mapping: dict[str, list[str] | None]
    built: tuple[str, ...] = ()
    indexed: bool = False
    seconds: float = field(default=0.0, compare=False)

    @property
    def url(self) -> str:
        """The channel as a `file://` URL (usable in a manifest's `channels`)."""
        return self.path.as_uri()

    def package(self, name: str) -> PackageInfo:
        for info in self.packages:
            if info.name == name:
                return info
        raise KeyError(f"the test channel has no package {name!r}; it holds "
                       f"{sorted(p.name for p in self.packages)}")

    def version(self, name: str) -> str:
        return self.package(name).version


def default_recipes(wheel_cache: Path) -> list[Recipe]:
    """The session's channel: `python` exactly as the interpreter running the tests (the
    one the test Ray cluster runs: the venv's base installation), the activation package,
    and `six` as a noarch: python package."""
    return [PythonRecipe(Path(sys.base_prefix)), ActivationRecipe(), WheelRecipe(SIX, wheel_cache)]


def _builder_digest() -> str:
    """Changes whenever the code that builds packages changes, or the libraries it uses."""
    try:
        import rattler
        import zstandard
    except ImportError as e:
        raise PrerequisiteMissing(
            f"{e.name} is not installed; the test channel needs py-rattler and zstandard "
            "(pyproject.toml's test group: `bash .ci/setup-python`)") from e
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _BUILDER_SOURCES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes() + b"\0")
    h.update(f"rattler {rattler.__version__} zstandard {zstandard.__version__}".encode())
    return h.hexdigest()


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _package(recipe: Recipe, key: str, pkgs: Path) -> tuple[PackageInfo, bool]:
    """The recipe's package from the cache, building it first if needed."""
    slot = pkgs / key[:32]
    done = slot / "package.json"
    if done.is_file():
        return PackageInfo(**json.loads(done.read_text())), False
    work = Path(tempfile.mkdtemp(prefix=f".build-{recipe.name}-", dir=pkgs))
    try:
        archive = recipe.build(work / "work", work, key[:7])
        from rattler.package import IndexJson

        index = IndexJson.from_package_archive(archive)
        info = PackageInfo(name=index.name.normalized, version=str(index.version),
                           build=str(index.build), subdir=str(index.subdir or "noarch"),
                           filename=archive.name)
        shutil.rmtree(work / "work")
        (work / "package.json").write_text(json.dumps(info.__dict__))
        os.replace(work, slot)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return info, True


def _index(channel_dir: Path) -> None:
    from rattler.index import index_fs

    asyncio.run(index_fs(channel_dir))


@dataclass(frozen=True)
class _Plan:
    keys: list[str]  # one package key per recipe, in order
    channel_dir: Path


def _plan(recipes: Sequence[Recipe], cache: Path) -> _Plan:
    builder = _builder_digest()
    keys = [hashlib.sha256(f"{builder}:{r.key()}".encode()).hexdigest() for r in recipes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"two recipes build the same package: {[r.name for r in recipes]}")
    channel_key = hashlib.sha256(json.dumps([builder, sorted(keys)]).encode())
    return _Plan(keys, cache / "channels" / channel_key.hexdigest()[:32])


def channel_location(recipes: Sequence[Recipe], cache: Path) -> tuple[Path, bool]:
    """Where `build_channel` puts this channel, and whether it is already there (builds
    nothing)."""
    plan = _plan(recipes, cache)
    return plan.channel_dir, (plan.channel_dir / "channel.json").is_file()


def build_channel(recipes: Sequence[Recipe], cache: Path) -> Channel:
    """The channel holding `recipes`' packages, from `cache` when already built there."""
    started = time.monotonic()
    plan = _plan(recipes, cache)
    keys, channel_dir = plan.keys, plan.channel_dir
    pkgs, channels = cache / "pkgs", cache / "channels"
    mapping = {r.name: (list(r.pypi_names) or None) for r in recipes}
    with _locked(cache):
        pkgs.mkdir(exist_ok=True)
        channels.mkdir(exist_ok=True)
        infos, built = [], []
        for recipe, key in zip(recipes, keys, strict=True):
            info, fresh = _package(recipe, key, pkgs)
            infos.append(info)
            if fresh:
                built.append(info.filename)
        indexed = False
        if not (channel_dir / "channel.json").is_file():
            tmp = Path(tempfile.mkdtemp(prefix=".channel-", dir=channels))
            try:
                for subdir in {linux_subdir(), "noarch"}:
                    (tmp / subdir).mkdir()
                for key, info in zip(keys, infos, strict=True):
                    source = pkgs / key[:32] / info.filename
                    os.link(source, tmp / info.subdir / info.filename)
                _index(tmp)
                (tmp / "channel.json").write_text(
                    json.dumps({"packages": [i.__dict__ for i in infos]}, indent=2))
                os.replace(tmp, channel_dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            indexed = True
    return Channel(channel_dir, tuple(infos), mapping, tuple(built), indexed,
                   time.monotonic() - started)
