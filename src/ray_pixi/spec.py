"""Parse `runtime_env["pixi"]` into one canonical, frozen `PixiSpec`.

Pure: no files, no processes. The driver-side `pixi()` helper and the agent-side
`PixiPlugin.validate` both call `parse_runtime_env`, so a user reads the same message
wherever a spec is rejected.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
import zlib
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictStr, ValidationError, model_validator

from ray_pixi.errors import PixiSpecError

__all__ = [
    "FIELD",
    "INLINE_KEYS",
    "MANIFEST_NAMES",
    "Mode",
    "PixiSpec",
    "parse_runtime_env",
    "parse_runtime_env_cached",
    "parse_spec",
]

#: The runtime_env field this plugin owns; also the plugin's name in Ray.
FIELD = "pixi"
MANIFEST_NAMES = ("pixi.toml", "pyproject.toml")
INLINE_KEYS = ("channels", "dependencies", "pypi_dependencies", "platforms")
MANIFEST_KEYS = ("manifest", "manifest_content", "lock_content", "lock_zlib", "include", "exclude")
PLATFORMS = (
    "linux-64",
    "linux-aarch64",
    "linux-ppc64le",
    "osx-64",
    "osx-arm64",
    "win-64",
)
# runtime_env fields that set the worker's interpreter themselves. Ray runs them after
# third-party plugins, so they would silently replace the pixi environment's python.
CONFLICTING_FIELDS = ("pip", "uv", "conda", "py_executable", "image_uri", "container")
# `pixi install` flags a spec may pass through (flag -> takes a value). They change how
# pixi fetches and links, never what ends up installed, so they cannot make the installed
# environment differ from the one the store key describes. Everything else is refused.
ALLOWED_INSTALL_FLAGS = {
    "--concurrent-downloads": True,
    "--concurrent-solves": True,
    "--pypi-keyring-provider": True,
    "--tls-root-certs": True,
    "--color": True,
    "--offline": False,
    "--no-hard-links": False,
    "--no-ref-links": False,
    "--no-symbolic-links": False,
    "--no-progress": False,
    "--verbose": False,
    "--quiet": False,
    "-v": False,
    "-vv": False,
    "-vvv": False,
    "-q": False,
}
# Why the flags users reach for are refused, and what to do instead.
REFUSED_INSTALL_FLAGS = {
    "--manifest-path": "it is set by the plugin",
    "-m": "it is set by the plugin",
    "--workspace": "it names a registered workspace, not this manifest",
    "-w": "it names a registered workspace, not this manifest",
    "--environment": "use the `environment` key",
    "-e": "use the `environment` key",
    "--all": "use the `environment` key",
    "-a": "use the `environment` key",
    "--locked": "use `locked=True`",
    "--frozen": "use `locked=True`",
    "--platform": "the plugin installs for the node's platform; a spec cannot install another",
    "-p": "the plugin installs for the node's platform; a spec cannot install another",
    "--skip": "it installs only part of the environment the manifest and lock describe",
    "--skip-with-deps": "it installs only part of the environment the manifest and lock "
    "describe",
    "--only": "it installs only part of the environment the manifest and lock describe",
    "--config-file": "pixi's configuration is the node's: set PIXI_CONFIG_FILE on the nodes",
    "--no-config": "pixi's configuration is the node's: set PIXI_CONFIG_FILE on the nodes",
    "--auth-file": "credentials are node configuration: set RATTLER_AUTH_FILE on the nodes",
    "--tls-no-verify": "turning off TLS verification from a job is refused; a node operator "
    "can set tls-no-verify in the nodes' pixi configuration",
    "--run-post-link-scripts": "post-link scripts run arbitrary code on the node and are off "
    "by default; a node operator can enable run-post-link-scripts in the nodes' pixi "
    "configuration",
    "--use-environment-activation-cache": "activation is captured by the plugin",
}
_ENV_NAME = re.compile(r"^[a-z0-9-]+$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

PypiRequirement = StrictStr | dict[StrictStr, Any]
CondaRequirement = StrictStr | dict[StrictStr, Any]


class Mode(str, Enum):
    """How the environment is declared; decides what keys the environment."""

    INLINE = "inline"  # channels/dependencies synthesized into a pixi.toml on each node
    MANIFEST = "manifest"  # manifest and lock inlined by pixi() on the driver
    PROJECT = "project"  # manifest and files inside runtime_env["working_dir"]


class PixiSpec(BaseModel):
    """One pixi environment request, with defaults filled so equal requests hash equal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: StrictStr | None = None
    manifest_content: StrictStr | None = None
    lock_content: StrictStr | None = None
    lock_zlib: StrictStr | None = None
    include: tuple[StrictStr, ...] = ()
    exclude: tuple[StrictStr, ...] = ()
    channels: tuple[StrictStr, ...] | None = None
    dependencies: dict[StrictStr, CondaRequirement] | None = None
    pypi_dependencies: dict[StrictStr, PypiRequirement] | None = None
    platforms: tuple[StrictStr, ...] | None = None
    environment: StrictStr = "default"
    locked: StrictBool | None = None
    pixi_version: StrictStr | None = None
    pixi_install_options: tuple[StrictStr, ...] = ()
    # A label for the cluster's one solution of a spec without a lock: a new label asks
    # for a fresh solve (ray_pixi.solution).
    solve_tag: StrictStr | None = None

    @property
    def mode(self) -> Mode:
        if self.manifest is None:
            return Mode.INLINE
        return Mode.MANIFEST if self.manifest_content is not None else Mode.PROJECT

    @property
    def has_lock(self) -> bool:
        return self.lock_content is not None or self.lock_zlib is not None

    def lock_text(self) -> str | None:
        """The inlined pixi.lock, decompressed if `pixi()` sent it compressed."""
        if self.lock_zlib is not None:
            return zlib.decompress(base64.b64decode(self.lock_zlib)).decode()
        return self.lock_content

    @property
    def install_locked(self) -> bool:
        """Manifests install from their pixi.lock unless the user opts out."""
        return self.mode is not Mode.INLINE and self.locked is not False

    def canonical_json(self) -> str:
        """Stable text of the spec: the same request always gives the same bytes."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @model_validator(mode="after")
    def _check_combination(self) -> PixiSpec:
        _check_spec(self)
        return self


def _where(path: tuple[Any, ...] = ()) -> str:
    return f"runtime_env[{FIELD!r}]" + "".join(f"[{p!r}]" for p in path)


def _fail(path: tuple[Any, ...], problem: str, seen: Any, fix: str) -> PixiSpecError:
    return PixiSpecError(f"{_where(path)} {problem}, got {seen!r}. {fix}")


def _check_relative(path: tuple[Any, ...], value: str, what: str) -> None:
    p = PurePosixPath(value.replace("\\", "/"))
    if not value or p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", value):
        raise _fail(
            path,
            f"must be a {what} relative to the working_dir that stays inside it",
            value,
            "Use a path like 'pixi.toml' or 'src/**'; absolute paths and '..' are not allowed.",
        )


def _check_spec(spec: PixiSpec) -> None:  # noqa: C901 - one flat list of rules reads best
    inline = [k for k in INLINE_KEYS if getattr(spec, k) is not None]
    if spec.manifest is None and (spec.include or spec.exclude):
        key = "include" if spec.include else "exclude"
        raise _fail((key,), "selects files of a manifest in the working_dir, but this spec "
                    "declares its dependencies inline", list(getattr(spec, key)),
                    "Drop include/exclude, or point at a pixi.toml in the working_dir.")
    manifest = [k for k in MANIFEST_KEYS if getattr(spec, k) not in (None, ())]
    if inline and manifest:
        raise _fail(
            (),
            f"mixes inline keys {inline} with manifest keys {manifest}",
            sorted(inline + manifest),
            "Either declare dependencies inline, or point at a pixi.toml; not both.",
        )
    if not inline and spec.manifest is None:
        if manifest:
            raise _fail(("manifest",), "is required with " + ", ".join(manifest), None,
                        "Name the manifest, e.g. pixi('pixi.toml').")
        raise _fail((), "declares no environment", {}, "Pass a manifest path like "
                    "pixi('pixi.toml'), or inline keys such as dependencies/pypi_dependencies.")
    if spec.manifest is not None:
        _check_relative(("manifest",), spec.manifest, "manifest path")
        if PurePosixPath(spec.manifest).name not in MANIFEST_NAMES:
            raise _fail(("manifest",), "must name a pixi.toml or pyproject.toml", spec.manifest,
                        "Point at the manifest file itself, not a directory.")
    if spec.manifest_content is not None and (spec.include or spec.exclude):
        raise _fail((), "inlines a manifest and also selects working_dir files with "
                    "include/exclude", "include/exclude",
                    "Use include/exclude only for a manifest inside runtime_env['working_dir'].")
    for key in ("lock_content", "lock_zlib"):
        if getattr(spec, key) is not None and spec.manifest_content is None:
            raise _fail((key,), "needs manifest_content", key,
                        "Build the spec with pixi('pixi.toml'), which inlines both.")
    if spec.lock_content is not None and spec.lock_zlib is not None:
        raise _fail((), "inlines pixi.lock twice (lock_content and lock_zlib)",
                    ["lock_content", "lock_zlib"], "Keep one of them.")
    if spec.lock_zlib is not None:
        _check_zlib(spec.lock_zlib)
    for key in ("include", "exclude"):
        for i, pattern in enumerate(getattr(spec, key)):
            _check_relative((key, i), pattern, "glob")
    if spec.locked is not None and spec.mode is Mode.INLINE:
        raise _fail(("locked",), "applies only to a manifest with a pixi.lock", spec.locked,
                    "Drop `locked` from an inline spec, or use a manifest and `pixi lock`.")
    if spec.locked is not False and spec.mode is Mode.MANIFEST and not spec.has_lock:
        raise _fail(("lock_content",), "is missing, and manifests install locked by default",
                    None, f"Run `pixi lock --manifest-path {spec.manifest}` next to the "
                    "manifest, or pass locked=False to let the cluster solve it once.")
    if spec.solve_tag is not None and spec.install_locked:
        raise _fail(("solve_tag",), "asks for a fresh solve, but this spec installs its "
                    "pixi.lock as it is", spec.solve_tag,
                    "Drop solve_tag, or run `pixi lock` to update the lock (or pass "
                    "locked=False to let the cluster solve).")
    if spec.solve_tag is not None and not spec.solve_tag.strip():
        raise _fail(("solve_tag",), "must be a non-empty label", spec.solve_tag,
                    "For example solve_tag='2026-12-08'.")
    if not _ENV_NAME.match(spec.environment):
        raise _fail(("environment",), "must be a pixi environment name (lowercase letters, "
                    "digits, '-')", spec.environment, "Use a name from the manifest's "
                    "[environments] table, or 'default'.")
    if spec.pixi_version is not None and not _VERSION.match(spec.pixi_version):
        raise _fail(("pixi_version",), "must be a release version X.Y.Z", spec.pixi_version,
                    "Write it without a leading 'v', e.g. '0.77.0'.")
    _check_install_options(spec.pixi_install_options)
    for i, platform in enumerate(spec.platforms or ()):
        if platform not in PLATFORMS:
            close = difflib.get_close_matches(platform, PLATFORMS, n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise _fail(("platforms", i), "is not a pixi platform", platform,
                        f"{hint}Known platforms: {', '.join(PLATFORMS)}.")
    for i, channel in enumerate(spec.channels or ()):
        if not channel.strip():
            raise _fail(("channels", i), "must be a channel name or URL", channel,
                        "For example 'conda-forge'.")
    for key in ("dependencies", "pypi_dependencies"):
        for name in getattr(spec, key) or {}:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name):
                raise _fail((key, name), "is not a package name", name,
                            "Use the bare package name as the key and put the version "
                            "in the value, e.g. {'numpy': '>=1.26'}.")


def _check_zlib(value: str) -> None:
    try:
        if not _BASE64.match(value):
            raise binascii.Error("not base64")
        zlib.decompress(base64.b64decode(value))
    except (binascii.Error, zlib.error, ValueError) as e:
        raise _fail(("lock_zlib",), f"must be pixi.lock compressed by pixi() ({e})",
                    value[:40] + ("..." if len(value) > 40 else ""),
                    "Let pixi('pixi.toml') write it, or pass the text as lock_content.") from None


def _check_install_options(options: tuple[str, ...]) -> None:
    """Pass through only flags that change how pixi fetches, never what it installs."""
    i = 0
    while i < len(options):
        option = options[i]
        flag, has_value = option.split("=", 1)[0], "=" in option
        if flag in REFUSED_INSTALL_FLAGS or (flag.startswith("--skip") and flag not in
                                             ALLOWED_INSTALL_FLAGS):
            why = REFUSED_INSTALL_FLAGS.get(flag, REFUSED_INSTALL_FLAGS["--skip"])
            raise _fail(("pixi_install_options", i), f"cannot be set here: {why}", option,
                        "Remove it from pixi_install_options.")
        if flag not in ALLOWED_INSTALL_FLAGS:
            raise _fail(("pixi_install_options", i), "is not a `pixi install` flag ray-pixi "
                        "passes through", option, "Allowed: "
                        + ", ".join(sorted(ALLOWED_INSTALL_FLAGS)) + ".")
        if ALLOWED_INSTALL_FLAGS[flag] and not has_value:
            if i + 1 >= len(options) or options[i + 1].startswith("-"):
                raise _fail(("pixi_install_options", i), "needs a value", option,
                            f"Write [{flag!r}, '<value>'] or ['{flag}=<value>'].")
            i += 1
        i += 1


_TYPE_HINTS = {
    "dependencies": "must be a table of conda package -> version spec",
    "pypi_dependencies": "must be a table of PyPI package -> version spec or table",
    "channels": "must be a list of channel names",
    "platforms": "must be a list of pixi platforms",
    "include": "must be a list of globs",
    "exclude": "must be a list of globs",
    "pixi_install_options": "must be a list of command-line flags",
    "locked": "must be true or false",
    "solve_tag": "must be a string label",
}
_EXAMPLES = {
    "dependencies": "For example {'numpy': '>=1.26'}.",
    "pypi_dependencies": "For example {'requests': '>=2.31'} or "
    "{'mypkg': {'path': '.', 'editable': True}}.",
    "channels": "For example ['conda-forge'].",
    "platforms": "For example ['linux-64'].",
    "include": "For example ['src/**'].",
    "exclude": "For example ['**/*.ipynb'].",
    "pixi_install_options": "For example ['--concurrent-downloads', '8'].",
    "locked": "Pass True or False.",
    "solve_tag": "For example solve_tag='2026-12-08'.",
}
_KNOWN_KEYS = tuple(PixiSpec.model_fields)


def _translate(error: ValidationError, raw: Mapping[str, Any]) -> PixiSpecError:
    """Turn pydantic's first error into our one-line message with the field path."""
    first = error.errors()[0]
    # pydantic adds union-member names ("str", "dict[...]") to locations; drop them.
    noise = ("str", "dict", "tuple", "function")
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith(noise)))
    seen = first.get("input")
    if first["type"] == "extra_forbidden":
        key = loc[-1]
        close = difflib.get_close_matches(str(key), _KNOWN_KEYS, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        return PixiSpecError(f"{_where()} has an unknown key {key!r}. {hint}"
                             f"Known keys: {', '.join(_KNOWN_KEYS)}.")
    cause = first.get("ctx", {}).get("error")
    if first["type"] == "value_error" and isinstance(cause, PixiSpecError):
        return cause
    top = loc[0] if loc else ""
    problem = _TYPE_HINTS.get(str(top), "must be a string")
    if len(loc) > 1 and top in ("dependencies", "pypi_dependencies"):
        problem = "must be a version string like '>=1.2' or a table"
        if len(loc) > 2:
            loc = loc[:2]
            table = raw.get(str(top))
            seen = table.get(loc[1], seen) if isinstance(table, dict) else seen
    elif len(loc) > 1:
        problem = "must be a string"
    fix = _EXAMPLES.get(str(top), "See the field table in the ray-pixi README.")
    return _fail(loc, problem, seen, fix)


def parse_spec(value: Any) -> PixiSpec:
    """Accept every form a user may write for `runtime_env["pixi"]`."""
    if isinstance(value, PixiSpec):
        return value
    if isinstance(value, str):
        # A plain string names a manifest inside the working_dir.
        value = {"manifest": value}
    if not isinstance(value, Mapping):
        raise _fail((), "must be a manifest path or a table", value,
                    "Write runtime_env={'pixi': pixi('pixi.toml')} or "
                    "{'pixi': {'dependencies': {...}}}.")
    try:
        return PixiSpec.model_validate(dict(value))
    except ValidationError as e:
        raise _translate(e, value) from None


def parse_runtime_env(runtime_env: Mapping[str, Any]) -> PixiSpec:
    """Validate the pixi field in the context of the whole runtime_env."""
    spec = parse_spec(runtime_env.get(FIELD))
    for other in CONFLICTING_FIELDS:
        if runtime_env.get(other):
            raise PixiSpecError(
                f"runtime_env combines {FIELD!r} with {other!r}, got both. {other!r} sets the "
                f"workers' Python itself and would silently replace the pixi environment: "
                f"declare those packages in the pixi spec instead (pypi_dependencies for "
                f"pip/uv packages) and drop {other!r}."
            )
    if spec.mode is Mode.PROJECT and not runtime_env.get("working_dir"):
        raise PixiSpecError(
            f"{_where(('manifest',))} names {spec.manifest!r} inside the working_dir, but the "
            "runtime_env has no working_dir. Set runtime_env['working_dir'] to the project "
            "directory, or use pixi('path/to/pixi.toml') without include/exclude to inline "
            "the manifest and its pixi.lock."
        )
    return spec


_PARSED_CACHE_SIZE = 256
_parsed: dict[str, PixiSpec] = {}


def parse_runtime_env_cached(runtime_env: Mapping[str, Any]) -> PixiSpec:
    """`parse_runtime_env`, remembered by the runtime_env's text: Ray's agent validates on
    every setup, and most worker starts re-run the plugin pipeline."""
    try:
        text = repr(sorted((k, runtime_env.get(k)) for k in runtime_env))
    except TypeError:
        return parse_runtime_env(runtime_env)
    spec = _parsed.get(text)
    if spec is None:
        spec = parse_runtime_env(runtime_env)
        if len(_parsed) >= _PARSED_CACHE_SIZE:
            _parsed.pop(next(iter(_parsed)))
        _parsed[text] = spec
    return spec
