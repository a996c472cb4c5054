"""Liveness, readiness (every store checked) and Prometheus metrics: no tenant data here."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from data_api.schemas import Check, Health, Readiness
from resources.stores import TenantRegistry

router = APIRouter(tags=["system"])


@router.get("/v1/health")
def health() -> Health:
    """The process answers (liveness)."""
    return Health(status="ok")


@router.get("/v1/ready", responses={503: {"model": Readiness, "description": "Not ready"}})
def ready(request: Request) -> Readiness:
    """Every store answers for every tenant, the audit log is writable, the model is loaded."""
    app = request.app
    checks = {
        "audit_log": _check(lambda: app.state.system_audit.records(limit=1)),
        "embedder": _check(lambda: _model_loaded(app)),
    }
    registry: TenantRegistry = app.state.registry
    try:
        tenants = registry.list()
    except Exception as err:  # the tenants directory itself is unreadable
        tenants = []
        checks["tenants"] = Check(ok=False, detail=str(err))
    for tenant in tenants:
        stores = registry.open(tenant)
        checks[f"{tenant}/catalog"] = _check(stores.catalog.status_counts)
        checks[f"{tenant}/objects"] = _check(lambda s=stores: s.objects.exists("raw/.probe"))
        checks[f"{tenant}/vectors"] = _check(stores.vectors.count)
        checks[f"{tenant}/keywords"] = _check(stores.keywords.count)
    ok = all(c.ok for c in checks.values())
    body = Readiness(status="ready" if ok else "not_ready", checks=checks)
    if not ok:
        return JSONResponse(body.model_dump(), status_code=503)  # type: ignore[return-value]
    return body


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


def _model_loaded(app: object) -> None:
    if not getattr(app.state, "model_ready", False):  # type: ignore[attr-defined]
        raise RuntimeError("the embedding model is still loading")


def _check(probe: object) -> Check:
    try:
        probe()  # type: ignore[operator]
    except Exception as err:
        return Check(ok=False, detail=f"{type(err).__name__}: {err}"[:300])
    return Check(ok=True)
