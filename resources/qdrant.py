"""The vector index on a Qdrant server (cluster mode): one collection per tenant.

The data plane reaches Qdrant with a per-tenant JWT signed by the cluster's Qdrant API key,
whose ``access`` claim names only that tenant's collection (Qdrant's JWT RBAC), so a handle
cannot touch another tenant's points even through a bug. Provisioning (creating the
collection and its payload indexes on ``entry_id`` and ``dataset``) uses the API key itself.

Point ids: chunk ids are UUIDs already; any other id is mapped to a UUID5 and kept in the
payload, so the interface is the embedded index's. Writes wait for the server
(``wait=True``) and go in batches.
"""

from __future__ import annotations

import time
import urllib.parse
import uuid
import warnings
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence

import jwt
import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from resources.vectors import VectorHit, VectorPoint, VectorSpace, as_vector

ID_NAMESPACE = uuid.UUID("6f0c3c1e-8a43-4b8e-9a55-0d5f2c6a7b10")
BATCH = 256


def collection_name(tenant: str, prefix: str = "alien") -> str:
    return f"{prefix}-{tenant}"


def space_collection(base: str, space: VectorSpace | None) -> str:
    """The collection of one of a tenant's vector spaces: its first is ``base`` itself."""
    return f"{base}_{space.name}" if space is not None and space.name else base


def space_collections(client: QdrantClient, base: str) -> list[str]:
    """Every collection of the tenant whose first collection is ``base``. (Tenant names
    never hold ``_``, so no other tenant's collection starts with ``base_``.)"""
    names = [c.name for c in client.get_collections().collections]
    return sorted(n for n in names if n == base or n.startswith(f"{base}_"))


# The cluster's own collection of tenant generations (an underscore: never a tenant's name).
GENERATIONS = "alien_generations"
_GENERATION_NS = uuid.UUID("0b1e4c2a-5d7f-4e8a-9c3b-6f2d1a0e9b47")


def tenant_token(
    api_key: str,
    collection: str | Sequence[str],
    ttl_seconds: int = 3600,
    *,
    expires_at: int | None = None,
    generation: str | None = None,
) -> str:
    """A JWT for one collection (or a few), read-write, expiring (Qdrant's documented claim
    shape).

    With ``generation``, the token is also valid only while the cluster's generations
    collection holds that tenant generation (Qdrant's ``value_exists`` claim, checked by the
    server on every request): retiring the tenant revokes its tokens at once, and a tenant
    created again under the same name never accepts the old ones.
    """
    claims: dict[str, object] = {
        "exp": expires_at if expires_at is not None else int(time.time()) + ttl_seconds,
        "access": [
            {"collection": name, "access": "rw"}
            for name in ([collection] if isinstance(collection, str) else collection)
        ],
    }
    if generation:
        claims["value_exists"] = {
            "collection": GENERATIONS,
            "matches": [{"key": "generation", "value": generation}],
        }
    return jwt.encode(claims, api_key, algorithm="HS256")


def register_generation(admin: QdrantClient, tenant: str, generation: str) -> None:
    """Record the tenant's current generation (idempotent), making its tokens valid."""
    if not admin.collection_exists(GENERATIONS):
        try:
            admin.create_collection(
                GENERATIONS, vectors_config=qm.VectorParams(size=1, distance=qm.Distance.DOT)
            )
        except UnexpectedResponse as err:  # made meanwhile by another process
            if err.status_code != 409:
                raise
        admin.create_payload_index(GENERATIONS, "generation", qm.PayloadSchemaType.KEYWORD)
    point = qm.PointStruct(
        id=str(uuid.uuid5(_GENERATION_NS, tenant)),
        vector=[1.0],
        payload={"tenant": tenant, "generation": generation},
    )
    admin.upsert(GENERATIONS, [point], wait=True)


