"""A Kubernetes API for the tests: kmock 0.8 (an HTTP mock of the API by kopf's author), with
what the real operator and the ``kubernetes`` client need from it and it lacks.

- ``RealisticKubernetesEmulator``: server-side apply creates what is missing,
  ``resourceVersion`` moves on every write (kopf's finalizer patches test it), ``uid`` and
  ``creationTimestamp``, ``generateName``, 422 for a failed JSON-patch ``test``, and a watch
  that misses no event written while it starts;
- kmock 0.8 cannot parse ``/api/v1/namespaces[/name]``: its parser is wrapped for exactly
  those paths (a private function of kmock, hence the pin);
- ``BackgroundKMock``: the server in its own thread and event loop, so the blocking client in
  kopf's handler threads and in the test never starves it.

There is no admission, no RBAC, no garbage collection and no field ownership: a key dropped
from a later apply stays. These are gaps to report upstream (nolar/kmock).
"""

from __future__ import annotations

import asyncio
import datetime
import threading
import uuid
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import parsing  # private API: only for the namespaces-path workaround

# kmock 0.8 reads GET /api/v1/namespaces as an error (500) and /api/v1/namespaces/foo as the
# namespace "foo" with no resource: those shapes are parsed here, the rest as before.
_original_parse_path = parsing.parse_path
_NAMESPACE_SUBRESOURCES = {"status", "finalize"}


def _parse_path_with_namespaces(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) in (3, 4) or (len(parts) == 5 and parts[4] in _NAMESPACE_SUBRESOURCES)
    ):
        return parsing.ParsedPath(
            group="",
            version="v1",
            plural="namespaces",
            namespace=None,
            name=parts[3] if len(parts) >= 4 else None,
            subresource=parts[4] if len(parts) == 5 else None,
        )
    return _original_parse_path(path)


def fix_namespaces_path_parsing() -> None:
    # rendering.Request._parse() calls `parsing.parse_path(...)`, i.e. looks it up at call time.
    parsing.parse_path = _parse_path_with_namespaces


fix_namespaces_path_parsing()


