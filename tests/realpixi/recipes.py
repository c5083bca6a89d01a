"""The packages of the test channel: what goes into each, and the key of its inputs.

- `PythonRecipe`: `python` at exactly the version of an existing CPython installation
  (the one the test Ray cluster runs), made relocatable: the stdlib without site-packages
  content, test suites or bytecode; ELF RUNPATHs rewritten `$ORIGIN`-relative with
  Debian's `patchelf`; text files holding the old prefix declared as prefix placeholders.
- `ActivationRecipe`: a package whose `etc/conda/activate.d` script exports a variable and
  prepends to a path-like one, as CUDA or GDAL packages do.
- `WheelRecipe`: a pure-Python PyPI wheel repackaged as `noarch: python` (depends on
  `python`, files under `site-packages/`), as conda-forge's noarch packages are.

Each recipe's `key()` covers every input that changes its package; `build()` writes the
`.conda` into a directory and returns its path. `build_id` (from the key) goes into the
build string, so a package whose content changed never shares a file name, a pixi cache
entry or a lock entry with its predecessor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .condapkg import write_conda

__all__ = [
    "ACTIVATED_VAR",
    "ActivationRecipe",
    "PATH_VAR",
    "PythonRecipe",
    "Recipe",
    "SIX",
    "WheelPin",
    "WheelRecipe",
    "PrerequisiteMissing",
]

ACTIVATED_VAR = "RAY_PIXI_TEST_ACTIVATED"
PATH_VAR = "RAY_PIXI_TEST_PATH"
_SHARE = "share/ray-pixi-test"


class PrerequisiteMissing(RuntimeError):
    """A tool the channel build needs is not installed (patchelf, py-rattler, zstandard)."""


class Recipe(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def pypi_names(self) -> tuple[str, ...]:
        """PyPI names this package provides, for the conda->PyPI mapping (empty: none)."""
        ...

    def key(self) -> str: ...

    def build(self, work: Path, out_dir: Path, build_id: str) -> Path: ...


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _timestamp_ms() -> int:
    return int(time.time() * 1000)


# --- python ---------------------------------------------------------------------------

_PROBE = """
import json, platform, sys, sysconfig
print(json.dumps({
    "version": platform.python_version(),
    "short": sysconfig.get_python_version(),
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
    "executable": sys.executable,
    "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")),
    "implementation": sys.implementation.name,
}))
"""
_TEST_DIRS = {"test", "tests", "idle_test"}


def _patchelf() -> str:
    path = shutil.which("patchelf")
    if path is None:
        raise PrerequisiteMissing(
            "patchelf is not installed: the relocatable python needs it to rewrite ELF "
            "RUNPATHs. Install Debian's package: `apt-get install patchelf` "
            "(.ci/setup-realpixi does this).")
    return path


def _is_linked_elf(path: Path) -> bool:
    """An ELF executable or shared object (what has a RUNPATH; not a `.o`)."""
    with open(path, "rb") as f:
        head = f.read(18)
    if len(head) < 18 or head[:4] != b"\x7fELF":
        return False
    e_type = int.from_bytes(head[16:18], "little" if head[5] == 1 else "big")
    return e_type in (2, 3)  # ET_EXEC, ET_DYN


def _runpath_entries(patchelf: str, path: Path) -> list[str]:
    out = subprocess.run([patchelf, "--print-rpath", str(path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    return [e for e in out.split(":") if e]


@dataclass(frozen=True)
class PythonRecipe:
    """`python` from the CPython installed at `base_prefix` (not a venv)."""

    base_prefix: Path
    name: str = "python"
    pypi_names: tuple[str, ...] = ()

    def probe(self) -> dict[str, Any]:
        exe = self.base_prefix / "bin" / "python3"
        try:
            info: dict[str, Any] = json.loads(subprocess.run(
                [str(exe), "-I", "-c", _PROBE], capture_output=True, text=True, check=True,
                timeout=60).stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            raise RuntimeError(f"cannot run {exe} to learn its version: {e}") from e
        if info["implementation"] != "cpython" or Path(info["prefix"]) != Path(
                info["base_prefix"]):
            raise RuntimeError(f"{exe} is not a CPython installation's own interpreter "
                               f"(prefix {info['prefix']}, base {info['base_prefix']})")
        return info

    @property
    def version(self) -> str:
        return str(self.probe()["version"])

    def key(self) -> str:
        info = self.probe()
        exe = self.base_prefix / "bin" / f"python{info['short']}"
        lib = self.base_prefix / "lib" / info["ldlibrary"]
        patchelf_version = subprocess.run([_patchelf(), "--version"], capture_output=True,
                                          text=True, check=True).stdout.strip()
        return _digest("python", info, _file_digest(exe),
                       _file_digest(lib) if lib.is_file() else None, patchelf_version)

    def build(self, work: Path, out_dir: Path, build_id: str) -> Path:
        info = self.probe()
        short = info["short"]
        src, stage = self.base_prefix, work / "stage"
        stage.mkdir(parents=True)
        self._copy_bin(src, stage, short)
        (stage / "lib").mkdir()
        for lib in sorted((src / "lib").glob("libpython*")):
            _copy_entry(lib, stage / "lib" / lib.name)
        if (src / "lib" / "pkgconfig").is_dir():
            shutil.copytree(src / "lib" / "pkgconfig", stage / "lib" / "pkgconfig",
                            symlinks=True)
        shutil.copytree(src / "lib" / f"python{short}", stage / "lib" / f"python{short}",
                        symlinks=True, ignore=_stdlib_ignore(src / "lib" / f"python{short}"))
        site = stage / "lib" / f"python{short}" / "site-packages"
        site.mkdir(exist_ok=True)
        (site / "README.txt").write_text(
            "This directory exists so that 3rd party packages can be installed here.\n")
        if (src / "include" / f"python{short}").is_dir():
            shutil.copytree(src / "include" / f"python{short}",
                            stage / "include" / f"python{short}", symlinks=True)
        self._relocate_elves(stage)
        timestamp = _timestamp_ms()
        self._compile_stdlib(stage / "lib" / f"python{short}", timestamp // 1000)
        index = {
            "name": "python",
            "version": info["version"],
            "build": f"h{build_id}_0_cpython",
            "build_number": 0,
            "depends": ["__glibc >=2.17,<3.0.a0"],
            "license": "Python-2.0",
            "subdir": linux_subdir(),
            "platform": "linux",
            "arch": os.uname().machine,
            "timestamp": timestamp,
        }
        about = {"summary": f"CPython {info['version']} relocated from {src} for tests",
                 "license": "Python-2.0"}
        return write_conda(stage, index, out_dir, placeholder=str(src), about=about)

    def _compile_stdlib(self, stdlib: Path, mtime: int) -> None:
        """Ship the stdlib's bytecode, as conda-forge's python does: the package's tar gives
        every file `mtime`, so sources get it before compiling and the .pyc files stay
        valid once installed."""
        for path in stdlib.rglob("*.py"):
            if "site-packages" not in path.relative_to(stdlib).parts:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
        python = self.base_prefix / "bin" / f"python{stdlib.name.removeprefix('python')}"
        subprocess.run([str(python), "-I", "-m", "compileall", "-q", "-j", "0",
                        "-x", r"/site-packages/", str(stdlib)], check=True,
                       capture_output=True)

    @staticmethod
    def _copy_bin(src: Path, stage: Path, short: str) -> None:
        """CPython's own commands only: the installation's bin/ also holds scripts of
        whatever was pip-installed into it."""
        major = short.split(".")[0]
        names = [f"python{short}", f"python{major}", "python",
                 f"python{short}-config", f"python{major}-config", "python-config",
                 f"pydoc{short}", f"pydoc{major}", "pydoc",
                 f"2to3-{short}", "2to3", f"idle{short}", f"idle{major}", "idle"]
        (stage / "bin").mkdir()
        for name in names:
            if os.path.lexists(src / "bin" / name):
                _copy_entry(src / "bin" / name, stage / "bin" / name)
        if not (stage / "bin" / f"python{short}").is_file():
            raise RuntimeError(f"{src}/bin has no python{short}")

    def _relocate_elves(self, stage: Path) -> None:
        """Every RUNPATH entry under the old prefix becomes `$ORIGIN/<relative>`."""
        patchelf, old = _patchelf(), self.base_prefix
        for path in sorted(stage.rglob("*")):
            if path.is_symlink() or not path.is_file() or not _is_linked_elf(path):
                continue
            rel_dir = path.parent.relative_to(stage)
            entries = _runpath_entries(patchelf, path)
            new = []
            for entry in entries:
                target = Path(entry)
                if target == old or target.is_relative_to(old):
                    up = os.path.relpath(target.relative_to(old), rel_dir)
                    entry = "$ORIGIN" if up == "." else f"$ORIGIN/{up}"
                new.append(entry)
            if new != entries:
                subprocess.run([patchelf, "--set-rpath", ":".join(new), str(path)],
                               check=True, capture_output=True)
            left = [e for e in _runpath_entries(patchelf, path) if e.startswith(str(old))]
            if left:
                raise RuntimeError(f"{path} still has RUNPATH {left} after patchelf")


def linux_subdir() -> str:
    machine = os.uname().machine
    if not sys.platform.startswith("linux"):
        raise PrerequisiteMissing(f"the relocatable python is built for Linux only, not "
                                  f"{sys.platform}")
    return {"x86_64": "linux-64", "aarch64": "linux-aarch64"}.get(machine, f"linux-{machine}")


def _copy_entry(src: Path, dst: Path) -> None:
    """Copy a file, or recreate a symlink as it is (relative links stay relative)."""
    if src.is_symlink():
        target = os.readlink(src)
        if os.path.isabs(target):
            raise RuntimeError(f"{src} is an absolute symlink ({target}); it would not "
                               "survive relocation")
        os.symlink(target, dst)
    else:
        shutil.copy2(src, dst)


def _stdlib_ignore(stdlib: Path):  # type: ignore[no-untyped-def]
    """What the package leaves out of the stdlib: the source installation's bytecode (the
    package compiles its own), test suites, the static libpython, and site-packages content
    (the installation's own pip-installed packages must not leak into the environment)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        if here == stdlib / "site-packages":
            return set(names)
        dropped = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".a"))}
        dropped |= {n for n in names if n in _TEST_DIRS and (here / n).is_dir()}
        return dropped

    return ignore


