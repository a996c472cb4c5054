"""A dataset's own embedding model: its vectors fill a space of their own while searches keep
reading where they were, then that dataset is searched in its space; whole-tenant searches
read every space, each with its model, and fuse them. Removing the model brings the dataset
back into the tenant's default space.

The second model is the projected MiniLM of ``tests/test_model_change.py`` (256 dimensions).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from alien.checks import run_checks
from alien.documents import delete_entry, register_bytes
from alien.evaluation import load_beir
from alien.pipeline import EMBEDDINGS, KEYWORDS, VECTORS, run_all
from alien.repair import repair
from alien.search import rank_chunks, rank_key
from resources.backends import EmbeddedVectorsBackend
from resources.stores import TenantRegistry, TenantStores
from tests.conftest import CRANFIELD
from tests.test_model_change import _settings

QUERIES = ["boundary layer transition on a flat plate", "supersonic flow past a cone"]
PER_DATASET = 8


def _two_datasets(stores: TenantStores) -> dict[str, list[str]]:
    """Cranfield documents in two datasets, "manuals" and "papers"."""
    docs = list(load_beir(CRANFIELD).corpus.items())[: 2 * PER_DATASET]
    ids: dict[str, list[str]] = {"manuals": [], "papers": []}
    for n, (doc_id, text) in enumerate(docs):
        dataset = "papers" if n % 2 else "manuals"
        stores.catalog.ensure_dataset(dataset)
        entry = register_bytes(
            stores, text.encode(), dataset=dataset, source_uri=f"cranfield:{doc_id}",
            source_name=f"{doc_id}.txt",
        ).entry  # fmt: skip
        ids[dataset].append(entry.id)
    return ids


def _ranked(stores: TenantStores, dataset: str | None, mode: str = "vector") -> list[list[str]]:
    out = []
    for query in QUERIES:
        ranked = rank_chunks(stores, query, mode=mode, top_k=5, dataset=dataset)  # type: ignore[arg-type]
        assert ranked, (query, dataset, mode)
        out.append([r.chunk_id for r in ranked])
    return out


def _set_model(stores: TenantStores, dataset: str, model: str | None) -> None:
    config = dict(stores.catalog.dataset(dataset).config)  # type: ignore[union-attr]
    config["embedding_model"] = model
    stores.catalog.update_dataset(dataset, config)


def _failed_checks(stores: TenantStores) -> list:
    return [r for r in run_checks(stores) if not r.passed]


def test_a_dataset_moves_into_a_space_of_its_own_model_and_back(
    registry: TenantRegistry, projected_model: Path
) -> None:
    stores = registry.create(f"ds{uuid.uuid4().hex[:6]}")
    ids = _two_datasets(stores)
    run_all(stores)
    default = stores.active_space()
    before = {name: _ranked(stores, name) for name in ("manuals", "papers")}
    assert stores.model_work() is None

    model = str(projected_model)
    _set_model(stores, "papers", model)
    assert stores.model_work() == f"papers: {model}/256"
    # Until its space is complete, "papers" is searched where it was, as it was.
    seen: list[list[list[str]]] = []

    def search_papers(step: str, done: int, total: int) -> None:
        if step in (EMBEDDINGS, VECTORS):
            seen.append(_ranked(stores, "papers"))

    reports = {r.step: r for r in run_all(stores, progress=search_papers)}
    assert len(seen) > PER_DATASET and all(r == before["papers"] for r in seen)
    assert reports[EMBEDDINGS].processed == PER_DATASET  # only that dataset is re-embedded
    vectors = reports[VECTORS]
    assert vectors.processed == PER_DATASET
    assert vectors.details["datasets_switched"] == {"papers": f"{model}/256"}

    # Now "papers" is searched in its own space, with its own model; "manuals" as before.
    own = stores.catalog.dataset_spaces()["papers"]
    assert (own.model, own.dim, own.dataset) == (model, 256, "papers")
    assert stores.vectors_in(own).models() == {(model, 256): stores.vectors_in(own).count()}
    assert set(stores.vectors_in(own).counts_by_entry()) == set(ids["papers"])
    # the default space kept only the other dataset's points
    assert set(stores.vectors_in(default).counts_by_entry()) == set(ids["manuals"])
    assert stores.active_space() == default
    assert _ranked(stores, "manuals") == before["manuals"]
    after = _ranked(stores, "papers")
    assert after != before["papers"]
    ((index, embedder, only, _),) = stores.search_spaces("papers")
    assert (index.dim, embedder.dimension, only) == (256, 256, "papers")
    # A whole-tenant search reads both spaces, each with its own model, and fuses them.
    spaces = stores.search_spaces()
    assert [(s.index.dim, s.dataset, s.exclude) for s in spaces] == [
        (384, None, ("papers",)), (256, "papers", ()),
    ]  # fmt: skip
    dataset_of = {eid: name for name, entries in ids.items() for eid in entries}
    for mode in ("vector", "hybrid"):
        ranked = [rank_chunks(stores, q, mode=mode, top_k=10) for q in QUERIES]  # type: ignore[arg-type]
        assert {dataset_of[r.entry_id] for hits in ranked for r in hits} == set(ids), mode
    # two models' cosines do not compare: each space's ranking is scaled to [0, 1] first
    assert rank_chunks(stores, QUERIES[0], mode="vector", top_k=3)[0].score == 1.0
    assert not _failed_checks(stores), _failed_checks(stores)
    assert repair(stores).entries_to_redo == 0
    again = run_all(stores)
    assert all(r.processed == 0 for r in again), [(r.step, r.processed) for r in again]
    assert stores.model_work() is None

    # Deleting an entry reaches its dataset's space.
    delete_entry(stores, ids["papers"][0])
    assert stores.vectors_in(own).count(ids["papers"][0]) == 0

    # Back to the tenant's model: re-embedded into the default space, its own space dropped.
    own_file = EmbeddedVectorsBackend.path(stores.root, own)
    assert own_file.is_file()
    _set_model(stores, "papers", None)
    assert stores.model_work() == f"papers: {default.model}/{default.dim}"
    reports = {r.step: r for r in run_all(stores)}
    assert reports[VECTORS].details["datasets_switched"] == {"papers": "all-MiniLM-L6-v2/384"}
    assert stores.catalog.dataset_spaces() == {}
    assert [s for s, _ in stores.catalog.vector_spaces()] == [default]
    assert not own_file.exists()
    assert _ranked(stores, "papers") != after
    assert not _failed_checks(stores), _failed_checks(stores)
    assert stores.model_work() is None


def test_a_deleted_dataset_s_own_space_is_dropped_by_the_next_run(
    registry: TenantRegistry, projected_model: Path
) -> None:
    """Deleting a dataset (as the Data API does: its entries, then its row) leaves its own
    space with nothing to search; the next run, which ``model_work`` asks for, drops it."""
    stores = registry.create(f"dd{uuid.uuid4().hex[:6]}")
    ids = _two_datasets(stores)
    run_all(stores)
    _set_model(stores, "papers", str(projected_model))
    run_all(stores)
    own = stores.catalog.dataset_spaces()["papers"]
    own_file = EmbeddedVectorsBackend.path(stores.root, own)
    assert own_file.is_file()

    for entry_id in ids["papers"]:
        delete_entry(stores, entry_id)
    assert stores.catalog.delete_dataset("papers")
    assert stores.vectors_in(own).count() == 0
    assert stores.model_work() == "papers: all-MiniLM-L6-v2/384"
    run_all(stores)
    assert stores.catalog.dataset_spaces() == {}
    assert [s for s, _ in stores.catalog.vector_spaces()] == [stores.active_space()]
    assert not own_file.exists()
    assert stores.model_work() is None
    assert [s.dataset for s in stores.search_spaces()] == [None]
    hits = {r.entry_id for q in QUERIES for r in rank_chunks(stores, q, mode="hybrid")}
    assert hits and hits <= set(ids["manuals"])
    assert not _failed_checks(stores), _failed_checks(stores)


def test_a_dataset_on_another_engine_of_the_same_model_is_ranked_by_its_cosines(
    registry: TenantRegistry,
) -> None:
    """Int8 vectors of the same weights compare with the default's as they are: a
    whole-tenant search merges the two spaces by cosine, unscaled."""
    stores = registry.create(f"dv{uuid.uuid4().hex[:6]}")
    ids = _two_datasets(stores)
    run_all(stores)
    _set_model(stores, "papers", "all-MiniLM-L6-v2@onnx-int8")
    reports = {r.step: r for r in run_all(stores)}
    assert reports[VECTORS].details["datasets_switched"] == {
        "papers": "all-MiniLM-L6-v2@onnx-int8/384"
    }
    for query in QUERIES:
        merged = rank_chunks(stores, query, mode="vector", top_k=10)
        each = [
            (hit.score, hit.id)
            for index, embedder, only, exclude in stores.search_spaces()
            for hit in index.search(
                embedder.embed_query([query])[0], 10, dataset=only, exclude_datasets=exclude
            )
        ]
        best = sorted(each, key=lambda pair: rank_key(*pair))[:10]
        assert [r.chunk_id for r in merged] == [chunk for _, chunk in best]
        assert [r.score for r in merged] == pytest.approx([score for score, _ in best])
        assert merged[0].score < 0.99  # a cosine, not a scaled score
    papers = {r.entry_id for q in QUERIES for r in rank_chunks(stores, q, mode="vector")}
    assert papers & set(ids["papers"]) and papers & set(ids["manuals"])


def test_a_dataset_of_a_model_that_cuts_other_chunks_is_cut_again_after_its_switch(
    registry: TenantRegistry, projected_model: Path, tmp_path: Path
) -> None:
    """A model with a shorter window: the dataset's old chunks are embedded into its space
    (searches never see a half-cut dataset), then, after the switch, cut and embedded again."""
    import json
    import shutil

    short = tmp_path / "minilm-256-short"
    shutil.copytree(projected_model, short)
    config = short / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": 64}))
    stores = registry.create(f"dc{uuid.uuid4().hex[:6]}")
    ids = _two_datasets(stores)
    run_all(stores)
    chunks_before = {eid: stores.catalog.get_entry(eid).chunks for eid in ids["papers"]}  # type: ignore[union-attr]

    _set_model(stores, "papers", str(short))
    first = {r.step: r for r in run_all(stores)}
    assert first[VECTORS].details["datasets_switched"] == {"papers": f"{short}/256"}
    assert stores.model_work() == f"{stores.target_space().model}/384/chunks"
    second = {r.step: r for r in run_all(stores)}
    assert second[KEYWORDS].processed == PER_DATASET  # the dataset's new chunks
    assert stores.model_work() is None
    chunks_after = {eid: stores.catalog.get_entry(eid).chunks for eid in ids["papers"]}  # type: ignore[union-attr]
    assert all(chunks_after[e] >= chunks_before[e] for e in ids["papers"])
    assert sum(chunks_after.values()) > sum(chunks_before.values())
    assert not _failed_checks(stores), _failed_checks(stores)


def test_a_dataset_s_model_in_a_tenants_data_plane(
    control: dict[str, str], projected_model: Path
) -> None:
    """A data plane cannot make the collection of a dataset's model: that dataset waits,
    searched where it was, without failing anything; the control plane makes it when it
    provisions the tenant again, with a token that names it; the data plane then switches."""
    from tests.test_tenant_plane import alien, tenant_env

    tenant = f"d{uuid.uuid4().hex[:8]}"
    alien(control, "tenant", "create", tenant, "--json")
    try:
        plane = TenantRegistry(_settings(tenant_env(control, tenant)))
        stores = plane.open(tenant)
        ids = _two_datasets(stores)
        run_all(stores)
        before = _ranked(stores, "papers")

        _set_model(stores, "papers", str(projected_model))
        assert stores.model_work() is None  # nothing this data plane can do: no run loops
        reports = {r.step: r for r in run_all(stores)}
        assert reports[VECTORS].details["datasets_waiting_for_control_plane"] == ["papers"]
        assert reports[EMBEDDINGS].processed == 0 and reports[VECTORS].failed == 0
        assert _ranked(stores, "papers") == before

        alien(control, "tenant", "create", tenant, "--json")  # makes the dataset's space
        stores = TenantRegistry(_settings(tenant_env(control, tenant))).open(tenant)
        assert stores.model_work() == f"papers: {projected_model}/256"
        reports = {r.step: r for r in run_all(stores)}
        assert reports[VECTORS].details["datasets_switched"] == {"papers": f"{projected_model}/256"}
        assert _ranked(stores, "papers") != before
        own = stores.catalog.dataset_spaces()["papers"]
        assert set(stores.vectors_in(own).counts_by_entry()) == set(ids["papers"])
        assert not _failed_checks(stores), _failed_checks(stores)
    finally:
        alien(control, "tenant", "delete", tenant, "--json")
