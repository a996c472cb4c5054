"""The pipeline steps on real stores and the real model: incremental, isolated, fail-safe."""

from __future__ import annotations

import json
import re

import pytest

from alien.checks import run_checks
from alien.documents import delete_entry, register_bytes, register_path
from alien.layout import chunks_key
from alien.pipeline import CHUNKS, EMBEDDINGS, TEXT, read_chunks, run_all
from alien.search import search
from resources.catalog import EntryStatus
from resources.settings import AlienSettings
from tests.conftest import PDFS, bad_documents

DOCS = {
    "wings.txt": "Swept wings delay the onset of compressibility drag at transonic speeds. "
    "The boundary layer on a swept wing flows spanwise toward the tips.",
    "heat.txt": "Aerodynamic heating of hypersonic vehicles requires ablative heat shields. "
    "Stagnation point heat transfer scales with the square root of nose radius.",
    "birds.md": "# Birds\n\nAlbatrosses glide for hours by dynamic soaring over ocean waves.",
}


def _register_all(stores, docs=DOCS, dataset="default"):
    return {
        name: register_bytes(
            stores, text.encode(), dataset=dataset, source_uri=f"mem:{name}", source_name=name
        ).entry.id
        for name, text in docs.items()
    }


def _processed(reports):
    return {r.step: r.processed for r in reports}


def _all_pass(stores):
    results = run_checks(stores)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_everything_indexes_then_a_rerun_does_nothing(tenant):
    ids = _register_all(tenant)
    first = run_all(tenant)
    assert _processed(first) == dict.fromkeys(
        ["raw_documents", "ocr_output", "chunks", "embeddings", "vector_index", "keyword_index"], 3
    )
    assert {e.status for e in tenant.catalog.entries()} == {EntryStatus.INDEXED}
    _all_pass(tenant)
    second = run_all(tenant)
    assert all(r.processed == 0 and r.removed == 0 for r in second)
    assert all(r.unchanged == 3 for r in second)
    hits = search(tenant, "hypersonic heat shield", top_k=1)
    assert hits[0].entry_id == ids["heat.txt"]


def test_a_changed_document_is_the_only_one_reprocessed(tenant):
    ids = _register_all(tenant)
    run_all(tenant)
    old_chunk_ids = {c.id for c in read_chunks(tenant, ids["birds.md"])}
    changed = dict(DOCS, **{"birds.md": "# Birds\n\nPenguins cannot fly but swim fast."})
    regs = {
        name: register_bytes(
            tenant, text.encode(), dataset="default", source_uri=f"mem:{name}", source_name=name
        )
        for name, text in changed.items()
    }
    assert sorted(r.outcome for r in regs.values()) == ["unchanged", "unchanged", "updated"]
    assert tenant.catalog.get_entry(ids["birds.md"]).status == EntryStatus.PENDING
    reports = run_all(tenant)
    assert all(r.processed == 1 for r in reports)
    assert search(tenant, "albatross", mode="keyword", top_k=5) == []
    assert search(tenant, "penguins", mode="keyword", top_k=1)[0].entry_id == ids["birds.md"]
    new_ids = {c.id for c in read_chunks(tenant, ids["birds.md"])}
    assert not (old_chunk_ids & new_ids)
    assert tenant.vectors.point_ids(ids["birds.md"]) == new_ids
    _all_pass(tenant)


def test_bad_inputs_fail_with_reasons_and_the_rest_index(tenant, tmp_path):
    expected = bad_documents(tmp_path / "bad")
    good = register_path(tenant, PDFS / "camlidl-manual.pdf", dataset="default").entry.id
    for name in expected:
        register_path(tenant, tmp_path / "bad" / name, dataset="default")
    run_all(tenant)
    by_name = {e.source_name: e for e in tenant.catalog.entries()}
    assert by_name["camlidl-manual.pdf"].status == EntryStatus.INDEXED
    for name, reason in expected.items():
        assert by_name[name].status == EntryStatus.FAILED, name
        assert re.search(reason, by_name[name].reason), (name, by_name[name].reason)
    assert {h.entry_id for h in search(tenant, "camlidl interface", top_k=20)} == {good}
    _all_pass(tenant)
    # A failed document is not retried until it changes.
    assert all(r.processed == 0 for r in run_all(tenant)[1:])