# --- activation -----------------------------------------------------------------------

@dataclass(frozen=True)
class ActivationRecipe:
    """`ray-pixi-test-activation`: its activate.d script exports `RAY_PIXI_TEST_ACTIVATED`
    (= `<name> <version>`) and prepends `$CONDA_PREFIX/share/ray-pixi-test` to
    `RAY_PIXI_TEST_PATH`; its deactivate.d script undoes both."""

    version: str = "1.0.0"
    name: str = "ray-pixi-test-activation"
    pypi_names: tuple[str, ...] = ()

    @property
    def activated_value(self) -> str:
        return f"{self.name} {self.version}"

    def key(self) -> str:
        return _digest("activation", self.name, self.version)

    def build(self, work: Path, out_dir: Path, build_id: str) -> Path:
        stage = work / "stage"
        activate = stage / "etc" / "conda" / "activate.d" / f"{self.name}.sh"
        deactivate = stage / "etc" / "conda" / "deactivate.d" / f"{self.name}.sh"
        share = stage / _SHARE
        for d in (activate.parent, deactivate.parent, share):
            d.mkdir(parents=True)
        activate.write_text(
            f'export {ACTIVATED_VAR}="{self.activated_value}"\n'
            f'export {PATH_VAR}="${{CONDA_PREFIX}}/{_SHARE}${{{PATH_VAR}:+:${{{PATH_VAR}}}}}"\n')
        deactivate.write_text(
            f"unset {ACTIVATED_VAR}\n"
            f'case "${{{PATH_VAR}:-}}" in\n'
            f'  "${{CONDA_PREFIX}}/{_SHARE}:"*) '
            f'export {PATH_VAR}="${{{PATH_VAR}#"${{CONDA_PREFIX}}/{_SHARE}:"}}" ;;\n'
            f'  "${{CONDA_PREFIX}}/{_SHARE}") unset {PATH_VAR} ;;\n'
            "esac\n")
        (share / "README").write_text(f"{self.name} {self.version}: test activation data\n")
        index = {
            "name": self.name,
            "version": self.version,
            "build": f"h{build_id}_0",
            "build_number": 0,
            "depends": [],
            "license": "Apache-2.0",
            "noarch": "generic",
            "subdir": "noarch",
            "timestamp": _timestamp_ms(),
        }
        return write_conda(stage, index, out_dir,
                           about={"summary": "Sets variables on activation, for tests"})


