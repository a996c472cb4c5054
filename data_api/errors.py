"""One error shape for every refusal: ``{"error": {"code", "message"}}`` with a stable code."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from resources.outages import classify


class ApiError(Exception):
    """A refusal with an HTTP status, a stable machine code and a message for people."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        entry_id: str | None = None,
        dataset: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.extra = extra or {}
        self.status = status
        self.code = code
        self.message = message
        self.entry_id = entry_id
        self.dataset = dataset
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        body = error_body(self.code, self.message)
        body["error"].update(self.extra)
        return body


def outage_error(err: BaseException | None) -> ApiError | None:
    """503 with ``Retry-After`` when ``err`` comes from a store whose server did not answer:
    the store's kind is named, its address and answer stay in this service's log."""
    outage = classify(err) if err is not None else None
    if outage is None:
        return None
    return ApiError(
        503,
        "store_unavailable",
        outage.public,
        headers={"Retry-After": str(outage.retry_after)},
        extra={"store": outage.store},
    )


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def not_found(what: str, name: str, **where: str) -> ApiError:
    """The same answer for a missing resource and another tenant's: nothing is revealed."""
    return ApiError(404, f"{what}_not_found", f"no {what} {name!r}", **where)  # type: ignore[arg-type]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Bad request: a body that cannot be parsed, or a path-like or non-UTF-8 file name",
    401: "No credential, or one that is malformed, unknown, expired or revoked",
    403: "The credential lacks the scope this operation needs",
    404: "No such resource for this tenant",
    409: "Conflict with the resource's current state",
    413: "Body larger than the upload limit",
    415: "Unsupported media type, or bytes that do not match the claimed type",
    422: "The request does not match the schema",
    429: "Rate limit exceeded; retry after the seconds in Retry-After",
    503: "A store this operation needs does not answer (retry after the seconds in "
    "Retry-After), or the audit log cannot be written",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these statuses, all with the error body."""
    common = (400, 401, 403, 422, 429, 503)
    return {
        code: {"model": ErrorBody, "description": _DESCRIPTIONS[code]}
        for code in sorted(set(common) | set(statuses))
    }
