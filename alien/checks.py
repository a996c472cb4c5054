"""Cross-store consistency of one tenant: what the Dagster asset checks and `alien check` run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alien.pipeline import CHUNKS, VECTORS
from alien.repair import diagnose, vector_counts, vector_rows_written
from resources.catalog import EntryStatus
from resources.stores import TenantStores


@dataclass
class CheckResult:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def chunk_counts_agree(stores: TenantStores) -> CheckResult:
    """Chunks = vectors = keyword documents, per entry and in total."""
    entries = set(stores.catalog.entry_hashes())
    expected = {
        eid: int(rec.meta.get("chunks", 0))
        for eid, rec in stores.catalog.manifest(CHUNKS).items()
        if rec.ok and eid in entries
    }
    # During a model change the configured model's space fills entry by entry: an entry
    # whose vectors are still only in the searched (old) space is awaited, not a mismatch.
    written = vector_rows_written(stores)
    awaited = {eid for eid, rec in stores.catalog.manifest(VECTORS).items() if rec.ok} - written
    vectors = vector_counts(stores)
    keywords = stores.keywords.counts_by_entry()
    mismatched = sorted(
        eid
        for eid in set(expected) | set(vectors) | set(keywords)
        if expected.get(eid, 0) != keywords.get(eid, 0)
        or (eid not in awaited and expected.get(eid, 0) != vectors.get(eid, 0))
    )
    meta = {
        "tenant": str(stores.tenant),
        "chunks": sum(expected.values()),
        "vectors": sum(vectors.values()),
        "keyword_documents": sum(keywords.values()),
        "mismatched_entries": len(mismatched),
        "awaiting_new_model": len(awaited),
        "examples": mismatched[:5],
    }
    return CheckResult(
        "chunk_counts_agree", not mismatched, "chunks, vectors and keyword documents agree", meta
    )


def vectors_match_model(stores: TenantStores) -> CheckResult:
    """Every vector of each space the pipeline writes (the configured model's, and each
    dataset's own) was made by that space's model, with its dimension; during a model
    change the metadata says which space searches still read."""
    spaces = stores.space_map()
    target, active = spaces.default_target, spaces.default
    other: dict[str, int] = {}
    for space in spaces.written():
        if space.created:
            models = stores.vectors_in(space).models()
            other.update({f"{m}/{d}": c for (m, d), c in models.items() if not space.holds(m, d)})
    meta = {
        "model": target.model,
        "dimension": target.dim,
        "other_models": other,
        "searched_model": active.model,
        "model_change_pending": active != target,
    }
    if spaces.targets:
        meta["dataset_models"] = {
            name: f"{space.model}/{space.dim}" for name, space in sorted(spaces.targets.items())
        }
        meta["dataset_model_change_pending"] = sorted(
            name for name in spaces.targets if spaces.target(name) != spaces.reading(name)
        )
    return CheckResult(
        "vectors_match_model", not other, "vector model and dimension = configured model", meta
    )


def indexed_entries_have_text(stores: TenantStores) -> CheckResult:
    """No indexed entry without chunks."""
    documents = stores.keywords.counts_by_entry()  # one query, not one per entry
    bad = [
        eid
        for eid, _, _, chunks in stores.catalog.entry_columns(status=EntryStatus.INDEXED)
        if not chunks or not documents.get(eid)
    ]
    return CheckResult(
        "indexed_entries_have_text",
        not bad,
        "every indexed entry has non-empty chunks",
        {"entries_without_text": len(bad), "examples": bad[:5]},
    )


def indexes_match_catalog(stores: TenantStores) -> CheckResult:
    """Each index holds, entry by entry, the rows the catalog recorded, and no row of an
    entry the catalog does not have (``alien repair`` puts it right)."""
    damage = diagnose(stores, objects=False)
    meta = {
        "mismatched": {k: len(v) for k, v in damage.index_mismatch.items()},
        "orphaned": {k: len(v) for k, v in damage.index_orphans.items()},
        "examples": sorted(
            {e for v in damage.index_mismatch.values() for e in v[:3]}
            | {e for v in damage.index_orphans.values() for e in v[:3]}
        ),
    }
    return CheckResult(
        "indexes_match_catalog",
        damage.indexes_ok(),
        "vector and keyword rows per entry = what the catalog recorded; no orphans",
        meta,
    )


def objects_match_catalog(stores: TenantStores) -> CheckResult:
    """Every original and derived object the catalog records is in the object store, and no
    object belongs to an entry the catalog does not have (``alien repair`` puts it right)."""
    damage = diagnose(stores, indexes=False)
    meta = {
        "missing_originals": len(damage.missing_originals),
        "missing_outputs": {k: len(v) for k, v in damage.missing_outputs.items()},
        "orphan_objects": len(damage.orphan_objects),
        "examples": (damage.missing_originals + damage.orphan_objects)[:5],
    }
    return CheckResult(
        "objects_match_catalog",
        damage.objects_ok(),
        "originals and derived objects = what the catalog recorded; no orphans",
        meta,
    )


def run_checks(stores: TenantStores) -> list[CheckResult]:
    return [
        chunk_counts_agree(stores),
        vectors_match_model(stores),
        indexed_entries_have_text(stores),
        indexes_match_catalog(stores),
        objects_match_catalog(stores),
    ]