def test_a_document_that_turns_bad_loses_its_old_chunks(tenant):
    entry = register_bytes(
        tenant,
        b"Delta wings at supersonic speed.",
        dataset="default",
        source_uri="mem:x",
        source_name="x.txt",
    ).entry
    run_all(tenant)
    assert tenant.keywords.count(entry.id) == 1
    register_bytes(
        tenant, b"\x00\x00\x00", dataset="default", source_uri="mem:x", source_name="x.txt"
    )
    run_all(tenant)
    got = tenant.catalog.get_entry(entry.id)
    assert got.status == EntryStatus.FAILED and "binary" in got.reason
    assert tenant.keywords.count(entry.id) == tenant.vectors.count(entry.id) == 0
    assert not tenant.objects.exists(chunks_key(entry.id))
    _all_pass(tenant)


def test_delete_removes_the_entry_from_every_store(tenant):
    ids = _register_all(tenant)
    run_all(tenant)
    victim = ids["wings.txt"]
    assert delete_entry(tenant, victim)
    assert tenant.catalog.get_entry(victim) is None
    assert tenant.vectors.count(victim) == tenant.keywords.count(victim) == 0
    assert not [i.key for i in tenant.objects.list() if victim in i.key]
    assert all(victim not in tenant.catalog.manifest(step) for step in (TEXT, CHUNKS, EMBEDDINGS))
    assert victim not in {h.entry_id for h in search(tenant, "swept wing boundary layer", top_k=10)}
    assert not delete_entry(tenant, victim)
    _all_pass(tenant)
    assert all(r.processed == 0 for r in run_all(tenant))


def test_files_dropped_into_the_inbox_are_registered(tenant):
    tenant.objects.put_bytes("inbox/report.txt", b"Wind tunnel report on flutter of tail surfaces.")
    reports = run_all(tenant)
    assert reports[0].details["inbox_registered"] == 1
    assert list(tenant.objects.list("inbox/")) == []
    (entry,) = tenant.catalog.entries()
    assert (entry.source_name, entry.status) == ("report.txt", EntryStatus.INDEXED)
    assert search(tenant, "flutter", top_k=1)[0].entry_id == entry.id


def test_a_refused_inbox_file_is_kept_until_its_entry_is_deleted(tenant, monkeypatch):
    """Nothing of a user's is deleted unless stored: an inbox file refused before storage
    (too large) moves to rejected/, its entry failed with the reason and where it is kept."""
    monkeypatch.setattr(tenant.settings, "max_file_bytes", 64)
    big = b"Flutter of tail surfaces at transonic speeds. " * 10
    tenant.objects.put_bytes("inbox/reports/big.txt", big)
    tenant.objects.put_bytes("inbox/small.txt", b"Tail flutter.")
    reports = run_all(tenant)
    assert reports[0].details["inbox_rejected"] == 1
    assert list(tenant.objects.list("inbox/")) == []  # the inbox is drained...
    assert tenant.objects.get_bytes("rejected/reports/big.txt") == big  # ...and nothing lost
    by_name = {e.source_name: e for e in tenant.catalog.entries()}
    refused = by_name["big.txt"]
    assert refused.status == EntryStatus.FAILED
    assert "too large" in refused.reason and "rejected/reports/big.txt" in refused.reason
    assert by_name["small.txt"].status == EntryStatus.INDEXED
    # the same name dropped again, now small enough: stored, and the kept copy goes
    monkeypatch.setattr(tenant.settings, "max_file_bytes", 10_000)
    tenant.objects.put_bytes("inbox/reports/big.txt", big)
    run_all(tenant)
    again = tenant.catalog.get_entry(refused.id)
    assert again is not None and again.status == EntryStatus.INDEXED
    assert not tenant.objects.exists("rejected/reports/big.txt")
    # refused again, then deleted by the user: the kept copy goes with the entry
    monkeypatch.setattr(tenant.settings, "max_file_bytes", 64)
    tenant.objects.put_bytes("inbox/reports/big.txt", big + b"more")
    run_all(tenant)
    assert tenant.objects.exists("rejected/reports/big.txt")
    assert not [i.key for i in tenant.objects.list() if refused.id in i.key]  # no stale original
    assert delete_entry(tenant, refused.id)
    assert not [i.key for i in tenant.objects.list("rejected/")]
    _all_pass(tenant)


