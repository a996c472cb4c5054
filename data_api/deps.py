"""Dependencies that routes declare: the caller's context, with the scope the route needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from data_api.door import RequestContext
from data_api.errors import ApiError, unauthorized
from resources.settings import AlienSettings

# Declares the scheme in OpenAPI; the door has already checked the credential itself.
_bearer = HTTPBearer(auto_error=False, description="A tenant API key or a service token")


def require(*scopes: str) -> Callable[..., RequestContext]:
    """The request's context, if its principal holds one of ``scopes``."""

    def dependency(request: Request, _: Annotated[object, Depends(_bearer)]) -> RequestContext:
        ctx: RequestContext | None = request.state._state.get("ctx")
        if ctx is None:
            raise unauthorized("authentication required")
        if not any(ctx.principal.allows(s) for s in scopes):
            raise ApiError(
                403,
                "insufficient_scope",
                f"this operation needs the {' or '.join(repr(s) for s in scopes)} scope",
            )
        return ctx

    return dependency


def settings_of(request: Request) -> AlienSettings:
    return request.app.state.settings


Reader = Annotated[RequestContext, Depends(require("read"))]
Searcher = Annotated[RequestContext, Depends(require("search", "read"))]
Writer = Annotated[RequestContext, Depends(require("write"))]
Settings = Annotated[AlienSettings, Depends(settings_of)]


def page_size(limit: int, settings: AlienSettings) -> int:
    """``limit`` if within the cluster's page cap (which the OpenAPI document states)."""
    if limit > settings.api_max_page_size:
        raise ApiError(422, "page_too_large", f"limit is at most {settings.api_max_page_size}")
    return limit


MAX_OFFSET = 2**31 - 1
