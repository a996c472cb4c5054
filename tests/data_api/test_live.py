"""The Data API as users meet it: `alien serve` in its own process, keys from `alien keys
create`, a real HTTP client; and schemathesis over the live OpenAPI document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pypdfium2 as pdfium
import pytest
from prometheus_client.parser import text_string_to_metric_families

from data_api.local import LocalServer
from resources.settings import AlienSettings
from resources.stores import TenantRegistry
from tests.conftest import PDFS

BIN = Path(sys.executable).parent
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


@dataclass
class Live:
    url: str
    home: Path
    env: dict[str, str]
    keys: dict[str, str]

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def _key(env: dict[str, str], tenant: str, scopes: str) -> str:
    out = subprocess.run(
        [str(BIN / "alien"), "keys", "create", "--tenant", tenant, "--scopes", scopes, "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)["key"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    home = tmp_path_factory.mktemp("live-home")
    env = dict(
        os.environ,
        ALIEN_HOME=str(home),
        DAGSTER_HOME=str(home / "dagster"),
        ALIEN_API_RATE_PER_SECOND="100000",
        ALIEN_API_RATE_BURST="100000",
        # the unauthorized fuzzing run sends thousands of bad credentials on purpose
        ALIEN_API_REFUSAL_RATE_PER_SECOND="100000",
        ALIEN_API_REFUSAL_BURST="100000",
        ALIEN_API_WORKER_POLL_SECONDS="1",
    )
    keys = {
        "live": _key(env, "live", "read,search,write"),
        "fuzz": _key(env, "fuzz", "read,search,write"),
    }
    with LocalServer(env, home / "serve.log") as server:
        yield Live(server.url, home, env, keys)


def _phrase(pdf: Path, page: int) -> str:
    """Eight words from the middle of a page's text layer."""
    text = pdfium.PdfDocument(pdf)[page - 1].get_textpage().get_text_range()
    words = [w for w in text.split() if w.isalpha() and len(w) > 2]
    middle = len(words) // 2
    return " ".join(words[middle : middle + 8])


def test_upload_poll_search_delete_over_http(live: Live) -> None:
    pdf = PDFS / "live-manual.en.pdf"
    with live.client("live") as http:
        created = http.post(
            "/v1/entries",
            files={"file": (pdf.name, pdf.read_bytes(), "application/pdf")},
            data={"metadata": json.dumps({"lang": "en"})},
        )
        assert created.status_code == 202, created.text
        entry_id = created.json()["entry_id"]
        seen = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = http.get(f"/v1/entries/{entry_id}").json()["status"]
            seen.add(status)
            if status in ("indexed", "failed"):
                break
            time.sleep(0.2)
        assert status == "indexed", http.get(f"/v1/entries/{entry_id}").json()
        assert seen <= {"pending", "processing", "indexed"}

        page = 3
        phrase = _phrase(pdf, page)
        for mode in ("keyword", "hybrid"):
            found = http.post("/v1/search", json={"query": phrase, "mode": mode, "top_k": 3})
            top = found.json()["results"]
            assert any(r["entry_id"] == entry_id and r["page"] == page for r in top), (mode, top)

        assert http.delete(f"/v1/entries/{entry_id}").status_code == 204
        gone = http.post("/v1/search", json={"query": phrase, "top_k": 50}).json()["results"]
        assert all(r["entry_id"] != entry_id for r in gone)
        assert http.get(f"/v1/entries/{entry_id}").status_code == 404

    stores = TenantRegistry(AlienSettings(home=live.home)).open("live")
    assert stores.catalog.get_entry(entry_id) is None
    assert [o.key for o in stores.objects.list() if entry_id in o.key] == []
    assert stores.vectors.count(entry_id) == 0
    assert stores.keywords.count(entry_id) == 0
    actions = {r.action for r in stores.catalog.audit.records(limit=100, entry_id=entry_id)}
    assert {"upload_entry", "get_entry", "delete_entry"} <= actions


def _statuses(live: Live) -> dict[tuple[str, str], float]:
    """(route, status) -> requests answered so far, from the live /metrics."""
    text = httpx.get(f"{live.url}/metrics", timeout=30).text
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "alien_api_requests_total":
                key = (sample.labels["route"], sample.labels["status"])
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


def _schemathesis(live: Live, key: str | None, tmp_path: Path) -> subprocess.CompletedProcess:
    command = [
        str(BIN / "schemathesis"),
        "run",
        f"{live.url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        "25",
        "--seed",
        "20261128",
        "--request-timeout",
        "60",
    ]
    if key is not None:
        command += ["--header", f"Authorization: Bearer {live.keys[key]}"]
    else:
        command += ["--header", "Authorization: Bearer alien_fuzz_0000_not-a-real-key"]
    env = dict(live.env, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
    return subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900
    )