def test_tenants_never_see_each_other(registry):
    a, b = registry.create("tenant-a"), registry.create("tenant-b")
    _register_all(a)
    _register_all(
        b,
        {
            "ships.txt": "Container ships burn heavy fuel oil on long ocean voyages.",
            "trains.txt": "High speed trains draw power from overhead catenary lines.",
        },
    )
    run_all(a)
    run_all(b)
    a_ids = {e.id for e in a.catalog.entries()}
    b_ids = {e.id for e in b.catalog.entries()}
    queries = ["ocean", "heat", "trains power", "swept wings", "fuel", "birds soaring", "speed"]
    for query in queries:
        for mode in ("hybrid", "vector", "keyword"):
            assert {h.entry_id for h in search(a, query, mode=mode, top_k=50)} <= a_ids
            assert {h.entry_id for h in search(b, query, mode=mode, top_k=50)} <= b_ids
    assert a.root != b.root and a.catalog.tenant == "tenant-a"


def test_text_and_chunk_outputs_live_in_the_object_store(tenant):
    ids = _register_all(tenant)
    run_all(tenant)
    body = json.loads(tenant.objects.get_bytes(chunks_key(ids["heat.txt"])))
    assert body["chunks"][0]["text"].startswith("Aerodynamic heating")
    assert body["chunks"][0]["page"] == 1


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_dataset_filter(tenant, mode):
    tenant.catalog.ensure_dataset("other")
    _register_all(tenant)
    _register_all(tenant, {"ships.txt": "Container ships cross the ocean."}, dataset="other")
    run_all(tenant)
    hits = search(tenant, "ocean ships", mode=mode, top_k=10, dataset="other")
    assert hits and {h.dataset for h in hits} == {"other"}


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("cannot open /tmp/alien-spool/x1.pdf: bad", "cannot open <path>: bad"),
        (
            "corrupt PDF: Failed to load document (/work/.venv/lib/pdfium.so)",
            "corrupt PDF: Failed to load document (<path>)",
        ),
        ("page 3/5 is empty", "page 3/5 is empty"),
        (
            "unsupported filter [/FlateDecode/DCTDecode]",
            "unsupported filter [/FlateDecode/DCTDecode]",
        ),
        ("spool /var/lib/alien/tenants/t/objects/.tmp/x", "spool <path>"),
        ("see https://example.com/a/b", "see https://example.com/a/b"),
    ],
)
def test_failure_reasons_carry_no_server_paths(raw: str, shown: str) -> None:
    from alien.pipeline import public_reason

    assert public_reason(raw) == shown


def test_an_entry_over_the_chunk_cap_fails_before_embedding_and_the_rest_index(tmp_path):
    from resources.stores import TenantRegistry

    settings = AlienSettings(home=tmp_path / "home", max_chunks_per_entry=3)
    stores = TenantRegistry(settings).create("tenant-c")
    many = "\n\n".join(f"Paragraph {i}: " + "turbulent boundary layers " * 60 for i in range(8))
    big = register_bytes(stores, many.encode(), dataset="default", source_uri="mem:big",
                         source_name="big.txt").entry  # fmt: skip
    small = register_bytes(stores, b"Wing flutter at transonic speed.", dataset="default",
                           source_uri="mem:small", source_name="small.txt").entry  # fmt: skip
    run_all(stores)
    failed = stores.catalog.get_entry(big.id)
    assert failed.status == EntryStatus.FAILED
    assert "over the cap of 3 chunks per entry (ALIEN_MAX_CHUNKS_PER_ENTRY)" in failed.reason
    assert stores.vectors.count(big.id) == 0  # never embedded
    assert stores.catalog.get_entry(small.id).status == EntryStatus.INDEXED


