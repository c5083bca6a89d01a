"""``ray-pixi-operator``: ``run`` the kopf operator with its webhook, or ``render`` offline."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .settings import Settings, SettingsError

__all__ = ["main"]

# The settings `render` takes as flags too: --payload-image sets RAY_PIXI_PAYLOAD_IMAGE, etc.
RENDER_FIELDS = (
    "payload_image",
    "payload_image_pull_policy",
    "pixi_version",
    "cache_volume",
    "cache_size_limit",
    "cache_host_path",
    "cache_pvc_name",
    "plugin_cache_size_gb",
)


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ray-pixi-operator",
        description="KubeRay add-on that prepares labelled RayClusters for runtime_env 'pixi'.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "run",
        help="run the operator: the mutating webhook and the reconciler (settings from env vars)",
    )
    render = commands.add_parser(
        "render",
        help="prepare RayCluster/RayJob/RayService YAML offline and print it",
        description="Prepare RayCluster/RayJob/RayService YAML as the webhook would. Each flag "
        "overrides the RAY_PIXI_* env var of the same name.",
    )
    render.add_argument("file", nargs="?", default="-", help="YAML file, or - for stdin")
    for field in RENDER_FIELDS:
        render.add_argument(
            _flag(field), dest=field, metavar="VALUE", help=Settings.env_name(field)
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "render":
        return _render(args)
    return _run()


def _render(args: argparse.Namespace) -> int:
    from .render import RenderError, render

    environ = dict(os.environ)
    flags = {}
    for field in RENDER_FIELDS:
        value = getattr(args, field)
        if value is not None:
            environ[Settings.env_name(field)] = value
            flags[Settings.env_name(field)] = _flag(field)
    try:
        settings = Settings.from_env(environ)
    except SettingsError as error:
        message = str(error)
        name = message.removeprefix("Invalid ").split("=", 1)[0]
        hint = f" (from {flags[name]})" if name in flags else ""
        print(f"ray-pixi-operator render: {message}{hint}", file=sys.stderr)
        return 2
    try:
        if args.file == "-":
            text, source = sys.stdin.read(), "<stdin>"
        else:
            text, source = Path(args.file).read_text(), args.file
    except OSError as error:
        print(
            f"ray-pixi-operator render: cannot read {args.file}: {error.strerror}", file=sys.stderr
        )
        return 2
    try:
        rendered = render(text, settings, source=source)
    except RenderError as error:
        print(f"ray-pixi-operator render: {error}", file=sys.stderr)
        return 1
    for note in rendered.notes:
        print(f"ray-pixi-operator render: note: {note}", file=sys.stderr)
    sys.stdout.write(rendered.text)
    return 0


def _run() -> int:
    import kopf

    from . import handlers  # registers the handlers with kopf

    try:
        settings = Settings.from_env(os.environ)
        handlers.check_webhook_tls(settings)
    except SettingsError as error:
        print(f"ray-pixi-operator: {error}", file=sys.stderr)
        return 2

    kopf.configure(debug=settings.log_level == "DEBUG")
    logging.getLogger().setLevel(settings.log_level)
    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=kopf.Memo({handlers.MEMO_KEY: settings}),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
