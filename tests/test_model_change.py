"""Changing the embedding model: a backfill fills a new vector space while searches keep
reading the old one, then searches switch over and the old space is dropped.

The second model is a real sentence-transformers model of another dimension, made here from
the packaged one: its transformer with a fixed random projection to 256 dimensions (a
different vector space, the same tokenizer).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from alien.checks import run_checks
from alien.documents import delete_entry, register_bytes
from alien.evaluation import load_beir
from alien.pipeline import CHUNKS, EMBEDDINGS, KEYWORDS, VECTORS, read_chunks, run_all
from alien.repair import repair
from alien.search import rank_chunks
from resources.backends import ControlPlaneOnlyError, EmbeddedVectorsBackend
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores
from tests.conftest import CRANFIELD

QUERIES = [
    "boundary layer transition on a flat plate",
    "heat transfer to a blunt body at hypersonic speed",
    "supersonic flow past a cone",
]
DOCS = 16


def _corpus(stores: TenantStores, count: int = DOCS) -> list[str]:
    docs = list(load_beir(CRANFIELD).corpus.items())[:count]
    return [
        register_bytes(
            stores,
            text.encode(),
            dataset="default",
            source_uri=f"cranfield:{doc_id}",
            source_name=f"{doc_id}.txt",
        ).entry.id
        for doc_id, text in docs
    ]


def _rankings(stores: TenantStores) -> dict[tuple[str, str], list[str]]:
    """Every query's top 5 chunk ids in vector and hybrid mode; never empty."""
    out = {}
    for query in QUERIES:
        for mode in ("vector", "hybrid"):
            ranked = rank_chunks(stores, query, mode=mode, top_k=5)  # type: ignore[arg-type]
            assert ranked, f"no result for {query!r} ({mode})"
            out[(query, mode)] = [r.chunk_id for r in ranked]
    return out


Rankings = dict[tuple[str, str], list[str]]


def _settings(env: dict[str, str]) -> AlienSettings:
    keys = {k[len("ALIEN_") :].lower(): v for k, v in env.items() if k.startswith("ALIEN_")}
    return AlienSettings(**keys)  # type: ignore[arg-type]


def _searching(
    stores: TenantStores,
    seen: list[tuple[str, Rankings]],
    steps: tuple[str, ...] = (EMBEDDINGS, VECTORS, KEYWORDS),
) -> Callable[[str, int, int], None]:
    """A progress listener that searches at every step of the re-embedding and indexing."""

    def listener(step: str, done: int, total: int) -> None:
        if step in steps:
            seen.append((step, _rankings(stores)))

    return listener


def _indexed(
    registry: TenantRegistry, tenant: str, count: int = DOCS
) -> tuple[TenantStores, list[str], Rankings]:
    """A tenant whose entries are indexed with the packaged model, and its rankings."""
    stores = registry.create(tenant)
    ids = _corpus(stores, count)
    run_all(stores)
    return stores, ids, _rankings(stores)


def test_a_model_change_backfills_while_searches_keep_answering(
    settings: AlienSettings, registry: TenantRegistry, projected_model: Path
) -> None:
    old, ids, before = _indexed(registry, "models-a")
    old_file = EmbeddedVectorsBackend.path(old.root, old.active_space())
    assert old_file.is_file()

    changed = settings.model_copy(update={"embedding_model": str(projected_model)})
    new = TenantRegistry(changed).open("models-a")
    assert (new.embedder.dimension, old.embedder.dimension) == (256, 384)
    assert new.active_space() == old.active_space()  # nothing switches before the backfill
    # A new process with the new model searches the old space with the old model.
    assert _rankings(new) == before

    seen: list[tuple[str, Rankings]] = []
    reports = {r.step: r for r in run_all(new, progress=_searching(new, seen))}

    # Every search until the vector step ended (its last entry written) read the old space
    # only: the rankings of before the change (a mix of the two spaces would differ).
    until_switch = [r for step, r in seen if step != KEYWORDS]
    assert len(until_switch) > DOCS
    assert all(r == before for r in until_switch)
    vectors = reports[VECTORS]
    assert vectors.processed == DOCS
    assert vectors.details["switched_to"] == str(projected_model)
    assert vectors.details["dropped_spaces"] == ["all-MiniLM-L6-v2/384"]
    assert not old_file.exists()

    # Now both configurations read the new space, embedding queries with the new model.
    after = _rankings(new)
    assert after != before
    assert all(r == after for step, r in seen if step == KEYWORDS)
    assert _rankings(old) == after
    space = new.active_space()
    assert (space.model, space.dim) == (str(projected_model), 256)
    assert new.vectors.models() == {(str(projected_model), 256): new.vectors.count()}
    assert all(r.passed for r in run_checks(new)), [r for r in run_checks(new) if not r.passed]
    again = run_all(new)
    assert all(r.processed == 0 for r in again), [(r.step, r.processed) for r in again]

    # Deleting still reaches the vectors.
    delete_entry(new, ids[0])
    assert new.vectors.count(ids[0]) == 0


