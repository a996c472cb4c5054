"""Metadata-only sync to the platform: per dataset, names, counts, sizes and times; never content.

The payload (schema ``alien.metadata-sync/v1``, documented in docs/metadata-sync.md) is built
from catalog aggregates only: no document or chunk text, no file names, no object keys, no
entry metadata. Each snapshot goes into an outbox (a SQLite file under ``ALIEN_HOME/system``)
with a message id; a drain posts the oldest unsent messages in batches and marks them sent only
after the platform answers 2xx. While the platform is down, messages wait; a message whose
answer was lost is sent again with the same id, so the platform keeps each id once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from resources.catalog import EntryStatus
from resources.settings import AlienSettings
from resources.stores import TenantStores

SCHEMA = "alien.metadata-sync/v1"
SNAPSHOT_FIELDS = ("tenant", "dataset", "entries", "entries_by_status", "bytes", "created_at",
                   "updated_at", "last_entry_update")  # fmt: skip


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def dataset_summaries(stores: TenantStores) -> list[dict[str, Any]]:
    """Per dataset of the tenant: counts by status, total bytes and times (aggregates only)."""
    counts = stores.catalog.entry_stats()
    out = []
    for ds in stores.catalog.datasets():
        by_status = {status: 0 for status in EntryStatus.ALL}
        size = 0
        latest: datetime | None = None
        for name, status, count, total, last in counts:
            if name != ds.name:
                continue
            by_status[status] = count
            size += total
            if last is not None and (latest is None or last > latest):
                latest = last
        out.append(
            {
                "tenant": str(stores.tenant),
                "dataset": ds.name,
                "entries": sum(by_status.values()),
                "entries_by_status": by_status,
                "bytes": size,
                "created_at": _iso(ds.created_at),
                "updated_at": _iso(ds.updated_at),
                "last_entry_update": _iso(latest),
            }
        )
    return out


@dataclass(frozen=True)
class Message:
    id: str
    tenant: str
    body: dict[str, Any]


class Outbox:
    """Messages waiting for the platform, in a local SQLite file; each sent at most once
    successfully, never dropped before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, digest TEXT NOT NULL,"
                " body TEXT NOT NULL, created_at REAL NOT NULL, attempts INTEGER NOT NULL"
                " DEFAULT 0, last_error TEXT, sent_at REAL)"
            )

    def _conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def add(self, tenant: str, datasets: list[dict[str, Any]]) -> Message | None:
        """Queue a snapshot of ``tenant``; None when it equals the last one queued."""
        digest = hashlib.sha256(json.dumps(datasets, sort_keys=True).encode()).hexdigest()
        with self._conn() as conn:
            last = conn.execute(
                "SELECT digest FROM outbox WHERE tenant = ? ORDER BY seq DESC LIMIT 1", (tenant,)
            ).fetchone()
            if last and last[0] == digest:
                return None
            message = Message(
                str(uuid.uuid4()),
                tenant,
                {"tenant": tenant, "generated_at": _iso(datetime.now(UTC)), "datasets": datasets},
            )
            conn.execute(
                "INSERT INTO outbox(id, tenant, digest, body, created_at) VALUES (?,?,?,?,?)",
                (message.id, tenant, digest, json.dumps(message.body), time.time()),
            )
        return message

    def pending(self, limit: int) -> list[Message]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, tenant, body FROM outbox WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [Message(i, t, json.loads(b)) for i, t, b in rows]

    def mark_sent(self, ids: Iterable[str]) -> None:
        with self._conn() as conn:
            conn.executemany(
                "UPDATE outbox SET sent_at = ? WHERE id = ?", [(time.time(), i) for i in ids]
            )

    def mark_failed(self, ids: Iterable[str], error: str) -> None:
        with self._conn() as conn:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                [(error[:500], i) for i in ids],
            )

    def counts(self) -> dict[str, int]:
        with self._conn() as conn:
            unsent, sent = conn.execute(
                "SELECT count(*) - count(sent_at), count(sent_at) FROM outbox"
            ).fetchone()
        return {"pending": int(unsent), "sent": int(sent)}


def envelope(cluster: str, messages: list[Message]) -> dict[str, Any]:
    """One POST body: the schema, the cluster, and the messages with their ids."""
    return {
        "schema": SCHEMA,
        "cluster": cluster,
        "messages": [{"id": m.id, **m.body} for m in messages],
    }


@dataclass
class DrainReport:
    sent: int = 0
    failed_batches: int = 0
    pending: int = 0
    error: str | None = None


def drain(
    outbox: Outbox,
    url: str,
    token: str | None,
    cluster: str,
    *,
    batch_size: int = 50,
    retries: int = 3,
    backoff: float = 0.5,
    post: Callable[..., httpx.Response] | None = None,
) -> DrainReport:
    """Post pending messages oldest first; stop at the first batch the platform refuses."""
    post = post or httpx.post
    report = DrainReport()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    endpoint = url.rstrip("/") + "/v1/metadata-sync"
    while batch := outbox.pending(batch_size):
        ids = [m.id for m in batch]
        error = None
        for attempt in range(retries):
            try:
                response = post(
                    endpoint, json=envelope(cluster, batch), headers=headers, timeout=10
                )
                if 200 <= response.status_code < 300:
                    error = None
                    break
                error = f"platform answered {response.status_code}"
            except httpx.HTTPError as err:
                error = f"{type(err).__name__}: {err}"
            time.sleep(backoff * (2**attempt))
        if error is not None:
            outbox.mark_failed(ids, error)
            report.failed_batches += 1
            report.error = error
            break
        outbox.mark_sent(ids)
        report.sent += len(ids)
    report.pending = outbox.counts()["pending"]
    return report


def outbox_for(settings: AlienSettings) -> Outbox:
    return Outbox(settings.system_dir / "outbox.db")


def sync_tenants(settings: AlienSettings, tenants: Iterable[TenantStores]) -> DrainReport:
    """Queue a snapshot of each tenant (if it changed) and drain the outbox to the platform."""
    outbox = outbox_for(settings)
    for stores in tenants:
        outbox.add(str(stores.tenant), dataset_summaries(stores))
    if not settings.platform_url:
        return DrainReport(pending=outbox.counts()["pending"])  # the outbox is the record
    token = settings.platform_token.get_secret_value() if settings.platform_token else None
    return drain(outbox, settings.platform_url, token, settings.cluster_id)
