"""Every supported office, e-book, RTF, CSV and email format through the whole pipeline on the
real model: each indexes, and a phrase from it is found on its page, slide, sheet or chapter.
An email's attachments become entries linked to it, which leave with it."""

from __future__ import annotations

import shutil

from alien.checks import run_checks
from alien.documents import delete_entry, register_path
from alien.pipeline import run_all
from alien.search import search
from resources.catalog import EntryStatus
from tests.resources.test_formats import CASES, FORMATS


def _all_pass(stores) -> None:
    results = run_checks(stores)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_every_format_indexes_and_its_phrases_are_found_on_their_pages(tenant, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in CASES:
        shutil.copy(FORMATS / name, folder / name)
    ids = {name: register_path(tenant, folder / name, dataset="default").entry.id for name in CASES}
    run_all(tenant)
    entries = {e.id: e for e in tenant.catalog.entries()}
    for name, entry_id in ids.items():
        entry = entries[entry_id]
        assert entry.status == EntryStatus.INDEXED, (name, entry.reason)
        assert entry.media_type == CASES[name][0]
        assert entry.pages == CASES[name][1]
        for phrase, page in CASES[name][2]:
            for mode in ("keyword", "hybrid"):
                hits = search(tenant, phrase, mode=mode, top_k=3, entries=[entry_id])
                assert hits, (name, phrase, mode)
                assert hits[0].page == page, (name, phrase, mode, [h.page for h in hits])
    _all_pass(tenant)
    assert all(r.processed == 0 for r in run_all(tenant))  # a rerun does nothing


def test_an_email_and_its_two_attachments_are_three_linked_entries(tenant, tmp_path):
    mail = tmp_path / "inbox" / "message.eml"
    mail.parent.mkdir()
    shutil.copy(FORMATS / "message.eml", mail)
    email = register_path(tenant, mail, dataset="default").entry
    reports = {r.step: r for r in run_all(tenant)}
    assert reports["raw_documents"].details["attachments"] == 2
    entries = {e.source_name: e for e in tenant.catalog.entries()}
    assert sorted(entries) == ["bsd-license.pdf", "message.eml", "report.docx"]
    assert all(e.status == EntryStatus.INDEXED for e in entries.values())
    assert entries["bsd-license.pdf"].attached_to == email.id
    assert entries["report.docx"].attached_to == email.id
    assert entries["message.eml"].attached_to is None
    assert entries["report.docx"].public()["attached_to"] == email.id
    pdf_hits = search(tenant, "Redistributions in binary form must reproduce", mode="keyword")
    assert entries["bsd-license.pdf"].id in {h.entry_id for h in pdf_hits}
    docx_hits = search(tenant, "Licence files in /usr/share/common-licenses", mode="keyword")
    assert docx_hits[0].entry_id == entries["report.docx"].id and docx_hits[0].page == 2
    _all_pass(tenant)
    assert all(r.processed == 0 for r in run_all(tenant))  # attachments are not unpacked twice

    assert delete_entry(tenant, email.id)
    assert tenant.catalog.entries() == []
    assert search(tenant, "Redistributions in binary form", mode="keyword") == []
    run_all(tenant)
    _all_pass(tenant)


def test_an_attachment_also_stored_from_elsewhere_outlives_the_email(tenant, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("message.msg", "report.docx"):
        shutil.copy(FORMATS / name, folder / name)
    own = register_path(tenant, folder / "report.docx", dataset="default").entry
    email = register_path(tenant, folder / "message.msg", dataset="default").entry
    run_all(tenant)
    by_name = {e.source_name: e for e in tenant.catalog.entries()}
    assert sorted(by_name) == ["bsd-license.pdf", "licenses.csv", "message.msg", "report.docx"]
    assert by_name["licenses.csv"].attached_to == email.id
    assert by_name["licenses.csv"].status == EntryStatus.INDEXED
    delete_entry(tenant, email.id)
    assert [e.id for e in tenant.catalog.entries()] == [own.id]


def test_an_email_whose_attachments_change_retires_the_old_ones(tenant, tmp_path):
    from email.message import EmailMessage

    def mail(*attachments: tuple[str, bytes]) -> bytes:
        message = EmailMessage()
        message["From"] = "a@example.org"
        message["Subject"] = "files"
        message.set_content("See the attached files.")
        for name, data in attachments:
            message.add_attachment(data, maintype="text", subtype="plain", filename=name)
        return message.as_bytes()

    path = tmp_path / "files.eml"
    path.write_bytes(mail(("one.txt", b"quetzal feathers glow"), ("two.txt", b"second text")))
    email = register_path(tenant, path, dataset="default").entry
    run_all(tenant)
    assert sorted(e.source_name for e in tenant.catalog.entries()) == [
        "files.eml",
        "one.txt",
        "two.txt",
    ]
    path.write_bytes(mail(("two.txt", b"second text"), ("three.txt", b"third text")))
    assert register_path(tenant, path, dataset="default").outcome == "updated"
    run_all(tenant)
    by_name = {e.source_name: e for e in tenant.catalog.entries()}
    assert sorted(by_name) == ["files.eml", "three.txt", "two.txt"]
    assert {by_name[n].attached_to for n in ("two.txt", "three.txt")} == {email.id}
    assert search(tenant, "quetzal", mode="keyword") == []
    _all_pass(tenant)
