"""`alien ingest` at a terminal, as a user meets it: Ctrl-C stops it within seconds (during
embedding, during OCR) leaving nothing running, its entries pending and no run shown started,
and the next ingest finishes the work; every step's progress bar moves while the step runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PDFS, pdf_pages
from tests.terminal import Terminal, alive

ALIEN = str(Path(sys.executable).with_name("alien"))
STEPS = ("raw_documents", "ocr_output", "chunks", "embeddings", "vector_index", "keyword_index")


def _env(home: Path) -> dict[str, str]:
    # the session's models directory stays: its ONNX export is made once per session
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ALIEN_", "DAGSTER_")) or k == "ALIEN_MODELS_DIR"}  # fmt: skip
    return {**env, "ALIEN_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}


def _alien(home: Path, *args: str) -> tuple[int, dict]:
    run = subprocess.run(
        [ALIEN, *args, "--json"], env=_env(home), capture_output=True, text=True, timeout=600
    )
    return run.returncode, json.loads(run.stdout)


def _statuses(home: Path) -> dict[str, int]:
    from resources.settings import AlienSettings
    from resources.stores import TenantRegistry

    registry = TenantRegistry(AlienSettings(home=home))
    try:
        return registry.open("acme").catalog.status_counts()
    finally:
        registry.forget("acme")


def _run_statuses(home: Path) -> list[str]:
    from dagster import DagsterInstance

    instance = DagsterInstance.from_config(str(home / "dagster"))
    try:
        return [run.status.value for run in instance.get_runs()]
    finally:
        instance.dispose()


def _running(terminal: Terminal, name: str) -> bool:
    for pid in terminal.descendants():
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                return True
        except OSError:
            continue
    return False


def _interrupt_during(step_pattern: str, docs: Path, home: Path, busy: str | None = None) -> None:
    """Ctrl-C once ``step_pattern`` is on the screen (and, given ``busy``, once a process of
    that name runs under the command: the step is at work, not just drawn)."""
    home.mkdir()
    terminal = Terminal([ALIEN, "ingest", str(docs), "-t", "acme"], _env(home), home)
    try:
        terminal.wait_for(step_pattern, timeout=240)
        deadline = time.monotonic() + 60
        while busy and not _running(terminal, busy):
            assert time.monotonic() < deadline, f"no {busy} process appeared"
            time.sleep(0.05)
        running = terminal.descendants()
        assert running, "the run has worker processes"
        pressed = time.monotonic()
        terminal.interrupt()  # Ctrl-C: SIGINT to the foreground process group
        code = terminal.wait(timeout=30)
        stopped = time.monotonic() - pressed
    finally:
        terminal.close()
    screen = terminal.screen()
    assert code == 130, screen[-2000:]
    assert stopped < 10, f"stopped {stopped:.1f} s after Ctrl-C"
    deadline = time.monotonic() + 5
    while [pid for pid in running if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in running if alive(pid)], "a worker outlived the interrupt"
    assert "interrupted" in screen and "run the same `alien ingest` again" in screen
    assert "Traceback" not in screen
    statuses = _statuses(home)
    assert statuses.get("pending", 0) >= 1 and statuses.get("processing", 0) == 0, statuses
    runs = _run_statuses(home)
    assert runs and "STARTED" not in runs, runs
    # the next ingest finishes the work, and the stores agree with each other
    code, summary = _alien(home, "ingest", str(docs), "-t", "acme")
    assert code == 0 and summary["run_success"], summary
    assert summary["entries"]["unchanged"] == len(list(docs.iterdir()))
    assert summary["embedded_chunks"] > 0  # the interrupted work, finished now
    code, checks = _alien(home, "check", "-t", "acme")
    assert code == 0 and checks["passed"], checks
    assert set(_statuses(home)) == {"indexed"}


def test_ctrl_c_during_embedding_stops_and_the_next_run_finishes(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    # 100 pages, ~300 chunks: about 15 s of embedding on two cores, all of which the next
    # run finishes (so no more than that)
    (docs / "gri.pdf").write_bytes(pdf_pages(PDFS / "gri-manual.pdf", list(range(60, 160))))
    _interrupt_during(r"embeddings[^\n/]*? ([1-9]\d*)/(\d{3})", docs, tmp_path / "home")


def test_ctrl_c_during_ocr_stops_and_the_next_run_finishes(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    # A scan of 12 pages: Tesseract takes a second or more per page and core.
    scan = PDFS / "camlidl-manual.p8-10.scanned.pdf"
    (docs / "scan.pdf").write_bytes(pdf_pages(scan, [0, 1, 2] * 4))
    _interrupt_during(r"ocr_output[^\n/]*? 0/1", docs, tmp_path / "home", busy="tesseract")


def test_every_steps_bar_moves_while_it_runs(tmp_path: Path) -> None:
    """Each step's bar is drawn unfinished before it is drawn finished, while the run goes."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("camlidl-manual.pdf", "live-manual.en.pdf"):
        shutil.copy(PDFS / name, docs)
    home = tmp_path / "home"
    home.mkdir()
    terminal = Terminal([ALIEN, "ingest", str(docs), "-t", "acme"], _env(home), home)
    try:
        assert terminal.wait(timeout=600) == 0, terminal.screen()[-2000:]
    finally:
        terminal.close()
    # Where on the screen (the byte offset of the output) each step was first drawn unfinished
    # and first drawn done: every bar shows from its step's start (the fast ones may jump
    # from 0 to done between two redraws), and the long one, embedding, moves in between.
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", terminal.text())
    first_unfinished: dict[str, int] = {}
    first_done: dict[str, int] = {}
    moving: set[str] = set()
    for step in STEPS:
        for found in re.finditer(rf"{step}[^\n/]*? (\d+)/(\d+)", screen):
            done, total = int(found.group(1)), int(found.group(2))
            if done == total:
                first_done.setdefault(step, found.start())
                continue
            first_unfinished.setdefault(step, found.start())
            if done > 0 and step not in first_done:
                moving.add(step)
    for step in STEPS:
        assert step in first_unfinished, f"{step}: never drawn unfinished"
        assert step in first_done, f"{step}: never drawn finished"
        assert first_unfinished[step] < first_done[step], step
    assert "embeddings" in moving, "the embedding bar never advanced part-way"
    # one after another: embedding was drawn under way before indexing finished
    assert first_unfinished["embeddings"] < first_done["keyword_index"]
    assert "BetaWarning" not in terminal.screen()