def test_an_interrupted_backfill_keeps_the_old_space_until_it_completes(
    settings: AlienSettings, registry: TenantRegistry, projected_model: Path
) -> None:
    old, ids, before = _indexed(registry, "models-b")
    new = TenantRegistry(settings.model_copy(update={"embedding_model": str(projected_model)}))
    stores = new.open("models-b")

    class Stop(Exception):
        pass

    def stop_half_way(step: str, done: int, total: int) -> None:
        if step == VECTORS and done == DOCS // 2:
            raise Stop

    with pytest.raises(Stop):
        run_all(stores, progress=stop_half_way)
    # Half the entries are in the new space; searches still read the old one, whole.
    assert 0 < stores.vectors.count() < old.vectors_in(old.active_space()).count()
    assert stores.active_space() == old.active_space()
    assert _rankings(stores) == _rankings(old) == before
    # Half-way is not damage: the checks pass and repair finds nothing to redo.
    assert all(r.passed for r in run_checks(stores)), [r for r in run_checks(stores)]
    assert repair(stores).entries_to_redo == 0
    # An entry deleted meanwhile leaves both spaces.
    delete_entry(stores, ids[-1])
    assert old.vectors_in(old.active_space()).count(ids[-1]) == 0

    # The ingestion sensor sees the unfinished change (no entry is pending) and runs again.
    import alien_assets  # noqa: F401 - the code location before its sensor module
    from sensors.ingestion import work_fingerprint

    assert work_fingerprint(old) is None
    assert work_fingerprint(stores) is not None
    reports = {r.step: r for r in run_all(stores)}
    assert reports[VECTORS].details.get("switched_to") == str(projected_model)
    assert stores.active_space().dim == 256
    assert all(r.passed for r in run_checks(stores))
    assert work_fingerprint(stores) is None


def test_a_model_change_on_the_real_servers(control: dict[str, str], projected_model: Path) -> None:
    """Cluster mode (PostgreSQL, S3, Qdrant, Meilisearch): the new space is a Qdrant
    collection of its own with the new dimension; the old collection is dropped."""
    from resources.qdrant import space_collections

    settings = _settings(control)
    registry = TenantRegistry(settings)
    try:
        old, _, before = _indexed(registry, "models-c", 8)
        admin = registry.backends.vectors.admin
        assert space_collections(admin, "alien-models-c") == ["alien-models-c"]

        changed = TenantRegistry(
            settings.model_copy(update={"embedding_model": str(projected_model)})
        )
        new = changed.open("models-c")
        seen: list[tuple[str, Rankings]] = []
        reports = {r.step: r for r in run_all(new, progress=_searching(new, seen, (VECTORS,)))}
        assert len(seen) >= 8 and all(r == before for _, r in seen)
        assert reports[VECTORS].details["switched_to"] == str(projected_model)

        (name,) = space_collections(admin, "alien-models-c")
        assert name.startswith("alien-models-c_m")
        assert admin.get_collection(name).config.params.vectors.size == 256
        after = _rankings(new)
        assert after != before and _rankings(old) == after
        assert all(r.passed for r in run_checks(new))
    finally:
        registry.drop("models-c")
    assert space_collections(admin, "alien-models-c") == []


def test_a_model_change_in_a_tenants_data_plane(
    control: dict[str, str], projected_model: Path
) -> None:
    """A data plane holds a token for its own collections only and cannot make one: the
    control plane makes the new model's collection when it provisions the tenant with that
    model, and hands out a token that names it; the data plane then backfills and switches."""
    from resources.qdrant import space_collections
    from tests.test_tenant_plane import alien, tenant_env

    tenant = f"m{uuid.uuid4().hex[:8]}"
    alien(control, "tenant", "create", tenant, "--json")
    try:
        plane = _settings(tenant_env(control, tenant))
        stores = TenantRegistry(plane).open(tenant)
        _corpus(stores, 6)
        run_all(stores)
        before = _rankings(stores)

        # The data plane is given the new model before the control plane has made its space.
        early = TenantRegistry(plane.model_copy(update={"embedding_model": str(projected_model)}))
        with pytest.raises(ControlPlaneOnlyError, match="control plane makes it"):
            run_all(early.open(tenant))
        assert _rankings(stores) == before

        changed = {**control, "ALIEN_EMBEDDING_MODEL": str(projected_model)}
        alien(changed, "tenant", "create", tenant, "--json")  # provisions the new space
        new_plane = _settings(tenant_env(changed, tenant))
        assert new_plane.embedding_model == str(projected_model)
        new = TenantRegistry(new_plane).open(tenant)
        seen: list[tuple[str, Rankings]] = []
        reports = {r.step: r for r in run_all(new, progress=_searching(new, seen, (VECTORS,)))}
        assert seen and all(r == before for _, r in seen)
        assert reports[VECTORS].details["switched_to"] == str(projected_model)
        assert new.active_space().dim == 256
        after = _rankings(new)
        assert after != before
        # The old collection is emptied by the data plane; the control plane removes it.
        admin = TenantRegistry(_settings(control)).backends.vectors.admin
        base = f"alien-{tenant}"
        assert admin.count(base).count == 0
        assert len(space_collections(admin, base)) == 2
    finally:
        alien(control, "tenant", "delete", tenant, "--json")
    assert space_collections(admin, base) == []


