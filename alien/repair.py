"""Consistency repair: compare a tenant's catalog with its object store and both indexes, then
put right what differs (``alien repair``, the Dagster ``repair`` job).

The catalog is the record: its manifests say which objects each step wrote and how many rows
each index holds for each entry. What a store lacks is made again by the pipeline (the step's
manifest row is forgotten and the entry is pending, so the next run redoes exactly that step;
the steps are deterministic, so the chunks and point ids come out the same); what a store has
that the catalog does not know (rows or objects of entries that no longer exist) is removed.
An original that is gone cannot be made again: its entry fails, saying so.

Everything is read a page or a listing at a time; nothing here holds more than one id per
entry, chunk counts and object keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from alien.documents import finish_deletions
from alien.layout import STORED_PREFIXES, entry_of
from alien.pipeline import CHUNKS, EMBEDDINGS, KEYWORDS, RAW, TEXT, VECTORS
from resources.catalog import EntryStatus, ManifestRecord
from resources.stores import TenantStores

# The steps whose output is an object, and the index steps with the store each writes.
_OBJECT_STEPS = (TEXT, CHUNKS, EMBEDDINGS)
_INDEX_STEPS = {VECTORS: "vectors", KEYWORDS: "keywords"}


@dataclass
class Damage:
    """What differs between the catalog and the other stores of one tenant."""

    # index store -> entries whose rows differ from what the catalog recorded
    index_mismatch: dict[str, list[str]] = field(default_factory=dict)
    # index store -> entries with rows that the catalog does not have
    index_orphans: dict[str, list[str]] = field(default_factory=dict)
    # step -> entries whose output object is missing
    missing_outputs: dict[str, list[str]] = field(default_factory=dict)
    missing_originals: list[str] = field(default_factory=list)
    orphan_objects: list[str] = field(default_factory=list)

    def indexes_ok(self) -> bool:
        return not any(self.index_mismatch.values()) and not any(self.index_orphans.values())

    def objects_ok(self) -> bool:
        return (
            not any(self.missing_outputs.values())
            and not self.missing_originals
            and not self.orphan_objects
        )

    def summary(self) -> dict[str, Any]:
        return {
            "index_mismatch": {k: len(v) for k, v in self.index_mismatch.items()},
            "index_orphans": {k: len(v) for k, v in self.index_orphans.items()},
            "missing_outputs": {k: len(v) for k, v in self.missing_outputs.items()},
            "missing_originals": len(self.missing_originals),
            "orphan_objects": len(self.orphan_objects),
        }


def diagnose(stores: TenantStores, *, indexes: bool = True, objects: bool = True) -> Damage:
    """What differs, in the indexes and/or the object store (a check asks for its half only)."""
    catalog = stores.catalog
    damage = Damage()
    live = catalog.entry_hashes()
    known = set(live) | {e.id for e in catalog.deleting(limit=10_000_000)}
    for step, store in _INDEX_STEPS.items() if indexes else ():
        actual = vector_counts(stores) if step == VECTORS else stores.keywords.counts_by_entry()
        recorded = {
            eid: int(rec.meta.get("rows", 0))
            for eid, rec in catalog.manifest(step).items()
            if rec.ok and eid in live
        }
        if step == VECTORS:  # during a model change, rows still of the old space are not
            written = vector_rows_written(stores)  # the new one's to hold
            recorded = {eid: rows for eid, rows in recorded.items() if eid in written}
        damage.index_mismatch[store] = sorted(
            eid for eid, rows in recorded.items() if actual.get(eid, 0) != rows
        )
        damage.index_orphans[store] = sorted(eid for eid in actual if eid not in known)
    if not objects:
        return damage
    stored = {info.key for prefix in STORED_PREFIXES for info in stores.objects.list(prefix)}
    for step in _OBJECT_STEPS:
        damage.missing_outputs[step] = sorted(
            eid
            for eid, rec in catalog.manifest(step, meta=False).items()
            if rec.ok and eid in live and rec.output_key and rec.output_key not in stored
        )
    damage.missing_originals = [
        eid
        for eid, status, key, _ in catalog.entry_columns()
        if status != EntryStatus.FAILED and key and key not in stored
    ]
    damage.orphan_objects = sorted(
        key for key in stored if (owner := entry_of(key)) is not None and owner not in known
    )
    return damage


def in_space(record: ManifestRecord, space: str) -> bool:
    """Whether a vector manifest row describes ``space`` (rows from before spaces existed
    describe the tenant's first, "")."""
    return record.meta.get("space", "") == space


def vector_counts(stores: TenantStores) -> dict[str, int]:
    """Points per entry in the spaces the pipeline writes (the default one's and each
    dataset's own)."""
    counts: dict[str, int] = {}
    for space in stores.space_map().written():
        if space.created:  # a space not made yet holds nothing
            for eid, n in stores.vectors_in(space).counts_by_entry().items():
                counts[eid] = counts.get(eid, 0) + n
    return counts


def vector_rows_written(stores: TenantStores) -> set[str]:
    """Entries whose vector manifest row describes the space their vectors go to now (the
    others await a model change's backfill: their points are in the space searched)."""
    spaces = stores.space_map()
    kinds = stores.catalog.entry_kinds()
    return {
        eid
        for eid, rec in stores.catalog.manifest(VECTORS).items()
        if rec.ok and in_space(rec, spaces.target(kinds.get(eid, ("", ""))[0]).name)
    }


@dataclass
class RepairReport:
    before: dict[str, Any]
    deletions_finished: int = 0
    redo: dict[str, int] = field(default_factory=dict)  # step -> entries it will redo
    originals_missing: int = 0
    rows_removed: dict[str, int] = field(default_factory=dict)
    objects_removed: int = 0

    @property
    def entries_to_redo(self) -> int:
        return sum(self.redo.values())


def repair(stores: TenantStores) -> RepairReport:
    """Remove what the catalog does not know; forget what a store lost, so the next run makes
    it again (the affected entries are ``pending``: the sensor, or ``alien repair`` itself,
    runs the pipeline). Idempotent."""
    catalog = stores.catalog
    report = RepairReport(before={})
    report.deletions_finished = finish_deletions(stores)
    damage = diagnose(stores)
    report.before = damage.summary()
    for store, orphans in damage.index_orphans.items():
        remove = stores.delete_vectors if store == "vectors" else stores.keywords.delete_entries
        report.rows_removed[store] = remove(orphans)
    for key in damage.orphan_objects:
        report.objects_removed += bool(stores.objects.delete(key))
    redo: dict[str, list[str]] = {step: list(ids) for step, ids in damage.missing_outputs.items()}
    for step, store in _INDEX_STEPS.items():
        redo[step] = damage.index_mismatch[store]
    # an original that is gone fails its entry at the next run (raw_documents checks it)
    redo[RAW] = damage.missing_originals
    report.originals_missing = len(damage.missing_originals)
    waiting: set[str] = set()
    for step, ids in redo.items():
        if ids:
            catalog.forget_manifest(step, ids)
            waiting.update(ids)
            report.redo[step] = len(ids)
    catalog.set_status(sorted(waiting), EntryStatus.PENDING, "repair: made again from the catalog")
    return report
