"""`dagster dev` with its daemon: the sensor indexes an inbox file; a backfill over tenants runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from alien.documents import register_bytes
from alien.runner import use_home
from resources.catalog import EntryStatus
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from tests.conftest import PDFS, REPO, pdf_pages

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
ASSETS = ["raw_documents", "ocr_output", "chunks", "embeddings", "vector_index", "keyword_index"]


def _launch_backfill(port: int, tenants: list[str]) -> str:
    params = {
        "assetSelection": [{"path": [name]} for name in ASSETS],
        "partitionNames": tenants,
        "tags": [{"key": "alien/full_refresh", "value": "true"}],
    }
    body = json.dumps({"query": BACKFILL, "variables": {"params": params}}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())["data"]["launchPartitionBackfill"]
    assert answer["__typename"] == "LaunchBackfillSuccess", answer
    return answer["backfillId"]


@pytest.mark.dagster_dev
def test_sensor_and_backfill_under_dagster_dev(tmp_path):
    home = tmp_path / "home"
    settings = AlienSettings(home=home)
    stores = TenantRegistry(settings).create("dropbox")
    use_home(settings)  # the instance alien writes: its run queue serves tenants side by side
    port = _free_port()
    env = dict(os.environ, ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    log = (tmp_path / "dagster-dev.log").open("wb")
    # `dagster dev` ignores SIGTERM when detached: it runs in its own process group, killed whole.
    proc = subprocess.Popen(
        [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "dagster-dev.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "dagster dev did not start"
                time.sleep(1)
        stores.objects.put_bytes(
            "inbox/memo.txt", b"The sensor found this memo about transonic buffet onset."
        )
        deadline = time.monotonic() + 300
        while True:
            entries = stores.catalog.entries()
            if entries and entries[0].status in (EntryStatus.INDEXED, EntryStatus.FAILED):
                break
            assert time.monotonic() < deadline, (tmp_path / "dagster-dev.log").read_text()[-3000:]
            time.sleep(2)
        (entry,) = entries
        assert (entry.source_name, entry.status) == ("memo.txt", EntryStatus.INDEXED)
        assert stores.keywords.search("transonic buffet", 1)[0].entry_id == entry.id
        assert list(stores.objects.list("inbox/")) == []

        # A backfill over two tenant partitions, launched the way the UI launches one.
        other = TenantRegistry(settings).create("second")
        register_bytes(
            other,
            b"Wing flutter in the second tenant.",
            dataset="default",
            source_uri="mem:w",
            source_name="w.txt",
        )
        instance = dg.DagsterInstance.from_config(str(home / "dagster"))
        deadline = time.monotonic() + 120
        while not instance.has_dynamic_partition("tenants", "second"):  # the sensor adds it
            assert time.monotonic() < deadline, "the sensor did not add the tenant partition"
            time.sleep(1)
        backfill_id = _launch_backfill(port, ["dropbox", "second"])
        deadline = time.monotonic() + 300
        while True:
            runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            done = [r for r in runs if r.is_finished]
            if len(done) == 2:
                break
            assert time.monotonic() < deadline, (tmp_path / "dagster-dev.log").read_text()[-3000:]
            time.sleep(2)
        assert {r.tags["dagster/partition"] for r in done} == {"dropbox", "second"}
        assert all(r.is_success for r in done)
        assert all(r.tags.get("alien/full_refresh") == "true" for r in done)
        assert other.catalog.entries()[0].status == EntryStatus.INDEXED

        # Fairness between sensor-launched runs: a 1,050-page PDF in one tenant's inbox does
        # not hold up a small file that lands in another tenant's inbox just after it.
        stores.objects.put_bytes(
            "inbox/big.pdf", pdf_pages(PDFS / "camlidl-manual.pdf", [i % 26 for i in range(1_050)])
        )
        deadline = time.monotonic() + 60
        while not any(e.source_name == "big.pdf" for e in stores.catalog.entries()):
            assert time.monotonic() < deadline, "the big file was not picked up"
            time.sleep(1)
        other.objects.put_bytes("inbox/small.txt", b"Lichens grow slowly on alpine granite.")
        started = time.monotonic()
        while True:
            small = [e for e in other.catalog.entries() if e.source_name == "small.txt"]
            if small and small[0].status == EntryStatus.INDEXED:
                break
            assert time.monotonic() - started < 60, (tmp_path / "dagster-dev.log").read_text()[
                -3000:
            ]
            time.sleep(1)
        waited = time.monotonic() - started
        (big,) = [e for e in stores.catalog.entries() if e.source_name == "big.pdf"]
        assert big.status in (EntryStatus.PENDING, EntryStatus.PROCESSING), "A finished first"
        print(f"sensor runs: B indexed in {waited:.0f} s while A's 1,050 pages were processing")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


@pytest.mark.dagster_dev
def test_ctrl_c_stops_dagster_dev_at_a_terminal(tmp_path: Path) -> None:
    """`make dev` as a user runs it: Ctrl-C at its terminal stops the webserver, the daemon
    and the code server within seconds (no SIGKILL needed); the runs' consoles stay quiet."""
    from tests.terminal import Terminal, alive

    # the session's models directory stays: its ONNX export is made once per session
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ALIEN_", "DAGSTER_")) or k == "ALIEN_MODELS_DIR"}  # fmt: skip
    home = tmp_path / "home"
    env.update(ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    first = "from alien.runner import use_home; from resources.settings import AlienSettings;"
    subprocess.run(  # what `make dev` does first: the instance file for ALIEN_HOME
        [sys.executable, "-c", first + "use_home(AlienSettings())"], env=env, check=True
    )
    port = _free_port()
    argv = [DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]
    terminal = Terminal(argv, env, REPO)
    try:
        terminal.wait_for(r"Serving dagster-webserver", timeout=120)
        terminal.wait_for(r"ingestion_sensor", timeout=60)  # the daemon ticks
        running = terminal.descendants()
        pressed = time.monotonic()
        terminal.interrupt()
        terminal.wait(timeout=30)
        assert time.monotonic() - pressed < 15
    finally:
        terminal.close()
    deadline = time.monotonic() + 10
    while [p for p in running if alive(p)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in running if alive(p)], "a Dagster process outlived Ctrl-C"
    assert "Dagster services shut down" in terminal.screen()
    assert " - DEBUG - " not in terminal.screen()
