"""Contract tests of the vector index: the embedded engine, the Qdrant backend on Qdrant's own
local mode, and on the session's real Qdrant server (JWT RBAC on) through a collection-scoped
token."""

import uuid

import numpy as np
import pytest

from resources.qdrant import QdrantVectorIndex, tenant_token
from resources.vectors import SqliteVectorIndex, VectorDimensionError, VectorPoint

DIM = 8


def _unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _points(entry: str, seeds, dataset="default"):
    return [
        VectorPoint(f"{entry}-{i}", _unit(s), entry, dataset, i, i + 1) for i, s in enumerate(seeds)
    ]


@pytest.fixture(params=["embedded", "qdrant-local", "qdrant-server"])
def index(request, tmp_path):
    if request.param == "embedded":
        yield SqliteVectorIndex(tmp_path / "vectors.db", model="m", dim=DIM)
        return
    from qdrant_client import QdrantClient

    if request.param == "qdrant-local":
        client = QdrantClient(location=":memory:")
    else:
        servers = request.getfixturevalue("servers")
        client = QdrantClient(url=servers.qdrant_url, api_key=servers.qdrant_api_key)
    qdrant = QdrantVectorIndex(client, f"alien-test-{uuid.uuid4().hex[:10]}", model="m", dim=DIM)
    assert qdrant.create() is True
    assert qdrant.create() is False  # idempotent
    if request.param == "qdrant-server":
        # The data plane works with a token scoped to this one collection.
        token = tenant_token(servers.qdrant_api_key, qdrant.collection)
        scoped = QdrantClient(url=servers.qdrant_url, api_key=token)
        qdrant = QdrantVectorIndex(scoped, qdrant.collection, "m", DIM)
    yield qdrant
    QdrantVectorIndex(client, qdrant.collection, "m", DIM).drop()


def reopen(index, model="m"):
    """Another handle on the same collection (another process, in production)."""
    if isinstance(index, SqliteVectorIndex):
        return SqliteVectorIndex(index.path, model=model, dim=DIM)
    return QdrantVectorIndex(index.client, index.collection, model, DIM)


def test_search_returns_nearest_with_payload(index):
    index.replace_entry("e1", _points("e1", [1, 2, 3]))
    index.replace_entry("e2", _points("e2", [4, 5]))
    hits = index.search(_unit(2), top_k=2)
    assert hits[0].id == "e1-1"
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert (hits[0].entry_id, hits[0].chunk_index, hits[0].page) == ("e1", 1, 2)
    assert hits[0].score >= hits[1].score


def test_replace_is_idempotent_and_drops_stale_points(index):
    index.replace_entry("e1", _points("e1", [1, 2, 3]))
    index.replace_entry("e1", _points("e1", [1, 2, 3]))
    assert index.count() == 3
    index.replace_entry("e1", _points("e1", [7]))
    assert index.count("e1") == 1
    assert {h.id for h in index.search(_unit(3), top_k=10)} == {"e1-0"}


def test_delete_and_dataset_filter(index):
    index.replace_entry("e1", _points("e1", [1, 2], dataset="a"))
    index.replace_entry("e2", _points("e2", [3, 4], dataset="b"))
    assert {h.entry_id for h in index.search(_unit(1), 10, dataset="b")} == {"e2"}
    assert index.search(_unit(1), 10, dataset="missing") == []
    # datasets searched in a space of their own are left out of the default one
    index.replace_entry("e3", _points("e3", [5], dataset="c"))
    left_out = index.search(_unit(1), 10, exclude_datasets=("b", "missing"))
    assert {h.entry_id for h in left_out} == {"e1", "e3"}
    assert index.search(_unit(1), 10, dataset="b", exclude_datasets=("b",)) == []
    assert index.delete_entries(["e2", "e3"]) == 3
    assert {h.entry_id for h in index.search(_unit(3), 10)} == {"e1"}
    assert index.counts_by_entry() == {"e1": 2}


def test_other_handles_catch_up_incrementally(index):
    """A second handle (another process in production) sees upserts and deletes."""
    writer, reader = index, reopen(index)
    writer.replace_entry("e1", _points("e1", [1, 2]))
    assert {h.id for h in reader.search(_unit(1), 10)} == {"e1-0", "e1-1"}
    writer.replace_entry("e2", _points("e2", [3]))
    writer.delete_entries(["e1"])
    assert {h.id for h in reader.search(_unit(1), 10)} == {"e2-0"}
    writer.replace_entry("e1", _points("e1", [1]))
    assert {h.id for h in reader.search(_unit(1), 10)} == {"e1-0", "e2-0"}


def test_dimension_and_model_are_enforced(index):
    with pytest.raises(VectorDimensionError):
        index.replace_entry("e1", [VectorPoint("p", np.ones(3), "e1", "d", 0, 1)])
    with pytest.raises(VectorDimensionError):
        index.search(np.ones(3), 5)
    index.replace_entry("e1", _points("e1", [1]))
    other = reopen(index, model="other-model")
    other.replace_entry("e2", _points("e2", [2]))
    assert index.models() == {("m", DIM): 1, ("other-model", DIM): 1}
    # A handle searches only vectors of its own model.
    assert {h.entry_id for h in index.search(_unit(2), 10)} == {"e1"}