# --- a noarch: python package from a wheel --------------------------------------------

@dataclass(frozen=True)
class WheelPin:
    """A pure-Python wheel on PyPI, pinned by its sha256."""

    name: str
    version: str
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


SIX = WheelPin(
    "six", "1.17.0",
    "https://files.pythonhosted.org/packages/b7/ce/149a00dd41f10bc29e5921b496af8b574d8413afcd5e30dfa0ed46c2cc5e/six-1.17.0-py2.py3-none-any.whl",
    "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274",
)


def _wheel_license(dist_info: Path) -> str:
    from email.parser import HeaderParser

    with open(dist_info / "METADATA", encoding="utf-8") as f:
        metadata = HeaderParser().parse(f)
    return str(metadata.get("License-Expression") or metadata.get("License") or "")


def fetch_wheel(pin: WheelPin, cache: Path) -> Path:
    """The pinned wheel, downloaded once into `cache` and verified by sha256."""
    path = cache / pin.filename
    if path.is_file() and _file_digest(path) == pin.sha256:
        return path
    with urllib.request.urlopen(pin.url, timeout=120) as response:  # noqa: S310
        data = response.read()
    actual = hashlib.sha256(data).hexdigest()
    if actual != pin.sha256:
        raise RuntimeError(f"{pin.url} has sha256 {actual}, expected {pin.sha256}")
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return path


