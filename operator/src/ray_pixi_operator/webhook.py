"""The mutating admission handler: kopf in, :func:`.admission.admit` decides, kopf out."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import names
from .admission import admit
from .scope import OPTED_IN, RAYCLUSTERS, settings_from, watched

__all__ = ["inject_raycluster", "register"]

logger = logging.getLogger(__name__)


def inject_raycluster(
    body: kopf.Body,
    patch: kopf.Patch,
    warnings: list[str],
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Inject at CREATE (so KubeRay builds even the first head pod with it); at UPDATE, put
    back what went missing; never block an UPDATE that was fine before."""
    settings = settings_from(memo)
    if not watched(settings, body.metadata.namespace):
        return
    old = kwargs.get("old")  # kopf passes the request's oldObject (None at CREATE)
    admission = admit(
        str(kwargs.get("operation")),
        dict(body),
        dict(old) if old is not None else None,
        settings,
    )
    warnings.extend(f"ray-pixi: {warning}" for warning in admission.warnings)
    if admission.refusal is not None:
        raise kopf.AdmissionError(f"ray-pixi: {admission.refusal}", code=422)
    if admission.body is not None:
        prepared = admission.body

        def replace(raw: Any) -> None:
            raw.clear()
            raw.update(prepared)

        # kopf diffs the result into the JSONPatch it returns to the API server.
        patch.fns.append(replace)


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.mutate(
        *RAYCLUSTERS,
        id=names.WEBHOOK_ID,
        operations=["CREATE", "UPDATE"],
        labels=OPTED_IN,
        registry=registry,
    )(inject_raycluster)
