"""Build the node tests' images by hand or from .ci/setup-docker.

PYTHONPATH=tests python -m node image            # the Ray image (what .ci/setup-docker runs)
PYTHONPATH=tests python -m node image --operator # also the add-on's image with the real pixi
PYTHONPATH=tests python -m node image --unsupported-ray  # also the Ray 2.9.3 image (failures)
PYTHONPATH=tests python -m node image --ray 2.50.0   # also the Ray image at another version
"""

from __future__ import annotations

import argparse
import sys
import time

from .images import UNSUPPORTED_RAY, ImageError, ensure_operator_image, ensure_ray_image


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m node",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["image"])
    parser.add_argument("--operator", action="store_true", help="also build the add-on's image")
    parser.add_argument("--ray", action="append", default=[], metavar="VERSION",
                        help="also the Ray image at this Ray version (repeatable)")
    parser.add_argument("--unsupported-ray", action="store_true",
                        help=f"also the Ray {UNSUPPORTED_RAY} image the failure tests use")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        print(ensure_ray_image(_log))
        for version in [*args.ray, *([UNSUPPORTED_RAY] if args.unsupported_ray else [])]:
            print(ensure_ray_image(_log, ray=version))
        if args.operator:
            print(ensure_operator_image(_log))
    except ImageError as error:
        _log(f"images: {error}")
        return 2
    _log(f"images: images ready in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