def test_schemathesis_unauthorized_client_gets_only_401(live: Live, tmp_path: Path) -> None:
    before = _statuses(live)
    run = _schemathesis(live, None, tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    after = _statuses(live)
    grown = {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}
    # Every request to a data endpoint (all under /v1 but health and readiness) got 401.
    data_routes = {
        k: v
        for k, v in grown.items()
        if k[0].startswith("/v1/") and k[0] not in ("/v1/health", "/v1/ready")
    }
    assert sum(data_routes.values()) > 100, grown
    assert {status for _, status in data_routes} == {"401"}, data_routes


def test_schemathesis_authorized_client_finds_no_5xx_or_schema_violation(
    live: Live, tmp_path: Path
) -> None:
    before = _statuses(live)
    run = _schemathesis(live, "fuzz", tmp_path)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    grown = {k: v - before.get(k, 0.0) for k, v in _statuses(live).items()}
    answered = {k: v for k, v in grown.items() if v > 0}
    assert sum(answered.values()) > 300, answered
    assert not [k for k in answered if k[1].startswith("5")], answered
    # It reached the operations' logic, not only their refusals.
    assert any(route == "/v1/search" and status == "200" for route, status in answered)


def test_readme_curl_examples_work_as_written(live: Live, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    after_marker = readme.split("<!-- api-examples:", 1)[1]
    script = after_marker.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "API=http://127.0.0.1:8000" in script
    script = script.replace("http://127.0.0.1:8000", live.url)
    # The examples run from the repository root: give them the same neighbourhood.
    (tmp_path / "repo").mkdir()
    (tmp_path / "shared").symlink_to(PDFS.parents[1])
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path / "repo",
        env=dict(live.env, KEY=live.keys["live"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert '"source_name": "live-manual.en.pdf"' in run.stdout
    assert (tmp_path / "repo" / "original.pdf").read_bytes() == (
        PDFS / "live-manual.en.pdf"
    ).read_bytes()
    assert run.stdout.rstrip().endswith("}") and "entry_not_found" in run.stdout.splitlines()[-1]


def test_a_small_upload_is_not_held_up_by_another_tenants_large_one(tmp_path: Path) -> None:
    """Tenant A uploads a 1,200-page PDF (about 150 s of embedding here), then tenant B a
    one-line text: B's entry is indexed within 30 s while A's is still being processed, and
    stopping the server cancels A's run in seconds, leaving it for the next run."""
    from tests.conftest import pdf_pages

    home = tmp_path / "home"
    env = dict(os.environ, ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
               ALIEN_API_WORKER_POLL_SECONDS="1")  # fmt: skip
    keys = {t: _key(env, t, "read,search,write") for t in ("big-a", "small-b")}
    pages = pdf_pages(PDFS / "camlidl-manual.pdf", [i % 26 for i in range(1_200)])

    def status(client: httpx.Client, entry: str) -> str:
        return client.get(f"/v1/entries/{entry}").json()["status"]

    with LocalServer(env, home / "serve.log") as server:
        a = httpx.Client(base_url=server.url, timeout=60,
                         headers={"Authorization": f"Bearer {keys['big-a']}"})  # fmt: skip
        b = httpx.Client(base_url=server.url, timeout=60,
                         headers={"Authorization": f"Bearer {keys['small-b']}"})  # fmt: skip
        big = a.post("/v1/entries", files={"file": ("big.pdf", pages, "application/pdf")})
        assert big.status_code == 202, big.text
        time.sleep(2)  # A's run is under way
        started = time.monotonic()
        small = b.post("/v1/entries", files={"file": ("note.txt", b"Lichens grow slowly.")})
        assert small.status_code == 202, small.text
        while status(b, small.json()["entry_id"]) != "indexed":
            assert time.monotonic() - started < 30, f"B waited:\n{server.log.read_text()}"
            time.sleep(0.5)
        waited = time.monotonic() - started
        assert status(a, big.json()["entry_id"]) in ("pending", "processing"), "A finished first"
        hits = b.post("/v1/search", json={"query": "lichens", "mode": "keyword"}).json()
        assert [h["entry_id"] for h in hits["results"]] == [small.json()["entry_id"]]
        stopping = time.monotonic()
        server.stop()
        stopped = time.monotonic() - stopping
    print(f"B indexed in {waited:.1f} s while A was processing; stop took {stopped:.1f} s")
    assert stopped < 20, "stopping did not cancel A's run"
    registry = TenantRegistry(AlienSettings(home=home))
    entry = registry.open("big-a").catalog.get_entry(big.json()["entry_id"])
    assert entry is not None and entry.status == "pending"  # released: the next run takes it up
