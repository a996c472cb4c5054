"""Fairness between tenants: how long one tenant's small upload waits behind another's large one.

    .venv/bin/python bench/fairness.py [--pages 1200] [--concurrency 4] [--json]

Against `alien serve` in its own process (its worker ingests the uploads):
1. alone: tenant B uploads a one-line text; seconds until it is indexed;
2. behind a large upload: tenant A uploads a PDF of ``--pages`` real text pages (the
   camlidl manual, repeated), B uploads another one-line text two seconds later; seconds
   until B's is indexed, and A's status then;
3. stop: seconds for the server to stop with A's run in flight (its run is cancelled).

With ``--concurrency 1`` the worker runs one tenant at a time, as before issue 11: B then
waits for the whole of A's run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PDF = REPO.parent / "shared" / "data" / "pdfs" / "camlidl-manual.pdf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=1200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--limit", type=float, default=900.0, help="give up after (s)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import httpx
    import pypdf

    from alien.credentials import create_api_key
    from data_api.local import LocalServer
    from resources.settings import AlienSettings
    from resources.stores import TenantRegistry

    reader = pypdf.PdfReader(PDF)
    writer = pypdf.PdfWriter()
    for i in range(args.pages):
        writer.add_page(reader.pages[i % len(reader.pages)])
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        big = Path(tmp) / "big.pdf"
        with big.open("wb") as fh:
            writer.write(fh)
        registry = TenantRegistry(AlienSettings(home=home))
        keys = {
            t: create_api_key(registry.create(t), ["read", "write"])[0]
            for t in ("big-a", "small-b")
        }
        env = dict(os.environ, ALIEN_HOME=str(home), DAGSTER_HOME=str(home / "dagster"),
                   ALIEN_API_WORKER_POLL_SECONDS="1",
                   ALIEN_INGEST_CONCURRENCY=str(args.concurrency))  # fmt: skip
        with LocalServer(env, Path(tmp) / "serve.log") as server:
            a, b = (
                httpx.Client(
                    base_url=server.url, timeout=120, headers={"Authorization": f"Bearer {keys[t]}"}
                )
                for t in ("big-a", "small-b")
            )

            def status(client: httpx.Client, entry: str) -> str:
                return client.get(f"/v1/entries/{entry}").json()["status"]

            def indexed_after(client: httpx.Client, body: bytes, name: str) -> float:
                started = time.monotonic()
                entry = client.post("/v1/entries", files={"file": (name, body)}).json()
                while status(client, entry["entry_id"]) != "indexed":
                    if time.monotonic() - started > args.limit:
                        return float("inf")
                    time.sleep(0.25)
                return time.monotonic() - started

            alone = indexed_after(b, b"Lichens grow slowly on granite.", "alone.txt")
            a_entry = a.post(
                "/v1/entries", files={"file": ("big.pdf", big.read_bytes(), "application/pdf")}
            ).json()["entry_id"]
            time.sleep(2)
            behind = indexed_after(b, b"Mosses hold water like sponges.", "behind.txt")
            a_status = status(a, a_entry)
            stopping = time.monotonic()
            server.stop()
            stop_seconds = time.monotonic() - stopping
    figures = {
        "pages": args.pages,
        "concurrency": args.concurrency,
        "b_alone_s": round(alone, 1),
        "b_behind_a_s": round(behind, 1),
        "a_status_then": a_status,
        "stop_s": round(stop_seconds, 1),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"B alone: {figures['b_alone_s']} s; B behind A's {args.pages}-page PDF: "
            f"{figures['b_behind_a_s']} s (A then {a_status}); stop with A in flight: "
            f"{figures['stop_s']} s  [concurrency {args.concurrency}]"
        )


if __name__ == "__main__":
    main()
