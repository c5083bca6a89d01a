"""``ray-pixi-operator``: ``run`` the kopf operator with its webhook, or ``render`` offline."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
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
        "webhook",
        help="serve the mutating admission webhook only (any number of replicas)",
    )
    commands.add_parser(
        "reconcile",
        help="run the reconciler only: repairs and reports (exactly one replica)",
    )
    commands.add_parser(
        "run",
        help="run the webhook and the reconciler in one process (development, small installs)",
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
    clusters = commands.add_parser(
        "clusters",
        help="list opted-in RayClusters by payload, or migrate them to the current settings",
    ).add_subparsers(dest="action", required=True)
    listing = clusters.add_parser(
        "list", help="each opted-in RayCluster and what it was prepared with"
    )
    migrate = clusters.add_parser(
        "migrate",
        help="prepare clusters again with the webhook's settings (sets ray-pixi.io/migrate)",
    )
    for sub in (listing, migrate):
        scope = sub.add_mutually_exclusive_group()
        scope.add_argument("-n", "--namespace", help="only this namespace")
        scope.add_argument(
            "-A", "--all-namespaces", action="store_true", help="every namespace (the default)"
        )
    migrate.add_argument("names", nargs="*", metavar="NAME", help="RayClusters to migrate")
    migrate.add_argument("--all", action="store_true", help="every opted-in RayCluster in scope")
    migrate.add_argument(
        "--from-image", metavar="IMAGE", help="only clusters prepared with this payload image"
    )
    migrate.add_argument("--dry-run", action="store_true", help="say what would be migrated")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "render":
        return _render(args)
    if args.command == "clusters":
        return _clusters(parser, args)
    roles = {"webhook": (True, False), "reconcile": (False, True), "run": (True, True)}
    webhook, reconciler = roles[args.command]
    return _run(webhook=webhook, reconciler=reconciler)


def _clusters(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from . import clusters

    if args.action == "migrate" and not (args.names or args.all or args.from_image):
        parser.error("clusters migrate: name the clusters, or give --all or --from-image")
    try:
        if args.action == "list":
            print(clusters.list_clusters(args.namespace))
            return 0
        report, code = clusters.migrate_clusters(
            args.namespace,
            args.names,
            every=args.all or (args.from_image is not None and not args.names),
            from_image=args.from_image,
            dry_run=args.dry_run,
        )
    except Exception as error:  # noqa: BLE001 -- kubeconfig, RBAC, connection: say what failed
        print(f"ray-pixi-operator clusters {args.action}: {error}", file=sys.stderr)
        return 2
    print(report)
    return code


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


def _run(*, webhook: bool, reconciler: bool) -> int:
    import kopf

    from .roles import build_registry, check_webhook_tls
    from .scope import MEMO_KEY

    try:
        settings = Settings.from_env(os.environ)
        if webhook:
            check_webhook_tls(settings)
    except SettingsError as error:
        print(f"ray-pixi-operator: {error}", file=sys.stderr)
        return 2

    kopf.configure(debug=settings.log_level == "DEBUG")
    logging.getLogger().setLevel(settings.log_level)
    registry = build_registry(webhook=webhook, reconciler=reconciler)
    stop = threading.Event()
    failure: list[BaseException] = []
    # kopf names the operator `getpass.getuser()@host` unless told, and getuser raises for a
    # uid without a passwd entry: the chart's 65532, or any uid a platform assigns. In a Pod
    # the hostname is the Pod's name, which says more anyway.
    identity = os.environ.get("POD_ID") or socket.gethostname()

    def operate() -> None:
        try:
            kopf.run(
                registry=registry,
                standalone=True,
                clusterwide=not settings.namespaces,
                namespaces=settings.namespaces,
                liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
                memo=kopf.Memo({MEMO_KEY: settings}),
                identity=identity,  # type: ignore[arg-type]  # kopf's NewType over str
                stop_flag=stop,
            )
        except BaseException as error:  # noqa: BLE001 -- reported by the main thread
            failure.append(error)

    # kopf runs in a thread; this (main) thread owns the signals, so that a webhook keeps
    # answering for the drain period after SIGTERM while Service endpoints drop the pod. A
    # second signal (Ctrl+C twice) stops at once.
    signalled, hurried = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        (hurried if signalled.is_set() else signalled).set()

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, on_signal)
    operator = threading.Thread(target=operate, name="kopf", daemon=True)
    operator.start()
    while operator.is_alive() and not signalled.wait(timeout=1.0):
        pass
    if signalled.is_set() and operator.is_alive():
        drain = settings.webhook_drain_seconds if webhook else 0.0
        if drain:
            logging.getLogger(__name__).info(
                "Stopping: answering admission requests for %g s more (drain; signal again "
                "to stop now)",
                drain,
            )
            hurried.wait(timeout=drain)
        stop.set()
    operator.join()
    if failure:
        print(f"ray-pixi-operator: {failure[0]!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
