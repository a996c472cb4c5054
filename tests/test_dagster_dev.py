"""`dagster dev` with its daemon: a file dropped into a tenant's inbox is indexed by the sensor."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from resources.catalog import EntryStatus
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from tests.conftest import REPO

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.dagster_dev
def test_sensor_indexes_a_file_dropped_into_the_inbox(tmp_path):
    home = tmp_path / "home"
    settings = AlienSettings(home=home)
    stores = TenantRegistry(settings).create("dropbox")
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
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
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