def forget_generation(admin: QdrantClient, tenant: str) -> None:
    """Remove the tenant's generation (idempotent): every token made for it stops working."""
    if admin.collection_exists(GENERATIONS):
        selector = qm.PointIdsList(points=[str(uuid.uuid5(_GENERATION_NS, tenant))])
        admin.delete(GENERATIONS, selector, wait=True)


def windowed_expiry(ttl_seconds: int, now: float | None = None) -> int:
    """An expiry fixed within each half-lifetime window: a token made with it is the same all
    window long (re-writing a Secret changes nothing) and has between half and all of its
    lifetime left; the next window's token renews it."""
    half = max(ttl_seconds // 2, 1)
    return (int(now if now is not None else time.time()) // half + 2) * half


def server_client(url: str, api_key: str | None) -> QdrantClient:
    """A client of a Qdrant server. Its warning about a key sent without TLS is kept, except
    to a loopback address, where nothing leaves the machine (local try-outs, tests)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    with warnings.catch_warnings():
        if host in ("127.0.0.1", "localhost", "::1"):
            warnings.filterwarnings("ignore", "Api key is used with an insecure connection")
        return QdrantClient(url=url, api_key=api_key)


def point_uuid(point_id: str) -> str:
    try:
        return str(uuid.UUID(point_id))
    except ValueError:
        return str(uuid.uuid5(ID_NAMESPACE, point_id))


class QdrantVectorIndex:
    """A tenant's collection on a Qdrant server (or Qdrant's local mode, in tests)."""

    def __init__(self, client: QdrantClient, collection: str, model: str, dim: int) -> None:
        self.client = client
        self.collection = collection
        self.model = model
        self.dim = dim

    @classmethod
    def scoped(
        cls, url: str, api_key: str, collection: str, model: str, dim: int, ttl: int = 3600
    ) -> QdrantVectorIndex:
        """A handle whose client holds only a token for ``collection``, renewed before expiry."""
        return _ScopedQdrantIndex(url, api_key, collection, model, dim, ttl)

    # -- provisioning --------------------------------------------------------------------
    def create(self) -> bool:
        """Collection and payload indexes (idempotent); True when created now."""
        if self.client.collection_exists(self.collection):
            return False
        self.client.create_collection(
            self.collection,
            vectors_config=qm.VectorParams(size=self.dim, distance=qm.Distance.COSINE),
        )
        with warnings.catch_warnings():  # Qdrant's local mode (tests) ignores payload indexes
            warnings.filterwarnings("ignore", "Payload indexes have no effect")
            for field in ("entry_id", "dataset", "model"):
                self.client.create_payload_index(
                    self.collection, field, qm.PayloadSchemaType.KEYWORD, wait=True
                )
        return True

    def drop(self) -> bool:
        if not self.client.collection_exists(self.collection):
            return False
        return bool(self.client.delete_collection(self.collection))

    # -- writes --------------------------------------------------------------------------
    def replace_entry(self, entry_id: str, points: Sequence[VectorPoint]) -> None:
        """Upsert the entry's points, then remove its points not among them (no gap)."""
        structs = []
        for p in points:
            vec = as_vector(p.vector, self.dim, f"point {p.id}")
            structs.append(
                qm.PointStruct(
                    id=point_uuid(p.id),
                    vector=vec.tolist(),
                    payload={
                        "chunk_id": p.id,
                        "entry_id": p.entry_id,
                        "dataset": p.dataset,
                        "chunk_index": p.chunk_index,
                        "page": p.page,
                        "model": self.model,
                        "dim": self.dim,
                    },
                )
            )
        for start in range(0, len(structs), BATCH):
            self.client.upsert(self.collection, structs[start : start + BATCH], wait=True)
        keep = [s.id for s in structs]
        stale = qm.Filter(
            must=[_match("entry_id", entry_id)],
            must_not=[qm.HasIdCondition(has_id=keep)] if keep else [],
        )
        self.client.delete(self.collection, qm.FilterSelector(filter=stale), wait=True)

    def delete_entries(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        condition = qm.Filter(must=[qm.FieldCondition(key="entry_id", match=qm.MatchAny(any=ids))])
        count = self.client.count(self.collection, count_filter=condition, exact=True).count
        self.client.delete(self.collection, qm.FilterSelector(filter=condition), wait=True)
        return int(count)

    # -- reads ---------------------------------------------------------------------------
    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        dataset: str | None = None,
        entries: Collection[str] | None = None,
        exclude_datasets: Collection[str] = (),
    ) -> list[VectorHit]:
        query = as_vector(vector, self.dim, "query")
        if top_k <= 0 or (entries is not None and not entries):
            return []
        must = [_match("model", self.model)]
        if dataset is not None:
            must.append(_match("dataset", dataset))
        if entries is not None:
            must.append(qm.FieldCondition(key="entry_id", match=qm.MatchAny(any=list(entries))))
        must_not = []
        if exclude_datasets:
            datasets = qm.MatchAny(any=list(exclude_datasets))
            must_not.append(qm.FieldCondition(key="dataset", match=datasets))
        result = self.client.query_points(
            self.collection,
            query=query.tolist(),
            query_filter=qm.Filter(must=must, must_not=must_not or None),
            limit=top_k,
            with_payload=True,
        )
        return [
            VectorHit(
                p.payload["chunk_id"],
                float(p.score),
                p.payload["entry_id"],
                p.payload["dataset"],
                int(p.payload["chunk_index"]),
                p.payload.get("page"),
            )
            for p in result.points
            if p.payload
        ]

    def count(self, entry_id: str | None = None) -> int:
        condition = qm.Filter(must=[_match("entry_id", entry_id)]) if entry_id else None
        return int(self.client.count(self.collection, count_filter=condition, exact=True).count)

    def _payloads(self, fields: list[str], where: qm.Filter | None = None) -> Iterator[dict]:
        offset = None
        while True:
            records, offset = self.client.scroll(
                self.collection, scroll_filter=where, limit=1024, offset=offset,
                with_payload=fields,
            )  # fmt: skip
            for record in records:
                yield record.payload or {}
            if offset is None:
                return

    def counts_by_entry(self) -> dict[str, int]:
        return dict(Counter(p["entry_id"] for p in self._payloads(["entry_id"])))

    def point_ids(self, entry_id: str) -> set[str]:
        where = qm.Filter(must=[_match("entry_id", entry_id)])
        return {p["chunk_id"] for p in self._payloads(["chunk_id"], where)}

    def models(self) -> dict[tuple[str, int], int]:
        return dict(Counter((p["model"], int(p["dim"])) for p in self._payloads(["model", "dim"])))

    def close(self) -> None:
        """Nothing to release: the client may be shared (the scoped one renews itself)."""


class _ScopedQdrantIndex(QdrantVectorIndex):
    def __init__(
        self, url: str, api_key: str, collection: str, model: str, dim: int, ttl: int
    ) -> None:
        self._url, self._key, self._ttl = url, api_key, ttl
        self._renew_at = 0.0
        self._client: QdrantClient | None = None
        super().__init__(None, collection, model, dim)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def client(self) -> QdrantClient:
        if self._client is None or time.time() >= self._renew_at:
            token = tenant_token(self._key, self.collection, self._ttl)
            self._client = server_client(self._url, token)
            self._renew_at = time.time() + self._ttl * 0.8
        return self._client

    @client.setter
    def client(self, value: QdrantClient | None) -> None:
        self._client = value


def _match(key: str, value: str) -> qm.FieldCondition:
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def unavailable(err: BaseException) -> str | None:
    """Why Qdrant did not answer, if ``err`` says so (``resources.outages``): no connection
    (the client wraps httpx's error), or a 502/503/504 from it or a proxy before it."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException

    if isinstance(err, ResponseHandlingException | httpx.TransportError):
        return str(getattr(err, "source", None) or err)
    if isinstance(err, UnexpectedResponse) and err.status_code in (502, 503, 504):
        return f"Qdrant answered {err.status_code}"
    return None