def test_a_model_that_cuts_other_chunks_keeps_the_old_ones_until_the_switch(
    settings: AlienSettings, registry: TenantRegistry, short_window_model: Path
) -> None:
    """Searches hydrate hits from the chunks the searched vectors were made from: the new
    model embeds those during the backfill; its own chunks are cut once it is searched."""
    import alien_assets  # noqa: F401 - the code location before its sensor module
    from sensors.ingestion import work_fingerprint

    old, ids, before = _indexed(registry, "models-d", 8)
    changed = settings.model_copy(update={"embedding_model": str(short_window_model)})
    new = TenantRegistry(changed).open("models-d")
    assert new.embedder.max_content_tokens < old.embedder.max_content_tokens
    seen: list[tuple[str, Rankings]] = []
    reports = {r.step: r for r in run_all(new, progress=_searching(new, seen, (VECTORS,)))}
    assert reports[CHUNKS].processed == 0  # the searched vectors' chunks stay
    assert seen and all(r == before for _, r in seen)
    assert reports[VECTORS].details["switched_to"] == str(short_window_model)

    # Searches read the new space at once; the entries are to be cut for its window, which
    # the sensor sees.
    assert _rankings(new) != before
    assert work_fingerprint(new) is not None
    seen.clear()
    second = {r.step: r for r in run_all(new, progress=_searching(new, seen))}
    assert second[CHUNKS].processed == second[EMBEDDINGS].processed == 8
    assert len(seen) > 8  # every search on the way answered (``_rankings`` asserts it)
    limit = new.embedder.max_content_tokens
    tokenizer = new.embedder.tokenizer
    chunks = [c for eid in ids for c in read_chunks(new, eid)]
    assert max(tokenizer.count(c.text) for c in chunks) <= limit < 254
    assert new.catalog.status_counts() == {"indexed": 8}
    assert all(r.passed for r in run_checks(new))
    assert all(r.processed == 0 for r in run_all(new))
    assert work_fingerprint(new) is None


def test_a_tenant_from_before_vector_spaces_upgraded_with_another_model(
    settings: AlienSettings, registry: TenantRegistry, projected_model: Path
) -> None:
    """Its collection is recorded as holding what its embeddings were made with, not the
    newly configured model: the change goes through a backfill like any other."""
    from sqlalchemy import text

    old, _, before = _indexed(registry, "models-e", 4)
    with old.catalog.engine.begin() as conn:  # as a catalog of before this change has it
        conn.execute(text("DELETE FROM vector_spaces"))
    new = TenantRegistry(settings.model_copy(update={"embedding_model": str(projected_model)}))
    stores = new.open("models-e")
    first = stores.active_space()
    assert (first.model, first.dim, first.name) == ("all-MiniLM-L6-v2", 384, "")
    assert _rankings(stores) == before
    reports = {r.step: r for r in run_all(stores)}
    assert reports[VECTORS].details["switched_to"] == str(projected_model)
    assert all(r.passed for r in run_checks(stores))


def test_switching_the_embedding_variant_goes_through_the_model_change_path(
    settings: AlienSettings, registry: TenantRegistry
) -> None:
    """A variant is a space of its own: switching to the static table backfills it while
    searches read the torch space, then switches; the manifest names model and variant."""
    _, _, before = _indexed(registry, "variant-a")
    static = "all-MiniLM-L6-v2@static"
    new = TenantRegistry(settings.model_copy(update={"embedding_model": static})).open("variant-a")
    assert new.embedder.dimension == 256
    assert _rankings(new) == before  # the old space, queries embedded the old way
    vectors = {r.step: r for r in run_all(new)}[VECTORS]
    assert vectors.details["switched_to"] == static
    assert vectors.details["dropped_spaces"] == ["all-MiniLM-L6-v2/384"]
    assert new.vectors.models() == {(static, 256): new.vectors.count()}
    meta = {r.meta["variant"]: r.meta for r in new.catalog.manifest(EMBEDDINGS).values()}
    assert list(meta) == ["static"]
    assert (meta["static"]["base_model"], meta["static"]["dim"]) == ("all-MiniLM-L6-v2", 256)
    assert _rankings(new) != before
