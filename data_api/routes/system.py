"""Liveness, readiness and Prometheus metrics: unauthenticated, so they name no tenant and
count nothing of a tenant's."""

from __future__ import annotations

import logging
import threading
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from data_api.schemas import Health, Readiness
from resources.stores import TenantRegistry

router = APIRouter(tags=["system"])
log = logging.getLogger("alien.api")


@router.get("/v1/health")
def health() -> Health:
    """The process answers (liveness)."""
    return Health(status="ok")


@router.get("/v1/ready", responses={503: {"model": Readiness, "description": "Not ready"}})
def ready(request: Request) -> Readiness:
    """Whether this service can serve: its stores answer, the audit log is writable, the model
    is loaded. What is not ready is named (``keywords``: the keyword index's server), but why
    (addresses, server answers) goes to the service's log and ``alien status`` only."""
    failed = request.app.state.readiness.failed()
    body = Readiness(status="not_ready" if failed else "ready", unavailable=failed)
    if failed:
        return JSONResponse(body.model_dump(), status_code=503)  # type: ignore[return-value]
    return body


class ReadinessProbe:
    """The checks behind ``/v1/ready``, run at most once per ``interval`` seconds however
    often the probe is called: a store's server, not each tenant's data, is what is checked,
    so the cost does not grow with the number of tenants."""

    def __init__(self, app: object, interval: float = 2.0) -> None:
        self.app = app
        self.interval = interval
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._failed: list[str] = []

    def failed(self) -> list[str]:
        """The names of the checks that fail now (empty: ready)."""
        with self._lock:
            if time.monotonic() - self._at < self.interval:
                return list(self._failed)
            failed = {name: detail for name, detail in self._checks() if detail is not None}
            if failed:
                log.warning("not ready: %s", "; ".join(f"{k}: {v}" for k, v in failed.items()))
            self._failed, self._at = sorted(failed), time.monotonic()
            return list(self._failed)

    def _checks(self) -> list[tuple[str, str | None]]:
        state = self.app.state  # type: ignore[attr-defined]
        registry: TenantRegistry = state.registry
        out = [
            ("audit_log", _failure(lambda: state.system_audit.records(limit=1))),
            ("embedder", None if state.model_ready else "the embedding model is still loading"),
        ]
        for backend in registry.backends.by_kind.values():
            status = backend.status()
            out.append((status.store, None if status.ok else status.detail or "not reachable"))
        return out


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(request: Request) -> Response:
    """Request counts and latencies by route, and worker runs, in Prometheus's text format."""
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


def _failure(probe: object) -> str | None:
    try:
        probe()  # type: ignore[operator]
    except Exception as err:
        return f"{type(err).__name__}: {err}"[:300]
    return None
