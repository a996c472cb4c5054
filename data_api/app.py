"""The FastAPI application: routes, the door, error bodies, the worker and the model warm-up."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from data_api.door import Door, Metrics, RateLimiter, RequestContext, audit_unavailable
from data_api.errors import ApiError, error_body
from data_api.routes import datasets, entries, search, system
from data_api.worker import IngestWorker
from resources.catalog import AuditLog, sqlite_engine
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, get_embedder

log = logging.getLogger("alien.api")

DESCRIPTION = """\
The only door to a tenant's data. Every request under `/v1` (but health and readiness)
carries `Authorization: Bearer <credential>`: a tenant API key (`alien keys create`) or the
platform proxy's service token. The credential decides the tenant; another tenant's resource
is answered exactly like a missing one (404). Every access is audited (`alien audit`).
Errors are `{"error": {"code", "message"}}`.
"""


def create_app(settings: AlienSettings | None = None, *, worker: bool | None = None) -> FastAPI:
    """The Data API for the tenants under ``settings.home``.

    ``worker`` overrides ``settings.api_worker`` (whether uploads are processed in-process).
    """
    settings = settings or AlienSettings()
    registry = TenantRegistry(settings)
    metrics = Metrics()
    settings.system_dir.mkdir(parents=True, exist_ok=True)
    system_audit = AuditLog(sqlite_engine(settings.system_dir / "audit.db"))
    system_audit.create()
    run_worker = settings.api_worker if worker is None else worker

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The server embeds queries itself, concurrently with its ingest runs: the model
        # loads in this process (never in a worker process that runs would queue behind).
        get_embedder(settings).preload(in_process=True)
        warm = threading.Thread(target=_load_model, args=(app, registry), daemon=True)
        warm.start()
        if run_worker:
            app.state.worker = IngestWorker(
                settings, registry, on_run=lambda o: metrics.worker_runs.labels(o).inc()
            )
            app.state.worker.start()
        try:
            yield
        finally:
            if app.state.worker is not None:
                await run_in_threadpool(app.state.worker.stop)
            await run_in_threadpool(warm.join)

    app = FastAPI(
        title="Alien Data API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.system_audit = system_audit
    app.state.worker = None
    app.state.model_ready = False
    app.state.readiness = system.ReadinessProbe(app)
    for router in (datasets.router, entries.router, search.router, system.router):
        app.include_router(router)
    _install_error_handlers(app)
    _document_limits(app, settings)
    app.add_middleware(
        Door,  # type: ignore[arg-type]
        settings=settings,
        registry=registry,
        system_audit=system_audit,
        limiter=RateLimiter(settings.api_rate_per_second, settings.api_rate_burst),
        metrics=metrics,
    )
    return app


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        pattern, _, _ = compile_path(template)
        if pattern.match(request.url.path):
            methods |= {m.upper() for m in operations}
    return sorted(methods)


def _document_limits(app: FastAPI, settings: AlienSettings) -> None:
    """Make the OpenAPI document state this deployment's caps, not the code's outer bounds."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        top_k = schema["components"]["schemas"]["SearchRequest"]["properties"]["top_k"]
        top_k["maximum"] = settings.api_max_top_k
        for path in schema["paths"].values():
            for operation in path.values():
                for param in operation.get("parameters", []):
                    if param["name"] == "limit":
                        param["schema"]["maximum"] = settings.api_max_page_size
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _load_model(app: FastAPI, registry: TenantRegistry) -> None:
    try:
        get_embedder(registry.settings).embed(["warm up"])
        app.state.model_ready = True
    except Exception:
        log.exception("the embedding model failed to load")


def _install_error_handlers(app: FastAPI) -> None:
    async def respond(request: Request, err: ApiError) -> JSONResponse:
        ctx: RequestContext | None = request.state._state.get("ctx")
        if ctx is not None and not ctx.audited:
            route = request.scope.get("route")
            action = getattr(route, "name", None) or "request"
            outcome = "not_found" if err.status == 404 else "denied"
            try:
                await run_in_threadpool(
                    ctx.audit,
                    action,
                    outcome,
                    entry_id=err.entry_id,
                    dataset=err.dataset,
                    status_code=err.status,
                    detail=f"{err.code}: {err.message}"[:500],
                )
            except Exception:
                log.exception("audit write failed")
                err = audit_unavailable()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return await respond(request, err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = []
        for e in err.errors()[:10]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {e.get('msg')}")
        message = "; ".join(problems) or "invalid request"
        malformed = any(e.get("type") == "json_invalid" for e in err.errors())
        code = "malformed_json" if malformed else "invalid_request"
        return await respond(request, ApiError(422, code, message))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        too_large = request.scope.get("state", {}).get("body_too_large")
        if too_large is not None and err.status_code == 400:
            return await respond(request, too_large)
        codes = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed"}
        code = codes.get(err.status_code, "http_error")
        headers = dict(err.headers or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return await respond(
            request, ApiError(err.status_code, code, str(err.detail), headers=headers)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=err)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


__all__ = ["create_app", "error_body"]
