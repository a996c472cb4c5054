"""End to end through the `alien` command on the real documents, as a user runs it."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from alien.cli import main
from alien.pipeline import read_chunks
from alien.search import search
from resources.catalog import EntryStatus
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from tests.conftest import CRANFIELD, PDFS, bad_documents

ALIEN = str(Path(sys.executable).with_name("alien"))


def _env(home: Path) -> dict[str, str]:
    return dict(os.environ, ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))


def _alien(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [ALIEN, *args], env=_env(home), capture_output=True, text=True, timeout=900
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"alien {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _json(home: Path, *args: str) -> dict:
    return json.loads(_alien(home, *args, "--json").stdout)


def _manifest_count(home: Path, tenant: str, asset: str) -> int:
    db = home / "tenants" / tenant / "catalog.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM manifests WHERE asset=?", (asset,)).fetchone()
            return int(row[0])
    except sqlite3.OperationalError:
        return 0


def _embedding_workers_of(parent: int) -> list[int]:
    """Live embedding worker processes started by ``parent`` (it passes its pid on argv)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
        if b"resources.embedding_worker" in argv and str(parent).encode() in argv and state != "Z":
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def acme(tmp_path_factory):
    """`alien ingest` of the shared PDFs, SIGKILLed during embedding, then run again."""
    home = tmp_path_factory.mktemp("acme")
    args = [ALIEN, "ingest", str(PDFS), "--tenant", "acme", "--json"]
    killed = subprocess.Popen(args, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while _manifest_count(home, "acme", "embeddings") == 0:
        assert killed.poll() is None, killed.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    workers = _embedding_workers_of(killed.pid)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    deadline = time.monotonic() + 10
    while _embedding_workers_of(killed.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    embedded_before_kill = _manifest_count(home, "acme", "embeddings")
    started = time.monotonic()
    rerun = _json(home, "ingest", str(PDFS), "--tenant", "acme")
    rerun_seconds = time.monotonic() - started
    return {
        "home": home,
        "killed_returncode": killed.returncode,
        "workers_before_kill": workers,
        "workers_after_kill": _embedding_workers_of(killed.pid),
        "embedded_before_kill": embedded_before_kill,
        "rerun": rerun,
        "rerun_seconds": rerun_seconds,
    }


def _stores(home: Path, tenant: str):
    return TenantRegistry(AlienSettings(home=home)).open(tenant)


def test_interrupted_ingest_recovers_with_no_duplicate_or_missing_chunk(acme):
    assert acme["killed_returncode"] == -signal.SIGKILL
    # the model ran in a worker process, and the kill took the worker with it
    assert len(acme["workers_before_kill"]) == 1
    assert acme["workers_after_kill"] == []
    rerun = acme["rerun"]
    assert rerun["run_success"]
    # The killed run had finished some entries; the rerun embedded only the rest.
    assert 0 < acme["embedded_before_kill"] < 6
    assert rerun["steps"]["embeddings"]["processed"] == 6 - acme["embedded_before_kill"]
    check = _alien(acme["home"], "check", "--tenant", "acme", "--json")
    assert json.loads(check.stdout)["passed"]
    stores = _stores(acme["home"], "acme")
    for entry in stores.catalog.entries():
        expected = {c.id for c in read_chunks(stores, entry.id)}
        assert len(expected) == entry.chunks
        assert stores.vectors.point_ids(entry.id) == expected
        assert {d.id for d in stores.keywords.entry_docs(entry.id)} == expected


def test_every_file_is_indexed_and_the_scan_is_read_by_ocr(acme):
    entries = _json(acme["home"], "entries", "--tenant", "acme")["entries"]
    assert len(entries) == len([p for p in PDFS.iterdir() if p.is_file()])
    assert {e["status"] for e in entries} == {EntryStatus.INDEXED}
    scanned = next(e for e in entries if e["source_name"].endswith("scanned.pdf"))
    assert scanned["pages"] == 3 and scanned["chunks"] > 0
    text = _json(acme["home"], "text", scanned["entry_id"], "--tenant", "acme")
    assert {p["method"] for p in text["pages"]} == {"ocr"}
    words = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    truth = words((PDFS / "camlidl-manual.p8-10.groundtruth.txt").read_text())
    seen = set(words(" ".join(p["text"] for p in text["pages"])))
    assert sum(w in seen for w in truth) / len(truth) > 0.95


def _phrase(text: str, words: int = 10) -> str | None:
    """Ten consecutive words from the middle of a page, starting where most are words."""
    tokens = text.split()
    for start in range(len(tokens) // 2, len(tokens) - words):
        window = tokens[start : start + words]
        if sum(any(ch.isalpha() for ch in t) for t in window) >= words - 2:
            return " ".join(window)
    return None


@pytest.mark.parametrize(("source", "step"), [("gri-manual.pdf", 37), ("camlidl-manual.pdf", 6)])
def test_a_phrase_from_a_page_returns_that_page(acme, source, step):
    stores = _stores(acme["home"], "acme")
    entry = next(e for e in stores.catalog.entries() if e.source_name == source)
    pages = _json(acme["home"], "text", entry.id, "--tenant", "acme")["pages"]
    checked = 0
    for page in pages[step // 2 :: step]:
        phrase = _phrase(page["text"])
        if phrase is None:
            continue  # a figure or a nearly empty page
        results = _json(acme["home"], "search", phrase, "--tenant", "acme", "--top-k", "3")
        top = [(r["source_name"], r["page"]) for r in results["results"]]
        assert (source, page["page"]) in top, (phrase, top)
        assert set(results["results"][0]) == {
            "entry_id",
            "source_name",
            "chunk_id",
            "page",
            "score",
            "text",
        }
        checked += 1
    assert checked >= 3


def test_a_second_identical_ingest_is_unchanged_and_fast(acme):
    started = time.monotonic()
    again = _json(acme["home"], "ingest", str(PDFS), "--tenant", "acme")
    seconds = time.monotonic() - started
    assert again["entries"] == {"new": 0, "unchanged": 6, "updated": 0, "failed": 0}
    assert again["pages"] == again["chunks"] == 0
    assert again["run_id"] is None
    assert seconds < 0.1 * acme["rerun_seconds"], (seconds, acme["rerun_seconds"])


def test_a_copy_of_an_ingested_folder_creates_no_entry(acme, tmp_path):
    """The same bytes in the same dataset are one entry, whichever folder they come from."""
    copy = tmp_path / "copy"
    shutil.copytree(PDFS, copy)  # byte-identical, other paths and times
    before = _json(acme["home"], "entries", "--tenant", "acme")["entries"]
    again = _json(acme["home"], "ingest", str(copy), "--tenant", "acme")
    assert again["entries"] == {"new": 0, "unchanged": 6, "updated": 0, "failed": 0}
    assert again["run_id"] is None  # nothing to do
    after = _json(acme["home"], "entries", "--tenant", "acme")["entries"]
    assert sorted(e["entry_id"] for e in after) == sorted(e["entry_id"] for e in before)
    hits = _json(acme["home"], "search", "installer", "--tenant", "acme", "--top-k", "20")
    chunk_ids = [h["chunk_id"] for h in hits["results"]]
    assert len(chunk_ids) == len(set(chunk_ids))  # every result once
    # and the copy is now a known source: the next time it is not even read
    assert _json(acme["home"], "ingest", str(copy), "--tenant", "acme")["entries"]["unchanged"] == 6


def test_identity_rules_hold_across_paths_and_doors(tmp_path, monkeypatch):
    from alien.documents import register_path, register_upload
    from resources.settings import AlienSettings as Settings

    monkeypatch.setenv("ALIEN_HOME", str(tmp_path / "home"))
    registry = TenantRegistry(Settings(home=tmp_path / "home"))
    stores = registry.create("ids")
    stores.catalog.ensure_dataset("default")
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("The wind tunnel runs on Tuesdays.")
    b.write_text("The wind tunnel runs on Tuesdays.")
    first = register_path(stores, a, dataset="default")
    second = register_path(stores, b, dataset="default")  # same bytes, another path
    assert (first.outcome, second.outcome) == ("new", "unchanged")
    assert second.entry.id == first.entry.id
    assert [s.source_uri for s in stores.catalog.sources(first.entry.id)] == [f"file://{b}"]
    # the same bytes through the API's door: the same entry
    with a.open("rb") as stream:
        upload = register_upload(stores, stream, dataset="default", source_name="a.txt",
                                 media_type="text/plain")  # fmt: skip
    assert (upload.outcome, upload.entry.id) == ("unchanged", first.entry.id)
    # another dataset is another entry
    stores.catalog.ensure_dataset("other")
    assert register_path(stores, b, dataset="other").outcome == "new"
    # the second path changes: it leaves the entry for one of its own
    b.write_text("The wind tunnel now runs on Fridays.")
    moved = register_path(stores, b, dataset="default")
    assert moved.outcome == "new" and moved.entry.id != first.entry.id
    assert stores.catalog.sources(first.entry.id) == []
    # the first path changes: its entry is updated in place
    a.write_text("The wind tunnel now runs on Mondays.")
    changed = register_path(stores, a, dataset="default")
    assert (changed.outcome, changed.entry.id) == ("updated", first.entry.id)
    assert len(stores.catalog.entries(dataset="default")) == 2
    # a file whose copy still holds the entry's bytes changes: the copy inherits the entry
    c, d = tmp_path / "c.txt", tmp_path / "d.txt"
    c.write_text("Schlieren photographs of the shock.")
    d.write_text("Schlieren photographs of the shock.")
    held = register_path(stores, c, dataset="default").entry
    assert register_path(stores, d, dataset="default").entry.id == held.id
    c.write_text("Interferograms of the shock.")
    own = register_path(stores, c, dataset="default")
    assert own.outcome == "new" and own.entry.id != held.id
    kept = stores.catalog.get_entry(held.id)
    assert kept is not None and kept.source_uri == f"file://{d}"  # d holds those bytes
    assert register_path(stores, d, dataset="default").outcome == "unchanged"
    # a file changes into bytes another entry holds: it joins that entry, its own goes
    c.write_text("The wind tunnel now runs on Mondays.")  # a's bytes
    joined = register_path(stores, c, dataset="default")
    assert (joined.outcome, joined.entry.id) == ("updated", first.entry.id)
    assert stores.catalog.get_entry(own.entry.id) is None
    hashes = [e.sha256 for e in stores.catalog.entries(dataset="default")]
    assert len(hashes) == len(set(hashes))  # never two entries with the same bytes
    registry.drop("ids")


def test_sync_retires_what_left_the_folder_and_nothing_else(tmp_path, monkeypatch):
    """`alien ingest DIR --sync`: a gone file's entry is deleted, unless another path holds
    its bytes (it stays, under that path); a gone copy is forgotten; other folders (one
    whose name only starts the same, one that differs in a LIKE wildcard) are untouched."""
    home = tmp_path / "home"
    monkeypatch.setenv("ALIEN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))

    def ingest(*args: str) -> dict:
        result = CliRunner().invoke(main, ["ingest", *args, "--tenant", "sync", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    folders = {name: tmp_path / name for name in ("docs_1", "docs_1-old", "docsX1")}
    texts = {
        "docs_1/a.txt": "Boundary layer suction on a swept wing.",
        "docs_1/b.txt": "Heat shields ablate at hypersonic speed.",
        "docs_1/sub/b-copy.txt": "Heat shields ablate at hypersonic speed.",
        "docs_1/c.txt": "Flutter of a cantilever plate in supersonic flow.",
        "docs_1-old/d.txt": "Buckling of thin cylindrical shells.",
        "docsX1/e.txt": "Shock cells in an underexpanded jet.",
    }
    for rel, text in texts.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    first = ingest(*map(str, folders.values()))
    assert first["entries"]["new"] == 5 and first["run_success"]
    stores = _stores(home, "sync")

    def names() -> set[str]:
        return {e.source_name for e in stores.catalog.entries()}

    (tmp_path / "docs_1/a.txt").unlink()
    (tmp_path / "docs_1/sub/b-copy.txt").unlink()
    synced = ingest(str(folders["docs_1"]), "--sync")
    assert synced["retired"] == {"deleted": 1, "handed_over": 0, "forgotten": 1}
    assert synced["run_id"] is None  # nothing left to process
    assert names() == {"b.txt", "c.txt", "d.txt", "e.txt"}
    b = next(e for e in stores.catalog.entries() if e.source_name == "b.txt")
    assert stores.catalog.sources(b.id) == []

    (tmp_path / "docs_1/sub").mkdir(exist_ok=True)
    (tmp_path / "docs_1/sub/b-copy.txt").write_text(texts["docs_1/b.txt"])
    assert ingest(str(folders["docs_1"]))["entries"]["unchanged"] == 3  # the copy is back
    (tmp_path / "docs_1/b.txt").unlink()
    moved = ingest(str(folders["docs_1"]), "--sync")
    assert moved["retired"] == {"deleted": 0, "handed_over": 1, "forgotten": 0}
    held = stores.catalog.get_entry(b.id)
    assert held is not None and held.source_name == "sub/b-copy.txt"
    assert names() == {"sub/b-copy.txt", "c.txt", "d.txt", "e.txt"}
    # without --sync nothing leaves; a file given by name is never retired
    (tmp_path / "docs_1/c.txt").unlink()
    assert ingest(str(folders["docs_1"]))["retired"]["deleted"] == 0
    assert ingest(str(tmp_path / "docs_1/sub/b-copy.txt"), "--sync")["retired"]["deleted"] == 0
    assert "c.txt" in names()
    assert ingest(str(folders["docs_1"]), "--sync")["retired"]["deleted"] == 1
    assert names() == {"sub/b-copy.txt", "d.txt", "e.txt"}
    assert json.loads(CliRunner().invoke(main, ["check", "--tenant", "sync", "--json"]).output)[
        "passed"
    ]


def test_changing_one_file_reprocesses_only_that_file(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ALIEN_HOME", str(home))
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(PDFS / "camlidl-manual.pdf", docs)
    (docs / "notes.md").write_text("# Notes\n\nThe wind tunnel runs on Tuesdays.")
    runner = CliRunner()
    first = json.loads(runner.invoke(main, ["ingest", str(docs), "-t", "beta", "--json"]).output)
    assert first["entries"]["new"] == 2
    (docs / "notes.md").write_text("# Notes\n\nThe wind tunnel now runs on Fridays.")
    second = json.loads(runner.invoke(main, ["ingest", str(docs), "-t", "beta", "--json"]).output)
    assert second["entries"] == {"new": 0, "unchanged": 1, "updated": 1, "failed": 0}
    assert {s: m["processed"] for s, m in second["steps"].items()} == dict.fromkeys(
        ["raw_documents", "ocr_output", "chunks", "embeddings", "vector_index", "keyword_index"], 1
    )
    hit = json.loads(
        runner.invoke(
            main, ["search", "Fridays", "-t", "beta", "--mode", "keyword", "--json"]
        ).output
    )["results"][0]
    assert hit["source_name"] == "notes.md"


def test_bad_input_fails_clearly_while_the_rest_index(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIEN_HOME", str(tmp_path / "home"))
    docs = tmp_path / "docs"
    expected = bad_documents(docs)
    (docs / "good.txt").write_text("Laminar flow airfoils reduce skin friction drag.")
    result = CliRunner().invoke(main, ["ingest", str(docs), "-t", "gamma", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["entries"]["new"] == len(expected) + 1
    assert summary["entries"]["failed"] == len(expected)
    reasons = {f["source_name"]: f["reason"] for f in summary["failures"]}
    for name, fragment in expected.items():
        assert re.search(fragment, reasons[name]), (name, reasons[name])
    listed = json.loads(CliRunner().invoke(main, ["entries", "-t", "gamma", "--json"]).output)
    good = next(e for e in listed["entries"] if e["source_name"] == "good.txt")
    assert good["status"] == "indexed"


def test_tenants_never_see_each_other_through_the_cli(acme, tmp_path):
    home = acme["home"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "ships.txt").write_text("Container ships cross the Atlantic with heavy fuel oil.")
    _json(home, "ingest", str(other), "--tenant", "shipping")
    for query in ["forward declarations of structs", "container ships", "gri contour", "debian"]:
        shipping = _json(home, "search", query, "--tenant", "shipping", "--top-k", "50")
        assert {r["source_name"] for r in shipping["results"]} <= {"ships.txt"}
        acme_hits = _json(home, "search", query, "--tenant", "acme", "--top-k", "50")
        assert "ships.txt" not in {r["source_name"] for r in acme_hits["results"]}


def test_unknown_and_invalid_tenants_are_clear_errors(acme):
    missing = _alien(acme["home"], "search", "x", "--tenant", "nobody", check=False)
    assert missing.returncode == 2 and "unknown tenant 'nobody'" in missing.stderr
    invalid = _alien(acme["home"], "search", "x", "--tenant", "Bad_Name", check=False)
    assert invalid.returncode == 2 and "invalid tenant id" in invalid.stderr


def test_delete_removes_an_entry_from_every_store(acme):
    home = acme["home"]
    stores = _stores(home, "acme")
    victim = next(e for e in stores.catalog.entries() if e.source_name.endswith(".txt"))
    assert stores.vectors.count(victim.id) > 0
    out = _json(home, "delete", victim.id, "--tenant", "acme")
    assert out == {"entry_id": victim.id, "deleted": True}
    assert stores.catalog.get_entry(victim.id) is None
    assert stores.vectors.count(victim.id) == stores.keywords.count(victim.id) == 0
    assert not [o.key for o in stores.objects.list() if victim.id in o.key]
    assert json.loads(_alien(home, "check", "--tenant", "acme", "--json").stdout)["passed"]
    gone = _alien(home, "delete", victim.id, "--tenant", "acme", check=False)
    assert gone.returncode == 1 and "no entry" in gone.stderr


@pytest.mark.slow
def test_eval_on_cranfield_hybrid_beats_both_single_modes(tmp_path, monkeypatch):
    """On the int8 variant, which embeds Cranfield in half the time (its quality against the
    default's is in the README)."""
    monkeypatch.setenv("ALIEN_HOME", str(tmp_path / "home"))
    # --embedder sets it for the process's run: restored after the test
    monkeypatch.setenv("ALIEN_EMBEDDING_MODEL", "all-MiniLM-L6-v2")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        main,
        ["eval", str(CRANFIELD), "--run-dir", str(runs), "--embedder",
         "all-MiniLM-L6-v2@onnx-int8", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["embedder"] == "all-MiniLM-L6-v2@onnx-int8"
    modes = json.loads(result.output)["modes"]
    assert modes["hybrid"]["ndcg@10"] > modes["keyword"]["ndcg@10"]
    assert modes["hybrid"]["ndcg@10"] > modes["vector"]["ndcg@10"]
    assert modes["hybrid"]["ndcg@10"] > 0.5
    lines = (runs / "hybrid.run").read_text().splitlines()
    assert len(lines) == 225 * 100
    _qid, q0, _doc, rank, _score, tag = lines[0].split()
    assert (q0, rank, tag) == ("Q0", "1", "alien-hybrid")
    # its scratch tenant is gone, unless asked to keep it
    assert json.loads(result.output)["tenant_kept"] is False
    tenants = CliRunner().invoke(main, ["tenants", "--all", "--json"])
    assert json.loads(tenants.output)["tenants"] == []


def test_an_s3_prefix_ingests_incrementally_and_syncs(tmp_path, monkeypatch, s3_server):
    """`alien ingest s3://bucket/prefix` on a real S3-protocol server: new objects are
    registered, unchanged ones are not read again, a changed one updates its entry,
    `--sync` retires the gone ones, objects outside the prefix are never touched; a DOCX
    without an extension is known by its bytes, as at every other door."""
    from minio import Minio

    from tests.resources.test_formats import FORMATS

    home = tmp_path / "home"
    monkeypatch.setenv("ALIEN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_server.endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    client.make_bucket("shared-drive")

    def put(key: str, data: bytes) -> None:
        client.put_object("shared-drive", key, io.BytesIO(data), len(data))

    put("team/a.txt", b"Boundary layer suction on a swept wing.")
    put("team/sub/b.md", b"# Heat\n\nHeat shields ablate at hypersonic speed.")
    put("team/report", (FORMATS / "report.docx").read_bytes())
    put("team/.hidden/x.txt", b"not for the index")
    put("other/c.txt", b"Flutter of a cantilever plate.")

    def ingest(*args: str) -> dict:
        result = CliRunner().invoke(main, ["ingest", *args, "-t", "s3src", "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    first = ingest("s3://shared-drive/team/")
    assert first["entries"] == {"new": 3, "unchanged": 0, "updated": 0, "failed": 0}
    assert first["run_success"]
    stores = _stores(home, "s3src")
    by_name = {e.source_name: e for e in stores.catalog.entries()}
    assert sorted(by_name) == ["a.txt", "report", "sub/b.md"]
    assert by_name["report"].source_uri == "s3://shared-drive/team/report"
    assert by_name["report"].media_type.endswith("wordprocessingml.document")
    assert {e.status for e in by_name.values()} == {"indexed"}

    again = ingest("s3://shared-drive/team/")
    assert again["entries"]["unchanged"] == 3 and again["run_id"] is None

    put("team/sub/b.md", b"# Heat\n\nAblative heat shields char and recede.")
    client.remove_object("shared-drive", "team/a.txt")
    synced = ingest("s3://shared-drive/team/", "--sync")
    assert synced["entries"] == {"new": 0, "unchanged": 1, "updated": 1, "failed": 0}
    assert synced["retired"]["deleted"] == 1
    assert sorted(e.source_name for e in stores.catalog.entries()) == ["report", "sub/b.md"]
    hits = search(stores, "ablative char", mode="keyword")
    assert hits and hits[0].source_name == "sub/b.md"

    missing = CliRunner().invoke(main, ["ingest", "s3://no-such-bucket/x", "-t", "s3src"])
    assert missing.exit_code == 2 and "NoSuchBucket" in missing.output