def test_a_dataset_may_pin_its_language(tenant):
    """A pinned language is not detected: every page and chunk has it, and the keyword index
    stems with it (German stems match "Flügeln" to "Flügel")."""
    from alien.pipeline import read_page_languages

    tenant.catalog.ensure_dataset("akten", {"language": "de"})
    text = "Flügel. Überschall."  # too short to tell: detection alone could not say German
    pinned = register_bytes(
        tenant, text.encode(), dataset="akten", source_uri="mem:de", source_name="de.txt"
    ).entry
    detected = register_bytes(
        tenant,
        "Die Strömung an den Flügeln wird bei hoher Geschwindigkeit gemessen.".encode(),
        dataset="default",
        source_uri="mem:de2",
        source_name="de2.txt",
    ).entry
    run_all(tenant)
    assert read_page_languages(tenant, pinned.id) == {1: "de"}
    assert read_page_languages(tenant, detected.id) == {1: "de"}
    assert {c.language for c in read_chunks(tenant, pinned.id)} == {"de"}
    assert tenant.catalog.manifest(TEXT)[pinned.id].meta["language"] == "de"
    hits = tenant.keywords.search("Flügeln", 5)
    assert {h.entry_id for h in hits} == {pinned.id, detected.id}


def test_a_datasets_chunk_window_and_ocr_settings_are_honoured(tenant):
    """A dataset's own chunk window cuts its entries' chunks (others keep the model's);
    changing it re-chunks that dataset only. A dataset's OCR languages read its scans (one
    Tesseract lacks fails with the reason, its text files index); changing them re-reads its
    scans, not its text files."""
    text = " ".join(DOCS.values()) * 6
    tenant.catalog.create_dataset("short", {"chunk_tokens": 48})
    wide = register_bytes(tenant, text.encode(), dataset="default", source_uri="m:a",
                          source_name="a.txt").entry  # fmt: skip
    narrow = register_bytes(tenant, text.encode(), dataset="short", source_uri="m:a",
                            source_name="a.txt").entry  # fmt: skip
    run_all(tenant)
    wide_chunks, narrow_chunks = read_chunks(tenant, wide.id), read_chunks(tenant, narrow.id)
    assert max(c.tokens for c in narrow_chunks) <= 48 < max(c.tokens for c in wide_chunks)
    assert len(narrow_chunks) > 2 * len(wide_chunks)
    tenant.catalog.update_dataset("short", {"chunk_tokens": 96})
    reports = {r.step: r for r in run_all(tenant)}
    assert reports[TEXT].processed == 0 and reports[CHUNKS].processed == 1
    assert 48 < max(c.tokens for c in read_chunks(tenant, narrow.id)) <= 96

    tenant.catalog.create_dataset("scans", {"ocr_languages": "qqq"})  # not installed
    scan = register_path(tenant, PDFS / "camlidl-manual.p8-10.scanned.pdf", dataset="scans")
    note = register_bytes(tenant, b"Typed notes about the scans.", dataset="scans",
                          source_uri="m:n", source_name="n.txt")  # fmt: skip
    run_all(tenant)
    failed = tenant.catalog.get_entry(scan.entry.id)
    assert failed.status == EntryStatus.FAILED
    assert "OCR languages 'qqq' are not all installed" in failed.reason
    assert tenant.catalog.get_entry(note.entry.id).status == EntryStatus.INDEXED
    tenant.catalog.update_dataset("scans", {"ocr_languages": "eng"})
    reports = {r.step: r for r in run_all(tenant)}
    assert reports[TEXT].processed == 1  # the scan, not the text file
    assert tenant.catalog.get_entry(scan.entry.id).status == EntryStatus.INDEXED
    hits = search(tenant, "camlidl", mode="keyword", dataset="scans")
    assert hits and hits[0].entry_id == scan.entry.id
    _all_pass(tenant)