@dataclass(frozen=True)
class WheelRecipe:
    """`noarch: python` package `<pin.name>` built from the pinned wheel."""

    pin: WheelPin
    wheel_cache: Path

    @property
    def name(self) -> str:
        return re.sub(r"[-_.]+", "-", self.pin.name).lower()

    @property
    def pypi_names(self) -> tuple[str, ...]:
        return (self.name,)

    def key(self) -> str:
        return _digest("wheel", self.pin)

    def build(self, work: Path, out_dir: Path, build_id: str) -> Path:
        wheel = fetch_wheel(self.pin, self.wheel_cache)
        stage = work / "stage"
        site = stage / "site-packages"
        site.mkdir(parents=True)
        with zipfile.ZipFile(wheel) as z:
            names = z.namelist()
            unsupported = [n for n in names if ".data/" in n
                           or n.endswith(".dist-info/entry_points.txt")]
            if unsupported:
                raise ValueError(f"{wheel.name}: repackaging supports plain pure-Python "
                                 f"wheels only; it holds {unsupported}")
            for member in names:
                target = (site / member).resolve()
                if not target.is_relative_to(site.resolve()):
                    raise ValueError(f"{wheel.name}: member {member!r} escapes the package")
            z.extractall(site)
        dist_info = next(site.glob("*.dist-info"))
        (dist_info / "INSTALLER").write_text("conda\n")
        with open(dist_info / "RECORD", "a") as record:
            record.write(f"{dist_info.name}/INSTALLER,,\n")
        index = {
            "name": self.name,
            "version": self.pin.version,
            "build": f"pyh{build_id}_0",
            "build_number": 0,
            "depends": ["python"],
            "license": _wheel_license(dist_info),
            "noarch": "python",
            "subdir": "noarch",
            "timestamp": _timestamp_ms(),
        }
        link = {"noarch": {"type": "python"}, "package_metadata_version": 1}
        return write_conda(stage, index, out_dir, link=link,
                           about={"summary": f"{self.pin.filename} repackaged for tests"})
