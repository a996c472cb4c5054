"""The door every request passes: request id, authentication, rate limit, upload size, metrics.

Every request gets a server-generated request id (unique, whatever the caller sends): it is the
one in the audit row, the ``X-Request-ID`` answer header and error bodies. A caller's own
well-formed ``X-Request-ID`` is kept beside it (audit ``client_request_id``, echoed back as
``X-Client-Request-ID``) for correlation, never trusted as an identifier.

A pure ASGI middleware, so that no request under ``/v1`` reaches routing, body parsing or a
store without a credential resolved to exactly one tenant, and so that the upload limit is
enforced on the bytes as they arrive, not after the body has been buffered.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.concurrency import run_in_threadpool

from alien.credentials import (
    CredentialError,
    Principal,
    ServiceTokens,
    is_api_key,
    split_api_key,
    verify_api_key,
)
from data_api.errors import ApiError, outage_error, unauthorized
from resources.catalog import AuditLog, AuditRecord
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores
from resources.tenancy import UnknownTenantError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("alien.api")
# Every request's headers together (the bearer credential included): more is refused, 431.
MAX_HEADER_BYTES = 16 * 1024
PUBLIC_PATHS = frozenset({"/v1/health", "/v1/ready"})
UPLOAD_PATH = "/v1/entries"
MULTIPART_OVERHEAD = 64 * 1024  # part headers and the small form fields beside the file
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a client's id we keep and echo


@dataclass
class RequestContext:
    """The resolved caller of one request: a principal, its tenant's stores, the request id
    (the server's) and the caller's own id for it, if it sent a well-formed one."""

    principal: Principal
    stores: TenantStores
    request_id: str
    client_request_id: str | None = None
    audited: bool = field(default=False)
    egress: EgressBudget | None = None

    def charge_egress(self, nbytes: int, action: str, **audit: Any) -> None:
        """Count content about to be sent against the caller's egress budget."""
        if self.egress is not None:
            self.egress.charge(self, nbytes, action, **audit)

    def audit(
        self,
        action: str,
        outcome: str = "ok",
        *,
        entry_id: str | None = None,
        dataset: str | None = None,
        status_code: int = 200,
        detail: str | None = None,
    ) -> None:
        """Record this request in the tenant's audit log; no record, no answer (503)."""
        self.audited = True  # one attempt per request: a failure is not retried
        record = AuditRecord(
            request_id=self.request_id,
            client_request_id=self.client_request_id,
            tenant=str(self.principal.tenant),
            principal=self.principal.id,
            on_behalf_of=self.principal.on_behalf_of,
            action=action,
            outcome=outcome,
            entry_id=entry_id,
            dataset=dataset,
            status_code=status_code,
            detail=detail,
        )
        try:
            self.stores.catalog.audit.write(record)
        except Exception as err:
            log.exception("audit write failed")
            raise audit_unavailable() from err


class RateLimiter:
    """A token bucket per key (tenant, principal, end user): ``rate`` requests per second,
    bursts up to ``burst``. Buckets that have refilled are the same as none, so they are
    dropped once there are many: end users behind the proxy cannot grow it without bound."""

    MAX_BUCKETS = 10_000

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _evict(self, now: float) -> None:
        refill = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill}

    def take(self, principal: str, cost: float = 1.0) -> float:
        """0 when allowed (and ``cost`` tokens taken), else the seconds to wait until it is."""
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self.MAX_BUCKETS:
                self._evict(now)
            tokens, last = self._buckets.get(principal, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[principal] = (tokens - cost, now)
                return 0.0
            self._buckets[principal] = (tokens, now)
            return (cost - tokens) / self.rate


class EgressBudget:
    """Bytes of content (originals, text, chunks, snippets) each principal may receive per
    hour, refilled continuously: the data cluster's answer to "no bulk export", since every
    single request is small but many of them add up to a copy of the tenant. The buckets live
    in the tenant's catalog (``EgressLedger``), shared by every process that serves it."""

    def __init__(self, settings: AlienSettings) -> None:
        self.settings = settings

    def budget(self, tenant: str) -> int:
        by_tenant = self.settings.api_egress_bytes_per_hour_by_tenant
        return int(by_tenant.get(str(tenant), self.settings.api_egress_bytes_per_hour))

    def charge(self, ctx: RequestContext, nbytes: int, action: str, **audit: Any) -> None:
        """Take ``nbytes`` from the caller's budget, or refuse (429, audited as such)."""
        budget = self.budget(ctx.principal.tenant)
        if budget <= 0:
            return  # unlimited
        if nbytes > budget:  # never servable to this credential, however long it waits
            self._refuse(ctx, action, nbytes, budget, None, audit)
        # Kept in the tenant's catalog: every replica of its Data API, and a restarted one,
        # spends from the same bucket.
        wait = ctx.stores.catalog.egress.take(ctx.principal.rate_key, nbytes, budget)
        if wait > 0:
            self._refuse(ctx, action, nbytes, budget, max(1, round(wait + 0.5)), audit)

    @staticmethod
    def _refuse(
        ctx: RequestContext,
        action: str,
        nbytes: int,
        budget: int,
        retry: int | None,
        audit: dict[str, Any],
    ) -> None:
        ctx.audit(action, "denied", status_code=429, detail="egress_budget_exceeded", **audit)
        if retry is None:
            when = "it is larger than the whole budget and cannot be served"
        else:
            when = f"retry in {retry} s"
        raise ApiError(
            429,
            "egress_budget_exceeded",
            f"this answer ({nbytes} bytes) would exceed the egress budget of {budget} bytes "
            f"per hour for this credential; {when}",
            headers={"Retry-After": str(retry)} if retry is not None else None,
            extra={"budget": {"bytes_per_hour": budget, "requested_bytes": nbytes,
                              "retry_after_seconds": retry}},
        )  # fmt: skip


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can coexist)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "alien_api_requests",
            "Requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "alien_api_request_seconds",
            "Time to answer, by route template and method",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.refusals_throttled = Counter(
            "alien_api_refusals_throttled",
            "Refused credentials answered 429 without an audit row (per-address throttle)",
            registry=self.registry,
        )
        self.worker_runs = Counter(
            "alien_worker_runs",
            "Pipeline runs of the in-process worker, by outcome",
            ["outcome"],
            registry=self.registry,
        )


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, what: str = "the upload") -> None:
        super().__init__(413, "payload_too_large", f"{what} exceeds the limit of {limit} bytes")