def test_a_run_whose_process_died_is_marked_failed(tmp_path: Path) -> None:
    """SIGKILL leaves an in-process run `started` for ever; the tenant's next run ends it."""
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.test_utils import create_run_for_test

    from alien.runner import PROCESS_TAG, fail_abandoned_runs, process_id

    dead = subprocess.Popen(["sleep", "30"])
    dead_id = process_id(dead.pid)
    dead.kill()
    dead.wait()
    home = tmp_path / "dagster"
    home.mkdir()
    instance = DagsterInstance.from_config(str(home))
    try:

        def started(process: str | None, tenant: str = "acme") -> str:
            tags = {"dagster/partition": tenant, **({PROCESS_TAG: process} if process else {})}
            run = create_run_for_test(
                instance, "ingest", status=DagsterRunStatus.STARTED, tags=tags
            )
            return run.run_id

        killed = started(dead_id)
        running = started(process_id())  # this process: alive
        other = started(dead_id, tenant="globex")  # another tenant's: its own next run
        unknown = started(None)  # no process recorded: left alone
        assert fail_abandoned_runs(instance, "acme") == [killed]
        status = {
            rid: instance.get_run_by_id(rid).status for rid in (killed, running, other, unknown)
        }
        assert status[killed] == DagsterRunStatus.FAILURE
        assert {status[r] for r in (running, other, unknown)} == {DagsterRunStatus.STARTED}
    finally:
        instance.dispose()
