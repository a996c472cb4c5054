"""Load on a live Data API: concurrent searches and uploads over loopback, then an audit of
what was stored (no upload lost, none duplicated).

    .venv/bin/python bench/api_load.py [--chunks 20000] [--searches 400] [--uploads 40]
                                       [--concurrency 1 4] [--max-seconds 300] [--json]

A tenant is filled with ``--chunks`` chunks (Cranfield texts, random unit vectors: see
search_latency.py), `alien serve` starts in its own process with the in-process worker, and
clients on threads call it as any HTTP client would. Searches use Cranfield's queries, each
embedded by the server inside the request. Uploads are distinct small text documents, each
sent twice (the second must return the first's entry), while searches go on at a steady
rate (``--search-rate``) until the worker has indexed them all.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
CRANFIELD = REPO.parent / "shared" / "data" / "cranfield"
TENANT = "load"


def summary(latencies: list[float], seconds: float, errors: int) -> dict:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "requests_per_second": round(len(latencies) / seconds, 1) if seconds else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None,
    }


def hammer(
    call: Callable[[httpx.Client, int], httpx.Response],
    count: int,
    concurrency: int,
    headers: dict[str, str],
    url: str,
    deadline: float,
    expect: tuple[int, ...] = (200,),
    rate: float | None = None,
    stop: threading.Event | None = None,
) -> tuple[list[float], float, int]:
    """``count`` calls on ``concurrency`` threads (each with its own client), until the
    deadline or ``stop``; closed loop, or open loop at ``rate`` calls per second."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = itertools.count()
    begun = time.perf_counter()

    def worker() -> None:
        nonlocal errors
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                n = next(counter)
                if n >= count:
                    return
                if rate is not None and (wait := begun + n / rate - time.perf_counter()) > 0:
                    time.sleep(wait)
                started = time.perf_counter()
                response = call(client, n)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code in expect:
                        latencies.append(elapsed)
                    else:
                        errors += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(concurrency):
            pool.submit(worker)
    return latencies, time.perf_counter() - started, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--searches", type=int, default=400)
    parser.add_argument("--uploads", type=int, default=40)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--search-rate", type=float, default=10, help="Searches/s while uploads are indexed"
    )
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    deadline = time.monotonic() + args.max_seconds

    from search_latency import build

    from alien.credentials import create_api_key
    from data_api.local import LocalServer
    from resources.settings import AlienSettings
    from resources.stores import TenantRegistry

    corpus = [json.loads(line) for line in (CRANFIELD / "corpus.jsonl").read_text().splitlines()]
    texts = [f"{d['title']}\n\n{d['text']}" for d in corpus]
    queries = [
        json.loads(line)["text"] for line in (CRANFIELD / "queries.jsonl").read_text().splitlines()
    ]
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="alien-load-") as tmp:
        home = Path(tmp)
        settings = AlienSettings(home=home)
        stores = TenantRegistry(settings).create(TENANT)
        build(stores, texts, args.chunks)
        key, _ = create_api_key(stores, ["read", "search", "write"])
        report["indexed_chunks"] = stores.vectors.count()
        env = dict(
            os.environ,
            ALIEN_HOME=str(home),
            DAGSTER_HOME=str(home / "dagster"),
            ALIEN_API_RATE_PER_SECOND="100000",
            ALIEN_API_RATE_BURST="100000",
            ALIEN_API_WORKER_POLL_SECONDS="1",
        )
        with LocalServer(env, home / "serve.log") as server:
            url = server.url
            headers = {"Authorization": f"Bearer {key}"}

            def search(client: httpx.Client, n: int) -> httpx.Response:
                query = queries[n % len(queries)]
                return client.post("/v1/search", json={"query": query, "top_k": 10})

            # The first search loads the tenant's vectors into the server (once per process).
            with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
                search(c, 0)
            for concurrency in args.concurrency:
                lat, secs, errs = hammer(search, args.searches, concurrency, headers, url, deadline)
                report[f"search_concurrency_{concurrency}"] = summary(lat, secs, errs)

            docs = [
                (f"load-{i}.txt", f"{texts[i % len(texts)]}\n\nload document {i}".encode())
                for i in range(args.uploads)
            ]

            def upload(client: httpx.Client, n: int) -> httpx.Response:
                name, data = docs[n % len(docs)]  # every document twice
                return client.post("/v1/entries", files={"file": (name, data, "text/plain")})

            searching = threading.Event()
            during: dict = {}

            def background_searches() -> None:
                during.update(
                    summary(
                        *hammer(search, 10**12, 2, headers, url, deadline,
                                rate=args.search_rate, stop=searching)
                    )
                )  # fmt: skip

            bg = threading.Thread(target=background_searches)
            bg.start()
            lat, secs, errs = hammer(
                upload, 2 * len(docs), 4, headers, url, deadline, expect=(200, 202)
            )
            report["upload_concurrency_4"] = summary(lat, secs, errs)
            waited = _wait_indexed(url, headers, len(docs), deadline)
            searching.set()
            bg.join()
            report[f"search_during_uploads_{args.search_rate:g}_per_s"] = during
            report["seconds_until_all_uploads_indexed"] = round(waited, 1)
        report["integrity"] = _integrity(stores, docs)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, value in report.items():
        print(f"{name:<40} {value}")


def _wait_indexed(url: str, headers: dict[str, str], expected: int, deadline: float) -> float:
    started = time.perf_counter()
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        while time.monotonic() < deadline:
            uploaded, offset = [], 0
            while offset is not None:  # every page: the uploads come after the bulk entries
                page = client.get("/v1/entries", params={"limit": 100, "offset": offset}).json()
                uploaded += [e for e in page["entries"] if e["source_name"].startswith("load-")]
                offset = page["next_offset"]
            if len(uploaded) >= expected and all(e["status"] == "indexed" for e in uploaded):
                break
            time.sleep(0.5)
    return time.perf_counter() - started


def _integrity(stores, docs: list[tuple[str, bytes]]) -> dict:
    import hashlib

    wanted = {hashlib.sha256(data).hexdigest() for _, data in docs}
    entries = [e for e in stores.catalog.entries() if e.source_name.startswith("load-")]
    shas = [e.sha256 for e in entries]
    chunks_ok = all(
        stores.vectors.count(e.id) == stores.keywords.count(e.id) == (e.chunks or -1)
        for e in entries
    )
    return {
        "documents_sent": len(docs),
        "uploads_sent": 2 * len(docs),
        "entries_stored": len(entries),
        "lost": len(wanted - set(shas)),
        "duplicated": len(shas) - len(set(shas)),
        "indexed": sum(e.status == "indexed" for e in entries),
        "chunks_agree_in_every_store": chunks_ok,
    }


if __name__ == "__main__":
    main()