@attrs.define(kw_only=True)
class RealisticKubernetesEmulator(kmock.KubernetesEmulator):
    """
    What stock kmock 0.8 KubernetesEmulator lacks for kopf + server-side apply:

    1. SSA (PATCH, Content-Type: application/apply-patch+yaml) of an ABSENT object -> 404 in
       stock kmock (raised before any user reaction can intercept). Real SSA upserts; so do we.
       The apply itself is then a recursive dict merge (no managedFields / field ownership).
    2. resourceVersion is never set or bumped by stock kmock. kopf uses it (a) in the `test` op
       of its finalizer JSON-patches and (b) to skip stale watch events after its own patches;
       without bumping, kopf re-runs handlers on stale events. We bump it on every write.
    3. metadata.generateName is ignored (kopf's k8s Events use it) -> 409 on the 2nd event.
    4. A failed JSON-patch `test` op is HTTP 500; real k8s (and kopf's logic) expect 422.
    """

    _rv: int = attrs.field(default=1000, init=False)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    # Stock kmock 0.8 _serve_watch() snapshots the objects under the lock, but subscribes to the
    # event bus only after it has streamed that snapshot -> writes in between are LOST for the
    # watcher (kopf then waits forever, e.g. after a 422 on a stale patch). Also, it replays all
    # objects as ADDED on every watch, ignoring ?resourceVersion=. Fixed here: subscribe before
    # the snapshot (atomically, under the same lock as writes), replay only objects newer than
    # the list's resourceVersion (which _serve_list() below now reports).
    async def _serve_watch(self, request: kmock.Request) -> Any:
        yield b""  # send the headers now
        assert request.resource is not None
        since = request.params.get("resourceVersion", "")
        since_rv = int(since) if since.isdigit() else None
        bus = self._buses[request.resource]
        async with self._lock:
            marker = await bus.mark()
            objs = self._KubernetesEmulator__get_objs(request, strict=False)  # name-mangled private
            events = [
                {"type": "ADDED", "object": obj.raw}
                for obj in objs
                if not obj.deleted and (since_rv is None or _rv_of(obj.raw) > since_rv)
            ]
        try:
            for event in events:
                yield event
            async for event in bus.stream(since=marker):
                meta = event.get("object", {}).get("metadata", {})
                if self._KubernetesEmulator__check(
                    request, request.resource, meta.get("namespace"), meta.get("name"), strict=False
                ):
                    yield event
        finally:
            await bus.unmark(marker)

    async def _serve_list(self, request: kmock.Request) -> Any:
        rv = str(self._rv)  # read BEFORE the snapshot: may cause a harmless re-send, never a miss
        result = await super()._serve_list(request)
        result["metadata"]["resourceVersion"] = rv
        return result

    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is None:  # non-k8s URLs, discovery: as is
            return await super()._handle(request)

        content_type = request.headers.get("Content-Type", "")
        data = request.data
        if data is None and request.text and content_type.startswith("application/apply-patch"):
            data = yaml.safe_load(request.text)  # real YAML bodies (python client sends JSON)
            request = attrs.evolve(request, data=data)
            self._requests[request.id] = request  # so that assertions see the parsed body

        # The request recorded in kmock's history stays AS SENT by the client; only the copy
        # that is passed down to the stock emulator carries the server-side mutations
        # (resourceVersion, uid, generated name).
        served = request
        key = (request.resource, request.namespace, request.name)
        async with self._lock:
            if request.action == kmock.action.CREATE and isinstance(data, dict):
                body = dict(data, metadata=dict(data.get("metadata") or {}))
                meta = body["metadata"]
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta["resourceVersion"] = self._next_rv()
                served = attrs.evolve(request, data=body)

            elif request.action == kmock.action.UPDATE and request.name is not None:
                is_apply = content_type.startswith("application/apply-patch")
                if is_apply and request.subresource is None and isinstance(data, dict):
                    if key not in self.objects:
                        self.objects[key] = _with_meta(
                            data, uid=str(uuid.uuid4()), creationTimestamp=_now()
                        )
                    elif self.objects[key].deleted:
                        self.objects[key].create(
                            _with_meta(data, uid=str(uuid.uuid4()), creationTimestamp=_now())
                        )
                rv = self._next_rv()
                if isinstance(data, dict):  # merge-patch, strategic-merge (approximated), apply
                    served = attrs.evolve(request, data=_with_meta(data, resourceVersion=rv))
                elif isinstance(data, list):  # JSON-patch: keep the `test` ops first, bump after
                    bump = {"op": "add", "path": "/metadata/resourceVersion", "value": rv}
                    ops = [*data, bump]
                    served = attrs.evolve(request, data=ops)

            elif request.action == kmock.action.DELETE and request.name is not None:
                obj = self.objects[key] if key in self.objects else None  # noqa: SIM401
                if (
                    obj is not None
                    and not obj.deleted
                    and obj.get("metadata", {}).get("finalizers")
                ):
                    obj.patch({"metadata": {"resourceVersion": self._next_rv()}})

        # kmock matches reactions (incl. its own fallbacks) by the request's IDENTITY in its
        # recorded history, so the served copy must be in the history while it is handled.
        self._requests[request.id] = served
        try:
            return await super()._handle(served)
        except jsonpatch.JsonPatchException as err:  # incl. a failed `test` op
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(err)) from err
        finally:
            self._requests[request.id] = request


def _rv_of(raw: dict[str, Any]) -> int:
    rv = str(raw.get("metadata", {}).get("resourceVersion", ""))
    return int(rv) if rv.isdigit() else 0


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _with_meta(data: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return dict(data, metadata=dict(data.get("metadata") or {}, **meta))


class BackgroundKMock:
    """
    kmock (handler + HTTP server) in a background thread with its own event loop.

    Why: kopf.testing.KopfRunner runs the operator in its own thread+loop, and the sync
    `kubernetes` client (urllib3) blocks whatever thread calls it. With kmock in a separate
    loop, neither the test body nor KopfRunner.__exit__ (which joins a thread) can starve
    the server. Reading ``.handler.objects`` / iterating requests from the test thread is fine.
    """

    def __init__(
        self, cls: type[kmock.KubernetesEmulator] = RealisticKubernetesEmulator, **kwargs: Any
    ) -> None:
        self.cls = cls
        self.kwargs = kwargs
        self.handler: kmock.KubernetesEmulator
        self.url: str
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kmock", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:
            self._error = e
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.cls(**self.kwargs) as handler, kmock.Server(handler) as server:
            self.handler = handler
            self.url = str(server.url).rstrip("/")  # e.g. http://127.0.0.1:40123 (random port)
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> BackgroundKMock:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start in 10s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        if self._error is not None and exc[0] is None:
            raise self._error


def write_kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kube-config that reaches ``server`` with a bearer ``token``."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "kmock",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "kmock", "user": {"token": token}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
            }
        )
    )
    return path