class Door:
    """Resolves the credential of every ``/v1`` request before anything else runs."""

    def __init__(
        self,
        app: ASGIApp,
        settings: AlienSettings,
        registry: TenantRegistry,
        system_audit: AuditLog,
        limiter: RateLimiter,
        metrics: Metrics,
    ) -> None:
        self.app = app
        self.settings = settings
        self.registry = registry
        self.system_audit = system_audit
        self.limiter = limiter
        # Refusals cost a cluster audit write each: past a burst, an address's refusals are
        # answered 429 and counted in the metrics instead of audited one by one. Only
        # refusals: a valid credential from the same address (the platform proxy) is served.
        self.refusals = RateLimiter(
            settings.api_refusal_rate_per_second, settings.api_refusal_burst
        )
        self.metrics = metrics
        self.tokens = ServiceTokens(settings)
        self.egress = EgressBudget(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        request_id = uuid.uuid4().hex
        client_request_id = _client_request_id(scope)
        state["request_id"] = request_id
        state["client_request_id"] = client_request_id
        status_holder = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                if client_request_id is not None:
                    headers.append((b"x-client-request-id", client_request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self._handle(scope, receive, send_with_id, state)
        except Exception:
            # Never a bare 500, wherever it happened (a store failing while the credential is
            # checked included): the request id goes back, the failure into the tenant's
            # audit log when one is known, the traceback into this service's log only.
            log.exception("request %s failed", request_id)
            if status_holder["started"]:
                raise
            failure = outage_error(sys.exc_info()[1]) or ApiError(
                500, "internal_error",
                f"the request failed on the server; quote request id {request_id}")  # fmt: skip
            ctx = state.get("ctx")
            if ctx is not None:
                with contextlib.suppress(Exception):
                    await run_in_threadpool(
                        ctx.audit, "request", "error", status_code=failure.status,
                        detail=failure.code)  # fmt: skip
            await _responder(failure)(send_with_id)
        finally:
            # The route template, or a fixed label: paths never become label values.
            route = scope.get("route")
            template = getattr(route, "path", None) or (
                "/v1/*" if scope["path"].startswith("/v1/") else "other"
            )
            self.metrics.requests.labels(template, scope["method"], status_holder["status"]).inc()
            self.metrics.latency.labels(template, scope["method"]).observe(
                time.perf_counter() - started
            )

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, state: dict[str, Any]
    ) -> None:
        path = scope["path"]
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            too_large = f"request headers exceed {MAX_HEADER_BYTES} bytes"
            await _responder(ApiError(431, "headers_too_large", too_large))(send)
            return
        if path.startswith("/v1/") and path not in PUBLIC_PATHS:
            refusal = await self._admit(scope, state)
            if refusal is not None:
                await refusal(send)
                return
            too_large, action, receive = self._limit_body(scope, receive, state)
            if too_large is not None:  # declared too large: refused before it is read
                refusal_sent: ApiError = too_large
                try:
                    await run_in_threadpool(
                        state["ctx"].audit, action, "denied", status_code=413, detail=too_large.code
                    )
                except Exception:
                    refusal_sent = audit_unavailable()
                await _responder(refusal_sent)(send)
                return
        await self.app(scope, receive, send)

    async def _admit(
        self, scope: Scope, state: dict[str, Any]
    ) -> Callable[[Send], Awaitable[None]] | None:
        """Store the request's context in ``state``, or return the refusal to send."""
        request_id, client_request_id = state["request_id"], state["client_request_id"]
        token = _bearer(scope)
        try:
            if token is None:
                raise unauthorized("authentication required: send 'Authorization: Bearer <key>'")
            ctx = await run_in_threadpool(self._resolve, token, request_id, client_request_id)
        except ApiError as err:
            wait = self.refusals.take(f"refused|{_client(scope)}")
            if wait > 0:
                self.metrics.refusals_throttled.inc()  # counted here, not audited one by one
                return _responder(
                    ApiError(429, "rate_limited",
                             f"too many refused requests from this address; retry in {wait:.0f} s",
                             headers={"Retry-After": str(max(1, round(wait + 0.5)))})
                )  # fmt: skip
            try:
                await run_in_threadpool(
                    self._audit_refusal, scope, request_id, client_request_id, err
                )
            except Exception:
                return _responder(audit_unavailable())
            return _responder(err)
        state["ctx"] = ctx
        wait = self.limiter.take(ctx.principal.rate_key)
        if wait > 0:
            err = ApiError(
                429,
                "rate_limited",
                f"too many requests; retry in {wait:.2f} s",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
            try:
                await run_in_threadpool(
                    ctx.audit, "request", "denied", status_code=429, detail=err.code
                )
            except Exception:
                return _responder(audit_unavailable())
            return _responder(err)
        return None

    def _resolve(
        self, token: str, request_id: str, client_request_id: str | None
    ) -> RequestContext:
        try:
            if is_api_key(token):
                tenant, key_id, secret = split_api_key(token)
                stores = self._open(tenant, "unknown API key")
                principal = verify_api_key(stores, key_id, secret)
            else:
                tenant, issuer, user, scopes = self.tokens.verify(token)
                stores = self._open(tenant, "the service token names a tenant this cluster lacks")
                principal = Principal(tenant, f"service:{issuer}", scopes, on_behalf_of=user)
        except CredentialError as err:
            raise unauthorized(str(err)) from None
        return RequestContext(principal, stores, request_id, client_request_id, egress=self.egress)

    def _open(self, tenant: str, refusal: str) -> TenantStores:
        """The tenant's stores (one existence check, in ``open``), or the refusal."""
        try:
            return self.registry.open(tenant)
        except UnknownTenantError:
            raise CredentialError(refusal) from None

    def _audit_refusal(
        self, scope: Scope, request_id: str, client_request_id: str | None, err: ApiError
    ) -> None:
        """Refusals that resolve to no tenant go to the cluster's own audit log."""
        self.system_audit.write(
            AuditRecord(
                request_id=request_id,
                client_request_id=client_request_id,
                principal=f"anonymous@{_client(scope)}",
                action=f"{scope['method']} {scope['path']}"[:64],
                outcome="denied",
                status_code=err.status,
                detail=err.message[:500],
            )
        )

    def _limit_body(
        self, scope: Scope, receive: Receive, state: dict[str, Any]
    ) -> tuple[BodyTooLarge | None, str, Receive]:
        """Stop a body at its limit while it streams in: an upload at ALIEN_MAX_FILE_BYTES,
        any other body (JSON) at ALIEN_API_MAX_JSON_BYTES, before it is parsed. A declared
        length over the limit is returned as the refusal (with the audit action) at once."""
        if scope["method"] == "POST" and scope["path"] == UPLOAD_PATH:
            limit, what, action = self.settings.max_file_bytes, "the upload", "upload_entry"
            ceiling = limit + MULTIPART_OVERHEAD
        else:
            limit, what, action = self.settings.api_max_json_bytes, "the request body", "request"
            ceiling = limit
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > ceiling:
            return BodyTooLarge(limit, what), action, receive
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > ceiling:
                    # FastAPI turns any failure to read a JSON body into a 400; the app's
                    # handler finds this and answers 413 instead.
                    state["body_too_large"] = BodyTooLarge(limit, what)
                    raise state["body_too_large"]
            return message

        return None, action, counted


def audit_unavailable() -> ApiError:
    return ApiError(
        503, "audit_unavailable", "the audit log cannot be written, so the request is refused"
    )


def _responder(err: ApiError) -> Callable[[Send], Awaitable[None]]:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]

    async def respond(send: Send) -> None:
        await send({"type": "http.response.start", "status": err.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return respond


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _bearer(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if not value:
        return None
    kind, _, token = value.partition(" ")
    token = token.strip()
    return token if kind.lower() == "bearer" and token else None


def _client_request_id(scope: Scope) -> str | None:
    """The caller's ``X-Request-ID`` when well formed (else dropped: it is echoed and stored)."""
    given = _header(scope, b"x-request-id")
    return given if given and _REQUEST_ID.fullmatch(given) else None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}" if client else "unknown"
